"""Capacity search: the highest load whose tail latency stays under an SLO.

The objective (P99 TTFT at a QPS) is measured by simulation, so it is noisy and only roughly
monotone; the search assumes monotonicity, the capacity by doubling or halving from
a starting guess, then bisects until the bracket is narrower than `rel_tol` of its low end.
Every measured point is kept so the latency-vs-QPS curve comes for free.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class SearchResult:
    capacity_qps: float  # highest QPS measured under the SLO (0 if none was)
    failing_qps: float  # lowest QPS measured over it (inf if none was)
    points: dict[float, float] = field(default_factory=dict)  # qps -> objective

    @property
    def evaluations(self) -> int:
        return len(self.points)


def find_capacity(
    objective: Callable[[float], float],
    slo: float,
    start_qps: float,
    rel_tol: float = 0.02,
    max_evals: int = 16,
    min_qps: float = 1e-3,
    max_qps: float = 1e6,
    growth: float = 1.5,
) -> SearchResult:
    """Bracket, then bisect, the QPS at which `objective(qps)` crosses `slo`."""
    if start_qps <= 0 or slo <= 0 or rel_tol <= 0 or growth <= 1:
        raise ValueError("start_qps, slo and rel_tol must be positive and growth above 1")
    res = SearchResult(0.0, math.inf)

    def meets(qps: float) -> bool:
        value = objective(qps)
        res.points[qps] = value
        ok = value <= slo
        if ok:
            res.capacity_qps = max(res.capacity_qps, qps)
        else:
            res.failing_qps = min(res.failing_qps, qps)
        return ok

    qps = start_qps
    if meets(qps):
        while res.failing_qps == math.inf and res.evaluations < max_evals:
            qps *= growth
            if qps > max_qps:
                break
            meets(qps)
    else:
        while res.capacity_qps == 0.0 and res.evaluations < max_evals:
            qps /= growth
            if qps < min_qps:
                return res
            meets(qps)
    while (
        res.evaluations < max_evals
        and res.failing_qps < math.inf
        and res.failing_qps - res.capacity_qps > rel_tol * res.capacity_qps
    ):
        meets((res.capacity_qps + res.failing_qps) / 2)
    return res
