"""`rolloutctl`: drive and watch rollouts held in Redis.

Exit codes: 0 done; 1 refused (unknown rollout, invalid transition, conflict, bad threshold);
2 usage or policy file errors; 3 Redis unreachable (or, for `embedded status`, not running).
`status NAME --timeout D` (a CI gate) exits 0 once Promoted, else EXIT_ROLLED_BACK,
EXIT_ABORTED, EXIT_PAUSED or EXIT_TIMEOUT.

The key prefix comes from `--prefix` > `$LVM_GATEWAY_PREFIX` > the `--config` file's
`redis_prefix` > "lvmgw". Read-only verbs (status, history, thresholds without changes) never
start the embedded Redis: with none configured and none running they say where they looked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging.config
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError
from rich.console import Group, RenderableType
from rich.live import Live
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from lvm_gateway import termout
from lvm_gateway.contract.rollout import Phase, RolloutStatus, format_duration, parse_duration
from lvm_gateway.errors import ConfigError, RedisUnavailableError, RedisUrlError, RolloutError
from lvm_gateway.logfmt import dict_config
from lvm_gateway.redisconn import (
    embedded_status,
    home_dir,
    open_client,
    pause,
    redact_url,
    resolve_redis_url,
    stop_embedded,
    text,
)
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.controller import reconcile_once, run_controller
from lvm_gateway.rollout.store import RolloutStore

EXIT_ROLLED_BACK = 4
EXIT_ABORTED = 5
EXIT_PAUSED = 6
EXIT_TIMEOUT = 7
# Where `status --timeout` stops waiting, and its exit code.
_GATE_EXIT = {
    Phase.PROMOTED: 0,
    Phase.ROLLED_BACK: EXIT_ROLLED_BACK,
    Phase.ABORTED: EXIT_ABORTED,
    Phase.PAUSED: EXIT_PAUSED,
}

out = termout.console()
err = termout.console(stderr=True)

_PHASE_STYLE = {
    "Pending": "dim",
    "Progressing": "cyan",
    "Paused": "yellow",
    "Promoted": "green",
    "RolledBack": "red",
    "Aborted": "red",
}
_VERDICT_STYLE = {"pass": "green", "fail": "yellow", "breach": "red", "insufficient": "dim"}


def _identity() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.4g}{unit}"


def _lane_order(row: dict[str, Any]) -> tuple[int, str]:
    """lane_2 before lane_10: by the number in the name, then the name."""
    digits = "".join(c for c in str(row["lane"]) if c.isdigit())
    return (int(digits) if digits else -1, str(row["lane"]))


def step_text(step: int, steps: list[Any]) -> str:
    """The one step numbering every view uses: 1-based, of the total ("2/4 (20%)")."""
    if step < 0:
        return "-"
    value = steps[step] if step < len(steps) else None
    shown = "?" if value is None else _step_name(value) + ("%" if _is_weight(value) else "")
    return f"{step + 1}/{len(steps)} ({shown})"


def lanes_table(rows: list[dict[str, Any]], limit: int | None = None) -> Table:
    """Per lane, in lane order; with `limit`, only that many lanes, the worst deltas first."""
    title = "per lane (canary vs stable)"
    if limit is not None and len(rows) > limit:
        title = f"per lane: the {limit} worst of {len(rows)}"
        rows = sorted(rows, key=lambda r: -(r["delta"] or 0.0))[:limit]
    table = Table(show_edge=False, pad_edge=False, title=title)
    for col in ("lane", "requests", "errors", "feedback", "hit5", "stable hit5", "delta"):
        table.add_column(col, justify="left" if col == "lane" else "right")
    for r in sorted(rows, key=_lane_order):
        table.add_row(
            r["lane"], str(r["requests"]), str(r["errors"]), str(r["feedback"]),
            _fmt(r["hit5"]), _fmt(r["stable_hit5"]), _fmt(r["delta"]),
        )  # fmt: skip
    return table


def status_table(doc: dict[str, Any], lanes: bool = False, lane_limit: int | None = None) -> Group:
    """One rollout's status. Every value is a Text: a reason like "[lane 3] p95 spike" prints
    as written, never as rich markup."""
    phase = doc["phase"]
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column(overflow="fold")
    ladder = " -> ".join(_step_name(s) for s in doc["steps"])
    in_step = doc["time_in_step"]
    removed = ("  (removed from the policy)", "red") if doc.get("removed") else ""
    pair = f"  {doc['stable']} -> {doc['canary']}"
    head.add_row("rollout", Text.assemble((doc["name"], "bold"), pair, removed))
    head.add_row("phase", Text.assemble((phase, _PHASE_STYLE.get(phase, "")), "  ", doc["reason"]))
    head.add_row("step", Text(f"{step_text(doc['step'], doc['steps'])} of {ladder}"))
    head.add_row("weight", Text(f"{doc['weight']:g}%" + (f"  mirror {doc['mirror']:g}%"
                                                          if doc["mirror"] else "")))  # fmt: skip
    head.add_row("time in step", "-" if in_step is None else f"{in_step:.0f}s")
    head.add_row("failures", f"{doc['failures']}/{doc['thresholds']['failure_limit']}")
    if doc.get("diverted"):
        head.add_row("diverted", f"[red]{doc['diverted']}[/] canary requests (circuit open)")
    head.add_row("version", str(doc["version"]))
    head.add_row("next", Text(doc["next"]))
    parts: list[Any] = [head]
    if doc["metrics"]:
        metrics = Table(show_edge=False, pad_edge=False)
        for col in ("metric", "value", "samples", "success", "rollback", "verdict"):
            metrics.add_column(col, justify="left" if col in ("metric", "verdict") else "right")
        for m in doc["metrics"]:
            op = "<=" if m["kind"] == "max" else ">="
            rb = ">" if m["kind"] == "max" else "<"
            metrics.add_row(
                m["metric"],
                _fmt(m["value"]),
                f"{m['samples']}/{m['needed']}",
                "-" if m["success"] is None else f"{op} {m['success']:g}",
                "-" if m["rollback"] is None else f"{rb} {m['rollback']:g}",
                Text(m["verdict"], _VERDICT_STYLE[m["verdict"]]),
            )
        parts.append(metrics)
    evidence = [e for e in doc.get("evidence", []) if lanes or "@" not in e["test"]]
    if evidence:
        parts.append(evidence_table(evidence))
    if lanes and doc["lanes"]:
        parts.append(lanes_table(doc["lanes"], lane_limit))
    return Group(*parts, "")


_STANDING_STYLE = {
    "harm": "red",
    "suspect": "yellow",
    "clear": "green",
    "insufficient": "dim",
    "waived": "dim",
}


def evidence_table(rows: list[dict[str, Any]]) -> Table:
    """The judge's tests: the canary's rate against stable's, how much worse (positive: worse)
    with its anytime-valid interval, the margin and where the test stands."""
    table = Table(show_edge=False, pad_edge=False, title="judge: canary vs stable")
    for col in ("test", "canary", "stable", "worse by [interval]", "margin", "n", "standing"):
        table.add_column(col, justify="left" if col in ("test", "standing") else "right")
    for e in rows:
        interval = (
            "-"
            if e["difference"] is None
            else f"{e['difference']:+.3f} [{e['lower']:+.3f}, {e['upper']:+.3f}]"
        )
        table.add_row(
            e["test"], _fmt(e["canary"]), _fmt(e["baseline"]), interval, f"{e['margin']:g}",
            f"{e['samples']}/{e['needed']}",
            f"[{_STANDING_STYLE.get(e['standing'], '')}]{e['standing']}[/]",
        )  # fmt: skip
    return table


def _is_weight(step: Any) -> bool:
    return isinstance(step, int | float) and not isinstance(step, bool)


def _step_name(step: Any) -> str:
    if step == "shadow":
        return "shadow"
    if isinstance(step, dict):
        duration = step["pause"].get("duration")
        return "pause" if duration is None else f"pause {format_duration(duration)}"
    return f"{step:g}"


def _status_line(status: RolloutStatus, steps: list[Any]) -> Text:
    return Text(
        f"{status.name}: {status.phase} step {step_text(status.step, steps)} weight "
        f"{status.weight:g}% (version {status.version}) - {status.reason}"
    )


async def steps_of(store: RolloutStore, name: str) -> list[Any]:
    return list((await store.registered(name)).spec.model_dump(mode="json")["steps"])


async def controller_line(store: RolloutStore) -> Text:
    """Who holds the controller lease; without a holder nothing advances or rolls back."""
    holder = await store.client.get(store.keys.leader)
    if holder is None:
        return Text.assemble(
            ("controller: not running", "bold red"),
            " (no live lease: start `lvm-gateway serve` or `rolloutctl controller`)",
        )
    identity = text(holder).split(":", 1)[-1]
    return Text(f"controller: {identity}", "dim")


async def _describe_all(store: RolloutStore, name: str | None) -> list[dict[str, Any]]:
    names = [name] if name else await store.names()
    return [await ops.describe(store, n) for n in names]


async def wait_for_outcome(
    store: RolloutStore, name: str, timeout_s: float, poll_s: float = 0.5
) -> int:
    """Print each change of the rollout until it is Promoted (0), RolledBack, Aborted or Paused
    (their exit codes), or `timeout_s` passes (EXIT_TIMEOUT)."""
    deadline = time.monotonic() + timeout_s
    steps = await steps_of(store, name)
    last = None
    while True:
        status = await store.get(name)
        shown = (status.phase, status.step, status.weight, status.reason)
        if shown != last:
            # Plain lines, flushed: a CI log shows them as they happen, unwrapped.
            line = _status_line(status, steps).plain
            print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
            last = shown
        code = _GATE_EXIT.get(status.phase)
        if code is not None:
            return code
        left = deadline - time.monotonic()
        if left <= 0:
            err.print(f"rolloutctl: {name} still {status.phase} after {timeout_s:g}s",
                      markup=False)  # fmt: skip
            return EXIT_TIMEOUT
        await pause(min(poll_s, left))


async def _status_view(store: RolloutStore, args: argparse.Namespace) -> list[RenderableType]:
    docs = await _describe_all(store, args.name)
    if not docs:
        return [Text("no rollouts registered")]
    return [await controller_line(store), *(status_table(d, args.lanes) for d in docs)]


async def cmd_status(store: RolloutStore, args: argparse.Namespace) -> int:
    if args.timeout is not None:
        return await wait_for_outcome(store, args.name, args.timeout)
    if args.json:
        docs = await _describe_all(store, args.name)
        print(json.dumps(docs[0] if args.name else docs, indent=2))
        return 0
    if not args.watch:
        out.print(Group(*await _status_view(store, args)))
        return 0
    view: list[RenderableType] = []
    with Live(console=out, refresh_per_second=4) as live:
        while True:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            try:
                view = await _status_view(store, args)
                line = Text(f"{stamp}  (Ctrl-C to stop)", "dim")
            except (RedisError, OSError) as exc:
                # A blip must not end the watch: show the last view under a warning, retry.
                line = Text(f"{stamp}  Redis unreachable ({exc}); retrying", "bold red")
            live.update(Group(line, *view))
            await pause(0.5)  # Ctrl-C cancels this task


def history_lines(events: list[dict[str, Any]], steps: list[Any], wide: bool) -> Group:
    """One event per line (at most 78 columns before the reason); unless `wide`, the reason on
    its own indented lines below, so it reads at 80 columns instead of folding into a narrow
    table column."""
    lines: list[RenderableType] = []
    for e in events:
        when = e["at"][:19].replace("T", " ")  # UTC, to the second; --json has milliseconds
        head = Text.assemble(
            (when, "dim"), "  ", f"{e['actor']:<10} ", (f"{e['action']:<10}", "bold"), " ",
            (f"{e['phase']:<11}", _PHASE_STYLE.get(e["phase"], "")),
            f" step {step_text(e['step'], steps)} at {e['weight']:g}%",
        )  # fmt: skip
        if wide:
            lines.append(Text.assemble(head, "  ", e["reason"]))
        else:
            lines.append(head)
            if e["reason"]:
                lines.append(Padding(Text(e["reason"]), (0, 0, 0, 4), expand=False))
    return Group(*lines)


async def cmd_history(store: RolloutStore, args: argparse.Namespace) -> int:
    events = await store.history(args.name)
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    steps = await steps_of(store, args.name)
    wide = not out.is_terminal or out.width >= 160
    out.print(Text(f"history of {args.name} (UTC)", "bold"))
    out.print(history_lines(events, steps, wide))
    return 0


async def cmd_thresholds(store: RolloutStore, args: argparse.Namespace) -> int:
    assignments: dict[str, str] = {}
    for item in args.assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RolloutError(f"expected KEY=VALUE, got {item!r}")
        assignments[key.strip()] = value.strip()
    if assignments:
        tunables = await store.set_thresholds(args.name, assignments, _identity())
    else:
        tunables = await store.tunables(args.name)
    print(json.dumps(tunables, indent=2))
    return 0


async def cmd_controller(store: RolloutStore, args: argparse.Namespace) -> int:
    identity = f"rolloutctl:{socket.gethostname()}:{os.getpid()}"
    if args.once:
        done = await reconcile_once(args.redis_url, store.prefix, identity, lease_seconds=5.0)
        for name, what in done.items():
            out.print(f"{name}: {what}")
        return 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    err.print(Text(f"controller {identity} running (Redis {redact_url(args.redis_url)}, prefix "
                   f"{store.prefix}); Ctrl-C to stop"))  # fmt: skip
    await run_controller(
        args.redis_url, store.prefix, stop, identity, lease_seconds=args.lease_seconds
    )
    return 0


def _verb(fn: Callable[[RolloutStore, argparse.Namespace], Awaitable[RolloutStatus]]) -> Any:
    async def run(store: RolloutStore, args: argparse.Namespace) -> int:
        status = await fn(store, args)
        steps = await steps_of(store, status.name)
        out.print(_status_line(status, steps))
        return 0

    return run


VERBS: dict[str, Callable[[RolloutStore, argparse.Namespace], Awaitable[int]]] = {
    "status": cmd_status,
    "history": cmd_history,
    "thresholds": cmd_thresholds,
    "controller": cmd_controller,
    "start": _verb(lambda s, a: ops.start(s, a.name, _identity())),
    "advance": _verb(
        lambda s, a: ops.advance(s, a.name, a.to, a.full, a.force, identity=_identity())
    ),
    "rollback": _verb(lambda s, a: ops.rollback(s, a.name, a.reason, _identity())),
    "abort": _verb(lambda s, a: ops.abort(s, a.name, a.reason, _identity())),
    "pause": _verb(lambda s, a: ops.pause(s, a.name, _identity())),
    "resume": _verb(lambda s, a: ops.resume(s, a.name, _identity())),
}


def cmd_embedded(args: argparse.Namespace) -> int:
    """Where the embedded daemon runs and how it persists, or stop it; no store involved."""
    if args.action == "stop":
        pid = stop_embedded()
        home = home_dir()
        if pid is None:
            print(f"no embedded redis-server runs under {home}")
        else:
            print(f"stopped embedded redis-server (pid {pid}); data kept in {home}")
        return 0
    doc = embedded_status()
    if args.json:
        print(json.dumps(doc, indent=2))
    elif not doc["running"]:
        print(f"no embedded redis-server runs under {doc['home']} (looked for {doc['socket']})")
    else:
        save = doc["save"].split()
        pairs = zip(save[::2], save[1::2], strict=True)
        every = ", ".join(f"{changes}+ writes in {secs}s" for secs, changes in pairs)
        rows = [
            ("running", f"pid {doc['pid']}, redis {doc['version']}, up {doc['uptime_seconds']}s"),
            ("socket", doc["socket"]),
            ("data dir", doc["data_dir"]),
            ("AOF", f"appendonly {doc['appendonly']}, fsync {doc['appendfsync']}, "
                    f"last write {doc['aof_last_write_status']}"),
            ("RDB", f"snapshot after {every or 'never'}; last at "
                    + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(doc["last_save"]))),
            ("memory", doc["used_memory_human"]),
            ("log", doc["log"]),
        ]  # fmt: skip
        for label, value in rows:
            print(f"{label:<9} {value}")  # plain lines: paths are never wrapped or cut
    return 0 if doc["running"] else 3


def resolve_prefix(flag: str | None, config_prefix: str | None) -> str:
    return flag or os.environ.get("LVM_GATEWAY_PREFIX") or config_prefix or "lvmgw"


def _read_only(args: argparse.Namespace) -> bool:
    return args.verb in ("status", "history") or (
        args.verb == "thresholds" and not args.assignments
    )


def parser() -> argparse.ArgumentParser:
    p = termout.parser("rolloutctl", "drive rollouts held in Redis")
    p.add_argument("--redis", default=None, help="Redis URL (default: $REDIS_URL, else embedded)")
    p.add_argument("--config", default=None, help="policy YAML: registers its rollouts first")
    p.add_argument(
        "--prefix",
        default=None,
        help="Redis key prefix (default: $LVM_GATEWAY_PREFIX, else the config's, else lvmgw)",
    )
    sub = p.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("status", help="phase, step, weight, metrics vs thresholds")
    s.add_argument("name", nargs="?")
    s.add_argument("--json", action="store_true")
    s.add_argument("--watch", action="store_true", help="refresh live until Ctrl-C")
    s.add_argument("--lanes", action="store_true", help="per-lane traffic and Hit@5 vs stable")
    s.add_argument(
        "--timeout",
        type=_duration,
        metavar="D",
        help="wait (printing progress) up to D (30s, 5m, 1h): exit 0 once Promoted, "
        f"{EXIT_ROLLED_BACK} RolledBack, {EXIT_ABORTED} Aborted, {EXIT_PAUSED} Paused, "
        f"{EXIT_TIMEOUT} timed out",
    )
    sub.add_parser("start", help="start, or retry a RolledBack rollout").add_argument("name")
    a = sub.add_parser("advance", help="move to the next step now")
    a.add_argument("name")
    target = a.add_mutually_exclusive_group()
    target.add_argument("--to", type=float, metavar="PCT", help="jump to this later step")
    target.add_argument("--full", action="store_true", help="promote to 100%%")
    a.add_argument("--force", action="store_true", help="even while a rollback bound is breached")
    r = sub.add_parser("rollback", help="send every user back to stable")
    r.add_argument("name")
    r.add_argument("--reason", default=None)
    ab = sub.add_parser("abort", help="abandon the rollout: every user back to stable")
    ab.add_argument("name")
    ab.add_argument("--reason", default=None)
    sub.add_parser("pause", help="hold the current weight").add_argument("name")
    sub.add_parser("resume", help="continue a paused rollout").add_argument("name")
    h = sub.add_parser("history", help="every transition, oldest first")
    h.add_argument("name")
    h.add_argument("--json", action="store_true")
    t = sub.add_parser("thresholds", help="show or change thresholds (validated)")
    t.add_argument("name")
    t.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    c = sub.add_parser("controller", help="run the rollout controller")
    c.add_argument("--once", action="store_true", help="one reconcile pass, then exit")
    c.add_argument("--lease-seconds", type=float, default=3.0, help="leader lease (failover time)")
    e = sub.add_parser("embedded", help="the embedded redis-server of this directory")
    e.add_argument("action", choices=("status", "stop"))
    e.add_argument("--json", action="store_true")
    _simulate_parser(sub)
    return termout.show_defaults(p)


def _simulate_parser(sub: Any) -> None:
    """`simulate`: the real judge on simulated traffic; no Redis (docs/judge.md)."""
    m = sub.add_parser("simulate", help="run a rollout many times on simulated traffic")
    # Its own dest: a subparser default would overwrite `rolloutctl --config F simulate`.
    m.add_argument("--config", dest="sim_config", default=None, help="policy YAML (required)")
    m.add_argument("--rollout", required=True, help="a rollout named in --config")
    m.add_argument("--runs", type=int, default=200)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    m.add_argument("--quiet", action="store_true", help="no progress on stderr")
    m.add_argument("--step-seconds", type=float, default=None, help="override step_min_seconds")
    m.add_argument("--interval-seconds", type=float, default=None, help="analysis cadence")
    m.add_argument("--rps", type=float, default=100.0)
    m.add_argument("--feedback-rate", type=float, default=0.1)
    m.add_argument("--feedback-delay-s", type=float, default=0.0)
    m.add_argument("--stable-hit5", type=float, default=0.66)
    m.add_argument("--canary-hit5", type=float, default=None, help="default: as stable")
    m.add_argument("--stable-p50-ms", type=float, default=2.0)
    m.add_argument("--canary-p50-ms", type=float, default=None, help="default: as stable")
    m.add_argument("--canary-error-rate", type=float, default=None, help="default: 0, as stable")
    m.add_argument("--canary-nan-rate", type=float, default=None, help="default: 0, as stable")
    m.add_argument("--lane-hit5", action="append", default=[], metavar="LANE=VALUE",
                   help="the canary's Hit@5 on one lane (repeatable)")  # fmt: skip
    m.add_argument("--lane-shares", default=None, metavar="S0,...,S15",
                   help="traffic share of each lane (default equal)")  # fmt: skip


async def _run(args: argparse.Namespace) -> int:
    config = None
    if args.config:
        from lvm_gateway.config.load import load_config

        config = load_config(args.config)
    prefix = resolve_prefix(args.prefix, config.spec.redis_prefix if config else None)
    client = open_client(args.redis_url, timeout_s=2.0)
    try:
        await client.ping()
        store = RolloutStore(client, prefix)
        if config is not None:
            await store.register_specs(config)
        return await VERBS[args.verb](store, args)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _simulate(args: argparse.Namespace) -> int:
    from lvm_gateway.rollout.simulate import run_cli

    try:
        return run_cli(args)
    except ValueError as exc:
        err.print(f"rolloutctl simulate: {exc}", markup=False)
        return 2


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.verb == "status" and args.timeout is not None and not args.name:
        p.error("status --timeout needs a rollout NAME")
    if args.verb == "controller":
        logging.config.dictConfig(dict_config("info", "text"))
    args.redis_url = None
    try:
        if args.verb == "simulate":  # pure: no Redis
            return _simulate(args)
        if args.verb == "embedded":
            return cmd_embedded(args)
        args.redis_url = resolve_redis_url(args.redis, start_embedded=not _read_only(args))
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 0
    except ConfigError as exc:
        for e in exc.errors:
            err.print(e, markup=False)
        return 2
    except RolloutError as exc:
        err.print(f"rolloutctl: {exc}", markup=False)
        return 1
    except RedisUrlError as exc:
        err.print(f"rolloutctl: --redis: {exc}", markup=False)
        return 2
    except RedisUnavailableError as exc:
        err.print(f"rolloutctl: {exc}", markup=False)
        return 3
    except (RedisError, OSError) as exc:
        where = redact_url(args.redis_url) if args.redis_url else "the embedded Redis"
        err.print(f"rolloutctl: Redis unreachable at {where}: {exc}", markup=False)
        return 3


if __name__ == "__main__":
    sys.exit(main())
