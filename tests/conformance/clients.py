"""The two upstream clients under comparison, behind one small interface.

`H1Client` is the gateway's own (h1pool.EndpointPool); `AiohttpClient` is aiohttp's client with
automatic decompression off, configured as a proxy would use it. The conformance cases and
`bench/client_compare.py` run both through this interface.
"""

from __future__ import annotations

from typing import Protocol

import aiohttp

from lvm_gateway.errors import BadResponseError
from lvm_gateway.gateway.h1pool import EndpointPool

LIMIT = 1 << 20


class Client(Protocol):
    name: str

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]: ...

    async def close(self) -> None: ...


class H1Client:
    name = "h1pool"

    def __init__(self, base_url: str, limit: int = LIMIT, connections: int = 64) -> None:
        self.pool = EndpointPool(base_url, connections)
        self.limit = limit

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        status, raw, data, _ = await self.pool.request(
            method, target, body, headers or {}, self.limit
        )
        return status, {k.decode().lower(): v.decode() for k, v in raw}, data

    async def close(self) -> None:
        self.pool.close()


class AiohttpClient:
    name = "aiohttp"

    def __init__(self, base_url: str, limit: int = LIMIT, connections: int = 64) -> None:
        self.base = base_url
        self.limit = limit
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        async with self.session.request(
            method, self.base + target, data=body or None, headers=headers
        ) as r:
            data = await r.content.read(self.limit + 1)
            while len(data) <= self.limit and not r.content.at_eof():
                data += await r.content.read(self.limit + 1 - len(data))
            if len(data) > self.limit:
                r.close()  # the rest of the body is never read: the connection must go
                raise BadResponseError(f"response body larger than {self.limit} bytes")
            return r.status, {k.lower(): v for k, v in r.headers.items()}, data

    async def close(self) -> None:
        await self.session.close()


CLIENTS: dict[str, type[H1Client] | type[AiohttpClient]] = {
    "h1pool": H1Client,
    "aiohttp": AiohttpClient,
}
