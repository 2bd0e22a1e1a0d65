"""Block's auto-provisioner: how many engine replicas the next window needs (pure).

Each control interval `decide(state, observation, config)`:

1. folds the interval's arrival rate into a Holt forecast (`forecasting`: level + damped trend,
   plus `burst_sigmas` of its one-step error as a burst margin);
2. draws one synthetic arrival stream for the coming `lead_s + window_s` seconds at the
   forecast rate, with the observed burstiness (Gamma gaps at the measured coefficient of
   variation) and sizes resampled from the recent request mix; every candidate sees the same
   stream (common random numbers), so comparisons between candidates are not noise;
3. forks the live replicas and simulates the cluster at N, then N-1, N-2, ... (while the SLO
   holds) or N+1, N+2, ... (until it holds): new replicas join after the start-up lead time,
   removed ones stop taking requests at once; the predicted quantile of TTFT (and e2e) counts
   the requests the decision can still affect (from `now + lead_s` when adding, from `now`
   when removing);
4. recommends the fewest replicas whose prediction is within `headroom` x SLO; scales up at
   once (at most `max_up` per interval), down only to the highest recommendation of the last
   `stabilisation_s` (at most `max_down` per interval), always within [min, max].

Scale-down names victims: replicas starting up are cancelled first, then the live replicas with
the least predicted remaining work (fork, run to idle). The caller drains them (stop routing,
wait until idle, bounded) before removing them. Everything here is computation on values; the
state is an immutable value returned with each decision.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from block.simulator.forecasting import HoltParams, HoltState, holt_forecast, holt_update
from block.simulator.replica import Replica
from block.simulator.requests import Request

ReplicaFactory = Callable[[int], Replica]


@dataclass(frozen=True, slots=True)
class AutoscalerConfig:
    slo_ttft_s: float | None = 1.0
    slo_e2e_s: float | None = None
    quantile: float = 0.99  # the SLO is on this quantile (p99)
    headroom: float = 0.8  # a candidate must predict <= headroom x SLO
    min_replicas: int = 1
    max_replicas: int = 16
    lead_s: float = 20.0  # start-up lead time of a new replica (load weights, warm up)
    window_s: float = 30.0  # simulated window after the lead time
    interval_s: float = 5.0  # control interval
    stabilisation_s: float = 60.0  # scale down only to the max recommendation of this window
    max_up: int = 4  # replicas added per interval at most
    max_down: int = 1  # replicas removed per interval at most
    burst_sigmas: float = 0.5  # forecast margin, in one-step forecast errors (level error:
    # the what-if already draws the arrivals' own noise, so a full sigma counts it twice)
    max_sim_requests: int = 3000  # synthetic requests per what-if at most (shortens the window)
    max_cv: float = 4.0  # cap on the burstiness used for synthetic arrivals
    holt: HoltParams = field(default_factory=HoltParams)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.slo_ttft_s is None and self.slo_e2e_s is None:
            raise ValueError("the autoscaler needs a TTFT or an e2e SLO")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if not 0 < self.headroom <= 1 or not 0 < self.quantile < 1:
            raise ValueError("headroom must lie in (0, 1] and quantile in (0, 1)")
        if self.interval_s <= 0 or self.window_s <= 0 or self.lead_s < 0:
            raise ValueError("interval and window must be positive, lead time non-negative")
        if self.max_up < 1 or self.max_down < 1:
            raise ValueError("max_up and max_down must be at least 1")


@dataclass(frozen=True)
class Observation:
    """What the autoscaler sees at `now_s`: the last interval's arrivals and the live replicas.

    `replicas` are the routable replicas' live states (simulator twins, or approximations built
    from load figures); `starting_ready_s` the times the replicas still starting will be ready.
    Draining replicas are not counted: they are on their way out.
    """

    now_s: float
    arrivals: int  # requests that arrived in the last interval
    interarrival_cv: float  # coefficient of variation of their gaps (1: Poisson)
    sizes: Sequence[tuple[int, int]]  # recent (prompt, output) tokens, the size mix
    replicas: Sequence[Replica]
    starting_ready_s: Sequence[float] = ()
    new_replica: ReplicaFactory | None = None  # a fresh replica (default: like replicas[0])

    @property
    def current(self) -> int:
        return len(self.replicas) + len(self.starting_ready_s)


@dataclass(frozen=True)
class ScalerState:
    forecast: HoltState | None = None
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, recommended) in the window


@dataclass(frozen=True)
class Decision:
    replicas: int  # the target now
    recommended: int  # before stabilisation and rate limits
    predicted: dict[int, float]  # candidate N -> predicted quantile TTFT (or e2e), seconds
    forecast_rps: float
    cancel_starting: int = 0  # replicas still starting to cancel (scale-down)
    victims: tuple[int, ...] = ()  # indices into Observation.replicas to drain and remove
    reason: str = ""

    def explain(self) -> str:
        preds = ", ".join(
            f"N={n}: {'inf' if math.isinf(p) else f'{p:.2f}s'}"
            for n, p in sorted(self.predicted.items())
        )
        return (
            f"{self.reason}; forecast {self.forecast_rps:.2f} req/s; "
            f"predicted p99 {preds}; recommended {self.recommended}, target {self.replicas}"
        )


def decide(
    state: ScalerState, obs: Observation, cfg: AutoscalerConfig
) -> tuple[Decision, ScalerState]:
    """One control step: the target replica count, victims, explanation, and the next state."""
    rate = obs.arrivals / cfg.interval_s
    forecast = holt_update(state.forecast, rate, cfg.holt)
    current = obs.current
    lead_steps = math.ceil(cfg.lead_s / cfg.interval_s)
    steps = lead_steps + max(1, math.ceil(cfg.window_s / cfg.interval_s))
    margin = cfg.burst_sigmas * forecast.error_std
    rates = [holt_forecast(forecast, h, cfg.holt) + margin for h in range(1, steps + 1)]
    # Keep the what-ifs cheap: shorten the measured window (never the lead) to the cap.
    while len(rates) > lead_steps + 1 and sum(rates) * cfg.interval_s > cfg.max_sim_requests:
        rates.pop()
    stream = synthetic_arrivals(obs, rates, cfg)
    predicted: dict[int, float] = {}

    def meets(n: int) -> bool:
        if n not in predicted:
            predicted[n] = predict_quantile(obs, n, stream, cfg)
        return predicted[n] <= cfg.headroom * _slo(cfg)

    lo, hi = cfg.min_replicas, cfg.max_replicas
    start = min(max(current, lo, 1), hi)
    if meets(start):
        recommended = start
        while recommended - 1 >= max(lo, 1) and current - (recommended - 1) <= 3 * cfg.max_down:
            if not meets(recommended - 1):
                break
            recommended -= 1
        if lo == 0 and recommended == 1 and not stream:
            recommended = 0  # nothing is coming: allow scale to zero
    else:
        recommended = start
        while recommended < min(hi, current + cfg.max_up):
            recommended += 1
            if meets(recommended):
                break
    now = obs.now_s
    if state.forecast is None:
        # The first decision: count the replicas the cluster has as recommended until now,
        # so a fresh autoscaler does not scale down before a full stabilisation window.
        state = ScalerState(None, ((now, current),))
    kept = tuple((t, r) for t, r in state.recommendations if t > now - cfg.stabilisation_s)
    kept = (*kept, (now, recommended))
    if recommended > current:
        target = min(recommended, current + cfg.max_up, hi)
        reason = "scale up: SLO at risk"
    else:
        stable = max(r for _, r in kept)  # the highest recommendation of the window
        target = min(max(stable, current - cfg.max_down, lo), current, hi)
        if target < current:
            reason = "scale down: SLO met with fewer replicas for the stabilisation window"
        elif recommended < current:
            reason = "hold: fewer would do, waiting out the stabilisation window"
        else:
            reason = "hold: SLO met"
    target = max(lo, min(hi, target))
    cancel, victims = 0, tuple[int, ...]()
    if target < current:
        cancel, victims = pick_victims(obs, current - target)
    decision = Decision(
        replicas=target,
        recommended=recommended,
        predicted=predicted,
        forecast_rps=rates[0],
        cancel_starting=cancel,
        victims=victims,
        reason=reason,
    )
    return decision, ScalerState(forecast, kept)


def _slo(cfg: AutoscalerConfig) -> float:
    return cfg.slo_ttft_s if cfg.slo_ttft_s is not None else float(cfg.slo_e2e_s or 0.0)


def synthetic_arrivals(
    obs: Observation, rates: Sequence[float], cfg: AutoscalerConfig
) -> list[Request]:
    """Requests over the coming intervals at `rates` (req/s per interval): Gamma gaps at the
    observed burstiness, sizes resampled from the recent mix. Deterministic per `now`."""
    if not obs.sizes:
        return []
    rng = random.Random(hash((cfg.seed, round(obs.now_s * 1000))))
    cv = min(max(obs.interarrival_cv, 0.5), cfg.max_cv)
    shape = 1.0 / (cv * cv)
    out: list[Request] = []
    t = obs.now_s
    for h, rate in enumerate(rates):
        end = obs.now_s + (h + 1) * cfg.interval_s
        if rate <= 0:
            t = end
            continue
        while True:
            t += rng.gammavariate(shape, 1.0 / (rate * shape))
            if t >= end:
                break
            prompt, output = obs.sizes[rng.randrange(len(obs.sizes))]
            out.append(Request(-1 - len(out), t, prompt, output))
        t = end
    return out


def routing_load(replica: Replica) -> tuple[int, int]:
    """The router's key: prompt tokens queued for prefill, then requests held. Queued prefill
    decides a newcomer's TTFT; a plain request count would flood a freshly joined replica."""
    return replica.waiting_prefill_tokens(), replica.num_running + replica.num_waiting


