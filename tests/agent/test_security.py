"""MQTT security with a real mosquitto: TLS with client certificates and an ACL, passwords from files or the
environment (never from the config, never logged), and wrong certificates refused with a clear error."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.config import config_from_dict, load_config, mqtt_password, secret_file_warnings
from edge_agent.contract.errors import ConfigError
from edge_agent.mqtt_client import MqttConnection, TlsSettings
from firmware_sim.broker import Broker, add_password, require_mosquitto, tls_conf
from tests.agent.pipeline_helpers import agent_config
from tests.pki import CertificateAuthority
from tests.waiting import wait_for

SECRET = "s3cr3t-Pa55-x7"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """CA, broker certificate, gateway certificates (hall-3, hall-4, ops), and the wrong ones."""
    folder = tmp_path_factory.mktemp("pki")
    ca, other = CertificateAuthority(folder, "plant"), CertificateAuthority(folder, "rogue")
    return {
        "ca": ca, "server": ca.issue("broker", server=True),
        "hall-3": ca.issue("hall-3"), "hall-4": ca.issue("hall-4"), "ops": ca.issue("ops"),
        "other-ca": other.issue("hall-3"), "expired": ca.issue("hall-3", expired=True), "rogue": other,
    }


@pytest.fixture
def tls_broker(tmp_path, pki):
    """mosquitto, TLS only, client certificates required; the ACL gives each gateway its own topics."""
    require_mosquitto()
    acl = tmp_path / "acl"
    acl.write_text(
        "# every gateway: its own prefix\n"
        "pattern readwrite vib/gateway/%u/#\n"
        "user hall-3\ntopic readwrite vib/pump-7/#\n"
        "user hall-4\ntopic readwrite vib/fan-2/#\n"
        "user ops\ntopic read vib/#\n"
    )
    s = pki["server"]
    broker = Broker(tmp_path / "mosquitto", extra_conf=tls_conf(pki["ca"].ca_file, s.cert, s.key, acl_file=acl))
    broker.start()
    yield broker
    broker.stop()


def _client(broker, pki, name: str, **kw) -> MqttConnection:
    c = pki[name]
    return MqttConnection(broker.host, broker.port, f"test-{name}", tls=TlsSettings(pki["ca"].ca_file, c.cert, c.key),
                          reconnect_max_s=2.0, **kw)


def _tls_section(pki, name: str, ca: Path | None = None) -> dict:
    c = pki[name]
    return {"ca_file": str(ca or pki["ca"].ca_file), "cert_file": str(c.cert), "key_file": str(c.key)}


def _status(folder: Path) -> dict:
    try:
        return json.loads((folder / "status.json").read_text())
    except FileNotFoundError:
        return {}


def _run(agent: Agent):
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def test_gateway_over_tls_publishes_only_under_its_own_topics(tmp_path, tls_broker, pki, agent_bundle):
    seen: list[tuple[str, bytes]] = []
    ops = _client(tls_broker, pki, "ops", subscriptions=[("vib/#", 1)],
                  on_message=lambda m: seen.append((m.topic, m.payload)))
    cfg = load_config(agent_config(
        tmp_path, agent_bundle, gateway="hall-3",
        mqtt={"host": "localhost", "port": tls_broker.port, "tls": _tls_section(pki, "hall-3")},
        status={"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": True}))
    agent = Agent(cfg)
    hall3 = _client(tls_broker, pki, "hall-3")
    hall4 = _client(tls_broker, pki, "hall-4")
    got3: list[str] = []
    stop = thread = None
    try:
        ops.start()
        assert ops.wait_subscribed(10)
        stop, thread = _run(agent)
        # the agent is up over TLS: its availability and status arrive (host name "localhost" verified)
        assert wait_for(lambda: ("vib/gateway/hall-3/availability", b"online") in seen, 15), agent.status()["mqtt"]
        assert wait_for(lambda: any(t == "vib/pump-7/status" for t, _ in seen), 10)
        assert agent.status()["mqtt"]["tls"] is True

        # hall-3 cannot write under hall-4's prefix nor under a sensor that is not its own ...
        hall3.subscribe("vib/gateway/hall-4/#", 1, lambda m: got3.append(m.topic))
        hall3.start()
        hall4.start()
        assert hall3.wait_subscribed(10) and hall4.wait_connected(10)
        for topic in ("vib/gateway/hall-4/status", "vib/fan-2/alert"):
            hall3.publish(topic, b"forged", qos=1).wait_for_publish(5)
        hall3.publish("vib/gateway/hall-3/status", b"marker-3", qos=1).wait_for_publish(5)
        # ... and cannot read hall-4's topics, which hall-4 itself can write
        hall4.publish("vib/gateway/hall-4/status", b"marker-4", qos=1).wait_for_publish(5)
        assert wait_for(lambda: ("vib/gateway/hall-4/status", b"marker-4") in seen, 10)
        assert wait_for(lambda: ("vib/gateway/hall-3/status", b"marker-3") in seen, 10)
        hall4.publish("vib/gateway/hall-4/status", b"marker-4b", qos=1).wait_for_publish(5)
        assert wait_for(lambda: ("vib/gateway/hall-4/status", b"marker-4b") in seen, 10)
    finally:
        if stop is not None:
            stop.set()
            thread.join(20)
        for c in (hall3, hall4, ops):
            c.stop()
    assert b"forged" not in [p for _, p in seen]  # the broker dropped both forged messages
    assert got3 == []  # hall-3 received nothing of hall-4's, though hall-4's messages were delivered to ops


@pytest.mark.parametrize("case, words", [
    ("other-ca", "unknown ca"),
    ("expired", "certificate expired"),
    ("untrusted-broker", "not trusted"),
])
def test_wrong_certificate_is_refused_with_a_clear_error(tmp_path, tls_broker, pki, agent_bundle, caplog, case, words):
    if case == "untrusted-broker":  # the gateway does not trust the broker: a CA file of another CA
        tls = _tls_section(pki, "hall-3", ca=pki["rogue"].ca_file)
    else:
        tls = _tls_section(pki, case)
    cfg = load_config(agent_config(
        tmp_path, agent_bundle, gateway="hall-3",
        mqtt={"host": "127.0.0.1", "port": tls_broker.port, "tls": tls},
        status={"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": True}))
    caplog.set_level(logging.INFO, logger="edge_agent")
    agent = Agent(cfg)
    stop, thread = _run(agent)
    try:
        # the refusal is counted before its reason is kept: wait for a status document with both
        assert wait_for(lambda: _status(tmp_path).get("mqtt", {}).get("refused_connects", 0) >= 1
                        and _status(tmp_path)["mqtt"].get("last_error"), 15), agent.status()["mqtt"]
        status = _status(tmp_path)
    finally:
        stop.set()
        thread.join(20)
    mqtt = status["mqtt"]
    assert mqtt["connected"] is False and mqtt["connects"] == 0
    assert words in mqtt["last_error"].lower(), mqtt
    refused = [r for r in caplog.records if r.levelno == logging.ERROR and "edge-agent-hall-3" in r.getMessage()]
    assert refused and words in refused[0].getMessage().lower()


@pytest.fixture
def password_broker(tmp_path, pki):
    """mosquitto, TLS without client certificates; user hall-3 logs in with SECRET."""
    require_mosquitto()
    passwords = tmp_path / "passwords"
    add_password(passwords, "hall-3", SECRET)
    s = pki["server"]
    broker = Broker(tmp_path / "mosquitto", extra_conf=tls_conf(
        pki["ca"].ca_file, s.cert, s.key, require_certificate=False, password_file=passwords))
    broker.start()
    yield broker
    broker.stop()


@pytest.mark.parametrize("how", ["file", "env", "wrong"])
def test_password_from_a_file_or_the_environment_never_logged(tmp_path, password_broker, pki, agent_bundle, caplog,
                                                              monkeypatch, how):
    secret = "not-the-password" if how == "wrong" else SECRET
    mqtt = {"host": "localhost", "port": password_broker.port, "username": "hall-3",
            "tls": {"ca_file": str(pki["ca"].ca_file)}}
    if how == "env":
        monkeypatch.setenv("EDGE_MQTT_PASSWORD", secret)
        mqtt["password_env"] = "EDGE_MQTT_PASSWORD"
    else:
        (tmp_path / "mqtt.secret").write_text(secret + "\n")
        os.chmod(tmp_path / "mqtt.secret", 0o600)
        mqtt["password_file"] = "mqtt.secret"  # relative to the config file
    cfg = load_config(agent_config(tmp_path, agent_bundle, gateway="hall-3", mqtt=mqtt,
                                   status={"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": True}))
    assert secret not in repr(cfg)
    caplog.set_level(logging.DEBUG)  # paho's debug log too
    agent = Agent(cfg)
    agent.connection._client.enable_logger(logging.getLogger("paho"))
    stop, thread = _run(agent)
    try:
        if how == "wrong":
            assert wait_for(lambda: agent.status()["mqtt"]["refused_connects"] >= 1, 15)
            # the refusal is counted before its reason is kept
            assert wait_for(lambda: "not authorized" in (agent.status()["mqtt"]["last_error"] or "").lower(), 10), \
                agent.status()["mqtt"]
        else:
            assert wait_for(lambda: agent.status()["mqtt"]["connected"], 15), agent.status()["mqtt"]
        assert wait_for(lambda: (tmp_path / "status.json").exists(), 5)
    finally:
        stop.set()
        thread.join(20)
    assert secret not in caplog.text
    assert secret not in (tmp_path / "status.json").read_text()
    assert secret not in json.dumps(agent.status())


def _cfg(mqtt: dict, tmp_path: Path):
    return config_from_dict({"device": "d", "source": {"kind": "mqtt"}, "bundle": {"path": "b"}, "mqtt": mqtt},
                            base_dir=tmp_path)


def test_config_refuses_a_clear_text_password_and_checks_the_secret(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"mqtt.password: .*password_file.*password_env"):
        _cfg({"username": "u", "password": "hunter2"}, tmp_path)
    with pytest.raises(ConfigError, match="not both"):
        _cfg({"username": "u", "password_file": "f", "password_env": "E"}, tmp_path)
    with pytest.raises(ConfigError, match="mqtt.username: required"):
        _cfg({"password_env": "E"}, tmp_path)
    with pytest.raises(ConfigError, match="cert_file and key_file"):
        _cfg({"tls": {"cert_file": "c.pem"}}, tmp_path)
    monkeypatch.delenv("NO_SUCH_VAR", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_VAR is not set"):
        mqtt_password(_cfg({"username": "u", "password_env": "NO_SUCH_VAR"}, tmp_path))
    with pytest.raises(ConfigError, match="cannot read"):
        mqtt_password(_cfg({"username": "u", "password_file": "missing"}, tmp_path))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty") as err:
        mqtt_password(_cfg({"username": "u", "password_file": "empty"}, tmp_path))
    (tmp_path / "pw").write_text("hunter2\nignored\n")
    os.chmod(tmp_path / "pw", 0o644)
    cfg = _cfg({"username": "u", "password_file": "pw"}, tmp_path)
    assert mqtt_password(cfg) == "hunter2"
    assert "hunter2" not in str(err.value)
    warnings = secret_file_warnings(cfg)
    assert len(warnings) == 1 and "readable by others" in warnings[0]
    os.chmod(tmp_path / "pw", 0o600)
    assert secret_file_warnings(cfg) == []


def test_validate_config_warns_about_a_secret_others_can_read(tmp_path, agent_bundle):
    from click.testing import CliRunner

    from edge_agent.cli import main

    (tmp_path / "mqtt.secret").write_text("pw\n")
    os.chmod(tmp_path / "mqtt.secret", 0o644)
    cfg = agent_config(tmp_path, agent_bundle, mqtt={"username": "u", "password_file": "mqtt.secret"})
    result = CliRunner().invoke(main, ["validate-config", str(cfg)])
    assert result.exit_code == 0 and "readable by others" in result.stderr and "pw\n" not in result.output
