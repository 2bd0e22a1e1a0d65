"""Prometheus metrics of the estimator service, one registry per app (no global collectors)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True)
class EstimatorMetrics:
    registry: CollectorRegistry
    requests: Counter
    prompts: Counter
    latency: Histogram
    predicted_tokens: Histogram

    @classmethod
    def create(cls) -> EstimatorMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "block_estimator_requests_total",
                "Estimate requests by outcome (ok, invalid, error).",
                ["outcome"],
                registry=registry,
            ),
            prompts=Counter(
                "block_estimator_prompts_total", "Prompts estimated.", registry=registry
            ),
            latency=Histogram(
                "block_estimator_request_seconds",
                "Time to estimate one request's prompts, seconds.",
                buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
                registry=registry,
            ),
            predicted_tokens=Histogram(
                "block_estimator_predicted_tokens",
                "Predicted median reply length, tokens.",
                buckets=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
                registry=registry,
            ),
        )
