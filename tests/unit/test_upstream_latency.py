"""A variant's latency ends at its answer's last byte, not when a busy loop resumes the caller."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from lvm_gateway.gateway.dispatch import _variant_time
from lvm_gateway.gateway.h1pool import _Conn


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, data: Any) -> None:
        self.written.extend(data)

    def get_extra_info(self, name: str) -> Any:
        return None

    def close(self) -> None:
        pass


def test_the_answer_is_timed_when_its_last_byte_is_read() -> None:
    async def run() -> tuple[float, float, float]:
        conn = _Conn()
        conn.connection_made(Transport())  # type: ignore[arg-type]
        t0 = time.perf_counter()
        waiter = conn.send(b"GET / HTTP/1.1\r\n\r\n", False, 1000, asyncio.get_running_loop())
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        read = time.perf_counter()
        time.sleep(0.05)  # the loop is busy with other work before the caller runs again
        status, _, body, received_at = await waiter
        assert (status, body) == (200, b"ok")
        return t0, read, received_at

    t0, read, received_at = asyncio.run(run())
    assert t0 <= received_at <= read
    assert _variant_time(t0, b"", received_at) < 0.05 <= _variant_time(t0, b"")
