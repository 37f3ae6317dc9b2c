"""A bundle made for another kind of machine, copied by hand into a sensor's bundle folder (at start, or over a
running agent), is refused with the reason as a rollout of it would be: the sensor never serves another group's
model, whichever way the model arrives."""

from __future__ import annotations

import shutil
import threading

import pytest
from click.testing import CliRunner

from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.config import load_config
from edge_agent.contract.errors import BundleError
from tests.agent.pipeline_helpers import agent_config
from tests.agent.rollout_group_helpers import grouped
from tests.waiting import wait_for


def test_another_groups_bundle_copied_in_is_refused_at_start_and_while_running(tmp_path, agent_bundle) -> None:
    pump = grouped(agent_bundle, tmp_path / "build" / "pump", "pump-v2", "pump")
    fan_v2 = grouped(agent_bundle, tmp_path / "build" / "fan", "fan-v2", "fan")
    served = tmp_path / "served"
    shutil.copytree(pump, served)  # a technician copied the pump model to the fan's gateway
    cfg = agent_config(tmp_path, served, device="fan-1", group="fan")
    agent = Agent(load_config(cfg))
    with pytest.raises(BundleError, match="no sensor has a model it can serve") as refused:
        agent.start()
    agent.close()
    assert "sensor fan-1 (group 'fan') does not take model test-conv pump-v2 of group 'pump'" in str(refused.value)
    assert agent.sensor().pipeline is None and agent.status()["sensors"]["fan-1"]["state"] == "no_model"
    check = CliRunner().invoke(main, ["validate-config", str(cfg)])
    assert check.exit_code == 1, check.output
    assert "sensor fan-1 (group 'fan') does not take model" in check.output and "pump-v2" in check.output, check.output

    shutil.rmtree(served)
    shutil.copytree(agent_bundle, served)  # a model without a group serves any sensor
    agent = Agent(load_config(cfg))
    fan = agent.sensor()
    stop = threading.Event()
    agent.start()
    old = fan.pipeline.bundle.version
    runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    runner.start()
    try:
        shutil.rmtree(served)
        shutil.copytree(pump, served)  # copied over the running agent
        assert wait_for(lambda: fan.counters.model_rejects >= 1, 10)
        reason = fan.counters.model_last_reject
        assert "sensor fan-1 (group 'fan') does not take model" in reason and "group 'pump'" in reason, reason
        assert 'set group = "pump"' in reason and str(served) in reason, reason
        assert runner.is_alive() and fan.pipeline.bundle.version == old and fan.counters.model_swaps == 0
        assert agent.status()["sensors"]["fan-1"]["model_rejects"] >= 1
        shutil.rmtree(served)
        shutil.copytree(fan_v2, served)  # the fans' own model is taken
        assert wait_for(lambda: fan.pipeline.bundle.version == "fan-v2", 10)
    finally:
        stop.set()
        runner.join(20)
    assert not runner.is_alive()
