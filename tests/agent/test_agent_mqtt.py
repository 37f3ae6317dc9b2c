"""The agent on MQTT with a real mosquitto: samples in, malformed payloads counted, alerts/status/uploads out."""

from __future__ import annotations

import json
import threading

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.contract import topics
from edge_agent.contract.binary import encode_frame, int16_scale
from edge_agent.contract.upload_record import decode_record
from edge_agent.mqtt_client import MqttConnection
from tests.agent.pipeline_helpers import ONSET_S, RATE, agent_config
from tests.waiting import wait_for


def test_mqtt_agent_scores_alerts_and_reports(tmp_path, mosquitto, agent_bundle, degrading_samples):
    cfg_path = agent_config(
        tmp_path, agent_bundle,
        source={"kind": "mqtt", "mqtt": {"qos": 1}, "sample_rate": RATE},
        mqtt={"host": mosquitto.host, "port": mosquitto.port},
        alerts={"k": 3, "n": 5, "cooldown_s": 0.0,
                "sinks": {"log": False, "mqtt": True, "jsonl": str(tmp_path / "alerts.jsonl")}},
        status={"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": True},
        uploads={"enabled": True, "every_s": 1.0, "spool_path": str(tmp_path / "spool.sqlite")},
    )
    cfg = load_config(cfg_path)
    seen: dict[str, list] = {"status": [], "alert": [], "upload": [], "availability": []}
    lock = threading.Lock()

    def on_message(msg):
        kind = msg.topic.rsplit("/", 1)[1]
        with lock:
            seen[kind].append(msg.payload)

    watcher = MqttConnection(mosquitto.host, mosquitto.port, "watcher", on_message=on_message,
                             subscriptions=[("vib/pump-7/status", 1), ("vib/pump-7/alert", 1),
                                            ("vib/pump-7/upload", 1), ("vib/gateway/pump-7/availability", 1)])
    pub = MqttConnection(mosquitto.host, mosquitto.port, "sensor")
    agent = Agent(cfg)
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    watcher.start()
    pub.start()
    thread.start()
    try:
        assert watcher.wait_subscribed(10) and pub.wait_connected(10) and agent.wait_ready(10)
        topic = topics.samples_topic("pump-7")
        assert wait_for(lambda: seen["availability"][-1:] == [b"online"], 10)
        bad = [b"junk", b"{}", b"\xa5\x5a\x01\x00"]
        for p in bad:
            pub.publish(topic, p, qos=1)
        x = degrading_samples
        n = 1024
        for a in range(0, len(x) - n + 1, n):
            info = pub.publish(topic, encode_frame(a, x[a : a + n], scale=int16_scale(10.0)), qos=1)
            assert info is not None
            if a // n % 50 == 49:  # stay within paho's in-flight window; let the agent keep up
                info.wait_for_publish(10)
                assert wait_for(lambda a=a: agent.pipeline.windower.counters.samples_in >= a + n, 20)
        total = (len(x) // n) * n
        assert wait_for(lambda: agent.pipeline.windower.counters.samples_in >= total, 20)
        assert wait_for(lambda: any(b"critical" in p or b"warning" in p for p in seen["alert"]), 10)
        assert wait_for(lambda: len(seen["upload"]) >= 1, 10), json.dumps(agent.status())
        status = agent.status()["sensors"]["pump-7"]
    finally:
        stop.set()
        thread.join(20)
        pub.stop()
    assert status["bad_payloads"] == len(bad) and status["gaps"] == 0 and status["frames_dropped"] == 0
    assert status["windows_scored"] > 100 and status["alerts"] >= 1
    alert = json.loads(seen["alert"][0])
    assert alert["device"] == "pump-7" and alert["kind"] == "raised" and alert["seq_end"] / RATE >= ONSET_S
    assert {"rms_0", "peak_0"} <= set(alert["stats"])
    statuses = [json.loads(p) for p in seen["status"] if p.startswith(b"{")]
    assert statuses and statuses[-1]["device"] == "pump-7" and "inference_ms_p99" in statuses[-1]
    assert wait_for(lambda: seen["status"][-1] == b"offline", 10)  # clean stop leaves "offline" retained
    # published after the sensors' statuses: it may arrive a moment later
    assert wait_for(lambda: seen["availability"][-1] == b"offline", 10), seen["availability"][-1:]
    uploads = [decode_record(p) for p in seen["upload"]]
    normal = [r for r in uploads if r.kind == "normal"]
    assert normal and all(r.state == "normal" for r in normal), "reservoir samples come from healthy operation"
    assert any(r.kind == "alert" and r.alert_ref for r in uploads), "the windows around the alert were uploaded"
    assert uploads[0].samples.shape == (8 * 1024, 4)
    watcher.stop()
