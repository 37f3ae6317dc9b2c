"""``edge-agent install``: a dry run changes nothing and says what it would do; --apply into a temporary root
creates the user, the state directory, a config skeleton the agent accepts and a unit systemd accepts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_agent.cli import main
from edge_agent.config import load_config

UNIT = "etc/systemd/system/edge-agent.service"
EXE = str(Path(sys.executable).parent / "edge-agent")


def _install(root: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["install", "--root", str(root), "--executable", EXE, *args])
    assert result.exit_code == 0, result.output
    return result.output


def _unit(path: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k, []).append(v)
    return keys


def test_dry_run_prints_every_change_and_makes_none(tmp_path):
    out = _install(tmp_path)
    assert "dry run, nothing is changed" in out and "--apply" in out
    for path in ("/usr/lib/sysusers.d/edge-agent.conf", "/var/lib/edge-agent", "/etc/edge-agent/agent.toml",
                 "/etc/systemd/system/edge-agent.service"):
        assert path in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to the service user needs root (CI runs as root)")
def test_apply_into_a_root_creates_user_state_dir_config_and_a_valid_unit(tmp_path):
    if shutil.which("systemd-sysusers") is None:
        pytest.fail("systemd-sysusers is missing: `make setup` installs the Debian package systemd")
    _install(tmp_path, "--apply")
    passwd = (tmp_path / "etc/passwd").read_text()
    user = next(line.split(":") for line in passwd.splitlines() if line.startswith("edge-agent:"))
    uid, gid, shell = int(user[2]), int(user[3]), user[6]
    assert uid != 0 and shell == "/usr/sbin/nologin"
    assert "edge-agent" in next(g for g in (tmp_path / "etc/group").read_text().splitlines() if g.startswith("dialout:"))
    state = tmp_path / "var/lib/edge-agent"
    st = state.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, gid, 0o750)
    cfg_dir = (tmp_path / "etc/edge-agent").stat()
    assert (cfg_dir.st_uid, cfg_dir.st_gid, cfg_dir.st_mode & 0o777) == (0, gid, 0o750)

    # the skeleton is a config the agent accepts, and everything it writes is in the state directory
    cfg = load_config(tmp_path / "etc/edge-agent/agent.toml")
    written = [cfg.status.file, cfg.uploads.spool_path, cfg.sensors[0].calibration.path,
               cfg.sensors[0].alerts.sinks.jsonl]
    assert all(Path(p).is_relative_to("/var/lib/edge-agent") for p in written), written

    unit = _unit(tmp_path / UNIT)
    assert unit["User"] == ["edge-agent"] and unit["SupplementaryGroups"] == ["dialout"]
    assert unit["ExecStart"] == [f"{EXE} run --config /etc/edge-agent/agent.toml"]
    assert unit["Restart"] == ["on-failure"] and unit["RestartSec"]
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("ReadWritePaths", "/var/lib/edge-agent"), ("CapabilityBoundingSet", "")):
        assert unit[key] == [value], key
    if shutil.which("systemd-analyze"):
        check = subprocess.run(["systemd-analyze", "verify", str(tmp_path / UNIT)], capture_output=True, text=True,
                               timeout=60)
        problems = [line for line in check.stderr.splitlines() if "Unknown" in line or "Invalid" in line
                    or "Failed to parse" in line]
        assert check.returncode == 0 and not problems, check.stderr

    # a second install keeps the edited config and rewrites the unit
    (tmp_path / "etc/edge-agent/agent.toml").write_text(
        (tmp_path / "etc/edge-agent/agent.toml").read_text().replace("pump-1", "fan-9"))
    (tmp_path / UNIT).write_text("stale")
    out = _install(tmp_path, "--apply")
    assert "keep      /etc/edge-agent/agent.toml" in out
    assert "edge-agent deploy BUNDLE --config /etc/edge-agent/agent.toml --sensor DEVICE" in out  # never cp
    assert "copy" not in out
    assert load_config(tmp_path / "etc/edge-agent/agent.toml").sensors[0].device == "fan-9"
    assert "ProtectSystem=strict" in (tmp_path / UNIT).read_text()


def test_relative_paths_are_refused(tmp_path):
    result = CliRunner().invoke(main, ["install", "--root", str(tmp_path), "--config", "agent.toml"])
    assert result.exit_code != 0 and "absolute path" in result.output
