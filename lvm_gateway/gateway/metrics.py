"""The one object that owns every Prometheus metric family of the gateway.

Built with an injected registry so tests (and each app instance) get their own. What every
request counts (its status, its latency, its variant's latency, an empty hit) is tallied in
plain dicts and moved into prometheus_client by `flush`, before each scrape and every second:
prometheus_client takes a lock per counter increment and per histogram observation, and walks
the bucket bounds in Python, ~3.8 us per request in all (~4% of a worker's CPU on small
bodies); the tally costs ~0.4 us. The rarer counters go to prometheus_client directly.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lvm_gateway.contract.rollout import Phase

# `_created` series double the exposition size and no dashboard here uses them.
disable_created_metrics()

# Fixed buckets from 0.5 ms to 10 s: the LVM plan's targets (5 ms, 10 ms) fall on bucket edges.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

CIRCUIT_STATES = {"closed": 0, "open": 1, "half_open": 2}
# How often a worker moves its tallies into prometheus_client (gateway/app.py): with --workers N
# another worker may answer the scrape, and it reads the shared files, not this worker's dicts.
FLUSH_INTERVAL_S = 1.0


# The judge's evidence per test, from the controller's latest analysis (docs/judge.md).
_EVIDENCE_GAUGES = (
    ("canary", "estimate", "The canary's rate in the judge's test."),
    ("baseline", "baseline", "The stable variant's rate over the same period."),
    ("difference", "difference", "How much worse the canary is (positive: worse)."),
    ("lower", "interval_lower", "The anytime-valid interval's lower end for the difference."),
    ("upper", "interval_upper", "The anytime-valid interval's upper end for the difference."),
    ("statistic", "statistic", "(difference - margin) / its standard deviation."),
    ("threshold", "threshold", "The anytime-valid critical value the statistic is held to."),
    ("margin", "margin", "How much worse the canary may be before it is harm."),
)
STANDINGS = ("harm", "suspect", "clear", "insufficient", "waived")


# Every rollout phase, so `lvmgw_rollout_phase` has a series per phase (1 for the current one)
# and alerts can match `phase="RolledBack"` without the series appearing only on the change.
ROLLOUT_PHASES = tuple(str(p) for p in Phase)


class RolloutCollector(Collector):
    """Read at scrape time: the weights this process routes by, whether Redis is reachable,
    each rollout's phase, the controller's latest evidence per rollout and judge test, and the
    webhook deliveries of this process's controller."""

    def __init__(
        self,
        weights: Callable[[], Mapping[str, float]],
        connected: Callable[[], bool],
        analyses: Callable[[], Mapping[str, Mapping[str, Any]]] = dict,
        phases: Callable[[], Mapping[str, str]] = dict,
        notifications: Callable[[], Mapping[tuple[str, str, str], int]] = dict,
    ) -> None:
        self.weights = weights
        self.connected = connected
        self.analyses = analyses
        self.phases = phases
        self.notifications = notifications

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        family = GaugeMetricFamily(
            "lvmgw_rollout_canary_weight_ratio",
            "Share of users routed to each rollout's canary by this process (0-1).",
            labels=["rollout"],
        )
        for name, weight in sorted(self.weights().items()):
            family.add_metric([name], weight / 100.0)
        yield family
        yield GaugeMetricFamily(
            "lvmgw_redis_connected",
            "1 while this process reaches Redis; 0 means it serves with the last known weights.",
            value=1.0 if self.connected() else 0.0,
        )
        phase = GaugeMetricFamily(
            "lvmgw_rollout_phase",
            "1 for each rollout's current phase (as this process last read it), else 0.",
            labels=["rollout", "phase"],
        )
        for name, current in sorted(self.phases().items()):
            for p in ROLLOUT_PHASES:
                phase.add_metric([name, p], 1.0 if p == current else 0.0)
        yield phase
        sent = CounterMetricFamily(
            "lvmgw_notifications",
            "Webhook notifications by target, event and outcome (delivered, retried, failed, "
            "dropped); counted by the process whose controller held the lease.",
            labels=["target", "event", "outcome"],
        )
        for (target, event, outcome), n in sorted(self.notifications().items()):
            sent.add_metric([target, event, outcome], float(n))
        yield sent
        yield from self._evidence()

    def _evidence(self) -> Iterator[GaugeMetricFamily]:
        labels = ["rollout", "test"]
        families = {
            key: GaugeMetricFamily(f"lvmgw_rollout_analysis_{name}", doc, labels=labels)
            for key, name, doc in _EVIDENCE_GAUGES
        }
        standing = GaugeMetricFamily(
            "lvmgw_rollout_analysis_standing",
            "1 for where each judge test stands now (harm, suspect, clear, insufficient, waived).",
            labels=[*labels, "standing"],
        )
        for rollout, doc in sorted(self.analyses().items()):
            for e in doc.get("evidence", ()):
                for key, family in families.items():
                    if e.get(key) is not None:
                        family.add_metric([rollout, e["test"]], float(e[key]))
                for s in STANDINGS:
                    standing.add_metric([rollout, e["test"], s], 1.0 if e["standing"] == s else 0.0)
        yield from families.values()
        yield standing


