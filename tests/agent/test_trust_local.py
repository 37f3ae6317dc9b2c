"""Local trust boundaries of a gateway (issue 14, breaks 9, 12, 13, 14): secrets never reach child programs,
a serial device is known by its real path, ids are never rewritten, and ``validate-config`` checks exactly
what ``run`` checks. Real agents, real programs, real SQLite files."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading

import pytest
from click.testing import CliRunner

from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.config import config_from_dict, load_config
from edge_agent.contract.errors import ConfigError, UploadError
from tests.agent.pipeline_helpers import agent_config
from tests.waiting import wait_for

SECRET = "s3cret-broker-password"
DUMP_ENV = "import json, os, sys; open(sys.argv[1], 'a').write(json.dumps(dict(os.environ)) + '\\n')"


def test_the_broker_password_never_reaches_an_alert_command(tmp_path, mosquitto, agent_bundle, monkeypatch):
    """Break 12: the alert command's environment held EDGE_MQTT_PASSWORD."""
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", SECRET)
    monkeypatch.setenv("SOME_TOKEN", "t0ken")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    dump = tmp_path / "env.jsonl"
    cfg = load_config(agent_config(
        tmp_path, agent_bundle,
        source={"kind": "serial", "serial": {"port": str(tmp_path / "no-such-port")}, "sample_rate": 20_000},
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "username": "gw", "password_env": "EDGE_MQTT_PASSWORD"},
        alerts={"sinks": {"log": False, "command": [sys.executable, "-c", DUMP_ENV, str(dump)],
                          "command_env": ["HTTPS_PROXY"]}},
        health={"no_data_s": 1.0},
    ))
    agent = Agent(cfg)
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: dump.exists() and dump.read_text().strip(), 20), "the health alert ran the command"
    finally:
        stop.set()
        thread.join(20)
    env = json.loads(dump.read_text().splitlines()[0])
    assert env["EDGE_ALERT_KIND"] == "health" and env["EDGE_ALERT_DEVICE"] == "pump-7"
    assert SECRET not in json.dumps(env) and "SOME_TOKEN" not in env
    assert env["HTTPS_PROXY"] == "http://proxy.example:3128" and env["PATH"] == os.environ["PATH"]
    with pytest.raises(ConfigError, match="command_env: EDGE_MQTT_PASSWORD holds the broker password"):
        config_from_dict({"device": "p", "mqtt": {"username": "u", "password_env": "EDGE_MQTT_PASSWORD"},
                          "source": {"kind": "serial", "serial": {"port": "x"}}, "bundle": {"path": "b"},
                          "alerts": {"sinks": {"command": ["true"], "command_env": ["EDGE_MQTT_PASSWORD"]}}})


def _two_serial(a: str, b: str) -> dict:
    sensor = lambda d, port: {"device": d, "source": {"kind": "serial", "serial": {"port": port}},  # noqa: E731
                              "bundle": {"path": "b"}}
    return {"gateway": "hall-3", "sensors": [sensor("pump-1", a), sensor("pump-2", b)]}


def test_two_sensors_on_one_serial_device_are_refused(tmp_path):
    """Break 13: a symlink and its target, or /dev/./x, were two sensors each getting half of the samples."""
    device = tmp_path / "ttyUSB0"
    device.write_bytes(b"")
    link = tmp_path / "by-id-usb-vib-node"
    link.symlink_to(device)
    for a, b in ((str(link), str(device)), (str(device), str(tmp_path / "." / "ttyUSB0")),
                 (str(device), str(tmp_path / "sub" / ".." / "ttyUSB0"))):
        with pytest.raises(ConfigError, match=r"sensors\[1\]\.source\.serial\.port: port .* is already used by "
                                              r"sensors\[0\]"):
            config_from_dict(_two_serial(a, b))
    assert config_from_dict(_two_serial("loop://", str(device)))  # URLs are compared as written


def test_ids_are_never_rewritten(tmp_path):
    """Break 9: gateways "hall 3" and "hall-3" became one MQTT client id and disconnected each other in a loop."""
    base = _two_serial("loop://", "socket://127.0.0.1:9")
    for bad in ("hall 3", "hall.3", "h\u00e4lle", "", "-x"):
        with pytest.raises(ConfigError, match="^gateway: (invalid gateway id|must be a non-empty string)"):
            config_from_dict(base | {"gateway": bad})
    assert config_from_dict(base | {"gateway": "hall-3"}).client_id == "edge-agent-hall-3"
    assert config_from_dict(base | {"gateway": "hall_3"}).client_id == "edge-agent-hall_3"


def test_validate_config_refuses_the_spool_that_run_refuses(tmp_path, agent_bundle):
    """Break 14: validate-config accepted another program's SQLite file as the spool, which run then refused."""
    other = tmp_path / "inventory.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE records (part TEXT, qty INTEGER)")  # the spool's table name, another program's file
    db.execute("CREATE TABLE suppliers (name TEXT)")
    db.commit()
    db.close()
    before = other.read_bytes()
    cfg_path = agent_config(tmp_path, agent_bundle, mqtt={"port": 1883},
                            uploads={"enabled": True, "spool_path": str(other)})
    check = CliRunner().invoke(main, ["validate-config", str(cfg_path)])
    assert check.exit_code == 1 and "uploads.spool_path" in check.output and "another program" in check.output
    with pytest.raises(UploadError, match="another program"):
        Agent(load_config(cfg_path)).start()
    assert other.read_bytes() == before, "never touched"
