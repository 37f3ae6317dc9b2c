"""Alert sinks against real parts: a real mosquitto, real child processes, real files."""

from __future__ import annotations

import json
import logging
import queue
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_agent.alerts import AlertEvent
from edge_agent.mqtt_client import MqttConnection
from edge_agent.sinks import AlertDispatcher, CommandSink, JsonlSink, LogSink, MqttAlertSink
from firmware_sim.broker import Broker
from tests.waiting import wait_for


def make_event(kind: str = "raised", severity: str = "warning", score: float = 1.5, seq_end: int = 640) -> AlertEvent:
    return AlertEvent(
        kind=kind,  # type: ignore[arg-type]
        severity=severity,  # type: ignore[arg-type]
        device="pump-7",
        model_version="lstm-ae-int8-3",
        score=score,
        threshold=1.0,
        time=1.7e9 + seq_end,
        seq_end=seq_end,
        stats={"rms_0": 0.25, "peak_0": 1.5},
        window_count=3,
        started_at=1.7e9,
    )


def subscribe(broker: Broker, topic: str, client_id: str) -> tuple[MqttConnection, queue.Queue[mqtt.MQTTMessage]]:
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    conn = MqttConnection(broker.host, broker.port, client_id, on_message=got.put_nowait, subscriptions=[(topic, 1)])
    conn.start()
    assert conn.wait_connected(10)
    return conn, got


def next_message(got: queue.Queue[mqtt.MQTTMessage], timeout: float = 10.0) -> mqtt.MQTTMessage:
    return got.get(timeout=timeout)


def handled(sink: CommandSink) -> int:
    """Events the command sink has finished with (ran, failed or killed). ``wait_idle`` alone can return between the
    worker taking the next event off its queue and marking itself busy, before that event has run."""
    return sink.ran + sink.failed + sink.timed_out


# --------------------------------------------------------------------------- log, jsonl
def test_log_sink_writes_one_structured_line(caplog: pytest.LogCaptureFixture) -> None:
    sink = LogSink()
    with caplog.at_level(logging.INFO, logger="edge_agent.sinks"):
        sink.emit(make_event())
        sink.emit(make_event("cleared", "normal", 0.1))
    lines = [r for r in caplog.records if r.name == "edge_agent.sinks"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO]
    assert "kind=raised severity=warning device=pump-7 model=lstm-ae-int8-3 score=1.5" in lines[0].getMessage()
    assert sink.emitted == 2


def test_jsonl_sink_appends_one_json_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "alerts.jsonl"
    with JsonlSink(path) as sink:
        sink.emit(make_event())
        sink.emit(make_event("escalated", "critical", 2.5, 704))
    with JsonlSink(path) as sink:  # reopening appends
        sink.emit(make_event("cleared", "normal", 0.2, 1024))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["kind"], r["severity"], r["seq_end"]) for r in rows] == [
        ("raised", "warning", 640), ("escalated", "critical", 704), ("cleared", "normal", 1024),
    ]
    assert rows[1]["score"] == 2.5 and rows[1]["stats"] == {"rms_0": 0.25, "peak_0": 1.5}
    assert rows[0]["device"] == "pump-7" and rows[0]["model_version"] == "lstm-ae-int8-3"


# --------------------------------------------------------------------------- mqtt
def test_mqtt_sink_retained_state_reaches_a_late_subscriber(mosquitto: Broker) -> None:
    with MqttConnection(mosquitto.host, mosquitto.port, "agent-a") as conn:
        assert conn.wait_connected(10)
        sink = MqttAlertSink(conn, "pump-7")
        sink.start()
        try:
            sink.emit(make_event())
            sink.emit(make_event("escalated", "critical", 2.5, 704))
            assert sink.wait_synced(10)
            assert 1 <= sink.published <= 2  # states emitted faster than the link are coalesced
        finally:
            sink.close()
    late, got = subscribe(mosquitto, "vib/pump-7/alert", "dashboard")
    try:
        msg = next_message(got)
        assert msg.retain and msg.topic == "vib/pump-7/alert"
        body = json.loads(msg.payload)
        assert body["state"] == "critical" and body["kind"] == "escalated" and body["seq_end"] == 704
    finally:
        late.stop()


def test_mqtt_sink_keeps_the_latest_state_while_the_broker_is_away(mosquitto: Broker) -> None:
    conn = MqttConnection(mosquitto.host, mosquitto.port, "agent-b", reconnect_min_s=0.2, reconnect_max_s=1.0)
    conn.start()
    sink = MqttAlertSink(conn, "pump-7")
    sink.start()
    try:
        assert conn.wait_connected(10)
        sink.emit(make_event())
        assert sink.wait_synced(10) and sink.published == 1
        mosquitto.stop()
        assert wait_for(lambda: not conn.connected)
        sink.emit(make_event("escalated", "critical", 2.5, 704))
        sink.emit(make_event("cleared", "normal", 0.1, 1024))
        assert wait_for(lambda: sink.failures >= 1)
        assert json.loads(sink.latest or b"{}")["state"] == "normal"
        mosquitto.start()
        assert conn.wait_connected(15)
        assert sink.wait_synced(10)
        assert sink.published >= 2
    finally:
        sink.close()
        conn.stop()
    late, got = subscribe(mosquitto, "vib/pump-7/alert", "dashboard")
    try:
        body = json.loads(next_message(got).payload)
        assert (body["kind"], body["state"], body["seq_end"]) == ("cleared", "normal", 1024)
    finally:
        late.stop()


