"""`block estimator train` then `eval` on a small real slice of ShareGPT (fast, for CI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from block import cli
from block.estimator import LengthEstimator, artifacts, evaluating, heads, training


@pytest.fixture(scope="module")
def trained(small_dump: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train")
    options = training.TrainOptions(
        out_dir=root / "artifact",
        cache_dir=root / "cache",
        source=small_dump,
        reuse_table_from=artifacts.default_dir(),
        head=heads.TrainConfig(hidden=16, epochs=30, patience=10),
    )
    training.train(options)
    return options.out_dir, options.cache_dir


def test_eval_reproduces_the_figures_written_at_training(
    trained: tuple[Path, Path], small_dump: Path
) -> None:
    out, cache = trained
    manifest = artifacts.load(out).manifest
    report = evaluating.evaluate_artifact(out, cache, small_dump)
    for key in ("mae", "mape", "within_50", "within_100"):
        assert report[key] == pytest.approx(manifest["eval_test"][key])
    assert report["num_examples"] == manifest["dataset"]["splits"]["test"] > 5
    assert set(report["baselines"]) == {"global_median", "prompt_length"}
    for r in [report, *report["baselines"].values()]:
        assert 0 <= r["within_50"] <= r["within_100"] <= 1
        assert r["mae"] > 0 and r["mape"] > 0
        cal = r["calibration"]
        assert 0 <= cal["below_p10"] <= cal["below_p50"] <= cal["below_p90"] <= 1


def test_trained_artifact_serves(trained: tuple[Path, Path]) -> None:
    est = LengthEstimator.load(trained[0])
    [e] = est.estimate(["Write a poem about the sea."])
    assert 1 <= e.p10_tokens <= e.p50_tokens <= e.p90_tokens
    assert est.name.startswith("minilm-static-")


def test_training_twice_gives_the_same_artifact(
    trained: tuple[Path, Path], small_dump: Path, tmp_path: Path
) -> None:
    options = training.TrainOptions(
        out_dir=tmp_path / "again",
        cache_dir=trained[1],
        source=small_dump,
        reuse_table_from=artifacts.default_dir(),
        head=heads.TrainConfig(hidden=16, epochs=30, patience=10),
    )
    training.train(options)
    a, b = artifacts.load(trained[0]), artifacts.load(options.out_dir)
    assert a.name == b.name
    x = np.ones((2, a.table.dim + 4), dtype=np.float32)
    np.testing.assert_allclose(a.head.predict_log(x), b.head.predict_log(x), rtol=1e-5)


def test_cli_eval_writes_json(trained: tuple[Path, Path], small_dump: Path, tmp_path: Path) -> None:
    out, cache = trained
    target = tmp_path / "eval.json"
    argv = ["estimator", "eval", "--artifact", str(out), "--cache-dir", str(cache)]
    rc = cli.main([*argv, "--source", str(small_dump), "--json", str(target)])
    assert rc == 0
    report = json.loads(target.read_text())
    assert {"mae", "mape", "within_50", "within_100", "calibration", "baselines"} <= set(report)


def test_cli_errors_are_messages_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(["estimator", "eval", "--artifact", str(tmp_path), "--cache-dir", str(tmp_path)])
    assert rc == 2
    assert "unreadable" in capsys.readouterr().err
    rc = cli.main(["estimator", "train", "--dim", "0", "--out", str(tmp_path)])
    assert rc == 2


def test_reference_predictions_are_scored_like_the_baselines(
    trained: tuple[Path, Path], small_dump: Path, tmp_path: Path
) -> None:
    out, cache = trained
    artifact = artifacts.load(out)
    n = artifact.manifest["dataset"]["num_examples"]
    prior = np.tile(np.asarray(artifact.prior_log, dtype=np.float32), (n, 1))
    np.save(tmp_path / "prior.npy", prior)
    report = evaluating.evaluate_artifact(out, cache, small_dump, {"prior": tmp_path / "prior.npy"})
    assert report["references"]["prior"] == report["baselines"]["global_median"]
    np.save(tmp_path / "short.npy", prior[:-1])
    with pytest.raises(ValueError, match="expected"):
        evaluating.evaluate_artifact(out, cache, small_dump, {"short": tmp_path / "short.npy"})
