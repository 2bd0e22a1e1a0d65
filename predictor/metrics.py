"""Prometheus metrics of the engine twin (vLLM's names) and of the predictor sidecar
(`block_predictor_*`), one registry per app.

The engine twin speaks vLLM's dialect on purpose (`vllm:num_requests_running`,
`vllm:kv_cache_usage_perc` holding a 0-1 ratio despite its name, ...), so that dashboards,
the sidecar's reconciler and the gateway read it like a real vLLM. Load gauges are computed at
scrape time from the live state, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# vLLM's own buckets for these histograms.
VLLM_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
VLLM_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
VLLM_TPOT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)

LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
# Prediction compute time lives in tens to hundreds of microseconds.
PREDICT_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
)  # fmt: skip
# Signed error (predicted - actual), seconds: symmetric, fine near zero.
ERROR_BUCKETS = (
    -30.0, -10.0, -5.0, -2.0, -1.0, -0.5, -0.25, -0.1, -0.05, -0.025, -0.01, 0.0, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
# |predicted - actual| / actual.
RATIO_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)

Gauges = Callable[[], dict[str, float]]


class GaugeCollector(Collector):
    """Gauges (or counters) read at scrape time: `values()` returns {name: value}."""

    def __init__(
        self,
        help_texts: dict[str, str],
        values: Gauges,
        labels: dict[str, str],
        counter: bool = False,
    ) -> None:
        self._help = help_texts
        self._values = values
        self._labels = labels
        self._family = CounterMetricFamily if counter else GaugeMetricFamily

    def collect(self) -> Iterator[Metric]:
        names = list(self._labels)
        for name, value in self._values().items():
            g = self._family(name, self._help.get(name, name), labels=names)
            g.add_metric([self._labels[k] for k in names], value)
            yield g


# ---------------------------------------------------------------------------------- engine
ENGINE_GAUGES = {
    "vllm:num_requests_running": "Number of requests in model execution batches.",
    "vllm:num_requests_waiting": "Number of requests waiting to be processed.",
    "vllm:kv_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
    "vllm:gpu_cache_usage_perc": "GPU KV-cache usage (vLLM v0 name). 1 means 100 percent usage.",
}


@dataclass(frozen=True)
class EngineMetrics:
    registry: CollectorRegistry
    prompt_tokens: Counter
    generation_tokens: Counter
    request_success: Counter
    ttft: Histogram
    e2e: Histogram
    queue: Histogram
    inter_token: Histogram
    request_prompt_tokens: Histogram
    request_generation_tokens: Histogram
    clock_lag: Histogram
    model_name: str

    @classmethod
    def create(
        cls, model_name: str, load: Gauges, counters: Gauges, cache_info: dict[str, str]
    ) -> EngineMetrics:
        r = CollectorRegistry()
        labels = ["model_name"]
        r.register(GaugeCollector(ENGINE_GAUGES, load, {"model_name": model_name}))
        r.register(
            GaugeCollector(
                {"vllm:num_preemptions": "Cumulative number of preemptions."},
                counters,
                {"model_name": model_name},
                counter=True,
            )
        )
        r.register(
            GaugeCollector(
                {"vllm:cache_config_info": "Information of the KV cache configuration."},
                lambda: {"vllm:cache_config_info": 1.0},
                cache_info,
            )
        )

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        return cls(
            registry=r,
            prompt_tokens=Counter(
                "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=r
            ),
            generation_tokens=Counter(
                "vllm:generation_tokens",
                "Number of generation tokens processed.",
                labels,
                registry=r,
            ),
            request_success=Counter(
                "vllm:request_success",
                "Count of successfully processed requests.",
                [*labels, "finished_reason"],
                registry=r,
            ),
            ttft=hist(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                VLLM_TTFT_BUCKETS,
            ),
            e2e=hist(
                "vllm:e2e_request_latency_seconds",
                "Histogram of end to end request latency in seconds.",
                VLLM_LATENCY_BUCKETS,
            ),
            queue=hist(
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                VLLM_LATENCY_BUCKETS,
            ),
            inter_token=hist(
                "vllm:time_per_output_token_seconds",
                "Histogram of time per output token in seconds.",
                VLLM_TPOT_BUCKETS,
            ),
            request_prompt_tokens=hist(
                "vllm:request_prompt_tokens",
                "Number of prefill tokens processed.",
                TOKEN_BUCKETS,
            ),
            request_generation_tokens=hist(
                "vllm:request_generation_tokens",
                "Number of generation tokens processed.",
                TOKEN_BUCKETS,
            ),
            clock_lag=Histogram(
                "block_engine_clock_lag_seconds",
                "How late the engine twin's clock reached the end of each simulated step "
                "(tokens are sent that much later than simulated; large values mean the "
                "twin is short of CPU).",
                buckets=LAG_BUCKETS,
                registry=r,
            ),
            model_name=model_name,
        )


# ---------------------------------------------------------------------------------- predictor
PREDICTOR_GAUGES = {
    "block_predictor_inflight_requests": "Requests proxied to the engine and not finished.",
    "block_predictor_twin_running_requests": "Running requests in the live twin.",
    "block_predictor_twin_waiting_requests": "Waiting requests in the live twin.",
    "block_predictor_twin_kv_used_ratio": "KV blocks the live twin holds, share of all.",
    "block_predictor_engine_running_requests": "vllm:num_requests_running at the last scrape.",
    "block_predictor_engine_waiting_requests": "vllm:num_requests_waiting at the last scrape.",
    "block_predictor_engine_kv_used_ratio": "vllm:kv_cache_usage_perc at the last scrape.",
    "block_predictor_drift_running_requests": "Engine minus twin running requests (last scrape).",
    "block_predictor_drift_waiting_requests": "Engine minus twin waiting requests (last scrape).",
    "block_predictor_drift_kv_used_ratio": "Engine minus twin KV usage ratio (last scrape).",
    "block_predictor_state_age_seconds": "Time since the engine was last heard from.",
    "block_predictor_engine_up": "1 if the engine answered its last scrape, else 0.",
}


@dataclass(frozen=True, slots=True)
class CalibrationFigures:
    """The online step-model fit as the sidecar exports it."""

    coefficients: dict[str, float]
    fit_error: float | None
    step_error: float | None
    clean_steps: int
    skipped_steps: dict[str, int]
    refits: int
    ttft_offset_s: float = 0.0


class CalibrationCollector(Collector):
    """`block_predictor_step_model_*`: the fitted coefficients, the fit's error, the error of
    recent step predictions and how many observed steps were usable."""

    def __init__(self, figures: Callable[[], CalibrationFigures | None]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        f = self._figures()
        if f is None:
            return
        coef = GaugeMetricFamily(
            "block_predictor_step_model_coefficient",
            "Fitted step-time model: step_s = profile x profile_time + constant_s + "
            "per_token_s x tokens + per_sequence_s x sequences + per_decode_kv_token_s x "
            "decode KV + per_prefill_pair_s x prefill pairs + per_prefill_chunk_s x prefill "
            "chunks (term: which coefficient).",
            labels=["term"],
        )
        for term, value in f.coefficients.items():
            coef.add_metric([term], value)
        yield coef
        if f.fit_error is not None:
            yield GaugeMetricFamily(
                "block_predictor_step_model_fit_error_ratio",
                "Weighted median |fitted - observed| / observed over the fit's window.",
                value=f.fit_error,
            )
        if f.step_error is not None:
            yield GaugeMetricFamily(
                "block_predictor_step_prediction_error_ratio",
                "Median |predicted - observed| / observed step time of the last 200 clean "
                "steps, each predicted by the model in use when it ran.",
                value=f.step_error,
            )
        yield GaugeMetricFamily(
            "block_predictor_ttft_offset_seconds",
            "Added to predicted TTFT and e2e: median observed minus predicted TTFT of recent "
            "streamed requests (the engine's work outside its steps).",
            value=f.ttft_offset_s,
        )
        steps = CounterMetricFamily(
            "block_predictor_observed_steps",
            "Engine steps seen in the streamed tokens, by result (clean: used by the fit; "
            "else why not).",
            labels=["result"],
        )
        steps.add_metric(["clean"], f.clean_steps)
        for reason, n in sorted(f.skipped_steps.items()):
            steps.add_metric([reason], n)
        yield steps
        yield CounterMetricFamily(
            "block_predictor_step_model_refits",
            "Times the step-time model was refitted.",
            value=f.refits,
        )


class LabelledGauges(Collector):
    """One gauge family with one label, its values read at scrape time."""

    def __init__(
        self, name: str, doc: str, label: str, values: Callable[[], dict[str, float]]
    ) -> None:
        self._name, self._doc, self._label, self._values = name, doc, label, values

    def collect(self) -> Iterator[Metric]:
        values = self._values()
        if values:
            g = GaugeMetricFamily(self._name, self._doc, labels=[self._label])
            for key, value in sorted(values.items()):
                g.add_metric([key], value)
            yield g


@dataclass(frozen=True)
class PredictorMetrics:
    registry: CollectorRegistry
    predict_seconds: Histogram
    predictions: Counter
    requests: Counter
    upstream_errors: Counter
    ttft_error: Histogram
    e2e_error: Histogram
    ttft_relative_error: Histogram
    e2e_relative_error: Histogram
    extensions: Counter
    resyncs: Counter
    scrapes: Counter

    @classmethod
    def create(
        cls,
        gauges: Gauges,
        calibration: Callable[[], CalibrationFigures | None] = lambda: None,
        mismatches: Callable[[], dict[str, float]] = dict,
    ) -> PredictorMetrics:
        r = CollectorRegistry()
        r.register(GaugeCollector(PREDICTOR_GAUGES, gauges, {}))
        r.register(CalibrationCollector(calibration))
        r.register(
            LabelledGauges(
                "block_predictor_engine_config_mismatch",
                "1 while a scheduler setting configured for the sidecar differs from what the "
                "engine reports (block_size, num_blocks, enable_prefix_caching), or the engine "
                "runs more sequences than max_num_seqs allows.",
                "setting",
                mismatches,
            )
        )
        return cls(
            registry=r,
            predict_seconds=Histogram(
                "block_predictor_predict_seconds",
                "CPU time to answer one /v1/predict (all its candidates), seconds.",
                buckets=PREDICT_BUCKETS,
                registry=r,
            ),
            predictions=Counter(
                "block_predictor_predictions_total", "Candidates predicted.", registry=r
            ),
            requests=Counter(
                "block_predictor_requests_total",
                "Proxied requests by outcome (completed, cancelled, upstream_error, rejected).",
                ["outcome"],
                registry=r,
            ),
            upstream_errors=Counter(
                "block_predictor_upstream_errors_total",
                "Failures talking to the engine, by kind (connect, timeout, disconnect, status).",
                ["kind"],
                registry=r,
            ),
            ttft_error=Histogram(
                "block_predictor_ttft_error_seconds",
                "Predicted minus actual TTFT of completed streamed requests, seconds.",
                buckets=ERROR_BUCKETS,
                registry=r,
            ),
            e2e_error=Histogram(
                "block_predictor_e2e_error_seconds",
                "Predicted minus actual end-to-end latency of completed requests, seconds.",
                buckets=ERROR_BUCKETS,
                registry=r,
            ),
            ttft_relative_error=Histogram(
                "block_predictor_ttft_relative_error_ratio",
                "|predicted - actual| / actual TTFT of completed streamed requests.",
                buckets=RATIO_BUCKETS,
                registry=r,
            ),
            e2e_relative_error=Histogram(
                "block_predictor_e2e_relative_error_ratio",
                "|predicted - actual| / actual end-to-end latency of completed requests.",
                buckets=RATIO_BUCKETS,
                registry=r,
            ),
            extensions=Counter(
                "block_predictor_length_extensions_total",
                "Times an in-flight request outran its length estimate and got a new one.",
                registry=r,
            ),
            resyncs=Counter(
                "block_predictor_resyncs_total",
                "Times the twin's progress of a request was reset to the tokens streamed.",
                registry=r,
            ),
            scrapes=Counter(
                "block_predictor_engine_scrapes_total",
                "Scrapes of the engine's /metrics, by result (ok, error).",
                ["result"],
                registry=r,
            ),
        )
