"""`lvm-serve`: the reference LVM model server speaking the LVM project's wire protocol.

Profiles `phase1`/`phase2` serve the analytic predictors of the synthetic world (or, with
`--checkpoint`, a trained model) on aiohttp; `stub` is a raw asyncio protocol that answers every
request with one constant valid response, as upstream for proxy benchmarks. Fault knobs
(`--latency-ms`, `--error-rate`, `--nan-rate`) apply to every profile.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import importlib
import json
import math
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import httptools
import numpy as np
import orjson
import uvloop
from aiohttp import web

from lvm_gateway import termout
from lvm_gateway.blas import limit_blas_threads
from lvm_gateway.contract import oip
from lvm_gateway.contract.lvm import DIM, N_LANES, N_MODIFIERS, N_TASKS, json_object
from lvm_gateway.errors import BadRequestError, LvmGatewayError
from lvm_gateway.lvm.predictor import DEFAULT_DEGRADE_FACTOR, PROFILES, Predictor, analytic
from lvm_gateway.lvm.world import World

_TMD_LIMITS = (N_LANES, N_TASKS, N_MODIFIERS)
Closer = Callable[[], Any]
_N_NEIGHBORS = 10
_TIMER_SLACK_S = 0.0005  # half the event loop's timer resolution
DEFAULT_MAX_BATCH = 16
DEFAULT_MODEL = "lvm"  # the v2 model name: POST /v2/models/lvm/infer


def parse_infer_request(body: bytes) -> tuple[np.ndarray, tuple[int, int, int] | None]:
    """Validate an `/infer` body; the context as (n, 768) float32 and the TMD code if sent."""
    doc = json_object(body)
    ctx = doc.get("context_vectors")
    if not isinstance(ctx, list) or not ctx:
        raise BadRequestError("context_vectors must be a non-empty list of 768-d vectors")
    for i, row in enumerate(ctx):
        if not isinstance(row, list) or len(row) != DIM:
            size = len(row) if isinstance(row, list) else type(row).__name__
            raise BadRequestError(
                f"context_vectors[{i}] must be a list of {DIM} numbers, got {size}"
            )
    arr = np.asarray(ctx)
    if arr.dtype.kind not in "fiu":
        raise BadRequestError("context_vectors must contain only numbers")
    arr = _finite(arr.astype(np.float32))
    temperature = doc.get("temperature", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or temperature < 0:
        raise BadRequestError("temperature must be a number >= 0")
    if not isinstance(doc.get("normalize", True), bool):
        raise BadRequestError("normalize must be true or false")
    return arr, _parse_tmd(doc.get("tmd_codes"))


def _finite(arr: np.ndarray) -> np.ndarray:
    if not np.isfinite(arr).all():
        row = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise BadRequestError(f"context_vectors[{row}] has a non-finite number (NaN/Inf/overflow)")
    return arr


def parse_v2_request(
    body: bytes, header_length: str | None
) -> tuple[oip.RequestHead, np.ndarray, tuple[int, int, int] | None]:
    """Validate a v2 infer request: its checked head, the (n, 768) context, the TMD code."""
    head = oip.parse_request_head(body, header_length)
    context = _finite(oip.request_context(head, body))
    tmd = oip.request_tmd(head, body)
    return head, context, None if tmd is None else _parse_tmd(list(tmd))


def _parse_tmd(raw: Any) -> tuple[int, int, int] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or len(raw) != 3
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw)
        or not all(0 <= x < limit for x, limit in zip(raw, _TMD_LIMITS, strict=True))
    ):
        raise BadRequestError(
            "tmd_codes must be [domain 0-15, task 0-31, modifier 0-63] as integers"
        )
    return raw[0], raw[1], raw[2]


class Faults:
    """The injected failures; one seeded draw per request so runs are reproducible."""

    def __init__(self, error_rate: float, nan_rate: float, seed: int) -> None:
        self.error_rate = error_rate
        self.nan_rate = nan_rate
        self._rng = random.Random(seed)

    def draw(self) -> str | None:
        if not (self.error_rate or self.nan_rate):
            return None
        u = self._rng.random()
        if u < self.error_rate:
            return "error"
        if u < self.error_rate + self.nan_rate:
            return "nan"
        return None


_ERROR_MESSAGE = "injected fault (--error-rate)"
_ERROR_BODY = orjson.dumps({"error": _ERROR_MESSAGE})


def _nan_body(payload: dict[str, Any]) -> bytes:
    # JSON has no NaN; emit the `NaN` token that Python's json (and so most model servers) write.
    vec = [float(x) for x in payload["predicted_vector"]]
    vec[0] = math.nan
    return json.dumps({**payload, "predicted_vector": vec}).encode()


class BatchPredictor(Protocol):
    def predict_batch(self, contexts: np.ndarray) -> np.ndarray:
        """(batch, n, d) contexts of one length -> (batch, d) float32."""
        ...


class MicroBatcher:
    """Groups concurrent predictions of one context length into one `predict_batch` call.

    A request finding the model idle runs at once (waiting would only add latency). Otherwise
    it joins the group of its length, which runs when the model frees up, when it holds
    `max_batch`, or `window_s` after its first request arrived, whichever is first. A group runs
    as one call on the single model thread (so the event loop keeps accepting requests) and each
    waiter gets its own row. A failing call fails only the requests of that batch. Each group
    being filled holds at most `max_batch` requests.
    """

    def __init__(
        self,
        model: BatchPredictor,
        max_batch: int,
        window_s: float,
        context_length: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.model = model
        self.max_batch = max_batch
        self.window_s = window_s
        self.context_length = context_length  # the model reads only this many recent vectors
        self._groups: dict[int, list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._inflight = 0  # batches handed to the model thread and not yet answered
        # One model per process, one thread running it: batches run one after another.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lvm-model")
        self.batches = 0  # batches run, requests in them and the largest: for the log
        self.requests = 0
        self.largest = 0

    async def predict(self, context: np.ndarray) -> np.ndarray:
        """(n, d) context -> (d,) prediction, computed in a batch with its concurrent peers."""
        if self.context_length is not None:
            context = context[-self.context_length :]  # batch by the length the model reads
        key = len(context)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        group = self._groups.setdefault(key, [])
        group.append((context, fut))
        if len(group) >= self.max_batch or self._inflight == 0:
            self._flush(key)  # full, or the model is idle: waiting would only add latency
        elif len(group) == 1:
            self._timers[key] = loop.call_later(self.window_s, self._flush, key)
        return await fut

    def _flush(self, key: int) -> None:
        group = self._groups.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if group:
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._run(group))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, group: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        self.batches += 1
        self.requests += len(group)
        self.largest = max(self.largest, len(group))
        contexts = np.stack([ctx for ctx, _ in group])
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self._pool, self.model.predict_batch, contexts)
            if len(out) != len(group):
                raise RuntimeError(f"predict_batch returned {len(out)} rows for {len(group)}")
        except Exception as exc:  # handed to exactly this batch's requests
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                for key in list(self._groups):  # the model is free: what waited goes now
                    self._flush(key)
        for (_, fut), row in zip(group, out, strict=True):
            if not fut.done():  # a cancelled request (client gone) just drops its row
                fut.set_result(row)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


class InferService:
    """The `/infer` logic of the predictor profiles, apart from the HTTP framework."""

    def __init__(
        self,
        predictor: Predictor,
        world: World,
        faults: Faults,
        latency_ms: float,
        batcher: MicroBatcher | None = None,
    ) -> None:
        self.predictor = predictor
        self.world = world
        self.faults = faults
        self.latency_s = latency_ms / 1000.0
        self.batcher = batcher

    async def infer(self, body: bytes) -> tuple[int, bytes]:
        """The LVM JSON protocol: (status, answer body)."""
        t0 = time.perf_counter()
        try:
            context, tmd = parse_infer_request(body)
        except BadRequestError as exc:
            return exc.status, orjson.dumps({"error": str(exc)})
        status, payload, fault = await self._predict(context, tmd, t0)
        if status != 200:
            return status, orjson.dumps({"error": payload})
        if fault == "nan":
            return 200, _nan_body(payload)
        return 200, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)

    async def infer_v2(
        self, model: str, body: bytes, header_length: str | None
    ) -> tuple[int, bytes, dict[str, str]]:
        """The Open Inference Protocol: (status, answer body, content headers)."""
        t0 = time.perf_counter()
        try:
            head, context, tmd = parse_v2_request(body, header_length)
        except BadRequestError as exc:
            return exc.status, oip.error_body(str(exc)), {"content-type": oip.JSON_TYPE}
        status, payload, fault = await self._predict(context, tmd, t0)
        if status != 200:
            return status, oip.error_body(payload), {"content-type": oip.JSON_TYPE}
        vec = payload["predicted_vector"]
        if fault == "nan":
            vec = vec.copy()
            vec[0] = math.nan
        neighbors = payload["neighbors"]
        answer = oip.Answer(
            vec,
            tuple(n["id"] for n in neighbors),
            np.asarray([n["score"] for n in neighbors], dtype=np.float32),
            model,
            head.id,
            {k: payload[k] for k in ("confidence", "latency_ms", "model_type")},
        )
        return 200, *oip.encode_answer(answer, head.outputs, head.binary_outputs)

    async def _predict(
        self, context: np.ndarray, tmd: tuple[int, int, int] | None, t0: float
    ) -> tuple[int, Any, str | None]:
        """(200, the answer's fields, the fault to inject) or (status, error message, None)."""
        fault = self.faults.draw()
        if fault == "error":
            await self._pad(t0)
            return 500, _ERROR_MESSAGE, None
        if self.batcher is not None:
            try:
                vec = np.asarray(await self.batcher.predict(context), dtype=np.float32)
            except Exception as exc:  # the model failed this request's batch
                return 500, f"model failed: {exc}", None
        else:
            vec = np.asarray(self.predictor.predict(context, tmd), dtype=np.float32)
        neighbors = self.world.neighbors(vec, _N_NEIGHBORS)
        await self._pad(t0)
        payload = {
            "predicted_vector": vec,
            "confidence": max(0.0, neighbors[0][1]),
            "latency_ms": (time.perf_counter() - t0) * 1000.0,
            "model_type": self.predictor.model_type,
            "neighbors": [{"id": cid, "score": score} for cid, score in neighbors],
        }
        return 200, payload, fault

    async def _pad(self, t0: float) -> None:
        """Simulate the model's latency: an answer takes `latency_ms` in all, to within half a
        millisecond. uvloop rounds a timer to the nearest millisecond; sleeping again for what
        is left below that would spin the loop (a sub-millisecond sleep returns at once) and
        burn ~0.5 ms of CPU per answer, which a simulated GPU wait must not cost."""
        while (remaining := self.latency_s - (time.perf_counter() - t0)) > _TIMER_SLACK_S:
            await asyncio.sleep(remaining)


def build_app(service: InferService, model: str = DEFAULT_MODEL) -> web.Application:
    """`/infer` (LVM JSON) and the Open Inference Protocol's REST endpoints for `model`."""
    health = orjson.dumps({"status": "ok", "model_type": service.predictor.model_type})
    metadata = orjson.dumps(oip.model_metadata(model, f"lvm-serve/{service.predictor.model_type}"))
    server = orjson.dumps(
        {"name": "lvm-serve", "version": "1", "extensions": ["binary_tensor_data"]}
    )

    async def infer(request: web.Request) -> web.Response:
        status, body = await service.infer(await request.read())
        return web.Response(status=status, body=body, content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(body=health, content_type="application/json")

    def unknown(name: str) -> web.Response:
        body = oip.error_body(f"unknown model {name!r}; this server serves {model!r}")
        return web.Response(status=404, body=body, content_type="application/json")

    async def infer_v2(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name != model:
            return unknown(name)
        body = await request.read()
        status, answer, headers = await service.infer_v2(
            name, body, request.headers.get(oip.HEADER_LENGTH)
        )
        return web.Response(status=status, body=answer, headers=headers)

    async def model_metadata(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name != model:
            return unknown(name)
        return web.Response(body=metadata, content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        name = request.match_info.get("name", model)
        return web.Response(status=200 if name == model else 404)

    async def server_metadata(_: web.Request) -> web.Response:
        return web.Response(body=server, content_type="application/json")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/infer", infer)
    app.router.add_get("/health", healthz)
    app.router.add_post("/v2/models/{name}/infer", infer_v2)
    app.router.add_get("/v2/models/{name}", model_metadata)
    app.router.add_get("/v2/models/{name}/ready", ready)
    app.router.add_get(oip.HEALTH_READY_PATH, ready)
    app.router.add_get(oip.HEALTH_LIVE_PATH, ready)
    app.router.add_get("/v2", server_metadata)
    return app


def _http(status: int, body: bytes, keep_alive: bool = True) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 500: "Internal Server Error"}[status]
    conn = b"" if keep_alive else b"Connection: close\r\n"
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
    return head.encode() + conn + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


class StubResponses:
    """Every wire response the stub can give, encoded once at start-up."""

    def __init__(self, world: World, faults: Faults, latency_ms: float, dense: bool) -> None:
        if dense:  # a unit vector of 768 non-zero floats: a real model's ~9 KB answer
            vec = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
            vec /= np.linalg.norm(vec)
        else:
            vec = np.zeros(DIM, dtype=np.float32)
            vec[0] = 1.0  # a unit vector that encodes in a few KB
        payload = {
            "predicted_vector": vec,
            "confidence": 1.0,
            "latency_ms": 0.0,
            "model_type": "stub",
            "neighbors": [{"id": c, "score": s} for c, s in world.neighbors(vec, _N_NEIGHBORS)],
        }
        self.ok = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        self.nan = _nan_body(payload)
        self.health = orjson.dumps({"status": "ok", "model_type": "stub"})
        self.faults = faults
        self.latency_s = latency_ms / 1000.0

    def pick(self, url: bytes) -> tuple[int, bytes]:
        if url.startswith(b"/health"):
            return 200, self.health
        fault = self.faults.draw()
        if fault == "error":
            return 500, _ERROR_BODY
        return 200, self.nan if fault == "nan" else self.ok


class StubProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive with pipelining; the body is never read, only framed by httptools."""

    def __init__(self, responses: StubResponses) -> None:
        self.responses = responses
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(_http(400, b'{"error": "malformed HTTP request"}', False), close=True)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        status, body = self.responses.pick(self.url)
        self.url = b""
        keep_alive = self.parser.should_keep_alive()
        wire = _http(status, body, keep_alive)
        if self.responses.latency_s > 0:
            # Equal delays fire in order, so pipelined responses stay in request order.
            loop = asyncio.get_running_loop()
            loop.call_later(self.responses.latency_s, self._send, wire, not keep_alive)
        else:
            self._send(wire, not keep_alive)

    def _send(self, wire: bytes, close: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(wire)
        if close:
            self.transport.close()


def _load_checkpoint(path: str) -> Predictor:
    try:
        module = importlib.import_module("lvm_gateway.lvm.checkpoint")
    except ModuleNotFoundError as exc:
        raise SystemExit(
            f"lvm-serve: --checkpoint needs lvm_gateway.lvm.checkpoint: {exc}"
        ) from None
    try:
        return module.load_predictor(path)
    except (OSError, LvmGatewayError, ValueError, RuntimeError, KeyError) as exc:
        raise SystemExit(f"lvm-serve: cannot load checkpoint {path}: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    p = termout.parser("lvm-serve", __doc__.splitlines()[0])
    p.add_argument("--profile", choices=[*PROFILES, "stub"], default="phase2")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--checkpoint", help="serve a trained model instead of the analytic one")
    p.add_argument(
        "--latency-ms", type=float, help="time per answer, +-0.5 ms (default: the profile's)"
    )
    p.add_argument("--error-rate", type=float, default=0.0, help="share answered with a 500")
    p.add_argument("--nan-rate", type=float, default=0.0, help="share with NaN in the prediction")
    p.add_argument(
        "--degrade-lane", type=int, action="append", default=[], help="lane served badly"
    )
    p.add_argument("--degrade-factor", type=float, default=DEFAULT_DEGRADE_FACTOR)
    p.add_argument("--seed", type=int, default=0, help="the synthetic world's seed")
    p.add_argument(
        "--model-name", default=DEFAULT_MODEL, help="the model's name in /v2/models/{name}"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help="--checkpoint: most concurrent requests run as one batch (1: no batching)",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=2.0,
        help="--checkpoint: longest a request waits for others to batch with",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="numpy BLAS threads, and torch intra-op threads with --checkpoint",
    )
    p.add_argument(
        "--dense", action="store_true", help="stub: a dense ~9 KB answer, as a real model's"
    )
    return p


def _check(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    for name in ("error_rate", "nan_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} must be in [0, 1]")
    if args.error_rate + args.nan_rate > 1.0:
        p.error("--error-rate plus --nan-rate must not exceed 1")
    if args.latency_ms is not None and args.latency_ms < 0:
        p.error("--latency-ms must be >= 0")
    if args.dense and args.profile != "stub":
        p.error("--dense is for --profile stub")
    if args.profile == "stub" and (args.checkpoint or args.degrade_lane):
        p.error("--profile stub takes no --checkpoint or --degrade-lane")
    if args.checkpoint and args.degrade_lane:
        p.error("--degrade-lane works with the analytic profiles only, not --checkpoint")
    for lane in args.degrade_lane:
        if not 0 <= lane < N_LANES:
            p.error(f"--degrade-lane must be in 0..{N_LANES - 1}, got {lane}")
    if not 0.0 < args.degrade_factor <= 1.0:
        p.error("--degrade-factor must be in (0, 1]")
    if args.max_batch < 1:
        p.error("--max-batch must be >= 1")
    if args.batch_window_ms < 0:
        p.error("--batch-window-ms must be >= 0")
    if args.threads < 1:
        p.error("--threads must be >= 1")


async def _listen(args: argparse.Namespace, world: World) -> tuple[str, int, Closer]:
    """Start the profile's server; its model type, bound port and how to close it."""
    profile = PROFILES.get(args.profile)
    latency = args.latency_ms
    if latency is None:
        latency = profile.latency_ms if profile else 0.0
    faults = Faults(args.error_rate, args.nan_rate, args.seed)
    if profile is None:
        responses = StubResponses(world, faults, latency, args.dense)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: StubProtocol(responses), args.host, args.port, backlog=1024
        )
        return "stub", server.sockets[0].getsockname()[1], server.close
    batcher = None
    if args.checkpoint:
        _set_torch_threads(args.threads)
        predictor = _load_checkpoint(args.checkpoint)
        if args.max_batch > 1 and hasattr(predictor, "predict_batch"):
            batcher = MicroBatcher(
                predictor,  # type: ignore[arg-type]
                args.max_batch,
                args.batch_window_ms / 1000.0,
                getattr(predictor, "context_length", None),
            )
    else:
        degrade = {lane: args.degrade_factor for lane in args.degrade_lane}
        predictor = analytic(profile.name, world, degrade)
    service = InferService(predictor, world, faults, latency, batcher)
    runner = web.AppRunner(build_app(service, args.model_name))
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port, backlog=1024).start()

    async def close() -> None:
        await runner.cleanup()
        if batcher is not None:
            batcher.close()
            print(
                f"lvm-serve: {batcher.requests} requests in {batcher.batches} batches"
                f" (largest {batcher.largest})",
                file=sys.stderr,
                flush=True,
            )

    return predictor.model_type, runner.addresses[0][1], close


def _set_torch_threads(n: int) -> None:
    torch = importlib.import_module("torch")
    torch.set_num_threads(n)


async def _serve(args: argparse.Namespace) -> None:
    world = World.build(seed=args.seed)
    try:
        model_type, port, close = await _listen(args, world)
    except OSError as exc:
        raise SystemExit(f"lvm-serve: cannot listen on {args.host}:{args.port}: {exc}") from None
    print(
        f"lvm-serve {args.profile} ({model_type}) listening on http://{args.host}:{port}",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    result = close()
    if asyncio.iscoroutine(result):
        await result


def main(argv: list[str] | None = None) -> None:
    p = _parser()
    args = p.parse_args(argv)
    _check(args, p)
    limit_blas_threads(args.threads)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(args))


if __name__ == "__main__":
    main()
