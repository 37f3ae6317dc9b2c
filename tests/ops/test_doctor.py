"""``edge-agent doctor``: a healthy gateway (a simulated sensor on a real pty, a real broker, a real bundle and its
calibration) passes with exit 0; a missing calibration is a warning (1); a gone port, a dead broker and a corrupt
bundle are failures (2), each named in its row."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_agent import calibration
from edge_agent.cli import main
from edge_agent.contract.bundle import Bundle
from firmware_sim.broker import free_port
from tests.agent.pipeline_helpers import RATE, agent_config
from tests.waiting import wait_for

BIN = Path(sys.executable).parent


def _doctor(cfg: Path) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["doctor", "--config", str(cfg), "--listen-s", "2", "--timeout-s", "3", "--json"])
    doc = json.loads(result.stdout)
    assert result.exit_code == doc["exit"], result.output
    return result.exit_code, {(c["scope"], c["name"]): c for c in doc["checks"]}


@pytest.fixture
def sensor_pty(tmp_path):
    """firmware-sim streaming a healthy bearing at 20 kHz x 4 over a pty whose path is ``tmp_path / "ttySIM"``."""
    port = tmp_path / "ttySIM"
    sim = subprocess.Popen([str(BIN / "firmware-sim"), "run", "--signal", "bearing", "--preset", "ims", "--link", "serial",
                            "--link-path", str(port), "--duration", "60", "--frame-samples", "256"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(port.exists, 20)
    yield port
    sim.terminate()
    sim.wait(10)


def _config(tmp_path, bundle, port, broker_port, calibrated: bool) -> Path:
    cal = tmp_path / "calibration.json"
    if calibrated:
        b = Bundle.load(bundle)
        calibration.save(cal, calibration.DeviceThreshold("pump-7", b.model_id, b.version, "mean_std", 0.2, {}, 200,
                                                          "2026-01-01T00:00:00+00:00"))
    return agent_config(tmp_path, bundle, source={"kind": "serial", "sample_rate": RATE,
                                                  "serial": {"port": str(port)}},
                        mqtt={"host": "127.0.0.1", "port": broker_port},
                        uploads={"spool_path": str(tmp_path / "spool.sqlite")})


def test_healthy_gateway_passes_and_a_missing_calibration_warns(tmp_path, mosquitto, agent_bundle, sensor_pty):
    code, rows = _doctor(_config(tmp_path, agent_bundle, sensor_pty, mosquitto.port, calibrated=True))
    assert code == 0, rows
    assert "connected and authenticated" in rows[("gateway", "broker")]["detail"]
    data = rows[("pump-7", "data")]["detail"]
    assert "listened" in data and "20,000 Hz expected" in data
    (tmp_path / "calibration.json").unlink()
    code, rows = _doctor(tmp_path / "agent.toml")
    assert code == 1 and rows[("pump-7", "calibration")]["verdict"] == "warn"


def test_unplugged_port_dead_broker_and_corrupt_bundle_fail(tmp_path, agent_bundle):
    bundle = shutil.copytree(agent_bundle, tmp_path / "bundle")
    blob = bytearray((bundle / "model.tflite").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (bundle / "model.tflite").write_bytes(bytes(blob))
    code, rows = _doctor(_config(tmp_path, bundle, tmp_path / "ttyGONE", free_port(), calibrated=False))
    assert code == 2
    failed = {k[1] for k, c in rows.items() if c["verdict"] == "FAIL"}
    assert {"broker", "port", "data", "bundle", "calibration"} <= failed, rows
    assert "no such device" in rows[("pump-7", "port")]["detail"]
    assert "sha256" in rows[("pump-7", "bundle")]["detail"] or "digest" in rows[("pump-7", "bundle")]["detail"]
    assert rows[("gateway", "clock")]["verdict"] in ("ok", "warn")


def test_a_config_that_does_not_load_is_a_failure(tmp_path):
    (tmp_path / "agent.toml").write_text("device = 3\n")
    result = CliRunner().invoke(main, ["doctor", "--config", str(tmp_path / "agent.toml")])
    assert result.exit_code == 2 and "FAIL" in result.output and "verdict: FAIL" in result.output
