"""The LVM wire contract: what a prediction is, what a lane is, and how an answer is scored.

From the LVM project's rollout plan: vectors are 768-d; a TMD code is (domain 0-15,
task 0-31, modifier 0-63) and a request's lane is its domain; the Hit@K proxy counts
cosine(predicted, clicked) above 0.8 / 0.6 / 0.4 as a hit at 1 / 5 / 10; an answer is an empty
hit when its best neighbour scores below 0.4. The gateway, the controller and the reference
servers all read these rules from here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import orjson

from lvm_gateway.errors import BadRequestError

DIM: Final = 768
N_LANES: Final = 16  # TMD domains
N_TASKS: Final = 32
N_MODIFIERS: Final = 64
HIT_THRESHOLDS: dict[int, float] = {1: 0.8, 5: 0.6, 10: 0.4}
EMPTY_HIT_THRESHOLD: Final = 0.4

Tmd = tuple[int, int, int]
TMD_FIELDS: tuple[tuple[str, int], ...] = (
    ("domain", N_LANES),
    ("task", N_TASKS),
    ("modifier", N_MODIFIERS),
)
NO_LANE: Final = "none"  # a request without a (valid) TMD domain

# Header names, lower-case as the ASGI server gives them. X-TMD-Lane is an alias of the domain.
_DOMAIN_HEADERS: Final = ("x-tmd-domain", "x-tmd-lane")
_TASK_HEADER, _MODIFIER_HEADER = "x-tmd-task", "x-tmd-modifier"
# The domain of a body's tmd_codes, found without parsing megabytes of context vectors.
_BODY_DOMAIN: Final = re.compile(rb'"tmd_codes"\s*:\s*\[\s*(-?\d+)')
TMD_SCAN_BYTES: Final = 512


_LANE_NAMES: Final = tuple(f"lane_{d}" for d in range(N_LANES))  # named once, not per request


def lane_name(domain: int | None) -> str:
    """`lane_<domain>` for a valid domain, else `none`."""
    return _LANE_NAMES[domain] if domain is not None and 0 <= domain < N_LANES else NO_LANE


def lane_order(name: str) -> tuple[int, str]:
    """Sort key for lane names: lane_2 before lane_10, anything else (`none`) after the lanes."""
    _, _, number = name.partition("lane_")
    return (int(number), "") if number.isdigit() else (N_LANES, name)


def tmd_from_headers(headers: Mapping[str, str]) -> Tmd | None:
    """(domain, task, modifier) from X-TMD-Domain (or X-TMD-Lane), -Task and -Modifier; None
    without a domain header. Task and modifier default to 0."""
    for name in _DOMAIN_HEADERS:
        domain = headers.get(name)
        if domain is not None:
            break
    else:
        return None
    try:
        return (
            int(domain),
            int(headers.get(_TASK_HEADER, "0")),
            int(headers.get(_MODIFIER_HEADER, "0")),
        )
    except ValueError as exc:
        raise BadRequestError("X-TMD-* headers must be integers") from exc


def tmd_from_body(doc: Any) -> Tmd | None:
    """The body's `tmd_codes` [domain, task, modifier]; None when absent."""
    codes = doc.get("tmd_codes") if isinstance(doc, dict) else None
    return None if codes is None else tmd_of_codes(codes)


def tmd_of_codes(codes: Any) -> Tmd:
    """[domain, task, modifier] as a Tmd, from a JSON body or a v2 `tmd_codes` tensor."""
    if (
        not isinstance(codes, list)
        or len(codes) != len(TMD_FIELDS)
        or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes)
    ):
        raise BadRequestError("tmd_codes must be a list of three integers [domain, task, modifier]")
    return (codes[0], codes[1], codes[2])


def domain_in_body(body: bytes) -> int | None:
    """The body's tmd_codes[0] by a byte scan (no JSON parse) of its first and last
    TMD_SCAN_BYTES: clients write the short fields before or after the megabytes of context
    vectors, so a scan of the whole body (2.6 ms at 4.4 MB) finds nothing more in practice;
    None when there is none."""
    if len(body) > 4 * TMD_SCAN_BYTES:
        body = body[:TMD_SCAN_BYTES] + b" " + body[-TMD_SCAN_BYTES:]
    m = _BODY_DOMAIN.search(body)
    return int(m.group(1)) if m else None


def check_tmd(tmd: Sequence[Any]) -> None:
    """ValueError unless `tmd` is three integers within their fields' ranges."""
    if len(tmd) != len(TMD_FIELDS):
        raise ValueError(f"a TMD code is (domain, task, modifier), got {tmd!r}")
    for value, (name, size) in zip(tmd, TMD_FIELDS, strict=True):
        if not isinstance(value, int | np.integer) or not 0 <= value < size:
            raise ValueError(f"TMD {name} must be an integer in 0..{size - 1}, got {value!r}")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def cosine_hits(predicted: np.ndarray, clicked: np.ndarray) -> dict[int, bool]:
    """The LVM plan's proxy: cosine(predicted, clicked) over 0.8 / 0.6 / 0.4 is hit@1 / @5 / @10."""
    c = cosine(predicted, clicked)
    return {k: c > threshold for k, threshold in HIT_THRESHOLDS.items()}


def id_hits(clicked_id: str, neighbor_ids: Sequence[str]) -> dict[int, bool]:
    """Exact scoring: hit@k when the clicked id is among the first k returned neighbours."""
    return {k: clicked_id in neighbor_ids[:k] for k in HIT_THRESHOLDS}


def is_empty_hit(neighbor_scores: Sequence[float]) -> bool:
    """The LVM plan's empty hit: no neighbours, or the best one below cosine 0.4."""
    return not neighbor_scores or max(neighbor_scores) < EMPTY_HIT_THRESHOLD


def json_object(body: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (`/infer`, `/v1/feedback`); BadRequestError
    saying why otherwise."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequestError("body must be a JSON object")
    return doc
