"""The fleet's dataset on object storage: real mosquitto brokers, a real S3-compatible server (SeaweedFS on loopback,
``firmware_sim.objectstore``), real collectors, a real gateway spool and uploader. The same code writes a local
folder and an ``s3://`` dataset; N collectors write one dataset; a collector killed mid-upload, an object store
that goes away, wrong credentials, a missing bucket and a path that is not a dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from edge_agent.contract.recordings import DataFormatError
from edge_agent.contract.signing import keygen, keyring
from edge_agent.contract.topics import receipt_topic, upload_topic
from edge_agent.contract.upload_record import decode_record, encode_record
from edge_agent.mqtt_client import MqttConnection
from edge_agent.spool import Spool
from edge_agent.uploader import Uploader
from firmware_sim.broker import Broker
from firmware_sim.objectstore import S3Server
from tests.e2e.fleet_helpers import COLLECTOR_KEY, CollectorThread
from tests.trainer.test_collect import COLLECTOR_BROKER, publish_all, record
from tests.waiting import wait_for
from trainer import dataset
from trainer.cli import cli
from trainer.collect import CollectOptions, Collector

BIN = Path(sys.executable).parent


def _payloads(n: int, devices: tuple[str, ...] = ("pump-1",), rows: int = 256, day: int = 22,
              start: int = 0) -> list[bytes]:
    rng = np.random.default_rng(start)
    return [encode_record(device=devices[i % len(devices)], model_id="m", model_version="v1", seq_end=i * rows,
                          time_end=f"2026-11-{day}T11:{(i // 60) % 60:02d}:{i % 60:02d}", sample_rate=20_000.0,
                          channels=["a", "b"], score=0.1, threshold=0.5, state="normal", gateway="gw",
                          samples=rng.normal(size=(rows, 2)).astype(np.float32)) for i in range(start, start + n)]


def _ids(where) -> list[str]:
    return dataset.read_table(where, columns=["id"]).column("id").to_pylist()


def _raw_rows(where) -> int:
    """Rows in the dataset's files, duplicates included."""
    loc = dataset.location(where)
    return sum(pq.ParquetFile(loc.fs.open_input_file(p.path)).metadata.num_rows for p in dataset.list_parts(loc))


class Gateway:
    """A gateway's upload path: spool, uploader, its own MQTT connection, receipts for ``devices``."""

    def __init__(self, broker: Broker, spool_path: Path, devices: tuple[str, ...]) -> None:
        self.spool = Spool(spool_path).open()
        self.connection = MqttConnection(*broker.address, f"edge-agent-{spool_path.stem}", reconnect_min_s=0.2,
                                         reconnect_max_s=1)
        self.uploader = Uploader(self.spool, self.connection, batch=20, backoff_min_s=0.1, backoff_max_s=1,
                                 ack_timeout_s=2, receipts=True, receipt_timeout_s=3,
                                 receipt_keys=keyring([COLLECTOR_KEY.public_key()]))
        for d in devices:
            self.connection.subscribe(receipt_topic(d), 1, lambda msg, d=d: self.uploader.on_receipt(d, msg.payload))
        self.connection.start()
        assert self.connection.wait_subscribed(10)
        self.uploader.start()

    def offer(self, payloads: list[bytes]) -> None:
        for p in payloads:
            rec = decode_record(p)
            self.uploader.offer(upload_topic(rec.device), p, rec.kind, rec.id)

    def close(self) -> None:
        self.uploader.stop()
        self.connection.stop()
        self.spool.close()


class LiveCollector:
    """A collector whose counts can be read while it runs (``trainer.collect.Collector`` on a thread)."""

    def __init__(self, broker: Broker, out: str, **options) -> None:
        self.opts = CollectOptions(out=out, key=COLLECTOR_KEY, flush_s=0.2, **options)
        connection = MqttConnection(*broker.address, self.opts.cid, session_expiry_s=self.opts.session_expiry_s,
                                    receive_maximum=self.opts.receive_maximum, manual_ack=True)
        self.collector = Collector(connection, self.opts).start()
        assert connection.wait_subscribed(10)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.collector.run, args=(self.stop_event,), daemon=True)
        self.thread.start()

    @property
    def stats(self):
        return self.collector.stats

    def stop(self):
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the collector did not stop"
        self.collector.close()
        return self.collector.stats


