"""`block operator crd|render`: what they print, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from block import cli
from block.operator.blockcluster import crd_objects

REPO = Path(__file__).resolve().parents[3]


def test_crd_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["operator", "crd"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == crd_objects.crd()


def test_render_prints_the_children_of_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    example = REPO / "manifests" / "examples" / "twin.yaml"
    assert cli.main(["operator", "render", str(example), "--image", "block:x"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "twin-demo-engine") in names
    assert ("Deployment", "twin-demo-scheduler") in names
    engine = next(
        d for d in docs if d["metadata"]["name"] == "twin-demo-engine" and d["kind"] == "Deployment"
    )
    assert engine["spec"]["replicas"] == 2
    images = {c["image"] for c in engine["spec"]["template"]["spec"]["containers"]}
    assert images == {"block:x"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("kind: Deployment\n", "is not a BlockCluster"),
        (
            "kind: BlockCluster\nspec: {model: m, engine: {kind: vllm}}\n",
            "engine.image is required",
        ),
        ("kind: BlockCluster\nspec: [\n", "cannot read"),
    ],
)
def test_render_bad_input_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert cli.main(["operator", "render", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_render_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["operator", "render", "/nonexistent/cluster.yaml"]) == 2
    assert "cannot read /nonexistent/cluster.yaml" in capsys.readouterr().err


def test_render_with_inference_pool_adds_the_picker_and_the_pool(
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = REPO / "manifests" / "examples" / "twin.yaml"
    argv = ["operator", "render", str(example), "--inference-pool", "--cluster-domain", "k.test"]
    assert cli.main(argv) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("InferencePool", "twin-demo-pool"), ("Deployment", "twin-demo-epp")} <= names
    gateway = next(d for d in docs if d["metadata"]["name"] == "twin-demo-scheduler"
                   and d["kind"] == "Deployment")  # fmt: skip
    args = gateway["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--replicas-dns") + 1].endswith(".svc.k.test:8000")
