"""Streamed request bodies (gateway/bodies.py) and which policies need a body whole."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lvm_gateway.config.load import parse_config
from lvm_gateway.errors import BadRequestError
from lvm_gateway.gateway.bodies import BodyBudget
from tests.asynckit import cancel_after


def messages(*chunks: bytes, stall: bool = False) -> Any:
    queue = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    queue[-1]["more_body"] = stall

    async def receive() -> dict[str, Any]:
        if queue:
            await asyncio.sleep(0.01)  # arrives over time: readers wait for it
            return queue.pop(0)
        await asyncio.sleep(10)
        raise AssertionError("unreachable: the body timeout fires first")

    return receive


def test_every_reader_gets_the_whole_body_from_the_start_while_it_arrives():
    async def run() -> tuple[list[bytes], list[bytes], int]:
        budget = BodyBudget(10_000, timeout_s=1.0)
        async with budget.stream(messages(b"ab", b"cd", b"ef"), 100, 6) as body:
            first = [c async for c in body]
            late = [c async for c in body]  # a retry or fallback: a replay
            held = budget.in_use
        return first, late, held - budget.in_use

    first, late, charged = asyncio.run(run())
    assert first == late == [b"ab", b"cd", b"ef"]
    assert charged == 6  # the Content-Length, charged up front and given back


def test_a_stalled_or_short_body_fails_its_readers_with_the_clients_error():
    async def run(receive: Any, length: int) -> BadRequestError:
        async with BodyBudget(10_000, timeout_s=0.2).stream(receive, 100, length) as body:
            with pytest.raises(BadRequestError) as exc:
                _ = [c async for c in body]
            return exc.value

    stalled = asyncio.run(run(messages(b"ab", stall=True), 4))
    assert stalled.status == 408
    short = asyncio.run(run(messages(b"ab"), 4))
    assert short.status == 400 and "ended after 2 of its 4 bytes" in str(short)


def test_a_whole_body_is_all_there_unjoined_before_the_block_starts():
    async def run() -> tuple[bool, list[bytes], int]:
        budget = BodyBudget(10_000, timeout_s=1.0)
        async with budget.stream(messages(b"ab", b"cd", b"ef"), 100, 6, whole=True) as body:
            done, chunks = body.done, list(body.chunks)
            assert [c async for c in body] == chunks  # and readers replay it like a stream
            held = budget.in_use
        return done, chunks, held - budget.in_use

    assert asyncio.run(run()) == (True, [b"ab", b"cd", b"ef"], 6)


def test_a_whole_body_that_stalls_or_ends_short_is_the_clients_error_before_any_upstream():
    async def run(receive: Any, length: int) -> tuple[int, str, int]:
        budget = BodyBudget(10_000, timeout_s=0.2)
        with pytest.raises(BadRequestError) as exc:
            async with budget.stream(receive, 100, length, whole=True):
                raise AssertionError("the block must not run")
        return exc.value.status, str(exc.value), budget.in_use

    assert asyncio.run(run(messages(b"ab", stall=True), 4))[::2] == (408, 0)
    status, message, in_use = asyncio.run(run(messages(b"ab"), 4))
    assert (status, in_use) == (400, 0) and "ended after 2 of its 4 bytes" in message


def test_a_buffered_body_is_read_whether_it_arrived_already_or_comes_in_pieces_later():
    async def arrived() -> dict[str, Any]:  # no wait: read without arming a timer
        return {"type": "http.request", "body": b"now", "more_body": False}

    async def run(receive: Any) -> bytes:
        async with BodyBudget(10_000, timeout_s=1.0).read(receive, 100) as body:
            return body

    assert asyncio.run(run(arrived)) == b"now"
    # Several waits inside one receive(), values sent back into it along the way.
    later = messages(b"ab", b"cd", b"ef")
    assert asyncio.run(run(later)) == b"abcdef"


def test_a_buffered_body_that_stalls_is_a_408_and_a_cancelled_read_stays_a_cancellation():
    async def stalled() -> BadRequestError:
        with pytest.raises(BadRequestError) as exc:
            async with BodyBudget(10_000, timeout_s=0.1).read(messages(b"ab", stall=True), 100):
                pass
        return exc.value

    assert asyncio.run(stalled()).status == 408

    cleaned_up: list[bool] = []

    async def slow() -> dict[str, Any]:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned_up.append(True)
        raise AssertionError("unreachable: cancelled first")

    async def cancelled() -> None:
        budget = BodyBudget(10_000, timeout_s=5.0)

        async def reader() -> None:
            async with budget.read(slow, 100):
                pass

        await cancel_after(reader(), 0.05)

    asyncio.run(cancelled())
    assert cleaned_up == [True]


def test_limits_are_answered_before_a_byte_is_forwarded():
    async def run(length: int, budget: int) -> int:
        try:
            async with BodyBudget(budget).stream(messages(b"x"), 100, length):
                return 200
        except BadRequestError as exc:
            return exc.status

    assert asyncio.run(run(101, 10_000)) == 413
    assert asyncio.run(run(100, 50)) == 503


def test_edges_are_the_first_and_last_bytes_without_the_middle():
    async def run() -> bytes:
        chunks = [b"H" * 600, b"m" * 5000, b"x" * 100, b"T" * 300]
        async with BodyBudget(10**6).stream(messages(*chunks), 10**6, 6000) as body:
            _ = [c async for c in body]
            return body.edges(512)

    edges = asyncio.run(run())
    assert edges == b"H" * 512 + b" " + b"m" * 112 + b"x" * 100 + b"T" * 300


POLICIES = {
    "a": False,
    "context_length": {"threshold": 10, "short": "a", "long": "b"},
    "tmd": {"experts": [f"e{i}" for i in range(16)]},
    "header": {"default": {"context_length": {"threshold": 10, "short": "a", "long": "b"}}},
    "canary": {"stable": "a", "canary": {"context_length": {"threshold": 10, "short": "a",
                                                            "long": "b"}}},
}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "headers", "needs"),
    [
        ("a", {}, False),
        ("context_length", {}, True),
        ("context_length", {"x-context-length": "12"}, False),
        ("tmd", {}, True),
        ("tmd", {"x-tmd-domain": "3"}, False),
        ("header", {}, True),
        ("header", {"x-variant": "a"}, False),  # the override decides without the body
        ("canary", {}, True),
        ("canary", {"x-context-length": "3"}, False),
    ],
)
def test_needs_body_follows_the_tree_and_the_headers(name, headers, needs):
    variants = {v: {"url": "http://127.0.0.1:9"} for v in ["a", "b", *(f"e{i}" for i in range(16))]}
    policy = name if name == "a" else {name: POLICIES[name]}
    route = parse_config({"variants": variants, "routes": [{"path": "/infer", "policy": policy}]})
    assert route.routes["/infer"].policy.needs_body(headers) is needs