# --------------------------------------------------------------------------- command
RECORDER = """
import json, os, sys
data = json.load(sys.stdin)
env = {k: v for k, v in os.environ.items() if k.startswith("EDGE_ALERT_")}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"event": data, "env": env}) + "\\n")
"""


def test_command_sink_runs_the_program_with_event_on_stdin_and_env(tmp_path: Path) -> None:
    script = tmp_path / "buzzer.py"
    script.write_text(RECORDER)
    out = tmp_path / "calls.jsonl"
    sink = CommandSink([sys.executable, str(script), str(out)], timeout_s=20)
    sink.start()
    try:
        sink.emit(make_event())
        sink.emit(make_event("cleared", "normal", 0.125, 1024))
        assert wait_for(lambda: handled(sink) == 2, 30) and sink.wait_idle(30)
    finally:
        sink.close()
    calls = [json.loads(line) for line in out.read_text().splitlines()]
    assert [c["event"]["kind"] for c in calls] == ["raised", "cleared"]
    assert calls[0]["env"] == {
        "EDGE_ALERT_KIND": "raised", "EDGE_ALERT_SEVERITY": "warning", "EDGE_ALERT_SCORE": "1.5",
        "EDGE_ALERT_DEVICE": "pump-7",  # an event without its sensor's advice (test_advice.py: with it)
        "EDGE_ALERT_ADVICE": "", "EDGE_ALERT_ASSET": "", "EDGE_ALERT_LOCATION": "",
    }
    assert calls[1]["env"]["EDGE_ALERT_SCORE"] == "0.125"
    assert (sink.ran, sink.failed, sink.timed_out, sink.dropped) == (2, 0, 0, 0)


def test_command_sink_counts_failing_and_missing_programs(tmp_path: Path) -> None:
    failing = CommandSink([sys.executable, "-c", "import sys; sys.exit(3)"], timeout_s=20)
    failing.start()
    missing = CommandSink([str(tmp_path / "no-such-program")], timeout_s=20)
    missing.start()
    try:
        for sink in (failing, missing):
            sink.emit(make_event())
            assert wait_for(lambda s=sink: handled(s) == 1, 30) and sink.wait_idle(30)
            assert (sink.ran, sink.failed) == (0, 1)
    finally:
        failing.close()
        missing.close()


def test_command_sink_kills_a_hanging_program_and_never_blocks_emit(tmp_path: Path) -> None:
    started = tmp_path / "started"
    hang = f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); time.sleep(60)"
    sink = CommandSink([sys.executable, "-c", hang], timeout_s=1.0, queue_size=1)
    sink.start()
    try:
        sink.emit(make_event())
        assert wait_for(started.exists)  # the worker is now stuck in the program
        for i in range(5):  # one fits in the queue, the rest are dropped; none of these calls blocks
            sink.emit(make_event(seq_end=700 + i))
        assert sink.dropped == 4
        assert wait_for(lambda: handled(sink) == 2, 30) and sink.wait_idle(30)
        assert sink.timed_out == 2 and sink.ran == 0
    finally:
        sink.close()


# --------------------------------------------------------------------------- dispatcher
class ExplodingSink:
    def emit(self, event: AlertEvent) -> None:
        raise RuntimeError("sink on fire")


def test_dispatcher_isolates_a_failing_sink(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    jsonl = JsonlSink(path)
    jsonl.start()
    dispatcher = AlertDispatcher([ExplodingSink(), jsonl, LogSink()])
    dispatcher.emit(make_event())
    dispatcher.emit(make_event("cleared", "normal", 0.1))
    jsonl.close()
    assert dispatcher.failures == {"0:ExplodingSink": 2, "1:JsonlSink": 0, "2:LogSink": 0}
    assert dispatcher.delivered == {"0:ExplodingSink": 0, "1:JsonlSink": 2, "2:LogSink": 2}
    assert len(path.read_text().splitlines()) == 2


# --------------------------------------------------------------------------- the connection itself
def test_connection_refused_by_the_broker_is_never_reported_up(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "auth-broker", extra_conf="allow_anonymous false")
    broker.start()
    conn = MqttConnection(broker.host, broker.port, "intruder", reconnect_min_s=0.2, reconnect_max_s=0.5)
    try:
        conn.start()
        assert wait_for(lambda: conn.counters.refused_connects >= 2)  # refused, retried, refused again
        assert not conn.connected and conn.counters.connects == 0
        assert conn.publish("vib/x/alert", b"{}", qos=1) is None and conn.counters.publish_refused == 1
    finally:
        conn.stop()
        broker.stop()


def test_a_failing_message_handler_is_contained(mosquitto: Broker) -> None:
    seen: list[bytes] = []

    def handler(msg: mqtt.MQTTMessage) -> None:
        seen.append(msg.payload)
        if msg.payload == b"bad":
            raise ValueError("cannot decode")

    sub = MqttConnection(mosquitto.host, mosquitto.port, "sub", on_message=handler, subscriptions=[("t/#", 1)])
    with sub, MqttConnection(mosquitto.host, mosquitto.port, "pub") as pub:
        assert sub.wait_connected(10) and pub.wait_connected(10)
        assert wait_for(lambda: (pub.publish("t/probe", b"probe", qos=1), b"probe" in seen)[1], interval=0.2)
        for p in (b"bad", b"good"):
            pub.publish("t/x", p, qos=1)
        assert wait_for(lambda: b"good" in seen)
        assert sub.counters.callback_errors == 1 and sub.connected
