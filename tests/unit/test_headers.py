"""The header rules at the gateway's two edges (pure functions, no I/O)."""

from __future__ import annotations

from lvm_gateway.gateway.headers import end_to_end, upstream_request_headers


def test_request_drops_hop_by_hop_named_and_private_headers() -> None:
    out = upstream_request_headers(
        {
            "host": "gw", "content-length": "3", "connection": "close, X-Trace-Hop",
            "x-trace-hop": "1", "keep-alive": "5", "te": "trailers", "upgrade": "h2c",
            "proxy-authorization": "Basic x", "x-mirror": "1", "expect": "100-continue",
            "x-user-id": "u1", "accept-encoding": "gzip",
        },
        "10.0.0.9", "https", "rid-1", inspect=False,
    )  # fmt: skip
    assert out == {
        "x-user-id": "u1",
        "accept-encoding": "gzip",
        "x-forwarded-for": "10.0.0.9",
        "x-forwarded-proto": "https",
        "x-request-id": "rid-1",
    }


def test_request_appends_forwarded_for_and_asks_identity_when_inspecting() -> None:
    out = upstream_request_headers(
        {"x-forwarded-for": "1.1.1.1", "x-forwarded-proto": "ftp", "accept-encoding": "br"},
        None, "http", "r", inspect=True,
    )  # fmt: skip
    assert out["x-forwarded-for"] == "1.1.1.1"  # no peer known: nothing appended
    assert (out["x-forwarded-proto"], out["accept-encoding"]) == ("http", "identity")
    out = upstream_request_headers({"x-forwarded-for": "1.1.1.1"}, "2.2.2.2", "http", "r", False)
    assert out["x-forwarded-for"] == "1.1.1.1, 2.2.2.2"


def test_response_keeps_end_to_end_headers_only() -> None:
    ctype, kept = end_to_end([
        (b"Content-Type", b"application/json"), (b"Content-Length", b"9"),
        (b"Connection", b"keep-alive, X-Hop"), (b"X-Hop", b"1"), (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"), (b"X-Request-Id", b"theirs"),
        (b"Content-Encoding", b"gzip"), (b"X-Model-Version", b"7"), (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"), (b"Date", b"Tue, 01 Dec 2026 21:00:00 GMT"), (b"Server", b"x"),
    ])  # fmt: skip
    assert ctype == "application/json"
    assert kept == (
        (b"content-encoding", b"gzip"),
        (b"x-model-version", b"7"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    )
