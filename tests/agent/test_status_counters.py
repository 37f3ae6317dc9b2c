"""Every counter reaches `edge-agent status` and the retained MQTT status: each is provoked for real and must
move from 0 in both (bad headers, open failures, read errors, per-sink failures, upload drops, spool evictions)."""

from __future__ import annotations

import json
import threading

from click.testing import CliRunner

from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.config import load_config
from edge_agent.mqtt_client import MqttConnection
from firmware_sim.link import PtyLink
from tests.agent.agent_process import Feeder
from tests.agent.pipeline_helpers import RATE, agent_config, frames_of
from tests.waiting import wait_for


class Retained:
    """The latest status document per topic, as a dashboard sees them."""

    def __init__(self, broker) -> None:
        self.docs: dict[str, dict] = {}
        self.conn = MqttConnection(broker.host, broker.port, "dashboard", on_message=self._on,
                                   subscriptions=[("vib/+/status", 1), ("vib/gateway/+/status", 1)])
        self.conn.start()

    def _on(self, msg) -> None:
        if msg.payload.startswith(b"{"):
            self.docs[msg.topic] = json.loads(msg.payload)

    def get(self, topic: str, *path: str):
        doc = self.docs.get(topic, {})
        for key in path:
            doc = (doc or {}).get(key)
        return doc


def _file_status(tmp_path) -> dict:
    result = CliRunner().invoke(main, ["status", "--file", str(tmp_path / "status.json"), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # stdout only: the agent thread may log to stderr meanwhile


def _run(agent):
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def test_source_sink_and_upload_counters_move_in_both_status_documents(tmp_path, mosquitto, agent_bundle,
                                                                     degrading_samples):
    link = PtyLink(tmp_path / "ttyV0", write_timeout=10)
    cfg = agent_config(
        tmp_path, agent_bundle, source={"kind": "serial", "sample_rate": RATE, "serial": {"port": link.path, "reopen_max_s": 0.2}},
        mqtt={"host": mosquitto.host, "port": mosquitto.port},
        status={"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": True},
        alerts={"sinks": {"log": True, "command": ["false"]}},  # a relay script that always fails
        health={"no_data_s": 1.0},  # the health fault that goes through the sinks
        uploads={"enabled": True, "every_s": 1.0, "spool_max_bytes": 1024},  # no window fits: every offer dropped
    )
    dashboard = Retained(mosquitto)
    agent = Agent(load_config(cfg))
    stop, thread = _run(agent)
    sensor, gw = "vib/pump-7/status", "vib/gateway/pump-7/status"
    sink = "1:CommandSink"
    counters = {  # name: (where in the file, where on MQTT)
        "bad_headers": (("sensors", "pump-7", "bad_headers"), (sensor, "bad_headers")),
        "read_errors": (("sensors", "pump-7", "read_errors"), (sensor, "read_errors")),
        "open_failures": (("sensors", "pump-7", "open_failures"), (sensor, "open_failures")),
        "sink failed": (("sensors", "pump-7", "sinks", sink, "failed"), (sensor, "sinks", sink, "failed")),
        "uploads dropped": (("uploads", "dropped"), (gw, "uploads", "dropped")),
    }

    def value(doc, path):
        for key in path:
            doc = (doc or {}).get(key)
        return doc

    try:
        assert wait_for(lambda: dashboard.get(sensor) and dashboard.get(gw), 20)
        first = _file_status(tmp_path)
        for name, (in_file, on_mqtt) in counters.items():
            assert value(first, in_file) == 0, name
            assert dashboard.get(*on_mqtt) == 0, name
        assert wait_for(agent.sensor().source.connected.is_set, 10)
        frame = frames_of(degrading_samples[: RATE], 1024)[0]
        link.send(frame[:2] + b"\x09" + frame[3:])  # a frame of a protocol version nobody speaks
        for f in frames_of(degrading_samples[: RATE * 3], 1024):  # healthy windows: uploads are offered
            link.send(f)
        assert wait_for(lambda: agent.status()["uploads"]["dropped"] > 0, 20)
        link.close()  # the adapter is pulled: a read error, then the port cannot be opened again
        assert wait_for(lambda: agent.sensor().source.counters.open_failures > 0, 20)
        assert wait_for(lambda: agent.sensor().dispatcher.status()[sink]["failed"] > 0, 20)  # no data -> health
        for name, (in_file, on_mqtt) in counters.items():
            assert wait_for(lambda p=in_file: (value(_file_status(tmp_path), p) or 0) > 0, 10), name
            assert wait_for(lambda p=on_mqtt: (dashboard.get(*p) or 0) > 0, 10), name
    finally:
        stop.set()
        thread.join(20)
        dashboard.conn.stop()
        link.close()


def test_spool_evictions_reach_both_status_documents(tmp_path, mosquitto, agent_bundle, degrading_samples):
    link = PtyLink(tmp_path / "ttyV0", write_timeout=10)
    cfg = agent_config(
        tmp_path, agent_bundle, source={"kind": "serial", "sample_rate": RATE, "serial": {"port": link.path}},
        mqtt={"host": mosquitto.host, "port": mosquitto.port},
        status={"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": True},
        uploads={"enabled": True, "every_s": 1.0, "spool_max_records": 1},
    )
    dashboard = Retained(mosquitto)
    agent = Agent(load_config(cfg))
    stop, thread = _run(agent)
    gw = "vib/gateway/pump-7/status"
    try:
        assert wait_for(lambda: dashboard.get(gw, "uploads", "spool_evicted") == 0, 20)
        assert _file_status(tmp_path)["uploads"]["spool_evicted"] == 0
        mosquitto.stop()  # the broker is away: uploads pile up in a spool of one record
        assert wait_for(agent.sensor().source.connected.is_set, 10)
        with Feeder(link, degrading_samples[: RATE * 8], RATE, speed=2.0):  # one upload a second, paced
            assert wait_for(lambda: _file_status(tmp_path)["uploads"]["spool_evicted"] > 0, 30)
        mosquitto.start()
        assert wait_for(lambda: (dashboard.get(gw, "uploads", "spool_evicted") or 0) > 0, 30)
    finally:
        stop.set()
        thread.join(20)
        dashboard.conn.stop()
        link.close()
