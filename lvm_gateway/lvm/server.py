"""`lvm-serve`: the reference LVM model server speaking the LVM project's wire protocol.

Profiles `phase1`/`phase2` serve the analytic predictors of the synthetic world (or, with
`--checkpoint`, a trained model); `stub` answers every request with one constant valid response,
as upstream for proxy benchmarks. Both speak HTTP/1.1 through `http1.Http1Server`. Fault knobs
(`--latency-ms`, `--error-rate`, `--nan-rate`) apply to every profile.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import importlib
import json
import math
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np
import orjson
import uvloop

from lvm_gateway import termout
from lvm_gateway.blas import limit_blas_threads
from lvm_gateway.contract import oip
from lvm_gateway.contract.lvm import DIM, N_LANES, N_MODIFIERS, N_TASKS, json_object
from lvm_gateway.errors import BadRequestError, LvmGatewayError
from lvm_gateway.lvm.http1 import Handler, Http1Server, Reply, Request, error_reply
from lvm_gateway.lvm.predictor import DEFAULT_DEGRADE_FACTOR, PROFILES, Predictor, analytic
from lvm_gateway.lvm.world import World

_TMD_LIMITS = (N_LANES, N_TASKS, N_MODIFIERS)
Closer = Callable[[], Any]
_N_NEIGHBORS = 10
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
    """The model servers' answers, apart from HTTP: each is due `latency_ms` after its request
    arrived (the simulated GPU time, which covers the parsing and the work done here)."""

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

    async def infer(self, request: Request) -> Reply:
        """The LVM JSON protocol."""
        try:
            context, tmd = parse_infer_request(request.body)
        except BadRequestError as exc:
            return error_reply(exc.status, str(exc))
        status, payload, fault = await self._predict(context, tmd, request.received_at)
        if status != 200:
            return _due(error_reply(status, payload), request, self.latency_s)
        if fault == "nan":
            body = _nan_body(payload)
        else:
            body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        return _due(Reply(200, body), request, self.latency_s)

    async def infer_v2(self, request: Request, model: str) -> Reply:
        """The Open Inference Protocol."""
        try:
            head, context, tmd = parse_v2_request(
                request.body, request.headers.get(oip.HEADER_LENGTH)
            )
        except BadRequestError as exc:
            return error_reply(exc.status, str(exc))
        status, payload, fault = await self._predict(context, tmd, request.received_at)
        if status != 200:
            return _due(error_reply(status, payload), request, self.latency_s)
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
        body, headers = oip.encode_answer(answer, head.outputs, head.binary_outputs)
        return _due(Reply(200, body, tuple(headers.items())), request, self.latency_s)

    async def _predict(
        self, context: np.ndarray, tmd: tuple[int, int, int] | None, t0: float
    ) -> tuple[int, Any, str | None]:
        """(200, the answer's fields, the fault to inject) or (status, error message, None)."""
        fault = self.faults.draw()
        if fault == "error":
            return 500, _ERROR_MESSAGE, None
        if self.batcher is not None:
            try:
                vec = np.asarray(await self.batcher.predict(context), dtype=np.float32)
            except Exception as exc:  # the model failed this request's batch
                return 500, f"model failed: {exc}", None
        else:
            vec = np.asarray(self.predictor.predict(context, tmd), dtype=np.float32)
        neighbors = self.world.neighbors(vec, _N_NEIGHBORS)
        elapsed = time.perf_counter() - t0
        payload = {
            "predicted_vector": vec,
            "confidence": max(0.0, neighbors[0][1]),
            "latency_ms": max(elapsed, self.latency_s) * 1000.0,
            "model_type": self.predictor.model_type,
            "neighbors": [{"id": cid, "score": score} for cid, score in neighbors],
        }
        return 200, payload, fault


def routes(service: InferService, model: str = DEFAULT_MODEL) -> Handler:
    """`/infer` (LVM JSON) and the Open Inference Protocol's REST endpoints for `model`."""
    health = _health(service.predictor.model_type)
    metadata = Reply(
        200,
        orjson.dumps(oip.model_metadata(model, f"lvm-serve/{service.predictor.model_type}")),
    )
    server = Reply(
        200,
        orjson.dumps({"name": "lvm-serve", "version": "1", "extensions": ["binary_tensor_data"]}),
    )
    ok, missing = Reply(200, b"", ()), Reply(404, b"", ())

    def unknown(name: str) -> Reply:
        return error_reply(404, f"unknown model {name!r}; this server serves {model!r}")

    def handle(request: Request) -> Reply | Awaitable[Reply]:
        path, method = request.path, request.method
        if path == "/infer":
            return service.infer(request) if method == "POST" else _NOT_ALLOWED
        if path == "/health":
            return health if method == "GET" else _NOT_ALLOWED
        if path in (oip.HEALTH_READY_PATH, oip.HEALTH_LIVE_PATH):
            return ok if method == "GET" else _NOT_ALLOWED
        if path == "/v2":
            return server if method == "GET" else _NOT_ALLOWED
        name, _, action = path.removeprefix(_V2_MODELS).partition("/")
        if not path.startswith(_V2_MODELS) or not name or action not in ("", "ready", "infer"):
            return error_reply(404, f"no such endpoint: {path}")
        if method != ("POST" if action == "infer" else "GET"):
            return _NOT_ALLOWED
        if action == "ready":
            return ok if name == model else missing
        if name != model:
            return unknown(name)
        return service.infer_v2(request, name) if action == "infer" else metadata

    return handle


_V2_MODELS = "/v2/models/"
_NOT_ALLOWED = error_reply(405, "method not allowed")
_MAX_BODY = 64 * 1024 * 1024


class StubResponses:
    """Every answer the stub can give, encoded once at start-up."""

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
        self.ok = Reply(200, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))
        self.nan = Reply(200, _nan_body(payload))
        self.error = error_reply(500, _ERROR_MESSAGE)
        self.health = _health("stub")
        self.faults = faults
        self.latency_s = latency_ms / 1000.0

    def handle(self, request: Request) -> Reply:
        """Any request but `/health*` is an inference; the body is never read."""
        if request.path.startswith("/health"):
            return self.health
        fault = self.faults.draw()
        reply = self.error if fault == "error" else self.nan if fault == "nan" else self.ok
        return _due(reply, request, self.latency_s)


