"""Faults a gateway meets, with real parts: the wall clock stepped back and forward (libfaketime on a real agent
process), the broker restarting, the spool's disk full, SIGTERM in the middle of an upload, the serial adapter
unplugged and plugged back."""

from __future__ import annotations

import glob
import json
import resource
import sqlite3
import threading
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.contract import topics
from edge_agent.mqtt_client import MqttConnection
from tests.agent.pipeline_helpers import RATE, agent_config
from tests.ops.faults_helpers import AgentProcess, Sensor, read_json
from tests.waiting import wait_for


def _libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        pytest.fail("libfaketime is missing: `make setup` installs the Debian package faketime")
    return found[0]


def _serial(tmp_path: Path) -> dict:
    return {"kind": "serial", "sample_rate": RATE, "serial": {"port": str(tmp_path / "ttyS"), "reopen_max_s": 0.2}}


@pytest.mark.slow
def test_wall_clock_jumps_do_not_break_cooldown_status_or_uploads(tmp_path, mosquitto, agent_bundle):
    """NTP steps the clock back an hour, then forward two days: the alert cooldown still lasts cooldown_s (it is
    timed on the monotonic clock), the status keeps coming with a monotonic uptime, uploads keep their pace."""
    clock = tmp_path / "faketime"
    clock.write_text("+0\n")
    cooldown = 4.0
    cfg = agent_config(
        tmp_path, agent_bundle, source=_serial(tmp_path),
        mqtt={"host": mosquitto.host, "port": mosquitto.port},
        alerts={"k": 2, "n": 3, "clear_windows": 3, "cooldown_s": cooldown},
        status={"every_s": 0.3, "file": str(tmp_path / "status.json"), "mqtt": True},
        uploads={"enabled": True, "every_s": 1.0, "spool_path": str(tmp_path / "spool.sqlite")})
    sensor = Sensor(tmp_path / "ttyS")
    agent = AgentProcess(cfg, env={"LD_PRELOAD": _libfaketime(), "FAKETIME_TIMESTAMP_FILE": str(clock),
                                   "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    status = lambda: read_json(tmp_path / "status.json")  # noqa: E731

    def fault_cycle(jump: str | None) -> None:
        """broken -> raised, healthy -> cleared, [jump], broken again: raised only once the cooldown is over."""
        sensor.state = "broken"
        assert agent.wait_line(r"^ALERT raised", 15), agent.output()
        sensor.state = "healthy"
        assert agent.wait_line(r"^ALERT cleared", 15), agent.output()
        cleared = time_of_line()
        if jump is not None:
            clock.write_text(jump + "\n")
        sensor.state = "broken"
        assert agent.wait_line(r"^ALERT raised", cooldown + 10), f"no alert after the cooldown ({jump})"
        waited = time_of_line() - cleared
        assert waited >= cooldown - 0.5, f"the cooldown was cut short to {waited:.1f} s by a clock jump ({jump})"
        sensor.state = "healthy"
        assert agent.wait_line(r"^ALERT cleared", 15), agent.output()

    import time

    time_of_line = time.monotonic
    try:
        assert agent.wait_line(r"^edge-agent: device pump-7", 60), agent.output()
        sensor.start()
        assert wait_for(lambda: status().get("windows_scored", 0) > 20, 20), status()
        fault_cycle(None)
        before = status()
        fault_cycle("-3600")  # an hour back
        back = status()
        assert wait_for(lambda: status().get("uptime_s", 0) > back["uptime_s"] + 1, 10)
        fault_cycle("+172800")  # two days forward
        after = status()
    finally:
        sensor.stop()
        rc = agent.stop()
    assert rc == 0, agent.output()[-3000:]
    # the status kept coming, its uptime never went back, and its wall time followed the clock
    assert before["uptime_s"] < back["uptime_s"] < after["uptime_s"]
    assert after["time"][:10] != back["time"][:10]
    # uploads kept their one-per-second pace through both jumps (monotonic), and windows kept being scored
    assert after["sensors"]["pump-7"]["uploads_offered"] >= back["sensors"]["pump-7"]["uploads_offered"] + 3
    assert after["windows_scored"] > back["windows_scored"] > before["windows_scored"]
    assert after["sensors"]["pump-7"]["internal_errors"] == 0


def test_broker_restart_agent_reconnects_resubscribes_and_republishes(tmp_path, mosquitto, agent_bundle):
    """The broker goes away and comes back: the agent reconnects, scores MQTT samples again, marks itself online."""
    cfg = load_config(agent_config(
        tmp_path, agent_bundle, source={"kind": "mqtt", "sample_rate": RATE},
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "keepalive": 5},
        status={"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": True}))
    agent = Agent(cfg)
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    availability: list[bytes] = []
    from edge_agent.contract.binary import encode_frame, int16_scale
    from firmware_sim import signals

    x = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=4), 40 * 1024)
    scale = int16_scale(10.0)

    def send(pub: MqttConnection, seq0: int) -> None:
        for a in range(0, len(x), 1024):
            pub.publish(topics.samples_topic("pump-7"), encode_frame(seq0 + a, x[a : a + 1024], scale=scale), qos=1)

    thread.start()
    try:
        assert agent.wait_ready(10)
        with MqttConnection(mosquitto.host, mosquitto.port, "pub") as pub:
            assert pub.wait_connected(10)
            send(pub, 0)
            assert wait_for(lambda: agent.pipeline.windower.counters.samples_in >= len(x), 20)
        mosquitto.restart()
        assert wait_for(lambda: agent.connection.counters.connects >= 2 and agent.wait_ready(0.1), 30), \
            agent.status()["mqtt"]
        watcher = MqttConnection(mosquitto.host, mosquitto.port, "watcher",
                                 subscriptions=[("vib/gateway/pump-7/availability", 1)],
                                 on_message=lambda m: availability.append(m.payload))
        with watcher, MqttConnection(mosquitto.host, mosquitto.port, "pub2") as pub:
            assert pub.wait_connected(10)
            send(pub, len(x))
            assert wait_for(lambda: agent.pipeline.windower.counters.samples_in >= 2 * len(x), 20)
            assert wait_for(lambda: availability[-1:] == [b"online"], 10)
        mqtt = agent.status()["mqtt"]
    finally:
        stop.set()
        thread.join(20)
    assert mqtt["disconnects"] >= 1 and mqtt["refused_connects"] == 0
    assert agent.status()["sensors"]["pump-7"]["gaps"] == 0  # the stream carried on where it stopped


