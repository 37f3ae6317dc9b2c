"""The fleet's collection path against real mosquitto brokers: shared subscriptions, at-least-once,
idempotence, and the Parquet dataset that pyarrow and DuckDB read."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pyarrow.dataset as ds
import pytest

from edge_agent.contract.recordings import DataFormatError
from edge_agent.contract.signing import keygen
from edge_agent.contract.upload_record import decode_record, encode_record
from firmware_sim.broker import Broker
from tests.e2e.fleet_helpers import CollectorThread
from tests.waiting import wait_for
from trainer import dataset

BIN = Path(sys.executable).parent
#: mosquitto drops what it queues for a session beyond max_queued_messages (default 1000): a collector's
#: broker must lift it (docs/central/fleet.md, "Broker settings that matter for collectors")
COLLECTOR_BROKER = "allow_anonymous true\nmax_queued_messages 0\n"


def record(i: int, device: str = "pump-1", *, kind: str | None = None, state: str = "normal",
           score: float = 0.1, day: int = 22, n: int = 32) -> bytes:
    samples = np.random.default_rng(i).normal(size=(n, 2)).astype(np.float32)
    return encode_record(device=device, model_id="m", model_version="v1" if i % 4 else "v0", seq_end=1000 + i * n,
                         time_end=f"2026-11-{day}T10:{(i // 60) % 60:02d}:{i % 60:02d}", sample_rate=100.0,
                         channels=["x", "y"], score=score, threshold=0.5, state=state, samples=samples, kind=kind,
                         gateway="gw-a")


def publish_all(broker: Broker, payloads: list[bytes], client_id: str = "gateway-under-test") -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    pub.connect(*broker.address)
    pub.loop_start()
    try:
        infos = [pub.publish(f"vib/{decode_record(p).device}/upload", p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(timeout=20)
            assert info.is_published()
    finally:
        pub.disconnect()
        pub.loop_stop()


def Collector(broker: Broker, out: Path, **kwargs) -> CollectorThread:  # noqa: N802 (reads as a class)
    """``trainer collect`` on a thread (tests/e2e/fleet_helpers.py)."""
    return CollectorThread(broker.address, out, **kwargs)


# ------------------------------------------------------------------------------------------- dataset
def test_dataset_round_trip_filters_and_other_readers(tmp_path: Path, caplog) -> None:
    root = tmp_path / "ds"
    recs = [decode_record(record(i, "pump-1" if i % 2 else "fan_7", day=21 + (i // 2) % 2,
                                 kind="alert" if i % 5 == 0 else None)) for i in range(40)]
    writer = dataset.DatasetWriter(root, writer_id="w1").open()
    assert all(writer.add(r) for r in recs) and not writer.add(recs[3])
    files, failed = writer.flush()
    assert len(files) == 4 and not failed and writer.pending == 0 and writer.stats.duplicates == 1
    assert {f.parent.relative_to(root).as_posix() for f in files} == {
        "device=pump-1/date=2026-11-21", "device=pump-1/date=2026-11-22",
        "device=fan_7/date=2026-11-21", "device=fan_7/date=2026-11-22"}

    # a second writer (another collector) knows the ids already there; a copy written anyway is read once
    again = dataset.DatasetWriter(root, writer_id="w2").open()
    assert not again.add(recs[0])
    import pyarrow.parquet as pq

    pq.write_table(dataset.to_table([recs[0]]), files[0].parent / "part-w3-000001-abcdef.parquet")
    table = dataset.read_table(root)
    assert table.num_rows == 40 and sorted(table.column("id").to_pylist()) == sorted(r.id for r in recs)

    # samples and metadata survive exactly
    w = dataset.read_windows(root, dataset.DataFilter(devices=("fan_7",)))
    by_id = {r.id: r for r in recs}
    assert len(w) == 20
    for rid, samples in zip(w.table.column("id").to_pylist(), w.samples, strict=True):
        np.testing.assert_array_equal(samples, by_id[rid].samples)
    assert set(w.table.column("device").to_pylist()) == {"fan_7"}

    healthy = dataset.read_table(root, dataset.parse_select(["device=pump-1"]))
    assert healthy.num_rows == 16 and set(healthy.column("kind").to_pylist()) == {"normal"}
    v0 = dataset.read_table(root, dataset.parse_select(["model_version=v0", "healthy=false"]))
    assert set(v0.column("model_version").to_pylist()) == {"v0"} and v0.num_rows == 10
    day = dataset.read_table(root, dataset.parse_select(["healthy=false"], start="2026-11-22T00:00:00"))
    assert day.num_rows == 20
    rec = dataset.load(root, dataset.parse_select(["device=pump-1", "kind=normal"]))
    assert rec.format == "dataset" and len(rec.segments) == 16 and rec.channels == ("x", "y")
    assert rec.segments[0].start < rec.segments[-1].start
    with pytest.raises(DataFormatError, match="no windows match"):
        dataset.load(root, dataset.parse_select(["device=nobody"]))
    with pytest.raises(ValueError, match="unknown key"):
        dataset.parse_select(["colour=red"])

    # readers never see a write in progress, and a broken part costs that part only (logged)
    (files[0].parent / ".part-zz-000001-abcdef.parquet.tmp").write_bytes(b"PAR1 half a file")
    (files[0].parent / "part-zz-000002-abcdef.parquet").write_bytes(b"copied over by hand, not parquet")
    with caplog.at_level(logging.ERROR, logger="trainer.dataset"):
        assert dataset.read_table(root).num_rows == 40 - 0  # the junk file's rows: none
    assert "unreadable part skipped" in caplog.text
    (files[0].parent / "part-zz-000002-abcdef.parquet").unlink()

    # any data tool reads it: pyarrow's own dataset API, DuckDB with Hive partitioning
    pa_table = ds.dataset(root, format="parquet", partitioning="hive").to_table(columns=["id", "device", "kind"])
    assert pa_table.num_rows == 41 and set(pa_table.column("device").to_pylist()) == {"pump-1", "fan_7"}
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(f"SELECT device, kind, count(DISTINCT id) FROM read_parquet('{root}/**/*.parquet', "
                      "hive_partitioning = true) GROUP BY ALL ORDER BY ALL").fetchall()
    assert rows == [("fan_7", "alert", 4), ("fan_7", "normal", 16), ("pump-1", "alert", 4), ("pump-1", "normal", 16)]


# ------------------------------------------------------------------------------------------- brokers
def test_two_collectors_split_a_shared_subscription(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "central", extra_conf=COLLECTOR_BROKER)
    broker.start()
    out = tmp_path / "ds"
    try:
        first = Collector(broker, out, group="g", member=1, flush_s=0.2)
        second = Collector(broker, out, group="g", member=2, flush_s=0.2)
        payloads = [record(i, f"pump-{i % 3}") for i in range(600)]
        publish_all(broker, payloads)
        assert wait_for(lambda: dataset.read_table(out, columns=["id"]).num_rows == len(payloads), timeout=30)
        first.close()
        second.close()
    finally:
        broker.stop()
    a, b = first.stats, second.stats
    assert a.written > 50 and b.written > 50, f"the broker split {a.written} / {b.written}"
    assert a.written + b.written == len(payloads) and a.duplicates + b.duplicates == 0
    raw = ds.dataset(out, format="parquet", partitioning="hive").to_table(columns=["id"])
    assert raw.num_rows == len(payloads), "nothing written twice"
    assert sorted(raw.column("id").to_pylist()) == sorted(decode_record(p).id for p in payloads)


def test_collector_killed_mid_stream_loses_nothing(tmp_path: Path) -> None:
    """kill -9 of a collector process: its session keeps what it had not acknowledged; restarted, it gets it."""
    broker = Broker(tmp_path / "central", extra_conf=COLLECTOR_BROKER)
    broker.start()
    out = tmp_path / "ds"
    keygen(tmp_path / "collector.key")
    cmd = [str(BIN / "trainer"), "collect", "--broker", f"{broker.host}:{broker.port}", "--out", str(out),
           "--group", "g", "--client-id", "collector-under-test", "--flush-s", "0.5", "--key",
           str(tmp_path / "collector.key")]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            if "subscribed to $share/g/vib/+/upload" in line:
                return proc
        raise AssertionError(f"collector never subscribed (exit {proc.wait()})")

    payloads = [record(i, "pump-1", n=256) for i in range(1500)]
    proc = start()
    try:
        sender = threading.Thread(target=publish_all, args=(broker, payloads), daemon=True)
        sender.start()
        assert wait_for(lambda: out.exists() and dataset.read_table(out, columns=["id"]).num_rows > 100, timeout=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = dataset.read_table(out, columns=["id"]).num_rows
        sender.join(30)
        assert killed_at < len(payloads), "the kill came too late to test anything"
        proc = start()
        assert wait_for(lambda: dataset.read_table(out, columns=["id"]).num_rows == len(payloads), timeout=30)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=15)[0]
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
        broker.stop()
    ids = dataset.read_table(out, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(decode_record(p).id for p in payloads), "every window, exactly once after dedupe"
    assert not list(out.rglob("*.tmp")), "the restarted collector removed the temp file the kill left (if any)"


def test_invalid_and_duplicate_uploads_are_acknowledged_not_written(mosquitto: Broker, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    collector = Collector(mosquitto, out, group=None, flush_s=0.1)
    good = [record(i) for i in range(5)]
    try:
        publish_all(mosquitto, [good[0], good[1], good[0]])  # QoS 1 duplicate
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="junk")
        pub.connect(*mosquitto.address)
        pub.loop_start()
        for junk in (b"garbage", b"{}", record(9).replace(b'"state":"normal"', b'"state":"bogus"')):
            pub.publish("vib/pump-1/upload", junk, qos=1).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        publish_all(mosquitto, good[2:])
        assert wait_for(lambda: collector.thread.is_alive() and out.exists()
                        and dataset.read_table(out, columns=["id"]).num_rows == 5, timeout=15)
    finally:
        collector.close()
    s = collector.stats
    assert (s.received, s.written, s.duplicates, s.invalid) == (9, 5, 1, 3)
    assert s.acked == 9, "everything was acknowledged once handled"
    assert s.quarantined == 3 and sum(1 for _ in (out / "_quarantine").rglob("*.jsonl")) == 1
