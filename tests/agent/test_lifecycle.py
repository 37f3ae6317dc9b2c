"""Lifecycles: constructors acquire nothing, ``start`` acquires in order, ``close`` releases everything once,
and a start that fails half-way releases what it had taken (real spool, files, sockets, broker, threads)."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.contract.errors import BundleError, ConfigError
from edge_agent.mqtt_client import MqttConnection
from edge_agent.sinks import CommandSink, JsonlSink, MqttAlertSink
from edge_agent.spool import Spool
from tests.agent.pipeline_helpers import agent_config
from tests.waiting import wait_for


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.is_alive()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _spool_free(path) -> bool:
    """Another owner can take the spool now (its lock was released)."""
    Spool(path).open().close()
    return True


def _full_config(tmp_path, bundle, mosquitto, port, **over):
    sections = dict(
        mqtt={"host": mosquitto.host, "port": mosquitto.port}, http={"enabled": True, "port": port},
        uploads={"enabled": True, "spool_path": str(tmp_path / "spool.sqlite")},
        alerts={"sinks": {"log": True, "jsonl": str(tmp_path / "alerts" / "alerts.jsonl"), "mqtt": True,
                          "command": ["true"]}},
        homeassistant={"enabled": True}, status={"mqtt": True})
    sections.update(over)
    return load_config(agent_config(tmp_path, bundle, **sections))


def test_constructors_acquire_nothing(tmp_path, agent_bundle, mosquitto):
    before, port = _threads(), _free_port()
    cfg = _full_config(tmp_path, agent_bundle, mosquitto, port)
    agent = Agent(cfg)
    sinks = [JsonlSink(tmp_path / "x" / "a.jsonl"), CommandSink(["true"]),
             MqttAlertSink(MqttConnection(mosquitto.host, mosquitto.port, "c"), "pump-7")]
    spool = Spool(tmp_path / "s" / "spool.sqlite")
    assert _threads() == before, "a constructor started a thread"
    assert not (tmp_path / "spool.sqlite").exists() and not (tmp_path / "alerts").exists()
    assert not (tmp_path / "x").exists() and not (tmp_path / "s").exists()
    assert not _port_taken(port) and agent.sensor().pipeline is None, "no model loaded before start"
    del sinks, spool


def test_start_then_close_releases_everything_once(tmp_path, agent_bundle, mosquitto):
    before, port = _threads(), _free_port()
    cfg = _full_config(tmp_path, agent_bundle, mosquitto, port)
    agent = Agent(cfg).start()
    try:
        assert agent.start() is agent, "start is idempotent"
        assert _port_taken(port) and agent.sensor().pipeline is not None
        assert (tmp_path / "alerts" / "alerts.jsonl").exists() and wait_for(lambda: agent.wait_ready(0.1), 10)
        assert {"uploader", "bundle-watch", "alert-command", "alert-mqtt-pump-7"} <= _threads()
    finally:
        agent.close()
    agent.close()  # a second close does nothing
    assert wait_for(lambda: _threads() <= before, 10), _threads() - before
    assert not _port_taken(port) and _spool_free(tmp_path / "spool.sqlite")
    assert '"state": "stopped"' in (tmp_path / "status.json").read_text()


@pytest.mark.parametrize("late", ["bundle", "jsonl"])
def test_a_start_that_fails_half_way_releases_what_it_took(tmp_path, agent_bundle, mosquitto, late):
    """The spool is taken first; then the models (no bundle) or, after the models, the sinks (a JSONL path that
    is a folder, after the command and MQTT sinks started their threads) fail: nothing stays held."""
    before, port = _threads(), _free_port()
    bundle = tmp_path / "bundle"
    shutil.copytree(agent_bundle, bundle)
    cfg = _full_config(tmp_path, bundle, mosquitto, port)
    if late == "jsonl":  # made a folder after validation: found when the file is opened
        (tmp_path / "alerts" / "alerts.jsonl").mkdir(parents=True)
    else:  # the bundle removed after validation
        shutil.rmtree(bundle)
    agent = Agent(cfg)
    with pytest.raises({"jsonl": ConfigError, "bundle": BundleError}[late]):
        agent.start()
    assert wait_for(lambda: _threads() <= before, 10), _threads() - before
    assert not _port_taken(port) and _spool_free(tmp_path / "spool.sqlite")
    agent.close()  # nothing left to release: a no-op


def test_sinks_start_and_close(tmp_path, mosquitto):
    before = _threads()
    conn = MqttConnection(mosquitto.host, mosquitto.port, "sinks").start()
    sinks = [JsonlSink(tmp_path / "a.jsonl"), CommandSink(["true"]), MqttAlertSink(conn, "pump-7")]
    for s in sinks:
        s.start()
    assert (tmp_path / "a.jsonl").exists() and {"alert-command", "alert-mqtt-pump-7"} <= _threads()
    for s in sinks:
        s.close()
    conn.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _threads() <= before:
        time.sleep(0.05)
    assert _threads() <= before
