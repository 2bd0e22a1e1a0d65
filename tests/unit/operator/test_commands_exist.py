"""Every `block` command line the chart and the renderers run parses with the real CLI, and the
Dockerfile installs that CLI (the image cannot be built here: no Docker engine)."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from block import cli
from block.operator.blockcluster import children, epp_objects, meta, specs

REPO = Path(__file__).resolve().parents[3]
# What Block's image is asked to run; the test below keeps this list equal to what is rendered.
COMMANDS_USED = {"engine", "predictor", "gateway", "epp", "operator"}


def _rendered_command_lines() -> list[list[str]]:
    lines = []
    cluster = meta.ClusterRef(name="demo", namespace="ns", uid="u")
    scheduling = {"maxNumSeqs": 64, "blockSize": 32, "enablePrefixCaching": False}
    for engine in (
        {"kind": "twin", "tensorParallel": 2, "scheduling": scheduling},
        {"kind": "vllm", "image": "v:1"},
    ):
        spec = specs.BlockClusterSpec.model_validate(
            {
                "model": "meta-llama/Llama-2-7b-hf",
                "engine": engine,
                "slo": {"ttftSeconds": 1},
                "scheduler": {"policy": "llumnix", "args": ["--envoy-concurrency", "1"]},
            }
        )
        settings = meta.RenderSettings(block_image="block:t")
        for obj in children.render(cluster, spec, settings, inference_pool=True):
            if obj["kind"] != "Deployment":
                continue
            for c in obj["spec"]["template"]["spec"]["containers"]:
                if c.get("command", [""])[0] == "block":
                    lines.append([*c["command"], *c.get("args", [])])
    deployment = yaml.safe_load((REPO / "manifests" / "operator" / "deployment.yaml").read_text())
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    lines.append([*operator["command"], *operator["args"]])
    return lines


def test_the_list_of_commands_is_what_is_rendered() -> None:
    assert {line[1] for line in _rendered_command_lines()} == COMMANDS_USED


@pytest.mark.parametrize("line", _rendered_command_lines(), ids=lambda line: " ".join(line[:3]))
def test_rendered_command_line_parses_with_the_block_cli(line: list[str]) -> None:
    parser = cli.build_parser()
    try:
        args = parser.parse_args(line[1:])
    except SystemExit as e:  # argparse's way of saying "unknown command or flag"
        raise AssertionError(f"`{' '.join(line)}` does not parse with the block CLI") from e
    assert callable(getattr(args, "handler", None)), line


def _options(command: str) -> set[str]:
    """The long flags `block COMMAND` takes, from the real parser."""
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {o for a in sub.choices[command]._actions for o in a.option_strings if o[:2] == "--"}


def test_flags_dropped_for_the_picker_are_exactly_the_gateway_only_ones() -> None:
    gateway, epp = _options("gateway"), _options("epp")
    assert gateway - epp == epp_objects.GATEWAY_ONLY_FLAGS
    # Each takes a value (`picker_args` drops the next argument with it).
    parser = cli.build_parser()
    base = ["gateway", "--replicas", "http://r:1"]
    for flag in epp_objects.GATEWAY_ONLY_FLAGS:
        with pytest.raises(SystemExit):
            parser.parse_args([*base, flag])


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def test_dockerfile_installs_the_block_command_and_every_component() -> None:
    pyproject: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["block"] == "block.cli:main"
    text = _dockerfile()
    copied = set(re.findall(r"^COPY (\S+)/ \1/$", text, re.MULTILINE))
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert folders <= copied, f"the image lacks {sorted(folders - copied)}"
    assert re.search(r"pip wheel .* \.$", text, re.MULTILINE), "the project is not built"
    assert "pip install --no-cache-dir /wheels/*.whl" in text
    assert 'ENTRYPOINT ["block"]' in text
    # The image builds from the repository alone: no extra build context, no outside folder.
    assert "--from=" not in text.replace("--from=build", "")
    assert "../" not in text


def test_dockerfile_is_slim_and_unprivileged() -> None:
    text = _dockerfile()
    assert "torch" not in re.sub(r"#.*", "", text)  # only the default dependencies
    assert "-slim" in text
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # The same UID the renderers' securityContext (runAsUser) promises.
    assert f"--uid {meta.BLOCK_UID} " in text and users[-1].startswith(str(meta.BLOCK_UID))


@pytest.mark.parametrize("kind", ["twin", "vllm"])
def test_engine_and_sidecar_get_the_same_scheduler_settings(kind: str) -> None:
    cluster = meta.ClusterRef(name="demo", namespace="ns", uid="u")
    scheduling = {"maxNumSeqs": 64, "maxNumBatchedTokens": 4096, "blockSize": 128,
                  "enablePrefixCaching": False}  # fmt: skip
    spec = specs.BlockClusterSpec.model_validate(
        {"model": "meta-llama/Llama-2-7b-hf",
         "engine": {"kind": kind, "image": "v:1", "scheduling": scheduling}}
    )  # fmt: skip
    flags = ["--max-num-seqs", "64", "--max-num-batched-tokens", "4096", "--block-size", "128",
             "--no-enable-prefix-caching"]  # fmt: skip
    (deploy,) = [
        o
        for o in children.render(cluster, spec, meta.RenderSettings(block_image="block:t"))
        if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("engine")
    ]
    containers = {c["name"]: c for c in deploy["spec"]["template"]["spec"]["containers"]}
    for name in ("engine", "predictor"):
        args = containers[name]["args"]
        i = args.index("--max-num-seqs")
        assert args[i : i + len(flags)] == flags, (name, args)
    # The predictor's own parser turns them into its settings.
    from block.predictor.settings import PredictorSettings

    parsed = cli.build_parser().parse_args(["predictor", *containers["predictor"]["args"]])
    overrides = {k: v for k, v in vars(parsed).items() if v is not None and k in
                 PredictorSettings.model_fields}  # fmt: skip
    settings = PredictorSettings(**overrides)
    assert (settings.max_num_seqs, settings.max_num_batched_tokens, settings.block_size) == (
        64, 4096, 128,
    )  # fmt: skip
    assert settings.enable_prefix_caching is False


def test_autoscaler_what_ifs_simulate_the_engine_scheduler() -> None:
    from block.operator.provisioning import replica_config
    from block.simulator.replica import ReplicaConfig

    base = ReplicaConfig()
    same = replica_config(specs.SchedulingSpec(), base)
    assert same == base
    mine = replica_config(
        specs.SchedulingSpec(max_num_seqs=32, block_size=128, enable_prefix_caching=False), base
    )
    assert (mine.max_num_seqs, mine.block_size, mine.enable_prefix_caching) == (32, 128, False)
    assert mine.max_num_batched_tokens == base.max_num_batched_tokens
