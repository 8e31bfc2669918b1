"""Which headers cross the gateway, each way (RFC 9110 section 7.6.1).

Hop-by-hop headers describe one connection, so they stop at the gateway: the fixed list, plus
every header the sender names in its `Connection` header. Towards the upstream the gateway also
drops what it sets itself or must not pass on (`Host`, framing, `Expect`, `Proxy-Authorization`,
a client-set `X-Mirror`, which marks the gateway's own shadow copies), and appends
`X-Forwarded-For` / sets `X-Forwarded-Proto`.

Encodings: bodies go through untouched with their `Content-Encoding`. When the gateway inspects
the answer (LVM inference routes), it asks the upstream for `Accept-Encoding: identity` instead
of decoding a copy: no decompression on the hot path, and the client, whatever it accepts, gets
a plain body it can read. Uninspected routes forward the client's `Accept-Encoding`.
"""

from __future__ import annotations

from typing import Final

HOP_BY_HOP: Final = frozenset(
    {"connection", "proxy-connection", "keep-alive", "te", "trailer", "transfer-encoding",
     "upgrade"}
)  # fmt: skip
_NOT_FORWARDED: Final = HOP_BY_HOP | {
    "host", "content-length", "expect", "proxy-authorization", "x-mirror", "x-forwarded-proto"
}  # fmt: skip
# The gateway writes these on every answer (framing, its own X-Request-Id and X-Variant; its
# server adds Date and Server, which would otherwise appear twice, as nginx's proxy hides them).
_NOT_RETURNED: Final = frozenset(
    name.encode()
    for name in (*HOP_BY_HOP, "content-length", "content-type", "x-request-id", "x-variant",
                 "date", "server")
)  # fmt: skip


def _named(connection: str) -> set[str]:
    return {token.strip().lower() for token in connection.split(",")}


def upstream_request_headers(
    client: dict[str, str],
    peer: str | None,
    scheme: str,
    request_id: str,
    inspect: bool,
) -> dict[str, str]:
    """The headers sent upstream, from the client's (lower-cased names)."""
    drop: frozenset[str] | set[str] = _NOT_FORWARDED
    if "connection" in client:
        drop = _NOT_FORWARDED | _named(client["connection"])
    out = {k: v for k, v in client.items() if k not in drop}
    if peer:
        prior = out.get("x-forwarded-for")
        out["x-forwarded-for"] = f"{prior}, {peer}" if prior else peer
    out["x-forwarded-proto"] = scheme
    out["x-request-id"] = request_id
    if inspect:
        out["accept-encoding"] = "identity"
    return out


def end_to_end(headers: list[tuple[bytes, bytes]]) -> tuple[str, tuple[tuple[bytes, bytes], ...]]:
    """The upstream response's content type, and its headers the client gets (lower-cased)."""
    ctype = ""
    named: set[bytes] = set()
    kept: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        n = name.lower()
        if n == b"content-type":
            ctype = value.decode("latin-1")
        elif n == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
        elif n not in _NOT_RETURNED:
            kept.append((n, value))
    if named:
        kept = [(n, v) for n, v in kept if n not in named]
    return ctype, tuple(kept)