def _spool_ok(path: Path) -> int:
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        return db.execute("SELECT COUNT(*) FROM records").fetchone()[0]


def test_spool_disk_full_is_counted_and_never_crashes(tmp_path, agent_bundle):
    """The spool's disk fills (a 600 KB file size limit on the agent process: SQLite sees a full disk) while the
    broker is away: offers are refused and counted, scoring goes on, the spool file stays bounded and sound."""
    limit = 600 * 1024
    cfg = agent_config(tmp_path, agent_bundle, source=_serial(tmp_path),
                       mqtt={"host": "127.0.0.1", "port": 9},  # nobody listens: everything stays in the spool
                       status={"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": False},
                       uploads={"enabled": True, "every_s": 1.0, "spool_path": str(tmp_path / "spool.sqlite")})

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    sensor = Sensor(tmp_path / "ttyS")
    agent = AgentProcess(cfg, preexec_fn=small_disk)
    status = lambda: read_json(tmp_path / "status.json")  # noqa: E731
    try:
        assert agent.wait_line(r"^edge-agent: device pump-7", 60), agent.output()
        sensor.start()
        assert wait_for(lambda: (status().get("uploads") or {}).get("dropped", 0) >= 2, 40), status()
        scored = status()["windows_scored"]
        assert wait_for(lambda: status()["windows_scored"] > scored + 20, 10)  # still scoring
        assert agent.p.poll() is None
    finally:
        sensor.stop()
        rc = agent.stop()
    assert rc == 0, agent.output()[-3000:]
    doc = status()
    assert doc["state"] == "stopped" and doc["uploads"]["dropped"] >= 2
    assert "upload dropped" in agent.output() and "Traceback" not in agent.output()
    assert (tmp_path / "spool.sqlite").stat().st_size <= limit
    assert _spool_ok(tmp_path / "spool.sqlite") == doc["uploads"]["pending"] > 0


