"""`lvm-traffic`: replay the synthetic world's sequences against a gateway as many users.

Open-loop: requests are issued on a fixed schedule (`rps`) whatever the latency, with at most
`concurrency` in flight; a request due while the bound is reached is dropped and counted, so a
slow server shows up as drops rather than as a quietly lower rate. Each user walks one sequence
of the world; a request carries the last `context` concepts and the concept that follows is the
"click" used to score the answer locally and, for a share of answers, as feedback to the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import orjson
import uvloop
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from lvm_gateway import termout
from lvm_gateway.blas import limit_blas_threads
from lvm_gateway.contract import oip
from lvm_gateway.contract.lvm import DIM, HIT_THRESHOLDS, N_LANES, cosine_hits, id_hits
from lvm_gateway.errors import TrafficError
from lvm_gateway.lvm.predictor import CALIBRATION_CONTEXT
from lvm_gateway.lvm.world import World

_SESSION_STEPS = 200  # requests before a user's walk is renewed
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True)
class TrafficConfig:
    gateway: str
    rps: float = 50.0
    duration: float = 10.0
    users: int = 100
    path: str = "/infer"
    protocol: Literal["lvm-json", "oip-v2"] = "lvm-json"  # oip-v2: binary tensors both ways
    context: int = CALIBRATION_CONTEXT
    feedback_rate: float = 0.0
    feedback_mode: Literal["vector", "id"] = "vector"
    # Users click a while after the answer; the gateway records predictions in the background.
    feedback_delay_s: float = 0.25
    lane: int | None = None
    seed: int = 0
    world_seed: int = 0  # must match the servers' `lvm-serve --seed`
    concurrency: int = 64
    timeout_s: float = 5.0
    tick_s: float = 0.5

    def __post_init__(self) -> None:
        checks = [
            (self.rps > 0 and math.isfinite(self.rps), f"rps must be > 0, got {self.rps}"),
            (
                self.duration > 0 and math.isfinite(self.duration),
                f"duration must be > 0 seconds, got {self.duration}",
            ),
            (self.users >= 1, f"users must be >= 1, got {self.users}"),
            (self.context >= 1, f"context must be >= 1, got {self.context}"),
            (0.0 <= self.feedback_rate <= 1.0, "feedback rate must be in [0, 1]"),
            (self.feedback_mode in ("vector", "id"), "feedback mode must be vector or id"),
            (self.feedback_delay_s >= 0, "feedback delay must be >= 0"),
            (self.lane is None or 0 <= self.lane < N_LANES, f"lane must be in 0..{N_LANES - 1}"),
            (self.concurrency >= 1, "concurrency must be >= 1"),
            (self.timeout_s > 0, "timeout must be > 0"),
            (self.path.startswith("/"), f"path must start with '/', got {self.path!r}"),
            (self.protocol in oip.PROTOCOLS, f"protocol must be one of {oip.PROTOCOLS}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrafficError(message)
        url = urlsplit(self.gateway)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise TrafficError(f"gateway must be an http(s) URL, got {self.gateway!r}")


@dataclass
class VariantStats:
    requests: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # HTTP status or failure kind
    latencies_ms: list[float] = field(default_factory=list)
    scored: int = 0
    hits: Counter[int] = field(default_factory=Counter)
    feedback_sent: int = 0
    feedback_failed: Counter[str] = field(default_factory=Counter)

    def hit_rate(self, k: int) -> float | None:
        return self.hits[k] / self.scored if self.scored else None

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def merge(self, other: VariantStats) -> None:
        self.requests += other.requests
        self.ok += other.ok
        self.errors.update(other.errors)
        self.latencies_ms.extend(other.latencies_ms)
        self.scored += other.scored
        self.hits.update(other.hits)
        self.feedback_sent += other.feedback_sent
        self.feedback_failed.update(other.feedback_failed)


@dataclass
class TrafficReport:
    target_rps: float
    elapsed_s: float = 0.0
    issued: int = 0
    dropped: int = 0  # due while `concurrency` requests were already in flight
    in_flight: int = 0
    variants: dict[str, VariantStats] = field(default_factory=dict)

    def variant(self, name: str) -> VariantStats:
        return self.variants.setdefault(name, VariantStats())

    def total(self) -> VariantStats:
        out = VariantStats()
        for stats in self.variants.values():
            out.merge(stats)
        return out

    @property
    def achieved_rps(self) -> float:
        done = sum(s.requests for s in self.variants.values())
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _Users:
    """Each user's walk through the world and where they are in it."""

    def __init__(self, world: World, cfg: TrafficConfig, rng: np.random.Generator) -> None:
        self.world, self.cfg, self.rng = world, cfg, rng
        length = cfg.context + _SESSION_STEPS + 1
        self.walks = [s.concepts for s in world.sequences(cfg.users, length, cfg.lane, rng)]
        self.lanes = [int(world.concept_lanes[w[0]]) for w in self.walks]
        self.pos = [cfg.context] * cfg.users

    def step(self, user: int) -> tuple[np.ndarray, int, int]:
        """The next request's context, the concept that follows it, and the walk's lane."""
        if self.pos[user] >= len(self.walks[user]):
            walk = self.world.sequences(1, len(self.walks[user]), self.cfg.lane, self.rng)[0]
            self.walks[user], self.lanes[user] = walk.concepts, walk.lane
            self.pos[user] = self.cfg.context
        p = self.pos[user]
        self.pos[user] = p + 1
        walk = self.walks[user]
        return walk[p - self.cfg.context : p], int(walk[p]), self.lanes[user]


