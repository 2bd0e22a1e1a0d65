"""Issue 20, item 8: spec args cannot override the flags the operator sets; the policy field
takes what the gateway accepts."""

from __future__ import annotations

import argparse
from typing import Any

import pydantic
import pytest

from block import cli
from block.operator.blockcluster import children, crd_objects, flags, meta, specs
from block.simulator.policies import make_policy

BASE: dict[str, Any] = {"model": "llama-2-7b", "engine": {"kind": "twin", "gpu": "a100"}}


def _spec(**patch: Any) -> specs.BlockClusterSpec:
    return specs.BlockClusterSpec.model_validate({**BASE, **patch})


@pytest.mark.parametrize(
    ("field", "args"),
    [
        ("scheduler", ["--discover", "static", "--replicas", "http://169.254.169.254/latest"]),
        ("scheduler", ["--disc=static"]),  # argparse takes unambiguous abbreviations
        ("scheduler", ["--admin-token-file", "/tmp/mine"]),
        ("scheduler", ["--api-keys-file=/dev/null"]),
        ("scheduler", ["--policy", "random"]),
        ("scheduler", ["--host", "0.0.0.0", "--port", "80"]),
        ("predictor", ["--engine-url", "http://evil:1"]),
        ("predictor", ["--max-num-seqs", "1"]),  # the twin's scheduler must match the engine's
        ("engine", ["--host=0.0.0.0"]),
        ("engine", ["-tp", "2"]),
        ("engine", ["--max_num_seqs", "8"]),  # vLLM reads _ as -
    ],
)
def test_args_setting_operator_flags_are_refused(field: str, args: list[str]) -> None:
    extra = {"kind": "twin", "gpu": "a100"} if field == "engine" else {}
    with pytest.raises(pydantic.ValidationError, match="must not set flags the operator sets"):
        _spec(**{field: {**extra, "args": args}})


def test_other_args_pass_and_come_last() -> None:
    spec = _spec(
        scheduler={"args": ["--k", "3", "--envoy-concurrency=1", "--slo-slack", "1.2"]},
        predictor={"args": ["--served-model-name", "x"]},
        engine={"kind": "twin", "gpu": "a100", "args": ["--noise-sigma", "0.1"]},
    )
    cluster = meta.ClusterRef(name="demo", namespace="ns", uid="u")
    objs = children.render(cluster, spec, meta.RenderSettings(block_image="b:t"))
    gateway = [o for o in objs if o["metadata"]["name"] == "demo-scheduler"][-1]
    args = gateway["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-5:] == ["--k", "3", "--envoy-concurrency=1", "--slo-slack", "1.2"]


def _options(command: str) -> set[str]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {o for a in sub.choices[command]._actions for o in a.option_strings if o != "-h"}


@pytest.mark.parametrize(
    ("command", "reserved"),
    [
        ("gateway", flags.SCHEDULER),
        ("epp", flags.SCHEDULER),
        ("predictor", flags.PREDICTOR),
        ("engine", flags.ENGINE),
    ],
)
def test_reserved_lists_refuse_no_other_flag_of_the_command(
    command: str, reserved: tuple[str, ...]
) -> None:
    options = _options(command)
    allowed = options - set(reserved)
    # No flag the user may set is caught by the prefix rule, and every reserved flag that the
    # command has is caught (the others are vLLM's spellings).
    assert flags.refused(sorted(allowed), reserved) == []
    assert set(flags.refused(sorted(options & set(reserved)), reserved)) == options & set(reserved)


def test_every_flag_the_operator_renders_is_reserved() -> None:
    spec = _spec(
        engine={"kind": "twin", "gpu": "a100", "scheduling": {"maxNumSeqs": 8, "blockSize": 16,
                "maxNumBatchedTokens": 512, "enablePrefixCaching": False}},
        scheduler={"apiKeys": {"secretName": "keys"}},
    )  # fmt: skip
    cluster = meta.ClusterRef(name="demo", namespace="ns", uid="u")
    reserved = {"engine": flags.ENGINE, "predictor": flags.PREDICTOR,
                "scheduler": flags.SCHEDULER, "epp": flags.SCHEDULER}  # fmt: skip
    allowed_defaults = {"--envoy-concurrency"}  # a default the args may change (documented)
    for obj in children.render(cluster, spec, meta.RenderSettings("b:t"), inference_pool=True):
        if obj["kind"] != "Deployment":
            continue
        for c in obj["spec"]["template"]["spec"]["containers"]:
            set_flags = {a.split("=")[0] for a in c["args"] if a.startswith("-")}
            assert set_flags - set(reserved[c["name"]]) <= allowed_defaults, c["name"]


@pytest.mark.parametrize(
    "policy",
    ["block", "block-ttft", "prefix-affinity", "power-of-k", "power-of-4", "block-k", "block-k3",
     "llumnix", "least-requests", "least-kv", "round-robin", "random"],
)  # fmt: skip
def test_policies_the_gateway_accepts_are_accepted(policy: str) -> None:
    assert _spec(scheduler={"policy": policy}).scheduler.policy == policy
    name = {"power-of-k": "power-of-2", "block-k": "block-k2"}.get(policy, policy)
    assert make_policy(name).prefix_index is None  # what the gateway refuses otherwise


@pytest.mark.parametrize(
    "policy", ["llm-d-scorers", "dynamo-kv", "aibrix-prefix", "sglang-cache-aware", "power-of-0",
               "block-k0", "power-of-1000", "fastest", "power-of-", "Block"]
)  # fmt: skip
def test_offline_only_and_unknown_policies_are_refused(policy: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"scheduler\.policy must be one of"):
        _spec(scheduler={"policy": policy})


def test_cel_rules_carry_the_same_lists() -> None:
    schema = crd_objects.spec_schema()
    sched = schema["properties"]["scheduler"]["properties"]
    rule = sched["policy"]["x-kubernetes-validations"][0]["rule"]
    assert specs.POLICY_PATTERN in rule
    for policy in specs.POLICIES:
        assert f"'{policy}'" in rule
    for where, reserved in (
        (sched["args"], flags.SCHEDULER),
        (schema["properties"]["predictor"]["properties"]["args"], flags.PREDICTOR),
        (schema["properties"]["engine"]["properties"]["args"], flags.ENGINE),
    ):
        assert where["items"]["x-kubernetes-validations"][0]["rule"] == flags.cel_rule(reserved)
