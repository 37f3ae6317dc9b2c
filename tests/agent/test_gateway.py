"""Many sensors in one agent: mixed sources, one port vanishing, one bundle swapped, one sensor alerting on."""

from __future__ import annotations

import json
import threading

from click.testing import CliRunner

from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.config import load_config
from edge_agent.contract import topics
from edge_agent.mqtt_client import MqttConnection
from firmware_sim.link import PtyLink
from tests.agent.pipeline_helpers import ONSET_S, RATE, _toml, copy_bundle, frames_of, rewrite_bundle
from tests.waiting import wait_for


def _gateway_config(tmp_path, mosquitto, links: dict[str, PtyLink], bundles: dict[str, str]) -> str:
    doc = {
        "gateway": "hall-3",
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "status": {"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": True},
        "alerts": {"k": 3, "n": 5, "cooldown_s": 0.0, "sinks": {"log": False, "jsonl": str(tmp_path / "alerts.jsonl"),
                                                               "mqtt": True}},
        "bundle": {"path": bundles["default"], "watch_s": 0.2},
    }
    text = _toml(doc)
    for device, link in links.items():
        text += (f'\n[[sensors]]\ndevice = "{device}"\n[sensors.source]\nkind = "serial"\n'
                 f'[sensors.source.serial]\nport = "{link.path}"\nreopen_max_s = 0.2\n')
    text += (f'\n[[sensors]]\ndevice = "fan-9"\n[sensors.source]\nkind = "mqtt"\nsample_rate = {RATE}\n'
             f'[sensors.bundle]\npath = "{bundles["fan-9"]}"\nwatch_s = 0.2\n')
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def test_three_sensors_one_port_vanishes_one_bundle_swaps_the_third_keeps_alerting(
        tmp_path, mosquitto, agent_bundle, degrading_samples):
    links = {"pump-1": PtyLink(tmp_path / "tty1", write_timeout=10), "pump-2": PtyLink(tmp_path / "tty2", write_timeout=10)}
    fan_bundle = copy_bundle(agent_bundle, tmp_path / "fan-bundle")
    cfg_path = _gateway_config(tmp_path, mosquitto, links, {"default": str(agent_bundle), "fan-9": str(fan_bundle)})
    check = CliRunner().invoke(main, ["validate-config", cfg_path])
    assert check.exit_code == 0 and "3 sensors" in check.output and "fan-9: source mqtt" in check.output
    cfg = load_config(cfg_path)
    events = []
    agent = Agent(cfg, on_event=events.append)
    assert agent.connection is not None and [s.device for s in agent.sensors] == ["pump-1", "pump-2", "fan-9"]
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    pub = MqttConnection(mosquitto.host, mosquitto.port, "fan-sensor")
    thread.start()
    pub.start()
    pump1, pump2, fan = (agent.sensor(d) for d in ("pump-1", "pump-2", "fan-9"))
    try:
        assert agent.wait_ready(10) and pub.wait_connected(10)
        assert wait_for(lambda: pump1.source.connected.is_set() and pump2.source.connected.is_set(), 10)
        healthy = degrading_samples[: int(RATE * (ONSET_S - 1))]
        frames = frames_of(degrading_samples, 1024)
        half = len(frames) // 2
        for i, f in enumerate(frames):
            links["pump-1"].send(f)
            if i < len(healthy) // 1024:
                links["pump-2"].send(frames[i])
                pub.publish(topics.samples_topic("fan-9"), frames[i], qos=1)
            if i == half // 2:  # pump-2's adapter is pulled while everything streams
                links["pump-2"].close()
            if i == half:  # a new model for the fan, deployed atomically while it scores
                scored_before_swap = fan.pipeline.counters.windows_scored
                rewrite_bundle(fan_bundle, version="fan-v2")
            if i % 50 == 49:
                assert wait_for(lambda i=i: pump1.pipeline.windower.counters.samples_in >= (i + 1) * 1024, 20)
        assert wait_for(lambda: pump1.pipeline.windower.counters.samples_in >= len(frames) * 1024, 20)
        assert wait_for(lambda: fan.counters.model_swaps == 1, 10)
        assert wait_for(lambda: any(e.device == "pump-1" and e.kind == "raised" for e in events), 10)
        assert wait_for(lambda: pump2.source.counters.read_errors + pump2.source.counters.open_failures > 0, 10)
        status = agent.status()
    finally:
        stop.set()
        thread.join(20)
        pub.stop()
        for link in links.values():
            link.close()
    assert not thread.is_alive()
    s1, s2, s3 = (status["sensors"][d] for d in ("pump-1", "pump-2", "fan-9"))
    # the third sensor kept alerting through the others' trouble, and lost nothing
    raised = [e for e in events if e.device == "pump-1" and e.kind == "raised"]
    assert raised[0].seq_end / RATE >= ONSET_S
    assert s1["frames_dropped"] == 0 and s1["gaps"] == 0 and s1["samples_in"] == len(frames) * 1024
    assert s1["alert_state"] in ("warning", "critical")
    # the vanished port is counted, the others did not notice
    assert s2["read_errors"] + s2["open_failures"] >= 1 and s2["alert_state"] == "normal"
    # the swapped bundle serves the new version, and kept scoring
    assert s3["model_version"] == "fan-v2" and s3["model_swaps"] == 1 and s3["windows_scored"] > scored_before_swap
    assert not any(e.device != "pump-1" for e in events)
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert {x["device"] for x in lines} == {"pump-1"}
    assert status["gateway"] == "hall-3" and status["sensors_total"] == 3 and status["sensors_alerting"] == 1
    saved = json.loads((tmp_path / "status.json").read_text())
    assert saved["state"] == "stopped" and set(saved["sensors"]) == {"pump-1", "pump-2", "fan-9"}
    table = CliRunner().invoke(main, ["status", "--file", str(tmp_path / "status.json")])
    assert table.exit_code == 0 and all(d in table.output for d in ("pump-1", "pump-2", "fan-9"))
    header, *rows = table.output.strip().splitlines()[-4:]
    assert header.split()[:4] == ["device", "state", "health", "alert_state"]
    assert {r.split()[0]: r.split()[2] for r in rows} == {d: s["health"]["state"] for d, s in saved["sensors"].items()}
    one = CliRunner().invoke(main, ["status", "--file", str(tmp_path / "status.json"), "--sensor", "fan-9"])
    assert one.exit_code == 0 and "fan-v2" in one.output


