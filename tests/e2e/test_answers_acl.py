"""Answers to alerts over MQTT, confined by the generated ACLs (issue 17, item 6), on two real mosquittos bridged with
examples/mosquitto-bridge.conf and a real agent: an operator at the centre and Home Assistant on the gateway may
answer this gateway's sensors; another gateway's login, a sensor node's and an anonymous client may not (the brokers
refuse them and log each refusal), and what the agent itself refuses (not a command, a retained one) is counted."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from pathlib import Path

from edge_agent import acl
from edge_agent.agent import Agent
from edge_agent.config import config_from_dict
from edge_agent.contract import topics
from edge_agent.mqtt_client import MqttConnection
from firmware_sim.broker import Broker, add_password
from firmware_sim.link import PtyLink
from tests.agent.gateway_helpers import gateway_config, running
from tests.e2e.fleet_helpers import login_bridge_conf
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
PUMP = topics.answer_command_topic("pump-1")


class Client:
    """An MQTT client with a login; publishes at QoS 1 and keeps what it receives."""

    def __init__(self, broker: Broker, user: str | None, *filters: str) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.conn = MqttConnection(broker.host, broker.port, f"{user}-{id(self)}", username=user,
                                   password=None if user is None else f"pw-{user}")
        for f in filters:
            self.conn.subscribe(f, 1, self._on)
        self.conn.start()

    def _on(self, msg) -> None:
        with self.lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    def send(self, topic: str, payload: bytes) -> None:
        """Publish and wait for the broker (a denied publish is acknowledged and dropped, or closes the connection:
        mosquitto versions differ; either way nothing is delivered)."""
        if not self.conn.wait_connected(10):
            return  # refused at login (anonymous): it cannot publish at all
        info = self.conn.publish(topic, payload, qos=1)
        if info is not None:
            with contextlib.suppress(RuntimeError):  # the broker closed the connection on the denied publish
                info.wait_for_publish(10)

    def stop(self) -> None:
        self.conn.stop()


def _denied(broker: Broker, user: str) -> int:
    return len(re.findall(rf"Denied PUBLISH from {re.escape(user)}-\d+ .*'{re.escape(PUMP)}'",
                          broker.log_path.read_text()))


def _gateway(gateway: str, *devices: str):
    return config_from_dict({"gateway": gateway, "mqtt": {"username": "edge-agent"}, "answers": {"mqtt": True},
                             "sensors": [{"device": d, "source": {"kind": "mqtt"}, "bundle": {"path": "b"}}
                                         for d in devices]})


def test_only_those_the_acls_allow_can_answer_a_sensors_alert(tmp_path, agent_bundle) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "agent.pw").write_text("pw-edge-agent\n")
    central_pw, local_pw = etc / "central.passwd", etc / "gateway.passwd"
    for user in ("hall-3", "hall-4", "collector", "publisher", "operator"):
        add_password(central_pw, user, f"pw-{user}")
    for user in ("edge-agent", acl.SENSOR_USER, acl.BRIDGE_USER, acl.DASHBOARD_USER):
        add_password(local_pw, user, f"pw-{user}")
    debug = "log_type debug\n"  # mosquitto logs each denied publish at debug level
    central = Broker(tmp_path / "central", extra_conf=f"allow_anonymous false\npassword_file {central_pw}\n"
                                                     f"acl_file {etc / 'central.acl'}\n{debug}")
    text = (REPO / "examples" / "mosquitto-bridge.conf").read_text()
    assert "topic vib/+/answer/set in 1" in text and "topic vib/+/answer out 1" in text
    gateway = Broker(tmp_path / "gateway",
                     extra_conf=login_bridge_conf(central, local_pw, etc / "gateway.acl") + "\n" + debug)
    link = PtyLink(tmp_path / "tty1")
    cfg = gateway_config(tmp_path, agent_bundle, {"pump-1": link}, answers={"mqtt": True},
                         mqtt={"host": gateway.host, "port": gateway.port, "username": "edge-agent",
                               "password_file": str(etc / "agent.pw")})
    # the ACLs, as `edge-agent broker-acl` writes them from the gateways' configs
    local_acl = acl.local(cfg)
    assert f"topic read {PUMP}\n" in local_acl and local_acl.count(f"topic write {PUMP}\n") == 2  # bridge, dashboard
    (etc / "gateway.acl").write_text(local_acl)
    central_acl = acl.central(cfg, services=True) + acl.central(_gateway("hall-4", "pump-9"))
    assert f"topic read {PUMP}\n" in acl.central(cfg) and PUMP not in acl.central(_gateway("hall-4", "pump-9"))
    (etc / "central.acl").write_text(central_acl)
    central.start()
    gateway.start()
    agent = Agent(cfg)
    clients: list[Client] = []
    sensor = agent.sensor("pump-1")
    try:
        with running(agent):
            operator = Client(central, "operator", "vib/+/answer")
            other_gateway = Client(central, "hall-4")
            node = Client(gateway, acl.SENSOR_USER)
            home_assistant = Client(gateway, acl.DASHBOARD_USER, "vib/+/answer")
            anonymous = Client(gateway, None)
            clients += [operator, other_gateway, node, home_assistant, anonymous]
            assert agent.wait_ready(10) and operator.conn.wait_subscribed(10) and home_assistant.conn.wait_subscribed(10)
            assert wait_for(lambda: anonymous.conn.counters.refused_connects > 0, 10)
            bridge_up = Client(central, "operator", topics.bridge_topic("hall-3"))
            clients.append(bridge_up)
            assert wait_for(lambda: any(p == b"1" for _, p in bridge_up.got), 15), "the bridge is up"

            # forgeries: another gateway's login at the centre, a sensor node's and an anonymous client on the gateway
            other_gateway.send(PUMP, b'{"kind": "silence", "hours": 168, "by": "hall-4"}')
            node.send(PUMP, b'{"kind": "silence", "hours": 168, "by": "sensor node"}')
            anonymous.send(PUMP, b'{"kind": "silence", "hours": 168, "by": "anonymous"}')
            # the legitimate ones: an operator at the centre (over the bridge), Home Assistant on the gateway
            operator.send(PUMP, b'{"kind": "silence", "hours": 2, "by": "central operator"}')
            assert wait_for(lambda: (sensor.answers.status()["silenced_by"] == "central operator"), 20)
            home_assistant.send(PUMP, b'{"kind": "unsilence", "by": "Home Assistant"}')
            home_assistant.send(PUMP, b'{"kind": "ack", "by": "Home Assistant"}')  # no alert yet: refused, counted
            home_assistant.send(PUMP, b"PRESS")  # not a command: refused, counted
            assert wait_for(lambda: agent.answers.status()["refused"] == {"no_alert": 1, "bad_request": 1}, 10)
            assert wait_for(lambda: _denied(central, "hall-4") == 1 and _denied(gateway, acl.SENSOR_USER) == 1, 10)

            def answer_states(client: Client) -> list[dict]:
                return [json.loads(p) for t, p in list(client.got) if t == topics.answer_topic("pump-1")]

            # the retained answer state is published after the answer is recorded, and reaches the dashboards on
            # their own connections (the centre's over the bridge): wait for it, then for anything forged
            assert wait_for(lambda: ((answer_states(home_assistant)[-1:] or [{}])[0].get("last") or {}).get("kind")
                            == "unsilence", 10), answer_states(home_assistant)[-1:]
            assert wait_for(lambda: any(s["silenced_by"] == "central operator" for s in answer_states(operator)), 10)
            time.sleep(0.5)  # anything a broker let through would have arrived by now
            recent = sensor.answers.recent()
            states = answer_states(operator)
            local_states = answer_states(home_assistant)
    finally:
        for c in clients:
            c.stop()
        gateway.stop()
        central.stop()
        link.close()
    assert [(a["kind"], a["by"], a["via"]) for a in recent] == [("silence", "central operator", "mqtt"),
                                                                ("unsilence", "Home Assistant", "mqtt")]
    # the retained answer state reached both the local dashboard and the centre (over the bridge)
    assert local_states and local_states[-1]["last"]["kind"] == "unsilence"
    assert states and any(s["silenced_by"] == "central operator" for s in states)