class _Encoder:
    """Bodies are joined from each concept's JSON encoded once: building them stays cheap."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._cache: dict[int, bytes] = {}

    def vector(self, concept: int) -> bytes:
        enc = self._cache.get(concept)
        if enc is None:
            enc = self._cache[concept] = orjson.dumps(self.world.vectors[concept], option=_NUMPY)
        return enc

    def infer(self, context: np.ndarray) -> bytes:
        vectors = b",".join(self.vector(int(c)) for c in context)
        tmd = orjson.dumps([int(x) for x in self.world.tmd[int(context[-1])]])
        return b'{"context_vectors":[' + vectors + b'],"tmd_codes":' + tmd + b"}"

    def infer_v2(self, context: np.ndarray) -> tuple[bytes, dict[str, str]]:
        """A binary v2 request asking for binary outputs, and its content headers."""
        tmd = self.world.tmd[int(context[-1])]
        return oip.encode_request(
            self.world.vectors[context], (int(tmd[0]), int(tmd[1]), int(tmd[2]))
        )


class _Runner:
    def __init__(self, cfg: TrafficConfig, session: aiohttp.ClientSession) -> None:
        self.cfg = cfg
        self.session = session
        self.world = World.build(seed=cfg.world_seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.users = _Users(self.world, cfg, self.rng)
        self.encoder = _Encoder(self.world)
        self.base = cfg.gateway.rstrip("/")
        self.report = TrafficReport(target_rps=cfg.rps)

    async def one(self, user: int) -> None:
        context, truth, lane = self.users.step(user)
        headers = {"X-User-Id": f"user-{user:05d}", "X-TMD-Lane": str(lane)}
        if self.cfg.protocol == oip.PROTOCOL:
            data, content = self.encoder.infer_v2(context)
        else:
            data, content = self.encoder.infer(context), {"Content-Type": "application/json"}
        headers.update(content)
        t0 = time.perf_counter()
        try:
            async with self.session.post(
                self.base + self.cfg.path, data=data, headers=headers
            ) as resp:
                body = await resp.read()
        except TimeoutError:
            self._failed("timeout")
            return
        except aiohttp.ClientError as exc:
            self._failed("connect" if isinstance(exc, aiohttp.ClientConnectionError) else "client")
            return
        stats = self.report.variant(resp.headers.get("X-Variant", "unknown"))
        stats.requests += 1
        stats.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
        if resp.status != 200:
            stats.errors[str(resp.status)] += 1
            return
        answer = self._answer(body, resp.headers.get(oip.HEADER_LENGTH))
        if answer is None or not np.isfinite(answer[0]).all():
            stats.errors["bad answer"] += 1
            return
        stats.ok += 1
        self._score(stats, *answer, truth)
        # Only answers the gateway recorded (sampled) carry a token; the others have no record.
        request_id = resp.headers.get("X-Request-Id")
        token = resp.headers.get("X-Feedback-Token")
        if request_id and token and self.rng.random() < self.cfg.feedback_rate:
            await self._feedback(stats, request_id, token, truth)

    def _failed(self, kind: str) -> None:
        stats = self.report.variant("unknown")
        stats.requests += 1
        stats.errors[kind] += 1

    def _answer(
        self, body: bytes, header_length: str | None
    ) -> tuple[np.ndarray, list[str]] | None:
        """(predicted vector, neighbour ids) of an answer in the configured protocol."""
        if self.cfg.protocol == oip.PROTOCOL:
            try:
                v2 = oip.decode_answer(body, header_length)
            except ValueError:
                return None
            return v2.predicted, list(v2.neighbor_ids)
        try:
            doc = orjson.loads(body)
            predicted = np.asarray(doc["predicted_vector"], dtype=np.float32)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if predicted.shape != (DIM,):
            return None
        neighbors = doc.get("neighbors") or []
        return predicted, [n.get("id") for n in neighbors if isinstance(n, dict)]

    def _score(
        self, stats: VariantStats, predicted: np.ndarray, ids: list[str], truth: int
    ) -> None:
        if self.cfg.feedback_mode == "id":
            hits = id_hits(self.world.ids[truth], ids)
        else:
            hits = cosine_hits(predicted, self.world.vectors[truth])
        stats.scored += 1
        stats.hits.update(k for k, hit in hits.items() if hit)

    async def _feedback(self, stats: VariantStats, request_id: str, token: str, truth: int) -> None:
        rid = orjson.dumps(request_id)
        if self.cfg.feedback_mode == "id":
            body = b'{"request_id":' + rid + b',"clicked_id":' + orjson.dumps(self.world.ids[truth])
        else:
            body = b'{"request_id":' + rid + b',"clicked_vector":' + self.encoder.vector(truth)
        await asyncio.sleep(self.cfg.feedback_delay_s)
        try:
            async with self.session.post(
                self.base + "/v1/feedback",
                data=body + b"}",
                headers={"Content-Type": "application/json", "X-Feedback-Token": token},
            ) as resp:
                await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError):
            stats.feedback_failed["connect"] += 1
            return
        if status == 202:
            stats.feedback_sent += 1
        else:
            stats.feedback_failed[str(status)] += 1

    async def run(self, on_tick: Callable[[TrafficReport], None] | None) -> TrafficReport:
        """Request i is due at i / rps; exactly round(duration * rps) of them, late ones at once."""
        cfg, report = self.cfg, self.report
        total = max(1, round(cfg.duration * cfg.rps))
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        next_tick = start + cfg.tick_s
        try:
            while (scheduled := report.issued + report.dropped) < total:
                now = time.perf_counter()
                due = min(total, int((now - start) * cfg.rps) + 1) - scheduled
                for _ in range(due):
                    if len(tasks) >= cfg.concurrency:
                        report.dropped += 1
                        continue
                    report.issued += 1
                    task = asyncio.create_task(self.one(int(self.rng.integers(cfg.users))))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                report.in_flight = len(tasks)
                report.elapsed_s = now - start
                if on_tick is not None and now >= next_tick:
                    on_tick(report)
                    next_tick = now + cfg.tick_s
                wait = (report.issued + report.dropped) / cfg.rps - (time.perf_counter() - start)
                await asyncio.sleep(min(max(wait, 0.0), cfg.tick_s))
            if tasks:
                await asyncio.wait(tasks, timeout=cfg.timeout_s * 2)
        finally:
            # Also when cancelled (a caller that stops early): no request outlives the session.
            for task in tasks:
                task.cancel()
        report.in_flight = 0
        report.elapsed_s = time.perf_counter() - start
        return report


async def _check_reachable(url: str, timeout_s: float) -> None:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), timeout_s)
    except (OSError, TimeoutError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
        raise TrafficError(f"cannot reach the gateway at {url}: {reason}") from None
    writer.close()


async def run_traffic(
    cfg: TrafficConfig, on_tick: Callable[[TrafficReport], None] | None = None
) -> TrafficReport:
    """Drive `cfg.gateway` for `cfg.duration` seconds; `on_tick` sees the report as it grows.

    Raises TrafficError when the gateway is not reachable at the start; failures during the run
    are counted in the report instead."""
    await _check_reachable(cfg.gateway, min(cfg.timeout_s, 3.0))
    connector = aiohttp.TCPConnector(limit=cfg.concurrency * 2)
    timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await _Runner(cfg, session).run(on_tick)


def _ms(stats: VariantStats) -> str:
    values = [stats.percentile(q) for q in (50, 95, 99)]
    return "-" if values[0] is None else "/".join(f"{v:.1f}" for v in values)


def _hits(stats: VariantStats) -> str:
    rates = [stats.hit_rate(k) for k in HIT_THRESHOLDS]
    return "-" if rates[0] is None else "/".join(f"{100 * r:.0f}" for r in rates) + "%"


def render(report: TrafficReport, cfg: TrafficConfig) -> Group:
    """The live view: one row per variant (by X-Variant) and a total."""
    table = Table(title=f"lvm-traffic -> {cfg.gateway}{cfg.path}")
    table.add_column("variant")
    table.add_column("req", justify="right")
    table.add_column("ok", justify="right")
    table.add_column("errors")
    table.add_column("ms p50/95/99", justify="right")
    table.add_column("hit@" + "/".join(map(str, HIT_THRESHOLDS)), justify="right")
    table.add_column("feedback", justify="right")
    rows = sorted(report.variants.items())
    if len(rows) != 1:
        rows.append(("total", report.total()))
    for name, s in rows:
        errors = ", ".join(f"{kind}: {n}" for kind, n in sorted(s.errors.items())) or "-"
        feedback = str(s.feedback_sent)
        if s.feedback_failed:
            feedback += f" ({s.feedback_failed.total()} failed)"
        table.add_row(name, str(s.requests), str(s.ok), errors, _ms(s), _hits(s), feedback)
    status = Text(
        f"{report.elapsed_s:.1f}s of {cfg.duration:g}s  target {cfg.rps:g} req/s  "
        f"achieved {report.achieved_rps:.1f} req/s  in flight {report.in_flight}  "
        f"dropped {report.dropped}  hits by {cfg.feedback_mode}"
    )
    return Group(table, status)


def _parser() -> argparse.ArgumentParser:
    p = termout.parser("lvm-traffic", __doc__.splitlines()[0])
    p.add_argument("--gateway", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--rps", type=float, default=50.0)
    p.add_argument("--duration", type=float, default=10.0, help="seconds")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--path", help="default: /infer, or /v2/models/lvm/infer for oip-v2")
    p.add_argument(
        "--protocol",
        choices=oip.PROTOCOLS,
        default=oip.LVM_PROTOCOL,
        help="oip-v2: the Open Inference Protocol with binary tensors",
    )
    p.add_argument("--context", type=int, default=CALIBRATION_CONTEXT, help="vectors per request")
    p.add_argument("--feedback-rate", type=float, default=0.0, help="share of answers rated")
    p.add_argument("--feedback-mode", choices=["vector", "id"], default="vector")
    p.add_argument("--feedback-delay", type=float, default=0.25, help="seconds before a click")
    p.add_argument("--lane", type=int, help="only this TMD lane (default: all 16)")
    p.add_argument("--seed", type=int, default=0, help="users, walks and feedback draws")
    p.add_argument("--world-seed", type=int, default=0, help="as the servers' lvm-serve --seed")
    p.add_argument("--concurrency", type=int, default=64, help="most requests in flight")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    return p


def main(argv: list[str] | None = None) -> None:
    p = _parser()
    args = p.parse_args(argv)
    try:
        cfg = TrafficConfig(
            gateway=args.gateway,
            rps=args.rps,
            duration=args.duration,
            users=args.users,
            path=args.path
            or (oip.infer_path("lvm") if args.protocol == oip.PROTOCOL else oip.LVM_PATH),
            protocol=args.protocol,
            context=args.context,
            feedback_rate=args.feedback_rate,
            feedback_mode=args.feedback_mode,
            feedback_delay_s=args.feedback_delay,
            lane=args.lane,
            seed=args.seed,
            world_seed=args.world_seed,
            concurrency=args.concurrency,
            timeout_s=args.timeout,
        )
    except TrafficError as exc:
        p.error(str(exc))
    limit_blas_threads()
    console = termout.console()
    try:
        with (
            Live(console=console, auto_refresh=False, transient=True) as live,
            asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
        ):
            report = runner.run(
                run_traffic(cfg, lambda r: live.update(render(r, cfg), refresh=True))
            )
    except TrafficError as exc:
        print(f"lvm-traffic: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    console.print(render(report, cfg))
    total = report.total()
    if total.requests and not total.ok:
        print("lvm-traffic: no request succeeded", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