def _fresh(obs: Observation, index: int) -> Replica:
    if obs.new_replica is not None:
        return obs.new_replica(index)
    if not obs.replicas:
        raise ValueError("no replica to copy and no new_replica factory")
    template = obs.replicas[0]
    return Replica(template.latency, template.config, index)


def remaining_work_s(replica: Replica, now: float) -> float:
    """Predicted time until `replica` is idle if it takes nothing more."""
    fork = replica.fork()
    fork.advance_to(now)
    fork.run_until_idle()
    return max(0.0, fork.now - now) if not replica.idle else 0.0


def pick_victims(obs: Observation, count: int) -> tuple[int, tuple[int, ...]]:
    """Replicas to take away: starting ones first (cancelled), then the live ones with the
    least predicted remaining work (drained). Returns (cancelled, live victim indices)."""
    cancel = min(count, len(obs.starting_ready_s))
    rest = count - cancel
    if rest <= 0:
        return cancel, ()
    work = sorted((remaining_work_s(r, obs.now_s), i) for i, r in enumerate(obs.replicas))
    return cancel, tuple(i for _, i in work[:rest])


def predict_quantile(
    obs: Observation, n: int, stream: Sequence[Request], cfg: AutoscalerConfig
) -> float:
    """Predicted quantile TTFT (or e2e when only that SLO is set) with `n` replicas."""
    if not stream:
        return 0.0
    if n <= 0:
        return float("inf")
    now = obs.now_s
    current = obs.current
    if n >= current:
        ready = [now] * len(obs.replicas) + list(obs.starting_ready_s)
        ready += [now + cfg.lead_s] * (n - current)
        base = list(obs.replicas)
        reps = [r.fork() for r in base]
        reps += [_fresh(obs, len(base) + i) for i in range(len(ready) - len(base))]
        measure_from = now + cfg.lead_s
    else:
        cancel, victims = pick_victims(obs, current - n)
        keep_live = [r for i, r in enumerate(obs.replicas) if i not in victims]
        starting = sorted(obs.starting_ready_s)[: len(obs.starting_ready_s) - cancel]
        reps = [r.fork() for r in keep_live]
        reps += [_fresh(obs, len(keep_live) + i) for i in range(len(starting))]
        ready = [now] * len(keep_live) + starting
        measure_from = now
    return _simulate_window(reps, ready, stream, measure_from, cfg)


