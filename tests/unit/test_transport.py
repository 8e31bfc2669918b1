"""The upstream tier in-process: a variant's retries and error mapping over a MockTransport."""

from __future__ import annotations

import asyncio

import pytest

from lvm_gateway.config.spec import RetrySpec, VariantSpec
from lvm_gateway.errors import UpstreamStatusError
from lvm_gateway.gateway.bodies import StreamedBody
from lvm_gateway.gateway.transport import Headers, MockTransport
from lvm_gateway.gateway.upstream import UpstreamPool

ANSWER = b'{"predicted_vector": []}'


def _recording(
    status: int, answer: bytes, headers: Headers | None = None
) -> tuple[MockTransport, list[tuple[str, str, dict[str, str], bytes]]]:
    """A transport answering `status` and `answer` to every request, and the requests it saw."""
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def handler(
        method: str, target: str, sent: dict[str, str], body: bytes
    ) -> tuple[int, Headers, bytes]:
        seen.append((method, target, sent, body))
        return status, list(headers or []), answer

    return MockTransport(handler), seen


def _pool(handler: MockTransport, **fields: object) -> UpstreamPool:
    pool = UpstreamPool(handler.factory)
    spec = {"timeout_ms": 500, "urls": ["http://a:1", "http://b:2"], **fields}
    pool.configure({"v": VariantSpec.model_validate(spec)})
    return pool


def test_the_handler_sees_the_request_and_its_answer_is_returned() -> None:
    headers = [(b"content-type", b"application/json"), (b"x-model", b"m1")]
    transport, seen = _recording(200, ANSWER, headers)
    client = _pool(transport).clients["v"]
    resp = asyncio.run(client.request("POST", "/infer?x=1", b"{}", {"x-request-id": "r1"}))
    assert seen == [("POST", "/infer?x=1", {"x-request-id": "r1"}, b"{}")]
    assert (resp.status, resp.body, resp.content_type) == (200, ANSWER, "application/json")
    assert resp.headers == ((b"x-model", b"m1"),)
    assert resp.received_at > 0


def test_a_streamed_body_reaches_the_handler_whole() -> None:
    transport, seen = _recording(200, ANSWER)

    async def run() -> None:
        body = StreamedBody(6)
        body.feed(b"ab")
        call = asyncio.create_task(
            _pool(transport).clients["v"].request("POST", "/infer", body, {})
        )
        for chunk in (b"cd", b"ef"):
            await asyncio.sleep(0)  # the call waits for the rest as it arrives
            body.feed(chunk)
        body.finish()
        await call

    asyncio.run(run())
    assert [body for *_, body in seen] == [b"abcdef"]


def test_5xx_is_retried_on_the_other_endpoint_then_mapped() -> None:
    transport, seen = _recording(503, b"busy")
    client = _pool(transport).clients["v"]
    retry = RetrySpec(attempts=2, on=("5xx",))
    with pytest.raises(UpstreamStatusError, match="answered HTTP 503"):
        asyncio.run(client.request("POST", "/infer", b"{}", {}, retry))
    assert len(seen) == 2


def test_an_answer_over_the_limit_is_a_bad_response_not_retried() -> None:
    transport, seen = _recording(200, b"x" * 2048)
    client = _pool(transport, max_response_bytes=1024).clients["v"]
    with pytest.raises(UpstreamStatusError, match="larger than 1024 bytes"):
        asyncio.run(client.request("POST", "/infer", b"{}", {}, RetrySpec(attempts=2)))
    assert len(seen) == 1
