"""The status page: every rollout's state, evidence and history, rendered on the server.

The page polls one HTML fragment (`/partials/rollouts`) and swaps it in, so there is one renderer
(this module and its templates) for the first load and every refresh.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from lvm_gateway.admin import views
from lvm_gateway.admin.charts import Line, Rule, line_chart
from lvm_gateway.admin.model import ACTIONS, Detail, Event
from lvm_gateway.rollout.store import RolloutStore

# The newest history rows shown; the weight chart and the API use every event.
HISTORY_ROWS = 50


def _num(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.4g}{unit}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.3g}%"


def _metric(value: float | None, metric: str) -> str:
    """A metric's value in its unit: milliseconds for latencies, percent for rates."""
    return _num(value, " ms") if metric.endswith("_ms") else _pct(value)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _step_label(step: float | str) -> str:
    return "shadow" if step == "shadow" else f"{float(step):g}%"


def ladder(doc: Detail) -> list[dict[str, str]]:
    """Each step with its state: done, current (with the phase), or to come."""
    out = []
    for i, step in enumerate(doc.steps):
        if doc.phase == "Promoted" or i < doc.step:
            state = "done"
        elif i == doc.step:
            state = f"current {doc.phase.lower()}"
        else:
            state = "todo"
        out.append({"label": _step_label(step), "state": state})
    return out


def _bounds(doc: Detail, metric: str, kind: str) -> list[Rule]:
    key = f"{metric}_{kind}"
    rules = []
    for side, css in (("success", "ok"), ("rollback", "bad")):
        limit = doc.thresholds.get(side, {}).get(key)
        if limit is not None:
            rules.append(Rule(f"{side} bound {key} = {limit:g}", float(limit), css))
    return rules


# The plots span at least this much time, so a fresh rollout's first buckets are not stretched.
MIN_SPAN_SECONDS = 60


def _span(doc: Detail, now: float) -> float:
    """Where the plots start: the rollout's start or its first counted bucket, whichever is
    earlier, within the period the window buckets cover."""
    counted = [p.t for p in doc.series if p.canary.requests or p.stable.requests]
    starts = [t for t in (doc.started_at, counted[0] if counted else None) if t is not None]
    t0 = max(now - views.SERIES_SECONDS, min(starts, default=now - views.SERIES_SECONDS))
    return min(t0, now - MIN_SPAN_SECONDS)


def charts(doc: Detail, events: list[Event], now: float) -> list[Markup]:
    t0, t1 = _span(doc, now), now
    weights: list[tuple[float, float | None]] = [(e.ts, e.weight) for e in events]
    if not weights or weights[-1][1] != doc.weight:
        weights.append((now, doc.weight))
    out = [
        line_chart(
            "canary weight (%) over the rollout",
            [Line("weight", weights, "canary", step=True)],
            min(t0, weights[0][0]),
            t1,
            fmt=lambda v: f"{v:g}%",
            y_max=100,
        )
    ]
    plotted = (
        ("p95 latency (ms)", "p95_ms", "max", lambda v: f"{v:.3g}", None),
        ("error rate", "error_rate", "max", _pct, None),
        ("Hit@5 proxy", "hit5", "min", _pct, 1.0),
    )
    for title, metric, kind, fmt, y_max in plotted:
        lines = [
            Line(f"{role} {name}", [(p.t, getattr(getattr(p, role), metric)) for p in doc.series],
                 role)
            for role, name in (("canary", doc.canary), ("stable", doc.stable))
        ]  # fmt: skip
        out.append(
            line_chart(title, lines, t0, t1, _bounds(doc, metric, kind), fmt=fmt, y_max=y_max)
        )
    return out


async def rollouts(store: RolloutStore) -> list[dict[str, Any]]:
    now = time.time()
    out = []
    for name in await store.names():
        doc = await views.detail(store, name)
        events = (await views.history(store, name)).events
        out.append(
            {
                "doc": doc,
                "ladder": ladder(doc),
                "charts": charts(doc, events, now),
                "history": list(reversed(events[-HISTORY_ROWS:])),
                "history_total": len(events),
            }
        )
    return out


_env = Environment(
    loader=PackageLoader("lvm_gateway.admin", "templates"),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(num=_num, pct=_pct, when=_when, metric=_metric)
_env.globals.update(actions=ACTIONS)


def render(template: str, **context: Any) -> str:
    return _env.get_template(template).render(now=_when(time.time()), **context)