def _simulate_window(
    reps: list[Replica],
    ready: list[float],
    stream: Sequence[Request],
    measure_from: float,
    cfg: AutoscalerConfig,
) -> float:
    """Route `stream` to the least-loaded ready replica; return the measured quantile."""
    where: dict[int, Replica] = {}
    for req in stream:
        now = req.arrival_s
        best, best_load = -1, (1 << 62, 0)
        for i, r in enumerate(reps):
            if ready[i] > now:
                continue
            r.advance_to(now)
            load = routing_load(r)
            if load < best_load:
                best, best_load = i, load
        if best < 0:  # nobody ready yet: the first to be ready takes it
            best = min(range(len(reps)), key=lambda i: ready[i])
        reps[best].submit(req, max(now, ready[best]))
        where[req.rid] = reps[best]
    # Bounded: a request without its first token by then misses the SLO anyway.
    horizon = stream[-1].arrival_s + 4 * _slo(cfg) + (cfg.slo_e2e_s or 0.0)
    for r in reps:
        r.run_until_idle(horizon)
    ttfts: list[float] = []
    e2es: list[float] = []
    for req in stream:
        if req.arrival_s < measure_from:
            continue
        rec = where[req.rid].recorder
        first, fin = rec.first_token.get(req.rid), rec.finished.get(req.rid)
        ttfts.append(float("inf") if first is None else first - req.arrival_s)
        e2es.append(float("inf") if fin is None else fin - req.arrival_s)
    if not ttfts:
        return 0.0
    q = cfg.quantile
    if cfg.slo_ttft_s is None:
        return _quantile(e2es, q)
    if cfg.slo_e2e_s is None:
        return _quantile(ttfts, q)
    # Both SLOs: put the e2e quantile on the TTFT scale, so that one number decides.
    return max(_quantile(ttfts, q), _quantile(e2es, q) * cfg.slo_ttft_s / cfg.slo_e2e_s)


def _quantile(values: list[float], q: float) -> float:
    return float(np.quantile(np.array(values), q, method="higher"))
