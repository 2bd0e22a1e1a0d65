"""`block profile`: registered in the CLI, clear errors instead of tracebacks, no torch needed
to parse or to reject bad input."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from block import cli


def test_profile_is_a_block_command() -> None:
    args = cli.build_parser().parse_args(
        ["profile", "--model", "llama-2-7b", "--out", "x", "--tp", "1", "2"]
    )
    assert args.tp == [1, 2] and args.grid == "modest" and callable(args.handler)


def test_parsing_does_not_import_torch() -> None:
    probe = "import sys; from block import cli; cli.build_parser(); print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/"
    )
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "no-such-model"], "unknown model"),
        (["--model", "missing-config.json"], "does not exist"),
        (["--model", "llama-2-7b", "--tp", "0"], "--tp"),
        (["--model", "llama-2-7b", "--tp", "3"], "do not split"),
        (["--model", "llama-2-7b", "--repeats", "0"], "--repeats"),
    ],
)
def test_bad_input_is_a_clear_error(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["profile", "--out", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_without_a_gpu_it_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU; the profiler would really run")
    code = cli.main(["profile", "--model", "llama-2-7b", "--out", str(tmp_path / "p")])
    assert code == 2
    assert "profiling needs" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_config_json_models_are_read(tmp_path: Path) -> None:
    from block.profiler.runner import resolve_model

    cfg = tmp_path / "config.json"
    cfg.write_text(
        '{"num_attention_heads": 16, "num_key_value_heads": 4, "num_hidden_layers": 2, '
        '"hidden_size": 1024, "intermediate_size": 2816, "vocab_size": 32000, '
        '"_name_or_path": "tiny/llama"}'
    )
    shape = resolve_model(str(cfg))
    assert (shape.name, shape.num_kv_heads, shape.head_dim) == ("tiny/llama", 4, 64)
