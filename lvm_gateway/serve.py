"""`lvm-gateway serve | validate | schema`: thin verbs over importable functions.

The one wiring point: `build_app` hands the data plane (gateway/) the control plane's agent
(rollout/agent/). Nowhere else do the two planes import each other.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lvm_gateway import native, termout
from lvm_gateway.allocator import keep_body_pieces_on_the_heap
from lvm_gateway.blas import limit_blas_threads
from lvm_gateway.config.load import json_schema, load_config
from lvm_gateway.errors import (
    AdminServerError,
    ConfigError,
    RedisUnavailableError,
    RedisUrlError,
)
from lvm_gateway.logfmt import FORMATS, LEVELS, dict_config

log = logging.getLogger("lvm_gateway.serve")

if TYPE_CHECKING:
    from lvm_gateway.admin.server import AdminServer

_ENV_CONFIG = "LVMGW_CONFIG"
_ENV_REDIS = "LVMGW_REDIS_URL"
_ENV_CONTROLLER = "LVMGW_CONTROLLER"


def validate(path: str) -> list[str]:
    """Every error in the policy file, each with its path; empty when valid."""
    try:
        load_config(path)
    except ConfigError as exc:
        return exc.errors
    return []


def validation_report(errors: list[str]) -> dict[str, object]:
    """`validate --json`: {"valid": bool, "errors": [{"path", "message"}]} for editors and CI."""
    items = []
    for e in errors:
        path, sep, message = e.partition(": ")
        items.append({"path": path, "message": message} if sep else {"path": "", "message": e})
    return {"valid": not errors, "errors": items}


def build_app() -> object:
    """uvicorn factory: every worker builds its own app from the environment `serve` set."""
    from lvm_gateway.gateway.app import GatewayApp
    from lvm_gateway.redisconn import home_dir
    from lvm_gateway.rollout.agent.dataplane import RolloutDataPlane

    config = load_config(os.environ[_ENV_CONFIG])
    redis_url = os.environ[_ENV_REDIS]
    dataplane = RolloutDataPlane(
        redis_url=redis_url,
        prefix=config.spec.redis_prefix,
        run_controller=os.environ.get(_ENV_CONTROLLER, "1") == "1",
        identity=f"{socket.gethostname()}:{os.getpid()}",
        state_dir=home_dir(),
    )
    return GatewayApp(config, dataplane, redis_url)


def build_rsgi_app() -> object:
    """granian factory: the same app behind the RSGI interface (gateway/rsgi.py)."""
    from lvm_gateway.gateway.app import GatewayApp
    from lvm_gateway.gateway.rsgi import RSGIGateway

    app = build_app()
    assert isinstance(app, GatewayApp)
    return RSGIGateway(app)


@dataclass(frozen=True)
class ClientLimits:
    """What a client may cost the server: see gateway/server.py."""

    header_timeout_s: float = 10.0  # the request head must arrive within this
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int | None = None  # beyond: 503 (uvicorn's limit_concurrency)


@dataclass(frozen=True)
class AdminSettings:
    """The status page's server: `--admin-port`, `--admin-host`, `--admin-token-env`."""

    host: str
    port: int
    token_env: str


def start_admin(
    settings: AdminSettings, redis_url: str, prefix: str, log_level: str, log_format: str
) -> AdminServer:
    """The status page and its API on their own port, once per serve (not per worker)."""
    from lvm_gateway.admin.app import check_token
    from lvm_gateway.admin.server import AdminServer

    token = check_token(os.environ.get(settings.token_env), f"${settings.token_env}")
    server = AdminServer(
        redis_url, prefix, token, settings.host, settings.port, log_level, log_format
    )
    server.start()
    mode = "actions need the token" if token else f"read-only (${settings.token_env} is not set)"
    logging.getLogger("lvm_gateway.admin").info("status page on %s (%s)", server.url, mode)
    return server


def serve(
    config_path: str,
    host: str,
    port: int,
    redis: str | None,
    workers: int,
    controller: bool,
    log_level: str,
    limits: ClientLimits = ClientLimits(),
    log_format: str = "text",
    access_log: bool = False,
    admin: AdminSettings | None = None,
    server: str = "uvicorn",
) -> None:
    import uvicorn

    from lvm_gateway.gateway.server import HEADER_TIMEOUT_ENV, GatewayHttpProtocol
    from lvm_gateway.redisconn import redact_url, resolve_redis_url

    log_config = dict_config(log_level, log_format)
    logging.config.dictConfig(log_config)
    config = load_config(config_path)  # fail before forking workers, with every error listed
    redis_url = resolve_redis_url(redis)
    os.environ[_ENV_CONFIG] = os.path.abspath(config_path)
    os.environ[_ENV_REDIS] = redis_url
    admin_server = (
        start_admin(admin, redis_url, config.spec.redis_prefix, log_level, log_format)
        if admin is not None
        else None
    )
    os.environ[_ENV_CONTROLLER] = "1" if controller else "0"
    limit_blas_threads()  # this process and (through the environment) every worker
    keep_body_pieces_on_the_heap()  # the same
    # This process's protocol class, and (through the environment) every worker's.
    os.environ[HEADER_TIMEOUT_ENV] = str(limits.header_timeout_s)
    GatewayHttpProtocol.header_timeout_s = limits.header_timeout_s
    log.info(
        "lvm-gateway %s (%s) on http://%s:%d: config %s, Redis %s, prefix %s, %d worker(s), %s",
        termout.version(), native.status(), host, port, os.path.abspath(config_path),
        redact_url(redis_url), config.spec.redis_prefix, workers,
        "running the rollout controller" if controller else "no rollout controller",
    )  # fmt: skip
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="lvmgw-metrics-")
    try:
        if server == "granian":
            _serve_granian(host, port, workers, log_level, limits)
            return
        uvicorn.run(
            "lvm_gateway.serve:build_app",
            factory=True,
            host=host,
            port=port,
            workers=workers if workers > 1 else None,
            loop="uvloop",
            http="lvm_gateway.gateway.server:GatewayHttpProtocol",
            timeout_keep_alive=limits.keep_alive_s,
            # The gateway appends the peer to X-Forwarded-For itself; uvicorn rewriting the client
            # address from that header (its default for 127.0.0.1) would repeat a client's claim.
            proxy_headers=False,
            limit_concurrency=limits.max_connections,
            lifespan="on",
            access_log=access_log,
            log_config=log_config,
            log_level=log_level,
            timeout_graceful_shutdown=5,
        )
    finally:
        if admin_server is not None:
            admin_server.stop()


