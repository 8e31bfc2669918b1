"""`rolloutctl`: drive and watch rollouts held in Redis.

Exit codes: 0 done; 1 refused (unknown rollout, invalid transition, conflict, bad threshold);
2 usage or policy file errors; 3 Redis unreachable.
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
from lvm_gateway.contract.rollout import RolloutStatus
from lvm_gateway.errors import ConfigError, RedisUnavailableError, RedisUrlError, RolloutError
from lvm_gateway.logfmt import dict_config
from lvm_gateway.redisconn import open_client, redact, resolve_redis_url
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.controller import reconcile_once, run_controller
from lvm_gateway.rollout.store import RolloutStore

out = termout.console()
err = termout.console(stderr=True)

_PHASE_STYLE = {
    "Pending": "dim",
    "Progressing": "cyan",
    "Paused": "yellow",
    "Promoted": "green",
    "RolledBack": "red",
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
    shown = "shadow" if value == "shadow" else f"{value:g}%" if value is not None else "?"
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
    ladder = " -> ".join(str(s) if s == "shadow" else f"{s:g}" for s in doc["steps"])
    in_step = doc["time_in_step"]
    head.add_row("rollout", Text.assemble((doc["name"], "bold"),
                                          f"  {doc['stable']} -> {doc['canary']}"))  # fmt: skip
    head.add_row("phase", Text.assemble((phase, _PHASE_STYLE.get(phase, "")), "  ", doc["reason"]))
    head.add_row("step", Text(f"{step_text(doc['step'], doc['steps'])} of {ladder}"))
    head.add_row("weight", Text(f"{doc['weight']:g}%" + (f"  mirror {doc['mirror']:g}%"
                                                          if doc["mirror"] else "")))  # fmt: skip
    head.add_row("time in step", "-" if in_step is None else f"{in_step:.0f}s")
    head.add_row("failures", f"{doc['failures']}/{doc['thresholds']['failure_limit']}")
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
    if lanes and doc["lanes"]:
        parts.append(lanes_table(doc["lanes"], lane_limit))
    return Group(*parts, "")


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
    identity = (holder.decode() if isinstance(holder, bytes) else holder).split(":", 1)[-1]
    return Text(f"controller: {identity}", "dim")


async def _describe_all(store: RolloutStore, name: str | None) -> list[dict[str, Any]]:
    names = [name] if name else await store.names()
    return [await ops.describe(store, n) for n in names]


async def _status_view(store: RolloutStore, args: argparse.Namespace) -> list[RenderableType]:
    docs = await _describe_all(store, args.name)
    if not docs:
        return [Text("no rollouts registered")]
    return [await controller_line(store), *(status_table(d, args.lanes) for d in docs)]


async def cmd_status(store: RolloutStore, args: argparse.Namespace) -> int:
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
            await asyncio.sleep(0.5)


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
    err.print(Text(f"controller {identity} running (Redis {redact(args.redis_url)}, prefix "
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
    "pause": _verb(lambda s, a: ops.pause(s, a.name, _identity())),
    "resume": _verb(lambda s, a: ops.resume(s, a.name, _identity())),
}


def parser() -> argparse.ArgumentParser:
    p = termout.parser("rolloutctl", "drive rollouts held in Redis")
    p.add_argument("--redis", default=None, help="Redis URL (default: $REDIS_URL, else embedded)")
    p.add_argument("--config", default=None, help="policy YAML: registers its rollouts first")
    p.add_argument("--prefix", default=None, help="Redis key prefix (default: the config's)")
    sub = p.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("status", help="phase, step, weight, metrics vs thresholds")
    s.add_argument("name", nargs="?")
    s.add_argument("--json", action="store_true")
    s.add_argument("--watch", action="store_true", help="refresh live until Ctrl-C")
    s.add_argument("--lanes", action="store_true", help="per-lane traffic and Hit@5 vs stable")
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
    return termout.show_defaults(p)


async def _run(args: argparse.Namespace) -> int:
    prefix = args.prefix or "lvmgw"
    config = None
    if args.config:
        from lvm_gateway.config.load import load_config

        config = load_config(args.config)
        prefix = args.prefix or config.spec.redis_prefix
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.verb == "controller":
        logging.config.dictConfig(dict_config("info", "text"))
    try:
        args.redis_url = resolve_redis_url(args.redis)
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
    except (RedisUnavailableError, RedisError, OSError) as exc:
        where = redact(args.redis) if args.redis else "default"
        err.print(f"rolloutctl: Redis unreachable at {where}: {exc}", markup=False)
        return 3


if __name__ == "__main__":
    sys.exit(main())
