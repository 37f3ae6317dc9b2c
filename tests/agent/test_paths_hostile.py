"""Paths and files a user got wrong: a calibration record with a null value or a directory in its place, alert,
status and bundle paths that are directories or sit under a regular file. Never a traceback."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner

from edge_agent import calibration
from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.config import load_config
from edge_agent.contract.bundle import Bundle
from edge_agent.contract.errors import ConfigError
from tests.agent.pipeline_helpers import agent_config, copy_bundle, rewrite_bundle
from tests.waiting import wait_for


def _record(bundle, **changes) -> str:
    b = Bundle.load(bundle, check_model=False)
    record = {"device": "pump-7", "model_id": b.model_id, "bundle_version": b.version, "method": "mean_std",
              "value": 0.5, "params": {"k": 4}, "n": 200, "time": "2025-01-01T00:00:00+00:00"} | changes
    return json.dumps(record)


def test_an_unusable_calibration_falls_back_to_the_bundle_threshold_at_start_and_at_a_swap(tmp_path, agent_bundle):
    bundle = copy_bundle(agent_bundle, tmp_path / "bundle")
    cal = tmp_path / "calibration.json"
    cal.write_text(_record(bundle, value=None))
    cfg = agent_config(tmp_path, bundle)
    check = CliRunner().invoke(main, ["validate-config", str(cfg)])
    assert check.exit_code == 1 and "calibration.path" in check.output and "value is None" in check.output
    assert not isinstance(check.exception, ConfigError | TypeError)
    agent = Agent(load_config(cfg)).start()
    sensor = agent.sensor()
    assert sensor.threshold_source == "bundle" and sensor.pipeline.threshold == Bundle.load(bundle).threshold.value
    assert agent.status()["sensors"]["pump-7"]["calibration_ignored"] == 1
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        cal.unlink()
        cal.mkdir()  # and at the next swap the calibration path is a directory
        rewrite_bundle(bundle, version="v2")
        assert wait_for(lambda: sensor.counters.model_swaps == 1, 10)
        assert thread.is_alive() and sensor.pipeline.bundle.version == "v2"
        doc = agent.status()["sensors"]["pump-7"]
        assert doc["calibration_ignored"] == 2 and "is a directory" in doc["calibration_note"]
        assert doc["threshold_source"] == "bundle" and sensor.counters.internal_errors == 0
    finally:
        stop.set()
        thread.join(20)
    check = CliRunner().invoke(main, ["validate-config", str(cfg)])
    assert check.exit_code == 1 and "calibration.path" in check.output and "directory" in check.output
    cleared = CliRunner().invoke(main, ["calibrate", "--config", str(cfg), "--clear"])
    assert cleared.exit_code == 1 and "calibration.path" in cleared.output and cleared.exception.__class__ is SystemExit


@pytest.mark.parametrize("record", [{"value": "0.5"}, {"value": -1}, {"value": True}, {"n": None}, {"extra": 1}])
def test_malformed_calibration_records_are_named_not_raised(tmp_path, agent_bundle, record):
    path = tmp_path / "calibration.json"
    path.write_text(_record(agent_bundle, **record))
    with pytest.raises(ConfigError, match="not a calibration record"):
        calibration.load(path)
    choice = calibration.choose(path, Bundle.load(agent_bundle, check_model=False), "pump-7")
    assert choice.source == "bundle" and "not a calibration record" in choice.note


@pytest.mark.parametrize(("key", "how"), [
    ("alerts.sinks.jsonl", "a-dir"), ("alerts.sinks.jsonl", "a-file/alerts.jsonl"), ("status.file", "a-dir"),
    ("status.file", "a-file/status.json"), ("bundle.path", "a-file"), ("bundle.path", "a-file/bundle"),
])
def test_paths_that_cannot_be_what_they_name_are_config_errors(tmp_path, agent_bundle, key, how):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    bad = tmp_path / how
    sections = {"status": {"file": str(bad)}} if key == "status.file" else (
        {"alerts": {"sinks": {"jsonl": str(bad)}}} if key == "alerts.sinks.jsonl" else {})
    cfg = agent_config(tmp_path, bad if key == "bundle.path" else agent_bundle, **sections)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(cfg)
    for argv in (["validate-config", str(cfg)], ["run", "--config", str(cfg)]):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 1 and key in result.output and isinstance(result.exception, SystemExit)