class RecordsCollector(Collector):
    """Read at scrape time: prediction records this process had to drop (Redis unreachable for
    longer than its buffer holds), so feedback for them will find nothing."""

    def __init__(self, dropped: Callable[[], int]) -> None:
        self.dropped = dropped

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "lvmgw_prediction_records_dropped",
            "Sampled prediction records dropped from a full buffer before reaching Redis.",
            value=float(self.dropped()),
        )


class EndpointsCollector(Collector):
    """Read at scrape time: each upstream endpoint's outlier-detection state in this process."""

    def __init__(self, endpoints: Callable[[], Iterator[tuple[str, str, bool, int]]]) -> None:
        self.endpoints = endpoints  # (variant, url, admitted, ejections so far)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "lvmgw_upstream_endpoint_up",
            "1 while an endpoint is admitted, 0 while outlier detection has ejected it.",
            labels=["variant", "endpoint"],
        )
        ejections = GaugeMetricFamily(
            "lvmgw_upstream_endpoint_ejections",
            "An endpoint's ejection count (its back-off exponent; a clean window lowers it).",
            labels=["variant", "endpoint"],
        )
        for variant, url, admitted, count in self.endpoints():
            up.add_metric([variant, url], 1.0 if admitted else 0.0)
            ejections.add_metric([variant, url], float(count))
        yield up
        yield ejections