def _serve_granian(
    host: str, port: int, workers: int, log_level: str, limits: ClientLimits
) -> None:
    """granian (Rust/hyper HTTP, RSGI). Its own client limits: the request-head timeout maps to
    its http1 header_read_timeout; it has no idle keep-alive timeout and no connection cap
    (--keep-alive-timeout and --max-connections are uvicorn's)."""
    try:
        from granian import Granian
        from granian.http import HTTP1Settings
    except ImportError:
        raise SystemExit("lvm-gateway: --server granian needs `pip install granian`") from None
    Granian(
        "lvm_gateway.serve:build_rsgi_app",
        address=host,
        port=port,
        interface="rsgi",
        workers=workers,
        loop="uvloop",
        http="1",
        http1_settings=HTTP1Settings(header_read_timeout=int(limits.header_timeout_s * 1000)),
        factory=True,
        log_level=log_level,
        backlog=1024,
    ).serve()


def main(argv: list[str] | None = None) -> int:
    parser = termout.parser("lvm-gateway", __doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    p_serve = sub.add_parser("serve", help="proxy the configured routes")
    p_serve.add_argument("--config", required=True, help="policy YAML (hot-reloaded)")
    p_serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p_serve.add_argument("--port", type=int, default=8080, help="port to listen on")
    p_serve.add_argument(
        "--redis", default=None, help="Redis URL (default: $REDIS_URL, else embedded)"
    )
    p_serve.add_argument("--workers", type=termout.positive_int, default=1,
                         help="worker processes")  # fmt: skip
    p_serve.add_argument(
        "--no-controller",
        action="store_true",
        help="do not run the rollout controller in this process",
    )
    p_serve.add_argument("--log-level", default="info", choices=LEVELS, type=str.lower,
                         help="least severe level logged")  # fmt: skip
    p_serve.add_argument("--log-format", default="text", choices=FORMATS,
                         help="text, or one JSON object per line")  # fmt: skip
    p_serve.add_argument("--access-log", action="store_true", help="log every request")
    p_serve.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        default="uvicorn",
        help="the HTTP server: uvicorn (httptools, uvloop; ASGI) or granian (RSGI)",
    )
    p_serve.add_argument(
        "--client-header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="close a connection whose request head is not complete in S seconds (default 10)",
    )
    p_serve.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="close a keep-alive connection idle for S seconds (default 5)",
    )
    p_serve.add_argument(
        "--max-connections",
        type=int,
        default=None,
        metavar="N",
        help="answer 503 beyond N concurrent connections (default: no cap)",
    )
    p_serve.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help="serve the status page and its JSON API on this port (default: off)",
    )
    p_serve.add_argument(
        "--admin-host", default=None, help="the status page's address (default: --host)"
    )
    p_serve.add_argument(
        "--admin-token-env",
        default="LVMGW_ADMIN_TOKEN",
        metavar="VAR",
        help="environment variable holding the bearer token for the page's actions; "
        "unset or empty: read-only (default: %(default)s)",
    )
    p_val = sub.add_parser("validate", help="check a policy file; exit 2 listing every error")
    p_val.add_argument("file")
    p_val.add_argument("--json", action="store_true", help='print {"valid", "errors"} as JSON')
    sub.add_parser("schema", help="print the policy file's JSON Schema (for editors)")
    args = termout.show_defaults(parser).parse_args(argv)

    if args.verb == "validate":
        errors = validate(args.file)
        if args.json:
            print(json.dumps(validation_report(errors), indent=2, ensure_ascii=False))
            return 2 if errors else 0
        for e in errors:
            print(e, file=sys.stderr)
        if errors:
            return 2
        print(f"{args.file}: valid")
        return 0
    if args.verb == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    try:
        serve(
            args.config,
            args.host,
            args.port,
            args.redis,
            args.workers,
            not args.no_controller,
            args.log_level,
            ClientLimits(args.client_header_timeout, args.keep_alive_timeout, args.max_connections),
            args.log_format,
            args.access_log,
            None
            if args.admin_port is None
            else AdminSettings(args.admin_host or args.host, args.admin_port, args.admin_token_env),
            args.server,
        )
    except ConfigError as exc:
        for e in exc.errors:
            print(e, file=sys.stderr)
        return 2
    except RedisUrlError as exc:
        print(f"lvm-gateway: --redis: {exc}", file=sys.stderr)
        return 2
    except RedisUnavailableError as exc:
        print(f"lvm-gateway: {exc}", file=sys.stderr)
        return 1
    except AdminServerError as exc:
        print(f"lvm-gateway: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