@pytest.mark.slow
def test_sigterm_during_upload_loses_nothing(tmp_path, mosquitto, agent_bundle):
    """Records pile up while the broker is away; SIGTERM arrives while they drain: the agent exits 0 and
    leaves "offline", the spool is sound, and what was not acknowledged is sent by the next run."""
    received: list[bytes] = []
    cfg = agent_config(tmp_path, agent_bundle, source=_serial(tmp_path),
                       mqtt={"host": mosquitto.host, "port": mosquitto.port},
                       status={"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": True},
                       uploads={"enabled": True, "every_s": 1.0, "spool_path": str(tmp_path / "spool.sqlite"),
                                "batch": 2, "receipts": False})  # a plain subscriber, not a collector: no receipts
    status = lambda: read_json(tmp_path / "status.json")  # noqa: E731
    sensor = Sensor(tmp_path / "ttyS")
    # a persistent session: the broker keeps what arrives for the watcher while it is away
    watcher = MqttConnection(mosquitto.host, mosquitto.port, "watcher",
                             subscriptions=[("vib/pump-7/upload", 1), ("vib/gateway/pump-7/availability", 1)],
                             on_message=lambda m: received.append(m.payload), clean_session=False,
                             reconnect_max_s=1.0)
    watcher.start()
    assert watcher.wait_subscribed(10)
    mosquitto.stop()
    agent = AgentProcess(cfg)
    try:
        assert agent.wait_line(r"^edge-agent: device pump-7", 60), agent.output()
        sensor.start()
        assert wait_for(lambda: (status().get("uploads") or {}).get("pending", 0) >= 8, 30), status()
        sensor.paused.set()  # no new records: what is pending now is what must arrive
        mosquitto.start()
        assert wait_for(lambda: any(p.startswith(b"{") for p in received), 20)  # the drain has begun
        rc = agent.stop()
        assert rc == 0, agent.output()[-3000:]
        pending = _spool_ok(tmp_path / "spool.sqlite")
        first = status()
        assert first["state"] == "stopped"
        assert wait_for(lambda: b"offline" in received, 10)
        sent_first = first["uploads"]["sent"]
        agent = AgentProcess(cfg)  # the next run sends the rest
        assert wait_for(lambda: status().get("state") == "online" and status()["uploads"]["pending"] == 0, 30), status()
        second = status()
    finally:
        sensor.stop()
        agent.stop()
        watcher.stop()
    uploads = {json.loads(p)["seq_end"] for p in received if p.startswith(b"{")}
    assert second["uploads"]["sent"] >= pending
    assert len(uploads) == sent_first + pending  # every record arrived at least once (QoS 1 may repeat one)


def test_serial_unplug_and_replug_agent_keeps_scoring(tmp_path, agent_bundle):
    """The USB adapter goes away and comes back (a new pty behind the same path): the agent reopens it."""
    cfg = load_config(agent_config(tmp_path, agent_bundle, source=_serial(tmp_path),
                                   status={"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": False}))
    sensor = Sensor(tmp_path / "ttyS")
    agent = Agent(cfg)
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    sensor.start()
    try:
        assert wait_for(lambda: agent.pipeline.counters.windows_scored > 10, 20)
        sensor.link.disconnect()
        assert wait_for(lambda: agent.status()["sensors"]["pump-7"]["read_errors"]
                        + agent.status()["sensors"]["pump-7"]["open_failures"] >= 1, 10)
        sensor.link.reconnect()
        scored = agent.pipeline.counters.windows_scored
        assert wait_for(lambda: agent.pipeline.counters.windows_scored > scored + 10, 20), agent.status()
        s = agent.status()["sensors"]["pump-7"]
    finally:
        stop.set()
        thread.join(20)
        sensor.stop()
    assert s["reconnects"] >= 1 and s["internal_errors"] == 0