class MetricsRecorder:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "lvmgw_requests_total",
            "Client requests answered, by route, serving variant and HTTP status.",
            ["route", "variant", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "lvmgw_request_duration_seconds",
            "Time from request received to response sent, by route and serving variant.",
            ["route", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "lvmgw_upstream_errors_total",
            "Failed calls to a variant, by kind (timeout, connect, status, invalid_prediction, "
            "circuit_open).",
            ["variant", "kind"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "lvmgw_fallbacks_total",
            "Requests served by the stable variant because the chosen canary failed.",
            ["route", "from_variant", "to_variant"],
            registry=registry,
        )
        self.circuit_state = Gauge(
            "lvmgw_circuit_state",
            "Circuit breaker state per variant: 0 closed, 1 open, 2 half-open.",
            ["variant"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.mirrors = Counter(
            "lvmgw_mirror_requests_total",
            "Mirrored (shadow) copies, by variant and outcome (sent, failed, dropped).",
            ["variant", "outcome"],
            registry=registry,
        )
        self.reloads = Counter(
            "lvmgw_config_reloads_total",
            "Policy config (re)loads, by result (success, failure).",
            ["result"],
            registry=registry,
        )
        self.config_info = Gauge(
            "lvmgw_config_loaded_timestamp_seconds",
            "Unix time the serving policy config was loaded.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.config_stale = Gauge(
            "lvmgw_config_stale",
            "1 while the policy file on disk failed to load and the last good config serves.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.bad_requests = Counter(
            "lvmgw_bad_requests_total",
            "Requests rejected with a 4xx before reaching a variant, by route.",
            ["route"],
            registry=registry,
        )
        self.empty_hits = Counter(
            "lvmgw_empty_hits_total",
            "Answers whose best neighbour scored below cosine 0.4 (or had none), by lane.",
            ["variant", "lane"],
            registry=registry,
        )
        self.invalid_predictions = Counter(
            "lvmgw_invalid_predictions_total",
            "Answers with NaN/Inf or a wrong-dimension predicted_vector (never sent as success).",
            ["variant"],
            registry=registry,
        )
        self.hit_proxy = Counter(
            "lvmgw_hit_proxy_total",
            "Scored answers that were a hit at k (cosine proxy or exact id), by variant and lane.",
            ["variant", "k", "lane"],
            registry=registry,
        )
        self.feedback_events = Counter(
            "lvmgw_feedback_total",
            "Feedback posts, by result (recorded, duplicate, rejected).",
            ["result"],
            registry=registry,
        )
        self.scored = Counter(
            "lvmgw_scored_answers_total",
            "Answers scored by feedback (the denominator of the Hit@K proxy), by variant and lane.",
            ["variant", "lane"],
            registry=registry,
        )
        self.upstream_latency = Histogram(
            "lvmgw_upstream_duration_seconds",
            "Time of one call to a variant (or expert), answered or failed, from when it could "
            "have the whole request (a client's upload is not the variant's time).",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.experts = Counter(
            "lvmgw_expert_calls_total",
            "Mixture fan-out calls per expert, by outcome (answered, deadline, error).",
            ["policy", "expert", "outcome"],
            registry=registry,
        )
        self.experts_masked = Counter(
            "lvmgw_expert_masked_total",
            "Experts the gate ranked in its top-k but skipped (circuit open or at capacity).",
            ["policy", "expert"],
            registry=registry,
        )
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latency: dict[tuple[str, str], _Tally] = {}
        self._upstream: dict[str, _Tally] = {}
        self._empty: dict[tuple[str, str], int] = {}

    def request(self, route: str, variant: str, status: int, seconds: float) -> None:
        key = (route, variant, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        lkey = (route, variant)
        tally = self._latency.get(lkey)
        if tally is None:
            tally = self._latency[lkey] = _Tally()
        tally.observe(seconds)

    def upstream(self, variant: str, seconds: float) -> None:
        tally = self._upstream.get(variant)
        if tally is None:
            tally = self._upstream[variant] = _Tally()
        tally.observe(seconds)

    def empty_hit(self, variant: str, lane: str) -> None:
        key = (variant, lane)
        self._empty[key] = self._empty.get(key, 0) + 1

    def flush(self) -> None:
        """Move the tallies since the last flush into prometheus_client."""
        requests, self._requests = self._requests, {}
        for (route, variant, status), n in requests.items():
            self.requests.labels(route, variant, str(status)).inc(n)
        latency, self._latency = self._latency, {}
        for (route, variant), tally in latency.items():
            tally.add_to(self.latency.labels(route, variant))
        upstream, self._upstream = self._upstream, {}
        for variant, tally in upstream.items():
            tally.add_to(self.upstream_latency.labels(variant))
        empty, self._empty = self._empty, {}
        for (variant, lane), n in empty.items():
            self.empty_hits.labels(variant, lane).inc(n)

    def expert(self, policy: str, expert: str, outcome: str) -> None:
        self.experts.labels(policy, expert, outcome).inc()

    def masked(self, policy: str, experts: tuple[str, ...]) -> None:
        for expert in experts:
            self.experts_masked.labels(policy, expert).inc()

    def upstream_error(self, variant: str, kind: str) -> None:
        self.upstream_errors.labels(variant, kind).inc()
        if kind == "invalid_prediction":
            self.invalid_predictions.labels(variant).inc()

    def hits(self, variant: str, lane: str, hits: dict[int, bool]) -> None:
        self.scored.labels(variant, lane).inc()
        for k, hit in hits.items():
            if hit:
                self.hit_proxy.labels(variant, str(k), lane).inc()

    def feedback(self, result: str) -> None:
        self.feedback_events.labels(result).inc()

    def fallback(self, route: str, from_variant: str, to_variant: str) -> None:
        self.fallbacks.labels(route, from_variant, to_variant).inc()

    def circuit(self, variant: str, state: str) -> None:
        self.circuit_state.labels(variant).set(CIRCUIT_STATES[state])

    def mirror(self, variant: str, outcome: str) -> None:
        self.mirrors.labels(variant, outcome).inc()

    def reload(self, ok: bool, at: float) -> None:
        self.reloads.labels("success" if ok else "failure").inc()
        self.config_stale.set(0 if ok else 1)
        if ok:
            self.config_info.set(at)

    def bad_request(self, route: str) -> None:
        self.bad_requests.labels(route).inc()


class _Tally:
    """One histogram child's observations since the last flush: a count per bucket (the last
    for +Inf) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # A bucket holds the values up to and including its bound, as prometheus_client's do.
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def add_to(self, child: Histogram) -> None:
        # prometheus_client has no public call that adds many observations at once. A child
        # keeps one value per bucket (not cumulative: the exposition sums them) and the sum;
        # observe() increments exactly these (tests/unit/test_metrics.py compares the two).
        for bucket, n in zip(child._buckets, self.counts, strict=True):
            if n:
                bucket.inc(n)
        child._sum.inc(self.total)
