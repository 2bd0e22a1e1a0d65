"""API key files and the `block scheduler` command line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from block import cli
from block.errors import ConfigError, Unauthorized
from block.scheduler import commands
from block.scheduler.auth import ApiKeys, read_keys
from block.scheduler.replicas import Endpoint, Replica, redact
from block.scheduler.settings import SchedulerSettings, cluster_defaults


def test_key_file_rules(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("  alpha  \n# comment\n\nbeta\n")
    assert len(read_keys(f)) == 2
    f.write_text("# only comments\n\n")
    with pytest.raises(ConfigError, match="holds no key"):
        read_keys(f)
    with pytest.raises(ConfigError, match="cannot read"):
        read_keys(tmp_path / "missing")


def test_keys_are_checked_and_reloaded(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("alpha\n")
    keys = ApiKeys(f, recheck_s=0.0)
    keys.load()
    keys.check("Bearer alpha", None)
    keys.check(None, "alpha")
    for auth, api_key, needle in [
        (None, None, "required"),
        ("Basic YWxwaGE=", None, "must be 'Bearer"),
        ("Bearer ", None, "must be 'Bearer"),
        ("Bearer beta", None, "not valid"),
    ]:
        with pytest.raises(Unauthorized, match=needle) as err:
            keys.check(auth, api_key)
        assert "beta" not in err.value.detail
    f.write_text("beta\n")
    os.utime(f, (1, 1))  # a different mtime, as a Secret update gives
    keys.check("Bearer beta", None)
    with pytest.raises(Unauthorized):
        keys.check("Bearer alpha", None)
    f.write_text("")  # emptied: no key works any more (fail closed)
    os.utime(f, (2, 2))
    with pytest.raises(Unauthorized, match="not valid"):
        keys.check("Bearer beta", None)
    f.write_text("gamma\n")
    os.utime(f, (3, 3))
    keys.check("Bearer gamma", None)
    f.unlink()  # deleted: the same
    with pytest.raises(Unauthorized):
        keys.check("Bearer gamma", None)


def test_replica_urls_are_shown_without_credentials() -> None:
    assert redact("http://user:secret@10.0.0.1:8000/base") == "http://***@10.0.0.1:8000/base"
    assert redact("http://10.0.0.1:8000") == "http://10.0.0.1:8000"
    view = Replica(Endpoint("r", "http://u:p@[::1]:8000")).describe(0.0)
    assert view["url"] == "http://***@[::1]:8000" and "p@" not in str(view)


def test_cluster_config_slos(tmp_path: Path) -> None:
    f = tmp_path / "cluster.json"
    f.write_text('{"slo": {"ttftSeconds": 0.5, "e2eSeconds": 20}, "model": "m"}')
    got = cluster_defaults(f)
    assert (got.slo_ttft_s, got.slo_e2e_s) == (0.5, 20)
    f.write_text('{"slo": {"ttftSeconds": -1}}')
    with pytest.raises(ConfigError, match="positive"):
        cluster_defaults(f)
    f.write_text("{oops")
    with pytest.raises(ConfigError, match="cannot read"):
        cluster_defaults(f)
    assert cluster_defaults(None).slo_ttft_s is None


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="at least one replica"):
        SchedulerSettings()
    with pytest.raises(ValueError, match="needs the engine Service"):
        SchedulerSettings(discover="k8s")
    with pytest.raises(ValueError, match="must start with http"):
        SchedulerSettings(replicas=["127.0.0.1:8000"])
    SchedulerSettings(discover="k8s", service="engine")


def test_flags_become_settings() -> None:
    args = cli.build_parser().parse_args(
        [
            "scheduler", "--port", "9000", "--policy", "power-of-k", "--k", "3",
            "--replicas", "http://a:1, http://b:2", "--predict-deadline-ms", "3",
            "--slo-ttft-ms", "400", "--no-reject", "--length-source", "prior",
        ]
    )  # fmt: skip
    s = SchedulerSettings(**commands.overrides(args))
    assert s.port == 9000 and s.policy == "power-of-k" and s.k == 3
    assert s.replicas == ["http://a:1", "http://b:2"]
    assert s.predict_deadline_s == 0.003 and s.slo_ttft_s == 0.4
    assert not s.reject_unmeetable and s.length_source == "prior"


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCK_SCHEDULER_POLICY", "llumnix")
    monkeypatch.setenv("BLOCK_SCHEDULER_REPLICAS", '["http://a:1"]')
    monkeypatch.setenv("BLOCK_CLUSTER_CONFIG", "/etc/block/cluster.json")  # set by the operator
    args = cli.build_parser().parse_args(["scheduler"])
    s = SchedulerSettings(**commands.overrides(args))
    assert s.policy == "llumnix" and s.replicas == ["http://a:1"]
    assert s.cluster_config == Path("/etc/block/cluster.json")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["scheduler"], "at least one replica"),
        (["scheduler", "--replicas", "http://a:1", "--policy", "fastest"], "unknown policy"),
        (["gateway", "--replicas", "http://a:1", "--policy", "dynamo-kv"], "offline"),
        (["epp", "--replicas", "http://a:1", "--policy", "llm-d-scorers"], "offline"),
        (["scheduler", "--replicas", "http://a:1", "--fallback-policy", "block"], "fallback"),
        (["scheduler", "--replicas", "http://a:1", "--port", "70000"], "port"),
        (["scheduler", "--replicas", "http://a:1", "--api-keys-file", "/nonexistent"], "key"),
    ],
)
def test_bad_configuration_is_a_clear_cli_error(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