def test_a_sensor_with_a_broken_bundle_waits_for_a_good_one_while_the_others_run(tmp_path, mosquitto, agent_bundle,
                                                                                 degrading_samples):
    broken = copy_bundle(agent_bundle, tmp_path / "broken")
    (broken / "model.tflite").write_bytes(b"TFL3 truncated")
    links = {"pump-1": PtyLink(tmp_path / "tty1", write_timeout=10)}
    cfg_path = _gateway_config(tmp_path, mosquitto, links, {"default": str(agent_bundle), "fan-9": str(broken)})
    check = CliRunner().invoke(main, ["validate-config", cfg_path])
    assert check.exit_code == 1 and "sensors[1].bundle.path" in check.output
    agent = Agent(load_config(cfg_path))
    fan = agent.sensor("fan-9")
    assert fan.pipeline is None and agent.status()["sensors"]["fan-9"]["state"] == "no_model"
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        for f in frames_of(degrading_samples[: RATE * 2], 1024):
            links["pump-1"].send(f)
        assert wait_for(lambda: agent.sensor("pump-1").pipeline.counters.windows_scored > 0, 10)
        rewrite_bundle(broken, model=(agent_bundle / "model.tflite").read_bytes(), base=agent_bundle)
        assert wait_for(lambda: fan.pipeline is not None, 10)
    finally:
        stop.set()
        thread.join(20)
        links["pump-1"].close()
    assert agent.status()["sensors"]["fan-9"]["state"] == "online"


def test_each_mqtt_sensor_has_its_own_connection_and_the_rest_share_the_gateways(tmp_path, mosquitto, agent_bundle):
    """A broker keeps one queue per client: an MQTT sensor that floods must fill only its own (issue 14, break 2).
    Alerts, status, uploads and rollouts share the gateway's one connection (its last will marks it offline)."""
    links = {"pump-1": PtyLink(tmp_path / "tty1"), "pump-2": PtyLink(tmp_path / "tty2")}
    cfg_path = _gateway_config(tmp_path, mosquitto, links, {"default": str(agent_bundle), "fan-9": str(agent_bundle)})
    agent = Agent(load_config(cfg_path))
    try:
        sinks = {id(sink.connection) for s in agent.sensors for sink in s.dispatcher.sinks if hasattr(sink, "connection")}
        assert sinks == {id(agent.connection)}
        (fan,) = [s for s in agent.sensors if s.cfg.source.kind == "mqtt"]
        assert fan.source.connection is not agent.connection and fan.source.own_connection
        assert fan.source.connection.client_id == f"{agent.cfg.client_id}-fan-9"
    finally:
        agent.close()
        for link in links.values():
            link.close()
