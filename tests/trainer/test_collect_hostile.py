"""The collectors against hostile gateways (issue 14, breaks 1, 3, 6, 7 and the collector caveats), with real
mosquitto brokers, real collectors, a real gateway spool and uploader: a poison record never stops a collector,
a device is what its topic says, only a collector's signed receipt deletes a spooled record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.contract import receipt
from edge_agent.contract.signing import keyring
from edge_agent.contract.topics import receipt_topic, upload_topic
from edge_agent.contract.upload_record import decode_record, encode_record
from edge_agent.mqtt_client import MqttConnection
from edge_agent.spool import Spool
from edge_agent.uploader import Uploader
from firmware_sim.broker import Broker
from tests.e2e.fleet_helpers import COLLECTOR_KEY, CollectorThread
from tests.waiting import wait_for
from trainer import dataset


def _record(i: int, device: str = "pump-a", **over) -> bytes:
    samples = np.random.default_rng(i).normal(size=(64, 2)).astype(np.float32)
    fields = dict(device=device, model_id="m", model_version="v1", seq_end=1000 + i * 64,
                  time_end=f"2026-11-22T10:00:{i % 60:02d}", sample_rate=100.0, channels=["x", "y"], score=0.1,
                  threshold=0.5, state="normal", samples=samples, gateway="gw-a")
    return encode_record(**(fields | over))


def _forge(payload: bytes, **fields) -> bytes:
    """A record edited after encoding (what a hostile gateway can publish: the contract's encoder would refuse it)."""
    obj = json.loads(payload)
    obj.update(fields)
    return json.dumps(obj).encode()


class Gateway:
    """A raw MQTT client publishing on upload topics and listening to the receipts of its devices."""

    def __init__(self, broker: Broker, *devices: str) -> None:
        self.receipts: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hostile-{id(self)}")
        self.client.on_message = lambda c, u, m: self.receipts.append((m.topic, bytes(m.payload)))
        self.client.connect(*broker.address)
        self.client.loop_start()
        for d in devices:
            self.client.subscribe(receipt_topic(d), qos=1)

    def send(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    def rejected(self, device: str) -> dict[str, str]:
        keys = keyring([COLLECTOR_KEY.public_key()])
        out = {}
        for topic, payload in self.receipts:
            if topic == receipt_topic(device):
                out |= dict(receipt.decode(payload, keys, device).rejected)
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def central(tmp_path: Path):
    broker = Broker(tmp_path / "central", extra_conf="allow_anonymous true\nmax_queued_messages 0\n")
    broker.start()
    yield broker
    broker.stop()


def _ids(out: Path, device: str | None = None) -> list[str]:
    if not out.exists():
        return []
    t = dataset.read_table(out, dataset.DataFilter(devices=(device,) if device else ()), columns=["id"])
    return t.column("id").to_pylist()


POISON = {
    "sample_rate 1e-300": lambda p: _forge(p, sample_rate=1e-300),
    "time_end in year 1": lambda p: _forge(p, time_end="0001-01-01T00:00:00+05:00"),
    "time_end in year 9999": lambda p: _forge(p, time_end="9999-12-31T23:59:59-05:00"),
    "seq_end beyond int64": lambda p: _forge(p, seq_end=2**70),
    "a device of 21 emoji": lambda p: _forge(p, device="\U0001f600" * 21),
    "a clock 30 days ahead": lambda p: _forge(p, time_end="2099-01-01T00:00:00"),
    "junk": lambda p: b"\xff\xfe not json",
}


def test_poison_records_are_quarantined_receipted_and_never_stop_the_collector(central, tmp_path) -> None:
    """Break 1: one record with an absurd value used to raise in `trainer collect`; never acknowledged, redelivered
    for ever, every restart died again. Break 3: a long non-ASCII device id stalled it on the file-name limit."""
    out = tmp_path / "ds"
    gw = Gateway(central, "pump-a")
    collector = CollectorThread(central.address, out, flush_s=0.1)
    try:
        for i, poison in enumerate(POISON.values()):
            gw.send(upload_topic("pump-a"), poison(_record(100 + i)))
            gw.send(upload_topic("pump-a"), _record(i))  # a good record after each poison one
        gw.send("vib/" + "\U0001f600" * 21 + "/upload", _record(50))  # an id no file system takes, in the topic
        assert wait_for(lambda: len(_ids(out)) == len(POISON), 20), _ids(out)
        assert wait_for(lambda: len(gw.rejected("pump-a")) == len(POISON) - 1, 10), gw.rejected("pump-a")
    finally:
        stats = collector.stop()
    assert stats.quarantined == len(POISON) + 1, stats
    assert stats.by_reason == {"invalid": len(POISON) - 1, "clock_ahead": 1, "bad_topic": 1}, stats.by_reason
    assert stats.acked == 2 * len(POISON) + 1, "everything was acknowledged: nothing comes back for ever"
    reasons = gw.rejected("pump-a")
    assert any("sample_rate" in r for r in reasons.values()) and any("clock" in r for r in reasons.values())
    lines = [json.loads(ln) for f in (out / "_quarantine").rglob("*.jsonl") for ln in f.read_text().splitlines()]
    assert len(lines) == len(POISON) + 1 and all(ln["reason"] and ln["sha256"] for ln in lines)
    # a restart finds nothing to choke on: the quarantined records were acknowledged
    again = CollectorThread(central.address, out, flush_s=0.1)
    gw.send(upload_topic("pump-a"), _record(60))
    assert wait_for(lambda: len(_ids(out)) == len(POISON) + 1, 10)
    assert again.stop().received == 1
    gw.close()


def test_a_gateway_cannot_write_another_devices_data(central, tmp_path) -> None:
    """Break 7: a record for pump-b published on pump-a's topic (which the ACL lets pump-a's gateway write) was
    stored as pump-b's: the collector trusted the record, not the channel."""
    out = tmp_path / "ds"
    gw_a = Gateway(central, "pump-a")
    collector = CollectorThread(central.address, out, flush_s=0.1)
    try:
        gw_a.send(upload_topic("pump-a"), _record(1, device="pump-b"))
        gw_a.send(upload_topic("pump-a"), _record(2, device="pump-a"))
        assert wait_for(lambda: len(_ids(out)) == 1 and len(gw_a.rejected("pump-a")) == 1, 10)
    finally:
        stats = collector.stop()
        gw_a.close()
    assert _ids(out, "pump-b") == [] and len(_ids(out, "pump-a")) == 1
    assert stats.by_reason == {"foreign_device": 1}
    assert "came on pump-a's topic" in next(iter(gw_a.rejected("pump-a").values()))


def test_a_duplicate_id_with_other_content_is_refused_not_dropped(central, tmp_path) -> None:
    out = tmp_path / "ds"
    gw = Gateway(central, "pump-a")
    collector = CollectorThread(central.address, out, flush_s=0.1)
    first = _record(1)
    rid = decode_record(first).id
    try:
        gw.send(upload_topic("pump-a"), first)
        assert wait_for(lambda: _ids(out) == [rid], 10)
        gw.send(upload_topic("pump-a"), first)  # a QoS 1 re-send: a duplicate
        gw.send(upload_topic("pump-a"), _record(2, id=rid))  # the same id, other samples
        assert wait_for(lambda: rid in gw.rejected("pump-a"), 10)
    finally:
        stats = collector.stop()
        gw.close()
    assert stats.duplicates == 1 and stats.by_reason == {"id_conflict": 1}
    assert "already in the dataset with other content" in gw.rejected("pump-a")[rid]
    (only,) = dataset.read_windows(out).samples
    np.testing.assert_array_equal(only, decode_record(first).samples)


def test_a_collector_removes_its_own_temp_files_left_by_a_crash(central, tmp_path) -> None:
    out = tmp_path / "ds"
    part = out / "device=pump-a" / "date=2026-11-22"
    part.mkdir(parents=True)
    ours = part / ".part-collect-t-1-000007-abcdef.parquet.tmp"  # what a kill -9 mid-write leaves
    theirs = part / ".part-collect-other-000001-abcdef.parquet.tmp"  # another collector, writing right now
    ours.write_bytes(b"PAR1 half")
    theirs.write_bytes(b"PAR1 half")
    collector = CollectorThread(central.address, out, client_id="collect-t-1")
    collector.stop()
    assert not ours.exists() and theirs.exists()


def test_only_a_collectors_signed_receipt_deletes_spooled_records(central, tmp_path) -> None:
    """Break 6: a client on the gateway's broker sent receipts for records never collected; they were dropped.
    Now a receipt must be signed by a trusted collector key, for the device of its topic, and name records that
    were sent; anything else deletes nothing and is counted."""
    spool = Spool(tmp_path / "spool.sqlite").open()
    connection = MqttConnection(*central.address, "edge-agent-gw-a", reconnect_min_s=0.2, reconnect_max_s=1)
    uploader = Uploader(spool, connection, batch=10, receipts=True, receipt_timeout_s=300,
                        receipt_keys=keyring([COLLECTOR_KEY.public_key()]))
    connection.subscribe(receipt_topic("pump-a"), 1, lambda msg: uploader.on_receipt("pump-a", msg.payload))
    payloads = [_record(i) for i in range(36)]
    ids = [decode_record(p).id for p in payloads]
    forger = Gateway(central)
    try:
        connection.start()
        assert connection.wait_subscribed(10)
        uploader.start()
        for p, rid in zip(payloads, ids, strict=True):
            uploader.offer(upload_topic("pump-a"), p, "normal", rid)
        assert wait_for(lambda: spool.awaiting_receipt() == 36, 10), "sent, waiting for receipts (no collector)"
        forged = [
            b"\x00junk",
            json.dumps({"ids": ids, "collector": "evil"}).encode(),  # the old unsigned form
            receipt.encode("pump-a", ids, [], "evil", Ed25519PrivateKey.generate())[0],  # an unknown key
            receipt.encode("pump-b", ids, [], "c", COLLECTOR_KEY)[0],  # a real key, another device's receipt
        ]
        for f in forged:
            forger.send(receipt_topic("pump-a"), f)
        assert wait_for(lambda: uploader.counters.receipts_refused == len(forged), 10), uploader.counters.receipts_refused
        assert len(spool) == 36 and uploader.counters.confirmed == 0, "nothing was deleted"
        # the refusal is counted before its reason is kept: wait for the last one's reason
        assert wait_for(lambda: "for device 'pump-b' arrived on pump-a's topic" in (
            uploader.counters.last_receipt_refused or ""), 10), uploader.counters.last_receipt_refused
        # the real collector's receipts: what it stored is confirmed, what it refused is rejected
        collector = CollectorThread(central.address, tmp_path / "ds", flush_s=0.1)
        spool.close()
        uploader.stop()
        spool = Spool(tmp_path / "spool.sqlite").open()
        uploader = Uploader(spool, connection, batch=10, receipts=True, receipt_timeout_s=5,
                            receipt_keys=keyring([COLLECTOR_KEY.public_key()])).start()
        connection.subscribe(receipt_topic("pump-a"), 1, lambda msg: uploader.on_receipt("pump-a", msg.payload))
        good = _record(99)
        uploader.offer(upload_topic("pump-a"), _forge(good, sample_rate=1e-300), "normal", decode_record(good).id)
        assert wait_for(lambda: len(spool) == 0, 30), f"{len(spool)} still spooled"
        # the spool lets go of a receipt's records before the uploader counts them and keeps the reason: wait for both
        assert wait_for(lambda: (uploader.counters.confirmed, uploader.counters.rejected) == (36, 1)
                        and "sample_rate" in (uploader.counters.last_rejected or ""), 10), uploader.counters
        collector.stop()
    finally:
        forger.close()
        uploader.stop()
        connection.stop()
        spool.close()