def _due(reply: Reply, request: Request, latency_s: float) -> Reply:
    """`reply`, sent no sooner than `latency_s` after its request's last byte: the simulated
    model time, covering the work done before it."""
    if latency_s <= 0:
        return reply
    return dataclasses.replace(reply, not_before=request.received_at + latency_s)


def _health(model_type: str) -> Reply:
    return Reply(200, orjson.dumps({"status": "ok", "model_type": model_type}))


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
        help="numpy BLAS threads, and torch intra-op threads with --checkpoint (default:"
        " $OPENBLAS_NUM_THREADS, $OMP_NUM_THREADS or $MKL_NUM_THREADS, else 1)",
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
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")


async def _listen(args: argparse.Namespace, world: World) -> tuple[str, int, Closer]:
    """Start the profile's server; its model type, bound port and how to close it."""
    profile = PROFILES.get(args.profile)
    latency = args.latency_ms
    if latency is None:
        latency = profile.latency_ms if profile else 0.0
    faults = Faults(args.error_rate, args.nan_rate, args.seed)
    loop = asyncio.get_running_loop()
    if profile is None:
        responses = StubResponses(world, faults, latency, args.dense)
        server = await loop.create_server(
            lambda: Http1Server(responses.handle, _MAX_BODY, read_bodies=False),
            args.host,
            args.port,
            backlog=1024,
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
    handler = routes(InferService(predictor, world, faults, latency, batcher), args.model_name)
    server = await loop.create_server(
        lambda: Http1Server(handler, _MAX_BODY), args.host, args.port, backlog=1024
    )

    async def close() -> None:
        server.close()
        if batcher is not None:
            batcher.close()
            print(
                f"lvm-serve: {batcher.requests} requests in {batcher.batches} batches"
                f" (largest {batcher.largest})",
                file=sys.stderr,
                flush=True,
            )

    return predictor.model_type, server.sockets[0].getsockname()[1], close


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
    args.threads = limit_blas_threads(args.threads)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(args))


if __name__ == "__main__":
    main()
