"""Prometheus metrics of the gateway, one registry per app (no global collectors).

Labels stay few-valued: `policy`, `replica` (a replica's name: pod name or host:port),
`endpoint`, `code`, `reason`. Never a request id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

# Decision latency lives around a few ms (the predictor deadline); finer buckets there.
DECISION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025,
    0.05, 0.1,
)  # fmt: skip
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


@dataclass(frozen=True)
class SchedulerMetrics:
    registry: CollectorRegistry
    requests: Counter
    decisions: Counter
    decision_seconds: Histogram
    fallbacks: Counter
    predictor_timeouts: Counter
    predictor_errors: Counter
    predictor_seconds: Histogram
    upstream_errors: Counter
    retries: Counter
    rejected: Counter
    ttft_seconds: Histogram
    e2e_seconds: Histogram
    estimate_seconds: Histogram
    estimated_output_tokens: Histogram
    length_fallbacks: Counter
    inflight: Gauge
    replicas: Gauge
    _children: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict)
    _inflight_names: set[str] = field(default_factory=set)

    def child(self, metric: M, *values: str) -> M:
        """`metric.labels(*values)`, memoised: the request path asks for the same few children
        thousands of times a second, and `labels()` validates and locks on every call."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def set_inflight(self, counts: Mapping[str, int]) -> None:
        """Set the in-flight gauge from the replicas' own counts, at scrape time: moving a
        gauge up and down on every request costs two locked updates on the request path.
        Replicas no longer known lose their series."""
        for name in self._inflight_names - counts.keys():
            self.inflight.remove(name)
            self._children.pop((id(self.inflight), (name,)), None)
        for name, n in counts.items():
            self.child(self.inflight, name).set(n)
        self._inflight_names.clear()
        self._inflight_names.update(counts)

    @classmethod
    def create(cls) -> SchedulerMetrics:
        r = CollectorRegistry()
        return cls(
            registry=r,
            requests=Counter(
                "block_scheduler_requests_total",
                "Requests answered, by endpoint and HTTP status code.",
                ["endpoint", "code"],
                registry=r,
            ),
            decisions=Counter(
                "block_scheduler_decisions_total",
                "Routing decisions, by policy and chosen replica.",
                ["policy", "replica"],
                registry=r,
            ),
            decision_seconds=Histogram(
                "block_scheduler_decision_seconds",
                "Time to choose a replica (predictor fan-out included), seconds.",
                ["policy"],
                buckets=DECISION_BUCKETS,
                registry=r,
            ),
            fallbacks=Counter(
                "block_scheduler_fallbacks_total",
                "Decisions made by the load-based fallback, by reason.",
                ["policy", "reason"],
                registry=r,
            ),
            predictor_timeouts=Counter(
                "block_scheduler_predictor_timeouts_total",
                "Predictions that missed the per-request deadline, by replica.",
                ["replica"],
                registry=r,
            ),
            predictor_errors=Counter(
                "block_scheduler_predictor_errors_total",
                "Predictions that failed (connection, HTTP status, bad body), by replica.",
                ["replica"],
                registry=r,
            ),
            predictor_seconds=Histogram(
                "block_scheduler_predictor_seconds",
                "Round trip of one /v1/predict call that answered, seconds.",
                buckets=DECISION_BUCKETS,
                registry=r,
            ),
            upstream_errors=Counter(
                "block_scheduler_upstream_errors_total",
                "Failed proxy attempts, by replica and reason (connect, status, read).",
                ["replica", "reason"],
                registry=r,
            ),
            retries=Counter(
                "block_scheduler_retries_total",
                "Requests sent again to another replica before any byte reached the client.",
                registry=r,
            ),
            rejected=Counter(
                "block_scheduler_rejected_total",
                "Requests refused with 429, by reason (slo, queue).",
                ["reason"],
                registry=r,
            ),
            ttft_seconds=Histogram(
                "block_scheduler_ttft_seconds",
                "Time to a streamed answer's headers (its first token), as the picker sees it, "
                "seconds.",
                ["endpoint"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            e2e_seconds=Histogram(
                "block_scheduler_e2e_seconds",
                "Time from request to last byte, successful requests, seconds.",
                ["endpoint"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            estimate_seconds=Histogram(
                "block_scheduler_length_estimate_seconds",
                "Time to estimate a response length (estimator thread included), seconds.",
                buckets=DECISION_BUCKETS,
                registry=r,
            ),
            estimated_output_tokens=Histogram(
                "block_scheduler_estimated_output_tokens",
                "Response-length estimates used for routing, tokens.",
                buckets=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
                registry=r,
            ),
            length_fallbacks=Counter(
                "block_scheduler_length_fallbacks_total",
                "Requests routed on the length prior although the estimator is on, by reason "
                "(busy: too many estimates queued; error: the estimator refused the prompt).",
                ["reason"],
                registry=r,
            ),
            inflight=Gauge(
                "block_scheduler_inflight_requests",
                "Requests this picker sent that have not ended yet, by replica.",
                ["replica"],
                registry=r,
            ),
            replicas=Gauge(
                "block_scheduler_replicas",
                "Replicas known, by state (routable, unready, backoff, draining).",
                ["state"],
                registry=r,
            ),
        )
