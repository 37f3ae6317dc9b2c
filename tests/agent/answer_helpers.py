"""Helpers of the answer tests: the page's write token, HTTP posts, an MQTT watcher, streaming until an alert."""

from __future__ import annotations

import http.client
import json
import threading

from edge_agent.agent import Agent
from edge_agent.mqtt_client import MqttConnection
from firmware_sim.link import PtyLink
from tests.waiting import wait_for

TOKEN = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"


def post(port: int, path: str, body: bytes | dict, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    try:
        conn.request("POST", path, body=data, headers=headers or {})
        r = conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw.startswith(b"{") else {"text": raw.decode()}
    finally:
        conn.close()


def good(token: str = TOKEN, **more) -> dict:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {token}"} | more


class Watcher:
    """An MQTT client keeping what arrives on its filters."""

    def __init__(self, broker, *filters: str) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.conn = MqttConnection(broker.host, broker.port, f"watcher-{id(self)}")
        for f in filters:
            self.conn.subscribe(f, 1, self._on)
        self.conn.start()

    def _on(self, msg) -> None:
        with self.lock:
            self.got.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def payloads(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.got if t == topic]


def until_alert(agent: Agent, link: PtyLink, frames: list[bytes], start: int) -> int:
    """Send ``frames[start:]`` one by one until the sensor raises an alert; the index of the next frame."""
    sensor = agent.sensor("pump-1")
    base = sensor.pipeline.windower.counters.samples_in
    for i in range(start, len(frames)):
        link.send(frames[i])
        assert wait_for(lambda i=i: sensor.pipeline.windower.counters.samples_in >= base + (i + 1 - start) * 1024, 20)
        if sensor.pipeline.state in ("warning", "critical"):
            return i + 1
    raise AssertionError("no alert")
