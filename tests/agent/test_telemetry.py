"""One path from counter to dashboard: every number of a real gateway's status is a metric or says why not."""

from __future__ import annotations

import dataclasses
import urllib.request

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from edge_agent import status as st
from edge_agent import telemetry
from edge_agent.agent import Agent
from edge_agent.contract.signing import public_key_text
from firmware_sim.link import PtyLink
from tests.agent.gateway_helpers import gateway_config, running
from tests.agent.pipeline_helpers import frames_of
from tests.waiting import wait_for


def test_a_field_without_a_declaration_is_refused() -> None:
    @dataclasses.dataclass
    class Planted:
        counted: int = st.counter("declared")
        forgotten: int = 0

    with pytest.raises(TypeError, match=r"Planted.forgotten: declare it"):
        list(telemetry._entries(telemetry.Section("x", Planted)))


def test_a_planted_status_number_is_found() -> None:
    doc = {"uptime_s": 1.0, "mqtt": {"connects": 2, "last_error": "x", "tls": True},
           "sensors": {"pump-1": {"windows_scored": 3, "sinks": {"0:LogSink": {"delivered": 1}},
                                  "uploads_kept": {"alert": 2}, "health": {"events": 1, "state": "ok"},
                                  "new_counter": 7, "model_id": 5}}}
    assert telemetry.uncatalogued(doc) == ["sensors.pump-1.new_counter", "sensors.pump-1.model_id"]


def test_every_number_of_a_running_gateway_is_exported(tmp_path, agent_bundle, degrading_samples, mosquitto):
    """A gateway with every part on (MQTT, uploads with receipts, rollouts, Home Assistant, the web page, JSONL,
    command and MQTT sinks, drift): each numeric status field is a metric or excused, and each exported one is
    in the scraped text with the status document's value."""
    key = Ed25519PrivateKey.generate()
    links = {"pump-1": PtyLink(tmp_path / "tty1", write_timeout=10), "pump-2": PtyLink(tmp_path / "tty2")}
    cfg = gateway_config(
        tmp_path, agent_bundle, links, mqtt={"host": mosquitto.host, "port": mosquitto.port},
        status={"mqtt": True}, homeassistant={"enabled": True},
        uploads={"enabled": True, "spool_path": str(tmp_path / "spool.sqlite"), "every_s": 1.0},
        rollout={"public_keys": [public_key_text(key.public_key())]},
        alerts={"sinks": {"log": True, "jsonl": str(tmp_path / "alerts.jsonl"), "mqtt": True,
                          "command": ["true"]}})
    agent = Agent(cfg)
    frames = frames_of(degrading_samples[: 20_000 * 4], 1024)
    try:
        with running(agent):
            assert wait_for(lambda: agent.web.port is not None and agent.wait_ready(0.1), 10)
            for f in frames:
                links["pump-1"].send(f)
                links["pump-2"].send(f)
            assert wait_for(lambda: all(s.pipeline.counters.windows_scored > 20 for s in agent.sensors), 20)
            assert wait_for(lambda: agent.snapshot()[0]["sensors"]["pump-2"]["windows_scored"] > 20, 10)
            scraped: list = []

            def scrape() -> bool:
                """The scrape and the snapshot it served: the scoring loop replaces the snapshot every second while
                the sensors still score, so a scrape counts only when the same snapshot was in place around it."""
                before = agent.snapshot()[0]
                with urllib.request.urlopen(f"http://127.0.0.1:{agent.web.port}/metrics", timeout=10) as r:
                    scraped[:] = [r.read().decode(), before]
                return agent.snapshot()[0] is before

            assert wait_for(scrape, 10), "the snapshot was replaced during every scrape"
            text, doc = scraped
    finally:
        for link in links.values():
            link.close()
    assert doc["uploads"] is not None and doc["homeassistant"] is not None and doc["sensors"]["pump-1"]["rollout"]
    assert telemetry.uncatalogued(doc) == []

    scraped = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            scraped[(s.name, tuple(sorted(s.labels.items())))] = s.value
    checked = 0
    for entry in telemetry.catalogue():
        if entry.metric is None or entry.states or entry.info:
            continue
        for labels, (_, v) in telemetry.samples(doc, entry):
            if isinstance(v, bool | int | float):
                assert scraped[(entry.metric, tuple(sorted(labels.items())))] == pytest.approx(v * entry.scale), \
                    entry.path
                checked += 1
    assert checked > 150
