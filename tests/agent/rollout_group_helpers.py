"""Helpers for the group rollout tests (tests/agent/test_rollout_groups.py, tests/e2e/test_rollout_groups_gateway.py):
grouped copies of a real bundle, metadata re-signed by a publisher that skipped its checks, and the retained
messages a broker holds."""

from __future__ import annotations

import base64
import json
import shutil
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.contract import rollout as contract
from firmware_sim.broker import Broker
from tests.agent.pipeline_helpers import rewrite_bundle


def grouped(src: Path, dest: Path, version: str, group: str | None) -> Path:
    """A copy of the real bundle ``src`` with another version and manifest ``model.group`` (written by the bundle
    writer: the digest covers the manifest)."""
    shutil.copytree(src, dest)
    rewrite_bundle(dest, version=version, manifest_edit=lambda m: m["model"].__setitem__("group", group)
                   if group is not None else m["model"].pop("group", None))
    return dest


def resigned(meta: bytes, key: Ed25519PrivateKey, edit) -> bytes:  # noqa: ANN001
    """``meta`` changed by ``edit(fields)`` and signed again with the trusted ``key`` (a publisher that skips checks)."""
    fields = {k: v for k, v in json.loads(meta).items() if k != "signature"}
    edit(fields)
    return contract.canonical(fields | {"signature": base64.b64encode(key.sign(contract.canonical(fields))).decode()})


def as_schema_2(fields: dict) -> None:
    """Metadata as a publisher before groups wrote it: schema 2, no bundle.group."""
    fields["schema"] = 2
    del fields["bundle"]["group"]


def rollout_messages(meta: bytes, chunks: list[bytes]) -> list[tuple[str, bytes]]:
    """The retained messages of one rollout, chunks first (as ``trainer publish`` sends them)."""
    target, rid = json.loads(meta)["target"], json.loads(meta)["rollout_id"]
    return [(contract.chunk_topic(target, rid, i), c) for i, c in enumerate(chunks)] + \
        [(contract.meta_topic(target), meta)]


def publish_raw(broker: Broker, messages: list[tuple[str, bytes]]) -> None:
    """Publish retained QoS 1 messages and wait for each PUBACK."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="workstation-raw")
    client.connect(*broker.address)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def retained(broker: Broker, pattern: str = "vib/rollout/#") -> dict[str, bytes]:
    """Every retained message under ``pattern`` (a fresh subscriber gets them right after its SUBACK; a marker
    published after the subscription tells when they have all come)."""
    got: dict[str, bytes] = {}
    done, subscribed = threading.Event(), threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="retained-reader")

    def on_message(c, u, m) -> None:  # noqa: ANN001
        if m.topic == "test/marker":
            done.set()
        elif m.payload:
            got[m.topic] = bytes(m.payload)

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(*broker.address)
    client.loop_start()
    try:
        client.subscribe([(pattern, 1), ("test/marker", 1)])
        assert subscribed.wait(5)
        client.publish("test/marker", b"1", qos=1).wait_for_publish(5)
        assert done.wait(5)
    finally:
        client.disconnect()
        client.loop_stop()
    return got
