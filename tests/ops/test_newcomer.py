"""What a new user met on the gateway: ``validate-config FILE`` where every other command takes ``--config FILE``,
and ``edge-agent status`` looking only for ./agent.toml where ``edge-agent install`` had put the config."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from click.testing import CliRunner

from edge_agent import install
from edge_agent.cli import main
from tests.agent.pipeline_helpers import agent_config


def test_validate_config_takes_config_as_the_other_commands_do_and_file_as_before(tmp_path, agent_bundle):
    cfg = agent_config(tmp_path, agent_bundle)
    for argv in (["--config", str(cfg)], [str(cfg)], [str(cfg), "--config", str(cfg)]):
        result = CliRunner().invoke(main, ["validate-config", *argv])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"{cfg}: ok (gateway ") and "pump-7: source serial" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace("k = 3", "k = 9"))
    for argv in (["--config", str(bad)], [str(bad)]):
        result = CliRunner().invoke(main, ["validate-config", *argv])
        assert result.exit_code == 1 and "alerts.k: must be 1..n" in result.output
    both = CliRunner().invoke(main, ["validate-config", str(cfg), "--config", str(bad)])
    assert both.exit_code == 2 and "two configs given" in both.output
    neither = CliRunner().invoke(main, ["validate-config"])
    assert neither.exit_code == 2 and "validate-config --config FILE" in neither.output
    usage = CliRunner().invoke(main, ["validate-config", "--help"])
    assert "--config" in usage.output and "[FILE]" in usage.output


def _installed(root: Path, config: Path) -> Path:
    """What ``edge-agent install --config CONFIG`` leaves under ROOT for status: the unit and the config, whose
    status file is a real path of this test (the unit's --config is where the service reads it)."""
    state = root / "state"
    state.mkdir(parents=True)
    lay = install.Layout(executable=Path("/opt/edge-agent/bin/edge-agent"), config=config, state_dir=state)
    unit = root / str(lay.unit).lstrip("/")
    unit.parent.mkdir(parents=True)
    unit.write_text(install.unit_text(lay))
    where = root / str(config).lstrip("/")
    where.parent.mkdir(parents=True)
    where.write_text(install.config_skeleton(lay))
    (state / "status.json").write_text(json.dumps({"state": "running", "uptime_s": 12, "sensors": {
        "pump-1": {"state": "running", "windows_scored": 7}}}))
    return where


def test_the_installed_config_is_found_through_the_unit(tmp_path):
    assert install.installed_config(tmp_path) == tmp_path / "etc/edge-agent/agent.toml"  # nothing installed yet
    where = _installed(tmp_path, Path("/etc/edge-agent/site.toml"))
    assert install.installed_config(tmp_path) == where  # the unit's --config, not the default


def test_status_reads_the_installed_config_when_there_is_no_agent_toml_here(tmp_path, monkeypatch):
    root, here = tmp_path / "root", tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setattr(install, "installed_config", functools.partial(install.installed_config, root))
    missing = CliRunner().invoke(main, ["status"])
    assert missing.exit_code == 1
    assert (f"no config found: looked for {here / 'agent.toml'} and {root / 'etc/edge-agent/agent.toml'}"
            in missing.output) and "--config FILE" in missing.output

    where = _installed(root, Path("/etc/edge-agent/agent.toml"))
    found = CliRunner().invoke(main, ["status"])
    assert found.exit_code == 0, found.output
    assert f"status: reading {where} (the installed service's config)" in found.stderr
    assert "pump-1" in found.stdout and "uptime_s" in found.stdout

    agent_config(here, here / "bundle", status={"file": str(tmp_path / "here-status.json")})
    (tmp_path / "here-status.json").write_text(json.dumps({"state": "running", "sensors": {"pump-7": {}}}))
    local = CliRunner().invoke(main, ["status", "--json"])
    assert local.exit_code == 0, local.output
    assert f"status: reading {here / 'agent.toml'} (in this directory)" in local.stderr
    assert list(json.loads(local.stdout)["sensors"]) == ["pump-7"]  # ./agent.toml first; stdout stays JSON