# ------------------------------------------------------------------------------------------- one code path
def test_an_s3_dataset_reads_and_summarizes_as_the_local_one(tmp_path: Path, s3_dataset: str, caplog) -> None:
    recs = [decode_record(record(i, "pump-1" if i % 2 else "fan_7", day=21 + (i // 2) % 2,
                                 kind="alert" if i % 5 == 0 else None)) for i in range(40)]
    received = [datetime(2026, 11, 23, 0, 0, i) for i in range(40)]
    for where in (tmp_path / "ds", s3_dataset):
        writer = dataset.DatasetWriter(where, writer_id="w1").open()
        assert all(writer.add(r, t, f"d{i}") for i, (r, t) in enumerate(zip(recs, received, strict=True)))
        files, failed = writer.flush()
        assert len(files) == 4 and not failed
        again = dataset.DatasetWriter(where, writer_id="w2").open()  # another collector knows what is there
        assert not again.add(recs[0], digest="d0")
        with pytest.raises(dataset.IdConflict, match="other content"):
            again.add(recs[1], digest="something else")
    assert all(isinstance(f, str) and f.startswith(s3_dataset + "/device=") for f in files), files
    local, remote = dataset.read_table(tmp_path / "ds"), dataset.read_table(s3_dataset)
    assert remote.num_rows == 40 and remote.equals(local)
    np.testing.assert_array_equal(dataset.read_windows(s3_dataset).samples[7],
                                  dataset.read_windows(tmp_path / "ds").samples[7])
    rec = dataset.load(s3_dataset, dataset.parse_select(["device=pump-1"]))
    assert rec.source == s3_dataset and len(rec.segments) == 16

    # a copy of a file (a collector crashed between upload and acknowledgement) and junk under a data name
    loc = dataset.location(s3_dataset)
    first = dataset.list_parts(loc)[0]
    with loc.fs.open_input_stream(first.path) as src:
        dataset.put(loc, first.path.replace("part-w1-", "part-w9-"), src.read())
    dataset.put(loc, loc.join("device=fan_7/date=2026-11-21/part-zz-000001-abcdef.parquet"), b"not parquet")
    assert dataset.read_table(s3_dataset).equals(local), "read once, junk skipped"
    with caplog.at_level("ERROR", logger="trainer.dataset"):
        s = dataset.summarize(s3_dataset)
    assert "unreadable part skipped" in caplog.text and s.unreadable == 1 and s.files == 6
    summary = {(r.device, r.date): r for r in s.rows}
    assert [r.as_dict() | {"files": 0, "bytes": 0} for r in dataset.summarize(tmp_path / "ds").rows] == \
           [r.as_dict() | {"files": 0, "bytes": 0} for r in s.rows], "the same counts, local or on S3"
    fan = summary[("fan_7", "2026-11-21")]
    assert fan.windows == 10 and fan.kinds == {"normal": 8, "alert": 2} and fan.alerts == 2 and fan.files == 3
    assert s.windows == 40


def test_summary_counts_kinds_alerts_answers_and_bytes(tmp_path: Path) -> None:
    """Per device and day, from a hand-made dataset: duplicates count once, an alert is one alert_ref, the answer
    column is counted where a file has it, bytes are the partition's files."""
    root = tmp_path / "ds"
    kinds = ["normal"] * 5 + ["alert"] * 4 + ["drift"] * 2 + ["calibration"]
    refs = [None] * 5 + ["a1", "a1", "a2", None] + [None] * 3
    recs = [decode_record(encode_record(
        device="pump-1", model_id="m", model_version="v1", seq_end=100 * i, time_end=f"2026-11-22T10:00:{i:02d}",
        sample_rate=100.0, channels=["x"], score=0.9 if k == "alert" else 0.1, threshold=0.5,
        state="critical" if k == "alert" else "normal", samples=np.zeros((8, 1), np.float32), kind=k, alert_ref=r,
        gateway="gw")) for i, (k, r) in enumerate(zip(kinds, refs, strict=True))]
    writer = dataset.DatasetWriter(root, writer_id="w1").open()
    for r in recs[:5] + recs[8:]:
        writer.add(r)
    writer.flush()
    part = dataset.partition_dir(root, "pump-1", "2026-11-22")
    dup = dataset.to_table(recs[:3])  # written twice (a crash between write and acknowledgement)
    pq.write_table(dup, part / "part-w2-000001-aaaaaa.parquet")
    # windows of alert a1 spooled after an ack, then after a false alarm; a2's after a confirmation (upload schema 3)
    answered = dataset.to_table(recs[5:8])
    answers = [{"kind": "ack", "by": "J. Smith", "time": "2026-11-22T10:01:00+00:00"},
               {"kind": "false_alarm", "by": "J. Smith", "time": "2026-11-22T10:05:00+00:00"},
               {"kind": "confirmed", "by": "A. N. Other", "time": "2026-11-22T10:02:00+00:00"}]
    answered = answered.set_column(answered.schema.get_field_index("answer"), "answer",
                                   pa.array(answers, dataset.FILE_SCHEMA.field("answer").type))
    pq.write_table(answered, part / "part-w3-000001-bbbbbb.parquet")
    s = dataset.summarize(root)
    (row,) = s.rows
    assert (row.windows, row.kinds, row.alerts) == (12, {"normal": 5, "alert": 4, "drift": 2, "calibration": 1}, 3)
    assert row.answers == {"false_alarm": 1, "confirmed": 1} and s.has_answers, "an alert's latest answer"
    assert row.files == 3 and row.bytes == sum(f.stat().st_size for f in part.glob("*.parquet"))
    assert row.as_dict()["drift_notices"] == 2

    out = CliRunner().invoke(cli, ["dataset", "summary", str(root)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split() == ["device", "date", "windows", "normal", "alert", "calibration", "drift", "alerts",
                                "answers", "files", "MB"]
    assert lines[1].split()[:8] == ["pump-1", "2026-11-22", "12", "5", "4", "1", "2", "3"]
    assert "confirmed 1, false_alarm 1" in lines[1] and "1 devices, 1 days, 12 windows, 3 alerts" in lines[-1]
    out = CliRunner().invoke(cli, ["dataset", "summary", str(root), "--json", "--start", "2026-11-22T10:00:06"])
    rows = [json.loads(ln) for ln in out.output.splitlines()]
    assert rows[0]["windows"] == 6 and rows[0]["kinds"]["normal"] == 0 and rows[-1]["totals"]["windows"] == 6


# ------------------------------------------------------------------------------------------- brokers and S3
def test_two_collectors_into_one_s3_dataset_broker_restarted_every_window_once(tmp_path: Path, s3_dataset: str) -> None:
    broker = Broker(tmp_path / "central", extra_conf=COLLECTOR_BROKER)
    broker.start()
    first = CollectorThread(broker.address, s3_dataset, group="g", member=1)
    second = CollectorThread(broker.address, s3_dataset, group="g", member=2)
    gateway = Gateway(broker, tmp_path / "gw.sqlite", ("pump-1", "pump-2"))
    payloads = _payloads(600, ("pump-1", "pump-2"), rows=2048)
    try:
        gateway.offer(payloads)
        assert wait_for(lambda: gateway.uploader.counters.confirmed > 50, timeout=30)
        broker.stop()  # mid-upload: records in flight, the collectors' shared subscription forgotten
        assert gateway.uploader.counters.confirmed < len(payloads), "the stop came too late to test anything"
        broker.start()
        assert wait_for(lambda: len(gateway.spool) == 0, timeout=90), f"{len(gateway.spool)} still spooled"
    finally:
        gateway.close()
        a, b = first.stop(), second.stop()
        broker.stop()
    ids = _ids(s3_dataset)
    assert sorted(ids) == sorted(decode_record(p).id for p in payloads), "every window, exactly once after dedupe"
    assert a.written > 0 and b.written > 0, f"the broker split {a.written} / {b.written}"
    raw = _raw_rows(s3_dataset)
    assert raw >= len(payloads) and a.written + b.written == raw
    assert dataset.summarize(s3_dataset).windows == len(payloads)


def test_collector_killed_mid_upload_to_s3_the_dataset_stays_readable_and_complete(
        tmp_path: Path, s3_server: S3Server, s3_dataset: str) -> None:
    """kill -9 of a `trainer collect --out s3://… --endpoint …` process while it uploads multi-megabyte parts:
    restarted, it collects the rest; every file a reader sees is whole."""
    broker = Broker(tmp_path / "central", extra_conf=COLLECTOR_BROKER)
    broker.start()
    keygen(tmp_path / "collector.key")
    cmd = [str(BIN / "trainer"), "collect", "--broker", f"{broker.host}:{broker.port}", "--out", s3_dataset,
           "--endpoint", s3_server.endpoint, "--group", "g", "--client-id", "collector-under-test", "--flush-s",
           "0.5", "--key", str(tmp_path / "collector.key")]
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"} | {"PYTHONUNBUFFERED": "1"}

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            if "subscribed to $share/g/vib/+/upload" in line:
                return proc
        raise AssertionError(f"collector never subscribed (exit {proc.wait()})")

    payloads = _payloads(1500, rows=2048)  # 16 KiB of samples each: parts of several MB, multipart uploads
    proc = start()
    try:
        sender = threading.Thread(target=publish_all, args=(broker, payloads), daemon=True)
        sender.start()
        assert wait_for(lambda: dataset.is_dataset(s3_dataset) and len(_ids(s3_dataset)) > 100, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = len(_ids(s3_dataset))
        sender.join(60)
        assert killed_at < len(payloads), "the kill came too late to test anything"
        proc = start()
        assert wait_for(lambda: len(_ids(s3_dataset)) == len(payloads), timeout=90)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
        broker.stop()
    assert sorted(_ids(s3_dataset)) == sorted(decode_record(p).id for p in payloads), "every window, exactly once"
    summary = dataset.summarize(s3_dataset)
    assert summary.unreadable == 0 and summary.windows == len(payloads), "every visible file is whole"


def test_s3_unreachable_the_collector_holds_receipts_and_the_gateway_keeps_its_records(
        tmp_path: Path, monkeypatch) -> None:
    """The object store goes away: nothing is acknowledged or receipted, so the gateway's spool keeps every record
    (counted on both sides); the store comes back with its objects and the collector writes what it held."""
    store = S3Server(tmp_path / "s3")
    store.start()
    broker = Broker(tmp_path / "central", extra_conf=COLLECTOR_BROKER)
    broker.start()
    gateway = collector = None
    try:
        for name, value in store.env().items():
            monkeypatch.setenv(name, value)
        out = store.create_bucket("outage") + "/fleet"
        collector = LiveCollector(broker, out, group="g")
        gateway = Gateway(broker, tmp_path / "gw.sqlite", ("pump-1",))
        before = _payloads(30, day=22)
        gateway.offer(before)
        assert wait_for(lambda: gateway.uploader.counters.confirmed == 30, timeout=30)

        store.stop()
        during = _payloads(30, day=22, start=100) + _payloads(30, day=23, start=200)  # a known and a new partition
        gateway.offer(during)
        assert wait_for(lambda: collector.stats.flush_errors >= 2 and collector.stats.deferred >= 1, timeout=60), \
            collector.stats
        assert wait_for(lambda: gateway.uploader.counters.sent >= 30 + 60, timeout=30)
        assert len(gateway.spool) == 60 and gateway.spool.awaiting_receipt() == 60, "sent, kept until a receipt"
        assert gateway.uploader.counters.confirmed == 30, "no receipt while the store is away"

        store.start()  # the same ports, the same objects
        assert wait_for(lambda: len(gateway.spool) == 0, timeout=90), f"{len(gateway.spool)} still spooled"
        assert wait_for(lambda: gateway.uploader.counters.confirmed == 90, timeout=5), "each left on a receipt"
    finally:
        if gateway is not None:
            gateway.close()
        stats = collector.stop() if collector is not None else None
        broker.stop()
        ids = _ids(out) if store.running else None
        store.stop()
    assert sorted(ids) == sorted(decode_record(p).id for p in before + during), "nothing lost, nothing doubled"
    assert stats.flush_errors >= 2 and stats.deferred >= 1 and stats.quarantined == 0


# ------------------------------------------------------------------------------------------- clear errors
def test_wrong_credentials_missing_bucket_and_not_a_dataset_are_clear_errors(
        tmp_path: Path, s3_server: S3Server, s3_dataset: str, monkeypatch) -> None:
    writer = dataset.DatasetWriter(s3_dataset).open()
    writer.add(decode_record(record(1)))
    writer.flush()
    bucket = s3_dataset.split("/")[2]
    runner = CliRunner()

    def fails(args: list[str], *expected: str, code: int = 1) -> str:
        result = runner.invoke(cli, args)
        assert result.exit_code == code, (args, result.output)
        for text in expected:
            assert text in result.output, (args, result.output)
        return result.output

    endpoint = s3_server.endpoint
    # a bucket that does not exist: every command says which bucket, on which store
    missing = f"bucket 'no-such-bucket-{bucket[-6:]}' does not exist on the object store at {endpoint}"
    fails(["collect", "--broker", "127.0.0.1:1", "--out", f"s3://no-such-bucket-{bucket[-6:]}/fleet",
           "--no-receipts"], missing)
    fails(["dataset", "summary", f"s3://no-such-bucket-{bucket[-6:]}/fleet"], missing)
    fails(["retrain", "--dataset", f"s3://no-such-bucket-{bucket[-6:]}/fleet", "--current", str(tmp_path),
           "--out", str(tmp_path / "new")], missing)
    # a path that is not a dataset: nothing there, or something else there
    fails(["dataset", "summary", f"s3://{bucket}/nothing-here"], f"s3://{bucket}/nothing-here: is not a dataset: "
          f"nothing is stored under it on the object store at {endpoint}")
    dataset.put(dataset.location(f"s3://{bucket}"), f"{bucket}/notes/readme.txt", b"not a dataset")
    fails(["dataset", "summary", f"s3://{bucket}/notes"], "is not a dataset: no device=… folders in it")
    (tmp_path / "plain").mkdir()
    fails(["dataset", "summary", str(tmp_path / "plain")], "plain: is not a dataset: it is empty")
    (tmp_path / "plain" / "data.csv").write_text("t,x\n0,1\n")
    fails(["dataset", "summary", str(tmp_path / "plain")], "plain: is not a dataset: no device=… folders in it")
    fails(["dataset", "summary", str(tmp_path / "nowhere")], "does not exist", code=2)  # click's own check
    fails(["dataset", "summary", "gs://elsewhere/x"], "a dataset is a folder or s3://bucket/prefix")
    with pytest.raises(DataFormatError, match="is not a dataset"):
        dataset.require_dataset(f"s3://{bucket}/nothing-here")
    # train reads it (and says so on its log line, exit 1)
    result = runner.invoke(cli, ["train", "--data", f"s3://{bucket}/nothing-here", "--out", str(tmp_path / "b")])
    assert result.exit_code == 1

    # an endpoint that does not answer
    closed = S3Server(tmp_path / "unused").port  # chosen free, nothing listens there
    fails(["dataset", "summary", s3_dataset, "--endpoint", f"http://127.0.0.1:{closed}"],
          f"cannot reach the object store at http://127.0.0.1:{closed}")
    fails(["dataset", "summary", s3_dataset, "--endpoint", "ftp://x"], "give http(s)://host:port")

    # wrong credentials: a clear error naming the store and the bucket, before anything is collected
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    refused = f"the object store at {endpoint} refused these credentials for bucket '{bucket}'"
    fails(["dataset", "summary", s3_dataset], refused, "AWS_SECRET_ACCESS_KEY")
    fails(["collect", "--broker", "127.0.0.1:1", "--out", s3_dataset, "--no-receipts"], refused)
    with pytest.raises(DataFormatError, match="refused these credentials"):
        dataset.read_table(s3_dataset)
    with pytest.raises(DataFormatError, match="refused these credentials"):
        dataset.DatasetWriter(s3_dataset).open()


def test_compaction_merges_a_days_files_and_readers_see_the_same(tmp_path: Path, s3_dataset: str) -> None:
    """One file per device, day and flush (as collectors write) merged into one per device and day, on a disk and on
    S3: the same windows, copies dropped, junk left as it is, today's files left to the collectors."""
    today = datetime.now(UTC).date().isoformat()
    days = ("2026-11-21", "2026-11-22", today)
    recs = [decode_record(encode_record(
        device=f"pump-{i % 2}", model_id="m", model_version="v1", seq_end=64 * i,
        time_end=f"{days[i % 3]}T{(i // 60) % 24:02d}:{i % 60:02d}:00", sample_rate=100.0, channels=["x", "y"],
        score=0.1, threshold=0.5, state="normal", samples=np.random.default_rng(i).normal(size=(64, 2)).astype(
            np.float32), gateway="gw")) for i in range(120)]
    for where in (tmp_path / "ds", s3_dataset):
        for k in range(0, 120, 10):  # 12 flushes of 10 windows, each a file per device and day
            writer = dataset.DatasetWriter(where, writer_id=f"collect-{k}").open()
            for r in recs[k:k + 10] + recs[max(0, k - 1):k]:  # and a copy of the window before
                writer.add(r, datetime(2026, 11, 23), "d")
            writer.flush()
        loc = dataset.location(where)
        junk = loc.join("device=pump-0/date=2026-11-21/part-zz-000001-abcdef.parquet")
        dataset.put(loc, junk, b"not parquet")
        before = dataset.read_table(where)
        files = dataset.list_parts(loc)
        result = CliRunner().invoke(cli, ["dataset", "compact", str(where)])
        assert result.exit_code == 0, result.output
        assert "4 device-days compacted" in result.output and "1 unreadable files left" in result.output
        after = dataset.list_parts(loc)
        old_days = [p for p in after if p.date != today]
        assert sorted((p.device, p.date) for p in old_days if p.path != junk) == sorted(
            (f"pump-{d}", day) for d in (0, 1) for day in days[:2]), "one file per device and day"
        assert [p for p in after if p.date == today] == [p for p in files if p.date == today], "today's untouched"
        assert junk in [p.path for p in after]
        assert dataset.read_table(where).equals(before), "the same windows, read the same"
        assert dataset.summarize(where).windows == 120
        again = dataset.compact(where)
        assert (again.partitions, again.files_before, again.unreadable) == (0, 0, 1), "nothing left but the junk"
