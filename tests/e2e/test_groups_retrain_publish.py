"""One model per kind of machine, end to end (issue 18): a dataset of two groups' uploads, `trainer retrain --by
group` writes a model per group gated against the one its group serves, `trainer publish --group` sends each to
its group through a real mosquitto, and a running gateway with a pump and a fan sensor ends with each sensor
serving its own group's new model (and the fan never offered the pump's)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.contract import topics
from edge_agent.contract.bundle import Bundle
from edge_agent.mqtt_client import MqttConnection
from firmware_sim import signals
from firmware_sim.broker import Broker
from tests.agent.pipeline_helpers import RATE, frames_of
from tests.e2e.test_rollout_groups_gateway import GROUPS, gateway_config
from tests.trainer.test_retrain import collected
from tests.trainer.test_retrain_groups import group_bundle
from tests.waiting import wait_for
from trainer.publish import keygen

REPO = Path(__file__).resolve().parents[2]


def trainer(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_two_groups_retrained_published_and_each_sensor_serves_its_groups_model(
        tmp_path: Path, agent_bundle: Path, mosquitto: Broker) -> None:
    data = tmp_path / "dataset"
    collected(data, agent_bundle, normal_state="healthy", n_normal=25, n_alert=6, group="pump",
              devices=("pump-1", "pump-2"))
    collected(data, agent_bundle, normal_state="healthy", n_normal=25, n_alert=6, group="fan",
              devices=("fan-1", "fan-2"))
    current = {g: group_bundle(agent_bundle, tmp_path / "current" / g, g) for g in ("pump", "fan")}
    out = tmp_path / "retrained"
    done = trainer("retrain", "--dataset", data, "--current", tmp_path / "current", "--out", out, "--by", "group",
                   "--serial", "--epochs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    new = {g: Bundle.load(out / g) for g in ("pump", "fan")}
    assert {g: b.group for g, b in new.items()} == {"pump": "pump", "fan": "fan"}
    assert new["pump"].version != new["fan"].version

    key_path = tmp_path / "keys" / "rollout.key"
    _, public = keygen(key_path)
    served = {d: shutil.copytree(current[g], tmp_path / "gw" / d) for d, g in GROUPS.items()}
    agent = Agent(load_config(gateway_config(tmp_path, mosquitto, served, public)))
    sensors = {d: agent.sensor(d) for d in GROUPS}
    frames = frames_of(signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=5),
                                        RATE * 40), 1024)
    nodes = MqttConnection(mosquitto.host, mosquitto.port, "sensor-nodes")
    stop = threading.Event()

    def stream() -> None:  # both sensors' healthy bearings in real time, for the shadow and probation windows
        for f in frames:
            if stop.is_set():
                return
            for device in GROUPS:
                nodes.publish(topics.samples_topic(device), f, qos=1)
            time.sleep(1024 / RATE)

    agent.start()
    runner = threading.Thread(target=agent.run, args=(stop,), name="agent", daemon=True)
    feeder = threading.Thread(target=stream, name="sensor-nodes", daemon=True)
    runner.start()
    nodes.start()
    try:
        assert agent.wait_ready(10) and nodes.wait_connected(10)
        feeder.start()
        assert wait_for(lambda: min(s.pipeline.counters.windows_scored for s in sensors.values()) >= 15, timeout=30)
        for g in ("pump", "fan"):
            pub = trainer("publish", out / g, "--group", g, "--key", key_path, "--broker",
                          f"{mosquitto.host}:{mosquitto.port}", "--wait-s", "60", "--expect", "1")
            assert pub.returncode == 0, pub.stdout + pub.stderr
            member = next(d for d, grp in GROUPS.items() if grp == g)
            other = next(d for d in GROUPS if d != member)
            assert f"-> group/{g}" in pub.stdout and member in pub.stdout and other not in pub.stdout, pub.stdout
        assert wait_for(lambda: all(sensors[d].pipeline.bundle.version == new[g].version for d, g in GROUPS.items()),
                        timeout=20), {d: s.pipeline.bundle.version for d, s in sensors.items()}
        for d, g in GROUPS.items():
            assert sensors[d].pipeline.bundle.group == g
            assert sensors[d].fleet.rollout.status()["rejected"] == 0, sensors[d].fleet.rollout.status()
    finally:
        stop.set()
        runner.join(20)
        feeder.join(5)
        nodes.stop()
    assert not runner.is_alive()
