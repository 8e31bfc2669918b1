"""Each variant spoken to in its own protocol: LVM JSON or the Open Inference Protocol (v2).

A request goes through untouched to a variant that speaks the client's protocol; otherwise it
is translated once (the translation is kept on the Call, so a fallback or a mirrored copy to a
variant of the same protocol reuses it), and the variant's answer is translated back. A v2
variant is called at `/v2/models/{its model}/infer`, an LVM JSON variant at `/infer`. The wire
formats are the contract's (contract/oip.py); this module only decides which one goes where.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lvm_gateway.config.spec import VariantSpec
from lvm_gateway.contract.oip import (
    BINARY_TYPE,
    HEADER_LENGTH,
    JSON_TYPE,
    LVM_PATH,
    PROTOCOL,
    decode_answer,
    encode_answer,
    from_lvm_answer,
    from_lvm_request,
    infer_path,
    to_lvm_answer,
    to_lvm_request,
)
from lvm_gateway.errors import InvalidPredictionError
from lvm_gateway.gateway.bodies import StreamedBody
from lvm_gateway.gateway.upstream import UpstreamResponse

if TYPE_CHECKING:  # dispatch.py calls this module with its Calls
    from lvm_gateway.gateway.dispatch import Call

_HEADER_LENGTH = HEADER_LENGTH.encode()
_RETYPED = frozenset({"content-type", HEADER_LENGTH})


def answer_header_length(resp: UpstreamResponse) -> str | None:
    """The answer's Inference-Header-Content-Length, if it has one."""
    for name, value in resp.headers:
        if name == _HEADER_LENGTH:
            return value.decode("latin-1")
    return None


def upstream_request(
    call: Call, spec: VariantSpec
) -> tuple[str, bytes | StreamedBody, dict[str, str]]:
    """(target, body, headers) of the call as `spec`'s variant speaks it."""
    if spec.protocol == call.protocol:
        if spec.protocol == PROTOCOL:
            return infer_path(spec.model) + call.query, call.body, call.headers
        return call.target, call.body, call.headers
    cached = call.translated.get(spec.protocol)
    if cached is None:
        # The gateway streams bodies only on routes whose variants all speak the client's
        # protocol (GatewayApp._streams), so a body to translate is always whole.
        assert isinstance(call.body, bytes)
        if call.oip is not None:  # v2 client, LVM JSON variant
            cached = to_lvm_request(call.oip, call.body), {"content-type": JSON_TYPE}
        else:
            cached = from_lvm_request(call.body, call.client_id)
        call.translated[spec.protocol] = cached
    body, retyped = cached
    headers = {k: v for k, v in call.headers.items() if k not in _RETYPED}
    headers.update(retyped)
    target = LVM_PATH if spec.protocol != PROTOCOL else infer_path(spec.model)
    return target + call.query, body, headers


def client_answer(
    call: Call, resp: UpstreamResponse, protocol: str, variant: str
) -> UpstreamResponse:
    """A 200 answer in `protocol` as the client's protocol has it; other answers (errors, which
    both protocols write as `{"error": ...}`) pass unchanged."""
    if protocol == call.protocol or resp.status != 200:
        return resp
    kept = tuple(h for h in resp.headers if h[0] != _HEADER_LENGTH)
    try:
        if call.oip is None:  # v2 variant, LVM JSON client
            answer = decode_answer(resp.body, answer_header_length(resp))
            return UpstreamResponse(200, to_lvm_answer(answer), JSON_TYPE, kept)
        answer = from_lvm_answer(resp.body, call.model, call.oip.id)
    except ValueError as exc:
        raise InvalidPredictionError(variant, f"answer cannot be translated: {exc}") from None
    body, headers = encode_answer(answer, call.oip.outputs, call.oip.binary_outputs)
    if HEADER_LENGTH in headers:
        kept += ((_HEADER_LENGTH, headers[HEADER_LENGTH].encode()),)
    ctype = BINARY_TYPE if HEADER_LENGTH in headers else JSON_TYPE
    return UpstreamResponse(200, body, ctype, kept)
