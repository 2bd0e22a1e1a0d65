"""A profile is data: any hardware name with tables on the search path loads, with an optional
spec.json beside them for the analytic parts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from block import data
from block.errors import ConfigError
from block.simulator import hardware
from block.simulator.latency import LatencyModel
from block.simulator.models import get_model
from block.simulator.replica import Replica, ReplicaConfig

LLAMA2 = "meta-llama/Llama-2-7b-hf"


def _a40_tables(root: Path) -> Path:
    """An 'a40' folder holding real tables (H100's measured ones stand in for the numbers)."""
    folder = root / "a40" / LLAMA2
    shutil.copytree(data.PROFILES / "h100" / LLAMA2, folder)
    return folder


def test_new_hardware_loads_from_its_tables_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _a40_tables(tmp_path)
    monkeypatch.setenv("BLOCK_PROFILES_DIR", str(tmp_path))
    assert "a40" in hardware.known_hardware()
    spec = hardware.get_gpu("A40")
    assert spec.name == "a40" and spec.memory_bytes is None and spec.spec_source == "none"
    model = LatencyModel.load("a40", LLAMA2)
    h100 = LatencyModel.load("h100", LLAMA2)
    assert model.attention_label.startswith("measured:" + str(tmp_path / "a40"))
    assert model.batch_time_s([(512, 0)], [300] * 8) == h100.batch_time_s([(512, 0)], [300] * 8)
    # KV sizing needs a memory size: the engine's own block count will do.
    with pytest.raises(ConfigError, match="no memory size for hardware 'a40'"):
        Replica(model, ReplicaConfig("vllm"), 0)
    assert Replica(model, ReplicaConfig("vllm", num_blocks=1000), 0).num_blocks == 1000


def test_spec_file_gives_memory_and_roofline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _a40_tables(tmp_path)
    (folder / "attention.csv").unlink()  # no measured attention: the roofline needs the spec
    monkeypatch.setenv("BLOCK_PROFILES_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="no bf16_flops / hbm_bytes_per_s"):
        LatencyModel.load("a40", LLAMA2)
    # NVIDIA A40 data sheet: 48 GB GDDR6, 696 GB/s, 149.7 TFLOPS dense bf16.
    spec = {"memory_bytes": 48 * 10**9, "bf16_flops": 149.7e12, "hbm_bytes_per_s": 696e9}
    (tmp_path / "a40" / "spec.json").write_text(json.dumps(spec))
    model = LatencyModel.load("a40", LLAMA2)
    assert model.attention_label == "analytic-roofline"
    assert hardware.get_gpu("a40").spec_source.endswith("a40/spec.json")
    blocks = Replica(model, ReplicaConfig("vllm"), 0).num_blocks
    assert (
        0 < blocks < Replica(LatencyModel.load("a100", LLAMA2), ReplicaConfig("vllm"), 0).num_blocks
    )


def test_spec_file_overrides_a_data_sheet_field_by_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "h100").mkdir()
    (tmp_path / "h100" / "spec.json").write_text(json.dumps({"memory_bytes": 94 * 2**30}))
    monkeypatch.setenv("BLOCK_PROFILES_DIR", str(tmp_path))
    spec = hardware.get_gpu("h100")
    assert spec.memory_bytes == 94 * 2**30  # an H100 NVL
    assert spec.bf16_flops == hardware.DATA_SHEETS["h100"].bf16_flops


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1]", "expected a JSON object"),
        ('{"memory": 1}', "unknown fields"),
        ('{"memory_bytes": -1}', "must be positive"),
        ("{", "cannot read hardware spec"),
    ],
)
def test_bad_spec_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, message: str
) -> None:
    (tmp_path / "a40").mkdir()
    (tmp_path / "a40" / "spec.json").write_text(content)
    monkeypatch.setenv("BLOCK_PROFILES_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=message):
        hardware.get_gpu("a40")


def test_unknown_hardware_lists_what_exists() -> None:
    with pytest.raises(ConfigError, match=r"unknown GPU 'a40'.*known: a100, h100"):
        hardware.get_gpu("a40")
    with pytest.raises(ConfigError, match="unknown GPU"):
        hardware.get_gpu("../etc")


def test_model_from_a_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    cfg = {
        "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 768, "vocab_size": 128256,
        "max_position_embeddings": 2048, "torch_dtype": "float32",
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg))
    shape = get_model(str(folder))
    assert shape.name == "tiny-llama" and shape.dtype_bytes == 4 and shape.num_kv_heads == 2
    assert get_model(str(folder / "config.json")) == shape
