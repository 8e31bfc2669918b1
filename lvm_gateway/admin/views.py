"""What the page and the API show, read from the control plane's Redis state.

Everything here is a read: `ops.describe` (the same document as `rolloutctl status --json`),
the history stream, and the window buckets the gateways write, judged per bucket by the
analysis' own metric functions so a plotted value means what the gate means.
"""

from __future__ import annotations

import time
from typing import Any

from lvm_gateway.admin.model import Detail, History, Summary, VariantPoint
from lvm_gateway.contract.rollout import RolloutStatus
from lvm_gateway.contract.windows import BUCKET_SECONDS, FEEDBACK
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.analysis import METRICS
from lvm_gateway.rollout.observations import Observations, VariantWindow
from lvm_gateway.rollout.store import Registered, RolloutStore
from lvm_gateway.rollout.windows import read_buckets

# The plots cover this much time: the analysis' lookback, well inside the windows' TTL.
SERIES_SECONDS = 600
PLOTTED = ("p95_ms", "error_rate", "hit5")


def _point(window: VariantWindow) -> VariantPoint:
    # The metric functions judge `canary`; a lone window in that seat gives its own values.
    obs = Observations(canary=window)
    values = {m: METRICS[m].value(obs, 0) for m in PLOTTED}
    return VariantPoint(requests=window.requests, feedback=window.get(FEEDBACK), **values)


async def series(
    store: RolloutStore, stable: str | None, canary: str | None, now: float
) -> list[dict[str, Any]]:
    """Per window bucket of the last SERIES_SECONDS: the canary's and stable's plotted metrics."""
    roles = {"canary": canary, "stable": stable}
    variants = [v for v in roles.values() if v is not None]
    first = int(now - SERIES_SECONDS) // BUCKET_SECONDS * BUCKET_SECONDS
    buckets = range(first, int(now) + 1, BUCKET_SECONDS)
    found = await read_buckets(store.client, store.prefix, variants, buckets)
    by_bucket = {v: dict(found.get(v, [])) for v in variants}
    empty = VariantWindow()

    def window(variant: str | None, bucket: int) -> VariantWindow:
        counts = by_bucket.get(variant, {}).get(bucket) if variant else None
        return VariantWindow(counts) if counts else empty

    return [
        {
            "t": float(bucket),
            **{role: _point(window(v, bucket)).model_dump() for role, v in roles.items()},
        }
        for bucket in buckets
    ]


def summary(status: RolloutStatus, reg: Registered) -> Summary:
    doc = status.to_dict()
    doc["steps"] = list(reg.spec.model_dump(mode="json")["steps"])
    return Summary.model_validate({k: doc[k] for k in Summary.model_fields})


async def summaries(store: RolloutStore) -> list[Summary]:
    return [
        summary(await store.get(name), await store.registered(name)) for name in await store.names()
    ]


async def detail(store: RolloutStore, name: str) -> Detail:
    doc = await ops.describe(store, name)
    doc["series"] = await series(store, doc["stable"], doc["canary"], time.time())
    return Detail.model_validate(doc)


async def history(store: RolloutStore, name: str) -> History:
    return History.model_validate({"rollout": name, "events": await store.history(name)})
