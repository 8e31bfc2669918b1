"""A variant's endpoints: per-endpoint health and retries, TLS upstreams, the TLS settings'
validation, against real servers (raw scripted servers and nginx)."""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lvm_gateway.config.load import parse_config
from lvm_gateway.config.spec import RetrySpec, VariantSpec
from lvm_gateway.errors import (
    ConfigError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from lvm_gateway.gateway.h1pool import EndpointPool
from lvm_gateway.gateway.upstream import CONSECUTIVE_ERRORS, VariantClient
from lvm_gateway.procs import free_port
from tests.conformance.conftest import Handler, Nginx, Pki, RawConn, RawRequest, RawServer, response

pytestmark = pytest.mark.integration

MakeRaw = Callable[[Handler], RawServer]


async def ok(req: RawRequest, conn: RawConn) -> bool:
    conn.write(response(200, b'{"ok":true}', "Content-Type: application/json"))
    return True


async def fail(req: RawRequest, conn: RawConn) -> bool:
    conn.write(response(500, b"boom"))
    return True


def variant(**fields: Any) -> VariantClient:
    spec = VariantSpec.model_validate({"timeout_ms": 500, **fields})
    return VariantClient("v", spec, EndpointPool)


async def test_half_broken_variant_serves_from_the_healthy_endpoint(raw: MakeRaw) -> None:
    good, bad = raw(ok), raw(fail)
    client = variant(urls=[good.url, bad.url])
    try:
        statuses: Counter[int | str] = Counter()
        for _ in range(2000):
            try:
                statuses[(await client.request("POST", "/infer", b"{}", {})).status] += 1
            except UpstreamError as exc:
                statuses[exc.kind] += 1
        assert statuses[200] >= 0.995 * 2000, statuses
        assert client.healthy_endpoints == 1  # the 500 endpoint is ejected
        assert len(bad.requests) < 40, len(bad.requests)  # ejected early, re-admitted rarely
    finally:
        client.close()


async def test_retry_goes_to_another_endpoint_and_respects_the_budget(raw: MakeRaw) -> None:
    a, b = raw(fail), raw(fail)
    client = variant(urls=[a.url, b.url])
    try:
        with pytest.raises(UpstreamStatusError, match="answered HTTP 500"):
            await client.request("GET", "/", b"", {})
        assert (len(a.requests), len(b.requests)) == (1, 1)  # each endpoint once, no more
        # Drain the budget: retries stop, first tries go on.
        for _ in range(60):
            with pytest.raises(UpstreamError):
                await client.request("GET", "/", b"", {})
        total = len(a.requests) + len(b.requests)
        assert total < 61 + 40, total  # retries capped (20 tokens + 20% + 10/s), not doubling
    finally:
        client.close()


async def test_endpoint_is_ejected_then_readmitted(raw: MakeRaw) -> None:
    flaky = {"fail": True}

    async def sometimes(req: RawRequest, conn: RawConn) -> bool:
        return await (fail if flaky["fail"] else ok)(req, conn)

    good, bad = raw(ok), raw(sometimes)
    client = variant(urls=[good.url, bad.url])
    try:
        for _ in range(4 * CONSECUTIVE_ERRORS):
            assert (await client.request("GET", "/", b"", {})).status == 200
        assert client.healthy_endpoints == 1
        ejected_until = client.endpoints[1].ejected_until
        flaky["fail"] = False
        await asyncio.sleep(ejected_until - asyncio.get_running_loop().time() + 0.05)
        assert client.healthy_endpoints == 2
        before = len(bad.requests)
        for _ in range(10):
            assert (await client.request("GET", "/", b"", {})).status == 200
        assert len(bad.requests) - before == 5  # back in the round-robin
    finally:
        client.close()


async def test_all_endpoints_down_fails_with_the_last_error(raw: MakeRaw) -> None:
    client = variant(urls=[f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"])
    try:
        for _ in range(2 * CONSECUTIVE_ERRORS):
            with pytest.raises(UpstreamConnectError, match="unreachable"):
                await client.request("GET", "/", b"", {})
        assert client.healthy_endpoints == 0
        # no endpoint is left: requests still try one (and fail), so the circuit sees them
        with pytest.raises(UpstreamConnectError):
            await client.request("GET", "/", b"", {})
    finally:
        client.close()


async def test_slow_endpoint_times_out_and_retries_elsewhere(raw: MakeRaw) -> None:
    async def slow(req: RawRequest, conn: RawConn) -> bool:
        await asyncio.sleep(1.0)
        return await ok(req, conn)

    s, fast = raw(slow), raw(ok)
    client = variant(urls=[s.url, fast.url], timeout_ms=100)
    single = variant(url=s.url, timeout_ms=100)
    try:
        assert (await client.request("GET", "/", b"", {})).status == 200
        with pytest.raises(UpstreamTimeoutError, match="no answer within 100 ms"):
            await single.request("GET", "/", b"", {})
    finally:
        client.close()
        single.close()


# -- TLS -------------------------------------------------------------------------------------


async def test_tls_with_configured_ca_and_sni(nginx: Nginx, pki: Pki) -> None:
    client = variant(url=nginx.https_url, tls={"ca_file": str(pki.ca)})
    try:
        resp = await client.request("GET", "/", b"", {})
        assert (resp.status, resp.body) == (200, b"sni=localhost")
    finally:
        client.close()


async def test_tls_rejects_an_unknown_ca(nginx: Nginx, pki: Pki) -> None:
    for tls in ({"ca_file": str(pki.other_ca)}, None):  # another CA; the system store
        client = variant(url=nginx.https_url, tls=tls)
        try:
            with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.request("GET", "/", b"", {})
        finally:
            client.close()


async def test_mutual_tls(nginx: Nginx, pki: Pki) -> None:
    with_cert = variant(
        url=nginx.mtls_url,
        tls={"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
             "key_file": str(pki.client_key)},
    )  # fmt: skip
    without = variant(url=nginx.mtls_url, tls={"ca_file": str(pki.ca)})
    try:
        resp = await with_cert.request("GET", "/", b"", {})
        assert (resp.status, resp.body) == (200, b"client=CN=gateway")
        assert (await without.request("GET", "/", b"", {})).status == 400  # nginx: no cert sent
    finally:
        with_cert.close()
        without.close()


def _config(tls: dict[str, Any]) -> dict[str, Any]:
    return {
        "variants": {"phase2": {"url": "https://model.internal:8443", "tls": tls}},
        "routes": [{"path": "/infer", "policy": "phase2"}],
    }


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ({"ca_file": "/nonexistent/ca.pem"},
         "variants.phase2.tls.ca_file: /nonexistent/ca.pem: no such file"),
        ({"ca_file": "NOTPEM"}, "variants.phase2.tls.ca_file: NOTPEM: not a PEM CA bundle"),
        ({"cert_file": "CERT"}, "variants.phase2.tls: a client certificate needs both"),
        ({"cert_file": "CERT", "key_file": "OTHERKEY"},
         "variants.phase2.tls: cert_file/key_file: cannot load"),
        ({"verify": "maybe"}, "variants.phase2.tls.verify:"),
        ({"ca": "x"}, "variants.phase2.tls.ca: unknown key"),
    ],
)  # fmt: skip
def test_bad_tls_settings_are_validation_errors(
    pki: Pki, tmp_path: Path, tls: dict[str, Any], expected: str
) -> None:
    (tmp_path / "notpem").write_text("hello\n")
    files = {"NOTPEM": str(tmp_path / "notpem"), "CERT": str(pki.client_cert),
             "OTHERKEY": str(pki.server_key)}  # fmt: skip
    tls = {k: files.get(v, v) if isinstance(v, str) else v for k, v in tls.items()}
    expected = expected.replace("NOTPEM", files["NOTPEM"])
    with pytest.raises(ConfigError) as info:
        parse_config(_config(tls))
    assert any(e.startswith(expected) for e in info.value.errors), info.value.errors


def test_good_tls_settings_load(pki: Pki) -> None:
    cfg = parse_config(_config({"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
                                "key_file": str(pki.client_key)}))  # fmt: skip
    spec = cfg.variants["phase2"]
    assert spec.tls is not None and isinstance(spec.tls.context(), ssl.SSLContext)
    assert spec.max_response_bytes == 64 * 1024 * 1024


async def test_a_routes_retry_policy_bounds_the_attempts_and_their_kinds(raw: MakeRaw) -> None:
    a, b = raw(fail), raw(fail)
    client = variant(urls=[a.url, b.url])
    try:
        with pytest.raises(UpstreamStatusError):
            await client.request("GET", "/", b"", {}, RetrySpec(attempts=1))
        assert len(a.requests) + len(b.requests) == 1  # no retry at all
        with pytest.raises(UpstreamStatusError):
            await client.request("GET", "/", b"", {}, RetrySpec(on=("connect", "timeout")))
        assert len(a.requests) + len(b.requests) == 2  # a 5xx is not retried when not named
        with pytest.raises(UpstreamStatusError):
            await client.request("GET", "/", b"", {}, RetrySpec(attempts=2, on=("5xx",)))
        assert len(a.requests) + len(b.requests) == 4  # first try and one retry
    finally:
        client.close()
