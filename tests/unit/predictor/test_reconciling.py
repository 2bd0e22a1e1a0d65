"""Reading vLLM's /metrics: only the load gauges, summed over label sets."""

from __future__ import annotations

import pytest

from block.predictor.reconciling import parse_vllm_metrics

V1 = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="7390"} 1.0
vllm:e2e_request_latency_seconds_bucket{le="0.3",model_name="m"} 0.0
"""

V0 = """vllm:num_requests_running{model_name="m"} 1.0
vllm:num_requests_waiting{model_name="m"} 0.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.125
vllm:cache_config_info{block_size="32",num_gpu_blocks="None"} 1.0
"""


def test_v1_page_sums_engines_and_reads_the_cache() -> None:
    f = parse_vllm_metrics(V1)
    assert (f.num_running, f.num_waiting) == (5.0, 4.0)
    assert f.kv_used_ratio == pytest.approx(0.5)  # the engines' mean ratio
    assert (f.num_blocks, f.block_size) == (7390, 16)


def test_v0_names_and_unset_blocks() -> None:
    f = parse_vllm_metrics(V0)
    assert (f.num_running, f.num_waiting, f.kv_used_ratio) == (1.0, 0.0, 0.125)
    assert (f.num_blocks, f.block_size) == (None, 32)


def test_a_page_without_vllm_gauges_is_an_error() -> None:
    with pytest.raises(ValueError, match="num_requests"):
        parse_vllm_metrics("# nothing here\nprocess_cpu_seconds_total 3.0\n")
