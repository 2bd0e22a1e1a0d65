"""The Grafana dashboard shipped with the chart reads metrics that exist, with their labels."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from block.predictor.metrics import PREDICTOR_GAUGES, PredictorMetrics
from block.scheduler.metrics import SchedulerMetrics

DASHBOARD = Path(__file__).parents[3] / "charts/block/dashboards/block-gateway.json"
SERIES = re.compile(r"\b(block_(?:scheduler|predictor)_[a-z0-9_]+)")


def known_series(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Sample names (with _bucket, _total, ...) and the labels each may carry."""
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
        if family.type == "histogram":  # histograms with labels have no sample until observed
            for suffix in ("_bucket", "_count", "_sum"):
                out.setdefault(family.name + suffix, set())
        out.setdefault(family.name + ("_total" if family.type == "counter" else ""), set())
    return out


def test_dashboard_reads_existing_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    metrics = SchedulerMetrics.create()
    gateway = known_series(metrics.registry)
    predictor = known_series(PredictorMetrics.create(lambda: {}).registry)  # type: ignore[arg-type]
    predictor.update({g: set() for g in PREDICTOR_GAUGES})
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    used = {m for e in exprs for m in SERIES.findall(e)}
    unknown = used - set(gateway) - set(predictor)
    assert not unknown, f"dashboard reads metrics nobody exports: {sorted(unknown)}"
    # Every block_scheduler_* family appears on the dashboard.
    families = {f.name for f in metrics.registry.collect()}
    shown = {re.sub(r"_(bucket|total|count|sum)$", "", m) for m in used}
    assert families <= shown, f"not on the dashboard: {sorted(families - shown)}"
