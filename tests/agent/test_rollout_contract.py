"""The signed rollout format (edge_agent.contract.rollout) and `trainer keygen` / `trainer publish` against a
real mosquitto: what verifies, and every way a rollout must not."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.contract import rollout
from edge_agent.contract.bundle import Bundle
from edge_agent.contract.errors import SignatureError
from edge_agent.mqtt_client import MqttConnection
from firmware_sim.broker import Broker
from tests.waiting import wait_for
from trainer.publish import keygen, load_private_key, publish


@pytest.fixture
def signing_key(tmp_path: Path) -> tuple[Path, Ed25519PrivateKey]:
    path = tmp_path / "keys" / "rollout.key"
    keygen(path)
    return path, load_private_key(path)


def test_keygen_keeps_the_private_key_private(tmp_path: Path) -> None:
    path = tmp_path / "k"
    pub, text = keygen(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert pub.read_text().strip() == text and rollout.key_id(rollout.load_public_key(text))
    with pytest.raises(FileExistsError):
        keygen(path)
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="readable by others"):
        load_private_key(path)
    with pytest.raises(SignatureError, match="not an Ed25519 public key"):
        rollout.load_public_key("c2hvcnQ=")


def test_a_signed_rollout_verifies_and_unpacks_to_the_same_bundle(agent_bundle: Path, signing_key, tmp_path) -> None:
    _, key = signing_key
    keys = rollout.keyring([key.public_key()])
    payload = rollout.pack_bundle(agent_bundle)
    assert rollout.pack_bundle(agent_bundle) == payload, "the same bundle packs to the same bytes"
    meta_bytes, chunks = rollout.make_metadata(agent_bundle, payload, "pump-1", key, chunk_size=4096)
    meta = rollout.verify_metadata(meta_bytes, keys)
    bundle = Bundle.load(agent_bundle)
    assert (meta.target, meta.model_version, meta.input_shape) == ("device/pump-1", bundle.version, bundle.input_shape)
    assert meta.n_chunks == len(chunks) > 1
    parts = dict(rollout.verify_chunk(meta, c, keys) for c in reversed(chunks))  # any order
    blob = rollout.assemble(meta, parts)
    out = rollout.unpack_bundle(blob, tmp_path / "unpacked")
    assert Bundle.load(out).version == bundle.version
    assert (out / "model.tflite").read_bytes() == (agent_bundle / "model.tflite").read_bytes()
    rollout.check_fits(meta, bundle.input_shape, bundle.spec.channels)
    with pytest.raises(rollout.RolloutError, match="this sensor's model takes"):
        rollout.check_fits(meta, (1, 16, bundle.input_shape[2]), bundle.spec.channels)


def test_every_tampering_is_refused(agent_bundle: Path, signing_key) -> None:
    _, key = signing_key
    keys = rollout.keyring([key.public_key()])
    payload = rollout.pack_bundle(agent_bundle)
    meta_bytes, chunks = rollout.make_metadata(agent_bundle, payload, rollout.FLEET, key, chunk_size=8192)
    meta = rollout.verify_metadata(meta_bytes, keys)

    altered = json.loads(meta_bytes)
    altered["model"]["version"] = "something-else"
    with pytest.raises(rollout.RolloutError, match="signature does not verify"):
        rollout.verify_metadata(json.dumps(altered).encode(), keys)
    unsigned = {k: v for k, v in json.loads(meta_bytes).items() if k != "signature"}
    with pytest.raises(rollout.RolloutError, match="unsigned"):
        rollout.verify_metadata(json.dumps(unsigned).encode(), keys)
    intruder = Ed25519PrivateKey.generate()
    foreign, foreign_chunks = rollout.make_metadata(agent_bundle, payload, rollout.FLEET, intruder)
    with pytest.raises(rollout.RolloutError, match="unknown key"):
        rollout.verify_metadata(foreign, keys)
    spoof = json.loads(foreign)
    spoof["key_id"] = meta.key_id  # claims to be ours: the signature tells
    with pytest.raises(rollout.RolloutError, match="signature does not verify"):
        rollout.verify_metadata(json.dumps(spoof).encode(), keys)
    with pytest.raises(rollout.RolloutError, match="not JSON"):
        rollout.verify_metadata(b"\xff garbage", keys)

    flipped = bytearray(chunks[1])
    flipped[40] ^= 0x01
    with pytest.raises(rollout.RolloutError, match="signature does not verify"):
        rollout.verify_chunk(meta, bytes(flipped), keys)
    with pytest.raises(rollout.RolloutError, match="another rollout"):
        rollout.verify_chunk(meta, foreign_chunks[0], keys)
    with pytest.raises(rollout.RolloutError, match="truncated"):
        rollout.verify_chunk(meta, chunks[0][:10], keys)
    parts = dict(rollout.verify_chunk(meta, c, keys) for c in chunks[:-1])
    with pytest.raises(rollout.RolloutError, match="missing"):
        rollout.assemble(meta, parts)


def test_unpack_writes_only_bundle_files(tmp_path: Path) -> None:
    for name, kind in (("../evil", tarfile.REGTYPE), ("report/x.png", tarfile.SYMTYPE), ("/etc/passwd", tarfile.REGTYPE),
                       ("variants/model.int8.tflite", tarfile.REGTYPE)):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = 0 if kind == tarfile.SYMTYPE else 3
            tar.addfile(info, io.BytesIO(b"abc") if kind == tarfile.REGTYPE else None)
        with pytest.raises(rollout.RolloutError, match="entries a bundle has not"):
            rollout.unpack_bundle(buf.getvalue(), tmp_path / "out")
        assert not (tmp_path / "out").exists()
    with pytest.raises(rollout.RolloutError, match="not a readable tar"):
        rollout.unpack_bundle(b"\0" * 100 + b"junk" * 200, tmp_path / "out2")


def test_publish_leaves_one_retained_rollout_a_gateway_can_fetch(agent_bundle: Path, signing_key,
                                                                   mosquitto: Broker) -> None:
    key_path, key = signing_key
    first = publish(agent_bundle, "fleet", key_path, MqttConnection(*mosquitto.address, "publish-1"), chunk_size=16_384)
    second = publish(agent_bundle, "fleet", key_path, MqttConnection(*mosquitto.address, "publish-2"),
                     chunk_size=16_384)
    assert second.cleared == first.chunks and second.meta.rollout_id != first.meta.rollout_id

    got: dict[str, bytes] = {}
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="late-gateway")
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, bytes(m.payload)) if m.payload else None
    client.on_subscribe = lambda *a: done.set()
    client.connect(*mosquitto.address)
    client.loop_start()
    try:
        client.subscribe(rollout.subscriptions("pump-1")[0], qos=1)
        assert done.wait(5)
        assert wait_for(lambda: len(got) == second.chunks + 1, timeout=10), sorted(got)
    finally:
        client.disconnect()
        client.loop_stop()
    keys = rollout.keyring([key.public_key()])
    meta = rollout.verify_metadata(got.pop(rollout.meta_topic("fleet")), keys)
    assert meta.rollout_id == second.meta.rollout_id
    assert all(rollout.parse_topic(t)[1] == meta.rollout_id for t in got), "the first rollout's chunks are gone"
    blob = rollout.assemble(meta, dict(rollout.verify_chunk(meta, p, keys) for p in got.values()))
    assert blob == rollout.pack_bundle(agent_bundle)
