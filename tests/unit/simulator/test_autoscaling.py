"""The autoscaler's decision function on constructed replica states (real A100 profile)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from block.simulator import autoscaling, elastic
from block.simulator.forecasting import HoltParams, holt_forecast, holt_update
from block.simulator.latency import LatencyModel
from block.simulator.replica import Replica, ReplicaConfig
from block.simulator.requests import Request

CFG = ReplicaConfig("sarathi", max_num_batched_tokens=512, max_num_seqs=48)
SIZES = [(1000, 150), (600, 250), (1500, 80), (300, 300)]  # Azure-conv-like mix


def replicas(latency: LatencyModel, n: int, queued: int = 0, now: float = 0.0) -> list[Replica]:
    out = []
    for i in range(n):
        r = Replica(latency, CFG, i)
        for j in range(queued):
            p, o = SIZES[j % len(SIZES)]
            r.submit(Request(1000 * i + j, now, p, o), now)
        out.append(r)
    return out


def config(**kw: object) -> autoscaling.AutoscalerConfig:
    base: dict[str, object] = dict(
        slo_ttft_s=1.0, min_replicas=2, max_replicas=12, lead_s=10.0, window_s=20.0,
        interval_s=5.0, stabilisation_s=30.0, max_sim_requests=1200,
    )  # fmt: skip
    base.update(kw)
    return autoscaling.AutoscalerConfig(**base)  # type: ignore[arg-type]


def observe(
    latency: LatencyModel, now: float, rate: float, reps: list[Replica], starting: int = 0
) -> autoscaling.Observation:
    return autoscaling.Observation(
        now_s=now,
        arrivals=round(rate * 5.0),
        interarrival_cv=1.0,
        sizes=SIZES,
        replicas=reps,
        starting_ready_s=[now + 5.0] * starting,
    )


def run_steps(
    latency: LatencyModel,
    cfg: autoscaling.AutoscalerConfig,
    rates: list[float],
    n: int,
    state: autoscaling.ScalerState | None = None,
) -> tuple[list[autoscaling.Decision], autoscaling.ScalerState]:
    """Feed one rate per interval; the cluster follows each decision (idle replicas)."""
    state = state or autoscaling.ScalerState()
    decisions = []
    for k, rate in enumerate(rates):
        d, state = autoscaling.decide(state, observe(latency, 5.0 * (k + 1), rate,
                                                     replicas(latency, n)), cfg)  # fmt: skip
        decisions.append(d)
        n = d.replicas
    return decisions, state


def test_holt_follows_a_ramp_and_damps_the_trend() -> None:
    params = HoltParams()
    state = None
    for k in range(20):
        state = holt_update(state, 10.0 + 2.0 * k, params)
    assert state is not None
    assert state.trend > 1.0  # learned the upward trend
    ahead = holt_forecast(state, 4, params)
    assert ahead > state.level  # extrapolates the ramp...
    assert ahead < state.level + 4 * state.trend  # ...damped
    assert holt_forecast(holt_update(None, 5.0, params), 3, params) == 5.0


def test_rising_load_scales_up_at_once(latency: LatencyModel) -> None:
    cfg = config()
    decisions, _ = run_steps(latency, cfg, [8.0, 30.0, 45.0], n=3)
    assert decisions[-1].replicas > 3
    up = next(d for d in decisions if d.replicas > 3)
    assert up.reason.startswith("scale up")
    assert up.predicted[3] > cfg.headroom * 1.0  # the explanation shows why
    assert "N=3" in up.explain()


def test_falling_load_scales_down_only_after_the_window(latency: LatencyModel) -> None:
    cfg = config(stabilisation_s=30.0)
    high, state = run_steps(latency, cfg, [40.0] * 3, n=10)
    n = high[-1].replicas
    low, _ = run_steps(latency, cfg, [3.0] * 12, n=n, state=state)
    # The recommendations drop at once, the target only after 30 s (6 intervals).
    assert low[0].recommended < n
    assert all(d.replicas >= n for d in low[:5])
    assert low[-1].replicas < n
    # At most max_down per interval.
    seq = [n] + [d.replicas for d in low]
    assert all(a - b <= cfg.max_down for a, b in itertools.pairwise(seq))


def test_bounds_hold(latency: LatencyModel) -> None:
    cfg = config(min_replicas=3, max_replicas=5, stabilisation_s=5.0)
    up, _ = run_steps(latency, cfg, [200.0] * 3, n=4)
    assert all(d.replicas <= 5 for d in up) and up[-1].replicas == 5
    down, _ = run_steps(latency, cfg, [0.1] * 8, n=5)
    assert all(d.replicas >= 3 for d in down) and down[-1].replicas == 3


def test_lead_time_decides_whether_new_replicas_help(latency: LatencyModel) -> None:
    # Two replicas with a backlog, more load than they can take: the prediction at 4 replicas
    # depends on when the two new ones join.
    now = 50.0
    reps = replicas(latency, 2, queued=40, now=now)
    obs = observe(latency, now, 20.0, reps)
    quick = autoscaling.predict_quantile(obs, 4, autoscaling.synthetic_arrivals(
        obs, [20.0] * 6, config(lead_s=0.0)), config(lead_s=0.0))  # fmt: skip
    slow_cfg = config(lead_s=25.0)
    stream = autoscaling.synthetic_arrivals(obs, [20.0] * 6, slow_cfg)
    slow = autoscaling.predict_quantile(obs, 4, stream, slow_cfg)
    # Replicas that join after 25 s leave the backlog to build on the two live ones.
    assert quick < slow


def test_victims_are_starting_then_least_work(latency: LatencyModel) -> None:
    now = 10.0
    reps = replicas(latency, 3, now=now)
    for j in range(20):
        reps[0].submit(Request(10_000 + j, now, 900, 200), now)
        if j < 2:
            reps[2].submit(Request(20_000 + j, now, 300, 20), now)
    obs = observe(latency, now, 1.0, reps, starting=1)
    assert autoscaling.pick_victims(obs, 1) == (1, ())
    assert autoscaling.pick_victims(obs, 2) == (1, (1,))  # idle replica 1 first
    assert autoscaling.pick_victims(obs, 3) == (1, (1, 2))


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        autoscaling.AutoscalerConfig(slo_ttft_s=None, slo_e2e_s=None)
    with pytest.raises(ValueError):
        autoscaling.AutoscalerConfig(min_replicas=5, max_replicas=4)
    assert dataclasses.replace(config(), headroom=1.0).headroom == 1.0


def test_elastic_cluster_drains_before_removal(latency: LatencyModel) -> None:
    reqs = [Request(i, 0.05 * i, 800, 100) for i in range(200)]  # 10 s at 20 req/s
    res = elastic.simulate_elastic(
        latency, CFG, reqs, elastic.Fixed(2), initial=4, lead_s=5.0, interval_s=2.0
    )
    assert res.aborted == 0
    assert len(res.records) == len(reqs)  # scale-down lost nothing
    assert res.timeline[0][1] == 2  # two of four drained at the first control step
