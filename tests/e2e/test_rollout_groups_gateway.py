"""One model per kind of machine on a real gateway (issue 18, item 3): a running agent with a ``pump`` sensor and a
``fan`` sensor, a real mosquitto, `trainer publish --group pump`. The pump sensor serves the pump model; the fan
sensor is not even subscribed to it. A pump model that reaches the fan sensor anyway (forged by a publisher that
skips the check, signed with the trusted key, sent to the fleet and to the fan sensor itself) is rejected with the
reason, counted, reported on ``vib/fan-1/rollout``, and the fan's model keeps serving."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from click.testing import CliRunner

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.contract import rollout, topics
from edge_agent.mqtt_client import MqttConnection
from firmware_sim import signals
from firmware_sim.broker import Broker
from tests.agent.pipeline_helpers import RATE, _toml, frames_of
from tests.agent.rollout_group_helpers import grouped, publish_raw, retained, rollout_messages
from tests.waiting import wait_for
from trainer.cli import cli as trainer_cli
from trainer.publish import keygen, load_private_key

GROUPS = {"pump-1": "pump", "fan-1": "fan"}


def gateway_config(tmp_path: Path, broker: Broker, bundles: dict[str, Path], public_key: str) -> Path:
    text = _toml({
        "gateway": "hall-3",
        "mqtt": {"host": broker.host, "port": broker.port},
        "status": {"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": False},
        "alerts": {"k": 3, "n": 5, "cooldown_s": 0.0, "sinks": {"log": False}},
        "rollout": {"public_keys": [public_key], "shadow_windows": 10, "probation_windows": 20},
    })
    for device, group in GROUPS.items():
        text += (f'\n[[sensors]]\ndevice = "{device}"\ngroup = "{group}"\n[sensors.source]\nkind = "mqtt"\n'
                 f'sample_rate = {RATE}\n[sensors.bundle]\npath = "{bundles[device]}"\nwatch_s = 0.2\n')
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_each_sensor_serves_its_groups_model_and_refuses_another_groups(tmp_path, agent_bundle, mosquitto) -> None:
    key_path = tmp_path / "keys" / "rollout.key"
    _, public = keygen(key_path)
    key = load_private_key(key_path)
    bundles = {d: shutil.copytree(agent_bundle, tmp_path / d / "bundle") for d in GROUPS}
    pump_v2 = grouped(agent_bundle, tmp_path / "build" / "pump-v2", "pump-v2", "pump")
    pump_v3 = grouped(agent_bundle, tmp_path / "build" / "pump-v3", "pump-v3", "pump")
    agent = Agent(load_config(gateway_config(tmp_path, mosquitto, bundles, public)))
    pump, fan = agent.sensor("pump-1"), agent.sensor("fan-1")
    healthy = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=5), RATE * 6)
    frames = frames_of(healthy, 1024)
    sensors = MqttConnection(mosquitto.host, mosquitto.port, "sensor-nodes")
    stop = threading.Event()
    agent.start()
    runner = threading.Thread(target=agent.run, args=(stop,), name="agent", daemon=True)
    runner.start()
    sensors.start()

    sent = 0

    def reported_state() -> dict:
        """The fan sensor's retained ``vib/fan-1/rollout`` report ({} while none is retained)."""
        topic = topics.rollout_state_topic("fan-1")
        payload = retained(mosquitto, topic).get(topic)
        return json.loads(payload) if payload else {}

    def stream(n: int) -> None:
        """The next ``n`` frames to both sensors (sequence numbers go on: a frame seen before is dropped)."""
        nonlocal sent
        for f in frames[sent:sent + n]:
            for device in GROUPS:
                sensors.publish(topics.samples_topic(device), f, qos=1)
        sent += n

    try:
        assert agent.wait_ready(10) and sensors.wait_connected(10)
        old = fan.pipeline.bundle.version
        stream(60)  # windows for the shadow comparison
        assert wait_for(lambda: min(pump.pipeline.counters.windows_scored, fan.pipeline.counters.windows_scored)
                        >= 15, timeout=20)

        # (a) the pump model, published to the pump group, serves the pump sensor only
        out = CliRunner().invoke(trainer_cli, ["publish", str(pump_v2), "--group", "pump", "--key", str(key_path),
                                               "--broker", f"{mosquitto.host}:{mosquitto.port}", "--wait-s", "30",
                                               "--expect", "1"])
        assert out.exit_code == 0, out.output
        assert "-> group/pump" in out.output and "pump-1" in out.output and "fan-1" not in out.output, out.output
        assert wait_for(lambda: pump.pipeline.bundle.version == "pump-v2", timeout=10)
        assert fan.fleet.rollout.counters.messages == 0, "the fan sensor is not subscribed to the pump group"
        assert fan.fleet.rollout.state == "idle" and fan.pipeline.bundle.version == old

        # (b) a pump model forged past the publisher's check: to the fleet, then to the fan sensor itself
        state = fan.fleet.rollout.status
        for n, to in enumerate(("fleet", "fan-1"), start=1):
            meta, chunks = rollout.make_metadata(pump_v3, rollout.pack_bundle(pump_v3), to, key, 16_384)
            publish_raw(mosquitto, rollout_messages(meta, chunks))
            assert wait_for(lambda n=n: state()["rejected"] == n, timeout=15), state()
            reason = state()["reason"]
            assert "sensor fan-1 (group 'fan') does not take model test-conv pump-v3 of group 'pump'" in reason
            assert "`trainer publish --group pump`" in reason and 'set group = "pump"' in reason
            # the counter moves before the retained report is published: wait for the report itself
            assert wait_for(lambda n=n: reported_state().get("rejected") == n, timeout=10), reported_state()
            reported = reported_state()
            assert reported["state"] == "rejected" and reported["reason"] == reason
            scored = fan.pipeline.counters.windows_scored
            stream(25)
            assert wait_for(lambda s=scored: fan.pipeline.counters.windows_scored > s, timeout=10), \
                "the fan's model keeps scoring"
            assert fan.pipeline.bundle.version == old and fan.counters.model_swaps == 0
            assert json.loads((bundles["fan-1"] / "manifest.json").read_text())["model"]["version"] == old
        assert pump.pipeline.bundle.version in ("pump-v2", "pump-v3"), "the pump sensor may take the fleet's pump model"
    finally:
        stop.set()
        runner.join(20)
        sensors.stop()
    assert not runner.is_alive()
