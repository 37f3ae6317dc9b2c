"""Benchmark: the fleet at scale, collector side (issue 18, item 5).

Virtual gateways publish upload records (``edge_agent.contract.upload_record``, built as a gateway's uploader builds
them: a unique id per window, the gateway's id, one device id per sensor, the sensor's group, a raw window of
``--window`` rows x channels float32) through a real mosquitto (``firmware_sim.broker``, ``max_queued_messages 0``
as for collectors) into K real ``trainer collect --out s3://… --endpoint …`` processes sharing one MQTT 5
subscription (``$share/bench/vib/+/upload``), which write the Parquet dataset to a real S3-compatible store
(SeaweedFS, ``firmware_sim.objectstore``) and send signed receipts once a record is durable. A receipt listener
(its own process) subscribes to ``vib/+/upload/receipt``, checks each receipt's signature and matches record ids.

::

    publisher 1 ─┐ (C connections each, many virtual      ┌─► trainer collect 1 ─┐
    publisher 2 ─┴─ gateways per connection) ─► mosquitto ─┼─► trainer collect 2 ─┼─► SeaweedFS s3://bench-kK/fleet
                                                           └─► …  (shared sub)    │
    receipt listener ◄─ vib/<device>/upload/receipt ◄───────────────── signed, once durable

Per K (``--collectors``, default 1,2,4; a fresh broker and bucket each): records/s sustained (records receipted /
time from the first publish to the last receipt), end-to-end latency publish → object durable → receipt (p50, p95,
p99), and, counted in the dataset afterwards by id, every record there once: ``missing`` (published, not in the
dataset when the wait ended) and ``doubled`` (more than one row). Before that, the object store's
cost of one collector file (``trainer.dataset.write_part`` of a one-record part: Parquet encode + one PUT), which is
what a collector pays per device and flush.

Then, in the same run (issue 18, item 5, second half): the wall time of retraining G groups (``--retrain-groups``,
default 8) one after the other in this process and as Ray tasks on a local Ray (``trainer.retrain.retrain_groups``
with ``FanoutOptions(serial=True)``, then ``FanoutOptions()``), on one grouped dataset of collected windows and one
current bundle per group (``CURRENT/<group>/``); the ratio with and without Ray's startup, each group's seconds
and outcome (accepted, refused, failed), and the machine's cores and load. ``--skip-collect`` measures only this,
``--retrain-groups 0`` only the collectors.

Publishing is unpaced by default (``--rate 0``): records go as fast as the publishers and the broker take them
(QoS 1, a bounded number in flight per connection), so records/s is the collectors' capacity and latency includes
the queue in front of them (Little's law: latency ≈ backlog / rate). ``--rate R`` offers R records/s in total, for
latency below capacity.

The virtual gateways are multiplexed: ``--publishers`` processes, each with ``--connections`` MQTT connections,
each connection carrying many gateways' topics (a connection per gateway would cost the 2 cores more than the
collectors do). Not part of CI (``make bench``); ``--quick`` is a small smoke run.

    python bench/bench_fleet_scale.py [--gateways 1000] [--sensors 4] [--records-per-sensor 2] [--collectors 1,2,4]
                                      [--window 8192x4] [--rate 0] [--retrain-groups 8] [--retrain-epochs 2]
                                      [--skip-collect] [--quick] [--out runs/bench_fleet_scale.md]

Writes the table to ``--out`` (markdown), the figures to the same name ``.json`` and a plot ``.png``.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from firmware_sim.broker import Broker, terminate  # noqa: E402
from firmware_sim.objectstore import S3Server  # noqa: E402

TRAINER = Path(sys.executable).parent / "trainer"
SHARE_GROUP = "bench"
GROUPS = ("pumps", "fans", "compressors", "conveyors")  # the sensors' kinds of machine, one per sensor slot
SAMPLE_RATE = 20_000.0


def parse_window(text: str) -> tuple[int, int]:
    try:
        rows, channels = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--window {text!r}: give ROWSxCHANNELS, e.g. 8192x4") from None
    if rows < 1 or not 1 <= channels <= 256:
        raise argparse.ArgumentTypeError(f"--window {text!r}: rows >= 1 and 1..256 channels")
    return rows, channels


def gateway_id(g: int) -> str:
    return f"gw-{g:06d}"


def device_id(g: int, s: int) -> str:
    """A sensor's device id: unique across the fleet (gateway number and sensor slot)."""
    return f"gw-{g:06d}-s{s + 1}"


# ------------------------------------------------------------------------------------------------ publishers
def _publisher(host: str, port: int, index: int, n_publishers: int, args: dict, out: str, published) -> None:
    """Publish every record of the gateways ``g % n_publishers == index``, round by round (each gateway uploads one
    window per sensor per round), over ``args['connections']`` connections; write ``[[id, t_publish], …]`` (monotonic
    clock, shared by the processes of this machine) to ``out``."""
    import paho.mqtt.client as mqtt

    from edge_agent.contract.topics import upload_topic
    from edge_agent.contract.upload_record import encode_record, new_id

    rows, channels = args["window"]
    names = [f"ch{c}" for c in range(channels)]
    base = np.random.default_rng(index).normal(0.0, 0.2, size=(rows, channels)).astype(np.float32)
    gateways = list(range(index, args["gateways"], n_publishers))
    clients = []
    for c in range(max(1, min(args["connections"], len(gateways)))):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{index}-{c}",
                             protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.connect(host, port)
        client.loop_start()
        clients.append((client, collections.deque()))
    sent: list[tuple[str, float]] = []
    per_process_rate = args["rate"] / n_publishers if args["rate"] else 0.0
    t_start = time.monotonic()
    now = datetime.now(UTC)
    n = 0
    for r in range(args["records_per_sensor"]):
        for gi, g in enumerate(gateways):
            client, infos = clients[gi % len(clients)]
            for s in range(args["sensors"]):
                dev = device_id(g, s)
                rid = new_id()
                seq = (r + 1) * rows
                payload = encode_record(
                    device=dev, model_id=f"{GROUPS[s % len(GROUPS)]}-model", model_version="v1", seq_end=seq,
                    time_end=now - timedelta(seconds=(args["records_per_sensor"] - r) * 600), sample_rate=SAMPLE_RATE,
                    channels=names, score=0.1, threshold=0.5, state="normal", samples=np.roll(base, g + r, axis=0),
                    id=rid, kind="normal", gateway=gateway_id(g), group=GROUPS[s % len(GROUPS)])
                if per_process_rate:
                    delay = t_start + n / per_process_rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                sent.append((rid, time.monotonic()))
                infos.append(client.publish(upload_topic(dev), payload, qos=1))
                n += 1
                published.value += 1
                while len(infos) > 500:  # bounded in flight per connection (far from paho's 65535 message ids)
                    infos.popleft().wait_for_publish(60)
    for client, infos in clients:
        for info in infos:
            info.wait_for_publish(60)
        client.disconnect()
        client.loop_stop()
    Path(out).write_text(json.dumps(sent))


# ------------------------------------------------------------------------------------------------ receipts
def _receipt_listener(host: str, port: int, public_key: str, out: str, received, ready, stop) -> None:
    """Subscribe to every receipt, verify it (``contract.receipt.decode``: signed by the collectors' key, for the
    device of its topic), and keep the first time each record id was confirmed; write ``{"first": {id: t}, …}``."""
    import queue

    import paho.mqtt.client as mqtt

    from edge_agent.contract import receipt, topics
    from edge_agent.contract.signing import keyring

    keys = keyring([public_key])
    inbox: queue.Queue[tuple[float, str, bytes]] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-receipts", protocol=mqtt.MQTTv5)

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe("vib/+/upload/receipt", qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        ready.set()

    def on_message(client, userdata, msg):  # thin: time and queue it
        inbox.put_nowait((time.monotonic(), msg.topic, bytes(msg.payload)))

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect(host, port)
    client.loop_start()
    first: dict[str, float] = {}
    repeated = rejected = invalid = messages = 0
    while not (stop.is_set() and inbox.empty()):
        try:
            t, topic, payload = inbox.get(timeout=0.1)
        except queue.Empty:
            continue
        messages += 1
        try:
            rec = receipt.decode(payload, keys, topics.device_of(topic, "upload/receipt") or "")
        except Exception:  # noqa: BLE001 (counted: a bench must finish and say what it saw)
            invalid += 1
            continue
        rejected += len(rec.rejected)
        for rid in rec.ids:
            if rid in first:
                repeated += 1
            else:
                first[rid] = t
        received.value = len(first)
    client.disconnect()
    client.loop_stop()
    Path(out).write_text(json.dumps({"first": first, "repeated": repeated, "rejected": rejected, "invalid": invalid,
                                     "messages": messages}))


# ------------------------------------------------------------------------------------------------ collectors
COLLECTOR_LINE = re.compile(r"received (\d+), written (\d+), duplicates (\d+), quarantined (\d+)")


def start_collectors(k: int, broker: Broker, store: S3Server, dataset_uri: str, key: Path,
                     work: Path) -> list[tuple[subprocess.Popen, Path]]:
    """K ``trainer collect`` processes on one shared subscription; returns once each has been granted it."""
    env = os.environ | store.env()
    procs = []
    for m in range(1, k + 1):
        log_path = work / f"collector-{m}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [str(TRAINER), "collect", "--broker", f"{broker.host}:{broker.port}", "--out", dataset_uri,
                 "--endpoint", store.endpoint, "--key", str(key), "--group", SHARE_GROUP, "--member", str(m),
                 "--client-id", f"bench-collect-{m}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        procs.append((proc, log_path))
    deadline = time.monotonic() + 60
    for proc, log_path in procs:
        while "subscribed to" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_collectors(procs)
                raise RuntimeError(f"trainer collect did not subscribe (exit {proc.poll()}): "
                                   f"{log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)  # poll interval while it starts, bounded by the deadline
    return procs


def stop_collectors(procs: list[tuple[subprocess.Popen, Path]]) -> list[dict]:
    """SIGINT each (it writes what it holds, acknowledges, disconnects); their final counts, from their output."""
    for proc, _ in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    counts = []
    for proc, log_path in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            terminate(proc, 10)
        m = COLLECTOR_LINE.search(log_path.read_text(errors="replace"))
        counts.append(dict(zip(("received", "written", "duplicates", "quarantined"),
                               (int(v) for v in m.groups()), strict=True)) if m else {"exit": proc.returncode})
    return counts


# ------------------------------------------------------------------------------------------------ the dataset
def count_rows(store: S3Server, dataset_uri: str) -> dict:
    """Rows in the dataset's files by record id, duplicates included (every part file's ``id`` column)."""
    import pyarrow.dataset as pads

    from trainer import dataset

    loc = dataset.location(dataset_uri, store.endpoint)
    parts = dataset.list_parts(loc)
    if not parts:
        return {"files": 0, "rows": 0, "unique": 0, "doubled": 0}
    table = pads.dataset([p.path for p in parts], filesystem=loc.fs, format="parquet").to_table(columns=["id"])
    ids = table.column("id").to_pylist()
    counts = collections.Counter(ids)
    return {"files": len(parts), "rows": len(ids), "unique": len(counts),
            "doubled": sum(1 for c in counts.values() if c > 1), "ids": counts}


def put_latency(store: S3Server, window: tuple[int, int], n: int) -> dict:
    """What one collector file costs: ``trainer.dataset.write_part`` of a one-record part (encode + one PUT), ``n``
    times, into a scratch bucket."""
    from edge_agent.contract.upload_record import decode_record, encode_record
    from trainer import dataset

    uri = store.create_bucket("bench-put") + "/parts"
    loc = dataset.location(uri, store.endpoint)
    rows, channels = window
    samples = np.random.default_rng(9).normal(0.0, 0.2, size=(rows, channels)).astype(np.float32)
    rec = decode_record(encode_record(device="gw-put-s1", model_id="m", model_version="v1", seq_end=rows,
                                      time_end=datetime.now(UTC), sample_rate=SAMPLE_RATE,
                                      channels=[f"ch{c}" for c in range(channels)], score=0.1, threshold=0.5,
                                      state="normal", samples=samples, gateway="gw-put"))
    table = dataset.to_table([rec], [datetime.now(UTC).replace(tzinfo=None)], [None])
    times, size = [], 0
    for i in range(n):
        t0 = time.perf_counter()
        _, size = dataset.write_part(loc, rec.device, "2026-01-01", table, "bench", i + 1)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return {"files": n, "part_bytes": size, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(ms.mean())}


# ------------------------------------------------------------------------------------------------ one K
def collect_section(args: argparse.Namespace, k: int, store: S3Server, key: Path, public_key: str,
                    work: Path) -> dict:
    """One run with K collectors: a fresh broker and bucket, the records of every virtual gateway published, until
    every record is receipted (or ``--timeout-s``); then the dataset counted by id."""
    case = work / f"k{k}"
    case.mkdir()
    broker = Broker(case / "broker", extra_conf="allow_anonymous true\nmax_queued_messages 0\n")
    broker.start()
    dataset_uri = store.create_bucket(f"bench-k{k}") + "/fleet"
    total = args.gateways * args.sensors * args.records_per_sensor
    ctx = mp.get_context("spawn")
    procs = start_collectors(k, broker, store, dataset_uri, key, case)
    stop, ready = ctx.Event(), ctx.Event()
    received = ctx.Value("q", 0)
    listener = ctx.Process(target=_receipt_listener, args=(broker.host, broker.port, public_key,
                                                           str(case / "receipts.json"), received, ready, stop))
    listener.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the receipt listener did not subscribe in 30 s")
        shared = {"gateways": args.gateways, "sensors": args.sensors, "records_per_sensor": args.records_per_sensor,
                  "window": args.window, "connections": args.connections, "rate": args.rate}
        n_pub = max(1, min(args.publishers, args.gateways))
        published = [ctx.Value("q", 0) for _ in range(n_pub)]
        pubs = [ctx.Process(target=_publisher, args=(broker.host, broker.port, i, n_pub, shared,
                                                     str(case / f"published-{i}.json"), published[i]))
                for i in range(n_pub)]
        t0 = time.monotonic()
        for p in pubs:
            p.start()
        deadline = t0 + args.timeout_s
        last = t0
        while received.value < total and time.monotonic() < deadline:
            time.sleep(0.2)  # progress poll, bounded by the deadline
            if time.monotonic() - last >= args.progress_s:
                last = time.monotonic()
                pub = sum(v.value for v in published)
                print(f"  K={k}: {last - t0:5.0f} s  published {pub:>7,}/{total:,}  receipted {received.value:>7,} "
                      f"({received.value / (last - t0):6.0f}/s)", flush=True)
        for p in pubs:
            p.join(120)
        time.sleep(args.settle_s)  # late or repeated receipts still on the way
        stop.set()
        listener.join(60)
    finally:
        counts = stop_collectors(procs)
        stop.set()
        broker.stop()
    sent = [tuple(x) for i in range(n_pub) for x in json.loads((case / f"published-{i}.json").read_text())]
    rec = json.loads((case / "receipts.json").read_text())
    first = rec["first"]
    t_pub = dict(sent)
    lat = np.array([first[i] - t for i, t in t_pub.items() if i in first]) * 1e3
    t_first = min(t for _, t in sent)
    t_last_pub = max(t for _, t in sent)
    t_last = max(first.values()) if first else t_first
    rows = count_rows(store, dataset_uri)
    ids = rows.pop("ids", collections.Counter())
    in_dataset = sum(1 for i in t_pub if ids.get(i, 0) >= 1)
    doubled = sum(1 for i in t_pub if ids.get(i, 0) > 1)
    elapsed = max(t_last - t_first, 1e-9)
    return {
        "collectors": k, "gateways": args.gateways, "sensors": args.sensors, "devices": args.gateways * args.sensors,
        "records": total, "published": len(sent), "record_bytes": args.record_bytes, "rate_offered": args.rate,
        "publish_s": t_last_pub - t_first, "seconds": elapsed,
        "records_per_s": len(first) / elapsed, "mb_per_s": len(first) * args.record_bytes / 1e6 / elapsed,
        "receipted": len(first), "not_receipted": sum(1 for i in t_pub if i not in first),
        "receipts_repeated": rec["repeated"], "receipts_rejected": rec["rejected"],
        "receipts_invalid": rec["invalid"], "receipt_messages": rec["messages"],
        "latency_ms": ({q: float(np.percentile(lat, int(q[1:]))) for q in ("p50", "p95", "p99")}
                       | {"max": float(lat.max())}) if lat.size else None,
        "in_dataset": in_dataset, "missing": len(t_pub) - in_dataset, "doubled": doubled,
        "dataset": rows, "dataset_uri": dataset_uri, "collector_counts": counts,
    }


# ------------------------------------------------------------------------------------------------ retrain
#: The retrained groups' names (kinds of machine); beyond these, group-09, group-10, …
RETRAIN_GROUPS = ("pumps", "fans", "compressors", "conveyors", "mixers", "blowers", "chillers", "presses")
BLOCK, BLOCKS = 1024, 8  # the current bundle's preprocessing: features of blocks of 1024 samples, 8 blocks a window
UPLOAD_ROWS = BLOCK * BLOCKS  # an uploaded window: one model window (8192 x 4 float32 at 20 kHz)


def retrain_group_names(n: int) -> list[str]:
    return [RETRAIN_GROUPS[i] if i < len(RETRAIN_GROUPS) else f"group-{i + 1:02d}" for i in range(n)]


def base_bundle(work: Path) -> Path:
    """The model every group serves now: ``trainer train --group <first group>`` on 30 s of firmware_sim's healthy
    IMS-like bearing (4 channels, 20 kHz; features mode: rms, peak, kurtosis, crest of blocks of 1024 samples,
    8 blocks a window; a small Conv1D autoencoder, int8), as the tests' bundle."""
    from firmware_sim import signals

    healthy = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=1),
                               int(SAMPLE_RATE * 30))
    np.save(work / "healthy.npy", healthy)
    out = work / "base"
    cmd = [str(TRAINER), "train", "--data", str(work / "healthy.npy"), "--format", "npy", "--sample-rate",
           f"{SAMPLE_RATE:g}", "--mode", "features", "--window", str(BLOCKS), "--hop", "2", "--block", str(BLOCK),
           "--features", "rms,peak,kurtosis,crest", "--model", "conv1d", "--units", "16,8", "--epochs", "30",
           "--patience", "5", "--batch-size", "16", "--quantize", "int8", "--model-id", "bench-conv", "--group",
           RETRAIN_GROUPS[0], "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"trainer train of the base bundle failed (exit {proc.returncode}): "
                           f"{(proc.stdout + proc.stderr)[-2000:]}")
    return out


def group_bundle(src: Path, dst: Path, group: str) -> Path:
    """A copy of bundle ``src`` at ``dst`` serving ``group`` (manifest model.group, version ``<version>-<group>``),
    as tests/trainer/test_retrain_groups.py builds CURRENT/<group>/: one training, not G."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["model"]["group"] = group
    manifest["model"]["version"] = f"{manifest['model']['version']}-{group}"
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


def grouped_dataset(root: Path, bundle: Path, groups: list[str], n_normal: int, n_alert: int) -> Path:
    """A dataset as the fleet's collectors write it (``trainer.dataset.DatasetWriter``, schema-3 upload records),
    per group: ``<group>-1``'s ``n_normal`` windows of a healthy bearing uploaded as normal from 10:00, and
    ``<group>-2``'s ``n_alert`` windows of a broken bearing uploaded during one alert at 12:00 (each group's own
    seeds), as tests/trainer/test_retrain.py's ``collected``."""
    from edge_agent.contract.bundle import Bundle
    from edge_agent.contract.upload_record import decode_record, encode_record
    from firmware_sim import signals
    from trainer import dataset

    version = Bundle.load(bundle).version
    writer = dataset.DatasetWriter(root).open()
    for gi, group in enumerate(groups):
        for device, label, state, n, seed, hour in ((f"{group}-1", "normal", "healthy", n_normal, 100 + 2 * gi, 10),
                                                    (f"{group}-2", "alert", "broken", n_alert, 101 + 2 * gi, 12)):
            x = signals.generate(signals.make_source("bearing", state=state, preset="ims", seed=seed),
                                 n * UPLOAD_ROWS)
            for i in range(n):
                writer.add(decode_record(encode_record(
                    device=device, model_id="bench-conv", model_version=version, seq_end=(i + 1) * UPLOAD_ROWS,
                    time_end=f"2026-11-22T{hour:02d}:{i // 60:02d}:{i % 60:02d}", sample_rate=SAMPLE_RATE,
                    channels=[f"ch{c}" for c in range(x.shape[1])], score=0.1 if label == "normal" else 9.0,
                    threshold=1.0, state="normal" if label == "normal" else "critical", kind=label,
                    alert_ref=f"{group}-alert" if label == "alert" else None, group=group,
                    samples=x[i * UPLOAD_ROWS:(i + 1) * UPLOAD_ROWS])))
    writer.flush()
    return root


def retrain_section(args: argparse.Namespace, work: Path) -> dict:
    """G groups retrained serially in this process, then as tasks on a local Ray (started by ``retrain_groups``,
    so its startup is in the wall time and reported apart), on the same dataset and current bundles."""
    from trainer.fanout import FanoutOptions, local_cpus, ray_available
    from trainer.retrain import STATUSES, RetrainOptions, retrain_groups

    if not ray_available():
        raise SystemExit("ray is not installed: make setup installs the fleet extra (pip install -e '.[fleet]'), or "
                         "measure the collectors alone with --retrain-groups 0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # this process (serially) and the Ray workers it starts
    groups = retrain_group_names(args.retrain_groups)
    root = work / "retrain"
    root.mkdir()
    t0 = time.monotonic()
    base = base_bundle(root)
    t_base = time.monotonic() - t0
    current = root / "current"
    for g in groups:
        group_bundle(base, current / g, g)
    data = grouped_dataset(root / "dataset", base, groups, args.retrain_windows, args.retrain_alert_windows)
    t_setup = time.monotonic() - t0
    print(f"retrain: {len(groups)} groups x ({args.retrain_windows} healthy + {args.retrain_alert_windows} alert "
          f"windows), base bundle trained in {t_base:.0f} s, dataset in {t_setup - t_base:.0f} s", flush=True)
    fan = FanoutOptions()
    facts: dict = {"groups": groups, "epochs": args.retrain_epochs, "healthy_windows": args.retrain_windows,
                   "alert_windows": args.retrain_alert_windows, "window": [UPLOAD_ROWS, 4],
                   "cores": os.cpu_count(), "cpus": local_cpus(), "ray_cpus": fan.local_cpus or local_cpus(),
                   "task": {"num_cpus": fan.resources.num_cpus, "memory_gib": fan.resources.memory / 2**30},
                   "base_train_s": t_base, "setup_s": t_setup, "runs": {}}
    for name, opts in (("serial", FanoutOptions(serial=True)), ("ray", fan)):
        told: list[str] = []
        load = os.getloadavg()
        ran = retrain_groups(RetrainOptions(dataset=data, current=current, out=root / f"out-{name}",
                                            epochs=args.retrain_epochs), groups, opts, told.append)
        per = {g: {"status": o.status, "seconds": o.seconds, "where": o.where, "peak_rss_mib": o.peak_rss_mib,
                   "reason": o.reason} for g, o in ran.outcomes.items()}
        busy = sum(o.seconds or 0.0 for o in ran.outcomes.values())
        first: dict[str, float] = {}  # each process's first group (it imports TensorFlow), then the later ones
        later: list[float] = []
        for o in ran.outcomes.values():
            if o.seconds is None:
                continue
            if o.where in first:
                later.append(o.seconds)
            else:
                first[o.where] = o.seconds
        r = facts["runs"][name] = {
            "mode": ran.mode, "notice": told[0] if told else None, "wall_s": ran.wall_s, "startup_s": ran.startup_s,
            "groups_s": busy, "concurrency": busy / max(ran.wall_s - ran.startup_s, 1e-9),
            "workers": len({o.where for o in ran.outcomes.values()}),
            "first_group_s": float(np.mean(list(first.values()))) if first else None,
            "later_group_s": float(np.mean(later)) if later else None,
            "statuses": {s: sum(1 for o in ran.outcomes.values() if o.status == s) for s in STATUSES},
            "load_before": list(load), "load_after": list(os.getloadavg()), "per_group": per}
        print(f"retrain {ran.mode}: {ran.wall_s:.1f} s (Ray startup {ran.startup_s:.1f} s), "
              + ", ".join(f"{v} {s}" for s, v in r["statuses"].items()), flush=True)
    serial, ray = facts["runs"]["serial"], facts["runs"]["ray"]
    facts["ratio"] = serial["wall_s"] / ray["wall_s"]
    facts["ratio_without_startup"] = serial["wall_s"] / max(ray["wall_s"] - ray["startup_s"], 1e-9)
    return facts


# ------------------------------------------------------------------------------------------------ output
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "load_before": list(os.getloadavg()), "time": datetime.now(UTC).isoformat(timespec="seconds")}


def table(facts: dict) -> str:
    sections = []
    if "collect" in facts:
        sections.append(collect_table(facts))
    if "retrain" in facts:
        sections.append(retrain_table(facts))
    return "\n\n".join(sections)


def collect_table(facts: dict) -> str:
    m, a = facts["machine"], facts["args"]
    put = facts["put"]
    offered = f"{a['rate']:g} records/s offered" if a["rate"] else "unpaced"
    lines = [f"Fleet scale, collector side ({m['cpu']}, {m['cores']} cores, load {m['load_before'][0]:.2f} before; "
             f"mosquitto, SeaweedFS, publishers and collectors on this machine; {a['gateways']:,} gateways x "
             f"{a['sensors']} sensors x {a['records_per_sensor']} records, window {a['window'][0]} x {a['window'][1]} "
             f"({a['record_bytes'] / 1024:.0f} KiB a record), {offered})",
             "",
             "| collectors | records | records/s | MB/s | latency p50 | p95 | p99 | in dataset | missing | doubled | files |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in facts["collect"]:
        lat = r["latency_ms"] or {}
        lines.append(f"| {r['collectors']} | {r['records']:,} | {r['records_per_s']:.0f} | {r['mb_per_s']:.1f} | "
                     f"{lat.get('p50', float('nan')) / 1e3:.1f} s | {lat.get('p95', float('nan')) / 1e3:.1f} s | "
                     f"{lat.get('p99', float('nan')) / 1e3:.1f} s | {r['in_dataset']:,} | {r['missing']} | {r['doubled']} | "
                     f"{r['dataset']['files']:,} |")
    lines += ["", f"One collector file on this store (`write_part` of a one-record part, {put['part_bytes'] / 1024:.0f} "
              f"KiB, encode + PUT, {put['files']} times): p50 {put['p50_ms']:.1f} ms, p95 {put['p95_ms']:.1f} ms, "
              f"mean {put['mean_ms']:.1f} ms"]
    return "\n".join(lines)


def retrain_table(facts: dict) -> str:
    m, t = facts["machine"], facts["retrain"]
    runs = t["runs"]
    lines = [f"Retraining {len(t['groups'])} groups: serial vs local Ray ({m['cpu']}, {t['cores']} cores, "
             f"{t['cpus']} usable; Ray num_cpus {t['ray_cpus']}, a task {t['task']['num_cpus']:g} CPU + "
             f"{t['task']['memory_gib']:g} GiB; per group {t['healthy_windows']} healthy + {t['alert_windows']} alert "
             f"windows of {t['window'][0]} x {t['window'][1]}, {t['epochs']} epochs)",
             "",
             "| run | wall | Ray startup | wall less startup | sum of groups' s | groups at once | processes | "
             "first group per process | later groups | accepted | refused | failed | load before → after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs.values():
        st = r["statuses"]
        lines.append(f"| {r['mode']} | {r['wall_s']:.1f} s | {r['startup_s']:.1f} s | "
                     f"{r['wall_s'] - r['startup_s']:.1f} s | {r['groups_s']:.1f} s | {r['concurrency']:.2f} | "
                     f"{r['workers']} | {_s(r['first_group_s'])} | {_s(r['later_group_s'])} | "
                     f"{st['accepted']} | {st['refused']} | {st['failed']} | "
                     f"{r['load_before'][0]:.2f} → {r['load_after'][0]:.2f} |")
    lines += ["", f"Serial / local Ray: {t['ratio']:.2f}x (wall), {t['ratio_without_startup']:.2f}x (Ray's wall less "
              f"its {runs['ray']['startup_s']:.1f} s startup)", "",
              "| group | serial | local Ray | serial: outcome | Ray: outcome | Ray: where | Ray: peak RSS |",
              "|---|---|---|---|---|---|---|"]
    serial, ray = runs["serial"]["per_group"], runs["ray"]["per_group"]
    for g in t["groups"]:
        a, b = serial[g], ray[g]
        rss = f"{b['peak_rss_mib']:.0f} MiB" if b["peak_rss_mib"] else "–"
        lines.append(f"| {g} | {_s(a['seconds'])} | {_s(b['seconds'])} | {a['status']} | {b['status']} | "
                     f"{b['where']} | {rss} |")
    why = [f"- {name} {g}: {v['status']}: {v['reason']}" for name, r in runs.items()
           for g, v in r["per_group"].items() if v["status"] != "accepted"]
    return "\n".join(lines + (["", "Not accepted:", *why] if why else []))


def _s(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.1f} s"


def plot(facts: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (2 if "collect" in facts else 0) + (2 if "retrain" in facts else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    axes = list(np.atleast_1d(axes))
    titles = []
    if "collect" in facts:
        ax1, ax2 = axes.pop(0), axes.pop(0)
        rows = facts["collect"]
        ks = [r["collectors"] for r in rows]
        ax1.plot(ks, [r["records_per_s"] for r in rows], "o-")
        ax1.set(xlabel="collectors (K)", ylabel="records/s (receipted)", title="Throughput", xticks=ks, ylim=(0, None))
        for q, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
            ax2.plot(ks, [(r["latency_ms"] or {}).get(q, np.nan) / 1e3 for r in rows], style, label=q)
        ax2.set(xlabel="collectors (K)", ylabel="seconds", title="Publish → durable → receipt", xticks=ks,
                ylim=(0, None))
        ax2.legend()
        a = facts["args"]
        titles.append(f"{a['gateways']:,} gateways x {a['sensors']} sensors, {a['record_bytes'] / 1024:.0f} KiB "
                      "records")
    if "retrain" in facts:
        ax3, ax4 = axes.pop(0), axes.pop(0)
        t = facts["retrain"]
        runs = [t["runs"]["serial"], t["runs"]["ray"]]
        labels = [r["mode"] for r in runs]
        starts = [r["startup_s"] for r in runs]
        ax3.bar(labels, starts, color="tab:gray", label="Ray startup")
        ax3.bar(labels, [r["wall_s"] - r["startup_s"] for r in runs], bottom=starts, color="tab:blue",
                label="retraining")
        ax3.set(ylabel="wall seconds", title=f"{len(t['groups'])} groups: serial / Ray = {t['ratio']:.2f}x")
        ax3.legend()
        x = np.arange(len(t["groups"]))
        for i, r in enumerate(runs):
            ax4.bar(x + (i - 0.5) * 0.4, [r["per_group"][g]["seconds"] or 0.0 for g in t["groups"]], 0.4,
                    label=r["mode"])
        ax4.set_xticks(x, t["groups"], rotation=45, ha="right")
        ax4.set(ylabel="seconds", title="Each group's retrain")
        ax4.legend()
        titles.append(f"retrain {t['epochs']} epochs, Ray num_cpus {t['ray_cpus']}")
    fig.suptitle("; ".join(titles) + f"; {facts['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def record_bytes(window: tuple[int, int]) -> int:
    from edge_agent.contract.upload_record import encode_record, new_id

    rows, channels = window
    return len(encode_record(device=device_id(0, 0), model_id="pumps-model", model_version="v1", seq_end=rows,
                             time_end=datetime.now(UTC), sample_rate=SAMPLE_RATE,
                             channels=[f"ch{c}" for c in range(channels)], score=0.1, threshold=0.5, state="normal",
                             samples=np.zeros((rows, channels), np.float32), id=new_id(), kind="normal",
                             gateway=gateway_id(0), group=GROUPS[0]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gateways", type=int, default=1000, help="virtual gateways")
    ap.add_argument("--sensors", type=int, default=4, help="sensors per gateway (a device id each)")
    ap.add_argument("--records-per-sensor", type=int, default=2, help="records each sensor uploads")
    ap.add_argument("--collectors", default="1,2,4", help="the K to measure, comma-separated")
    ap.add_argument("--window", type=parse_window, default=(8192, 4),
                    help="ROWSxCHANNELS of a record's window (8192x4: 8 blocks of 1024 at 20 kHz, ~171 KiB a record)")
    ap.add_argument("--rate", type=float, default=0.0, help="records/s offered in total (0: unpaced)")
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes")
    ap.add_argument("--connections", type=int, default=4, help="MQTT connections per publisher process")
    ap.add_argument("--put-samples", type=int, default=30, help="files written to time one collector file")
    ap.add_argument("--timeout-s", type=float, default=240.0, help="longest wait for every receipt, per K")
    ap.add_argument("--settle-s", type=float, default=2.0, help="wait for late or repeated receipts, per K")
    ap.add_argument("--progress-s", type=float, default=5.0, help="progress line every this many seconds")
    ap.add_argument("--skip-collect", action="store_true", help="measure only the retraining (no collectors)")
    ap.add_argument("--retrain-groups", type=int, default=8,
                    help="G groups retrained serially, then on a local Ray (0: no retraining measured)")
    ap.add_argument("--retrain-epochs", type=int, default=2, help="epochs of each group's retrain")
    ap.add_argument("--retrain-windows", type=int, default=25, help="healthy windows per group (8192x4 each)")
    ap.add_argument("--retrain-alert-windows", type=int, default=6, help="windows of one alert per group")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 20 gateways x 2 sensors x 1 record of 256x4, K = 1,2, no retraining (unless "
                         "given)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_fleet_scale.md"))
    args = ap.parse_args(argv)
    if args.quick:
        given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
        for opt, value in (("--gateways", 20), ("--sensors", 2), ("--records-per-sensor", 1), ("--collectors", "1,2"),
                           ("--window", (256, 4)), ("--put-samples", 5), ("--settle-s", 0.5), ("--progress-s", 2.0),
                           ("--retrain-groups", 0)):
            if opt not in given:
                setattr(args, opt[2:].replace("-", "_"), value)
    args.collectors = [int(k) for k in str(args.collectors).split(",") if k.strip()]
    if min(args.gateways, args.sensors, args.records_per_sensor, *args.collectors) < 1:
        ap.error("--gateways, --sensors, --records-per-sensor and every K must be >= 1")
    if args.retrain_groups < 0 or min(args.retrain_epochs, args.retrain_windows, args.retrain_alert_windows) < 1:
        ap.error("--retrain-groups must be >= 0 (0: none), --retrain-epochs and --retrain-*windows >= 1")
    if args.skip_collect and not args.retrain_groups:
        ap.error("--skip-collect with --retrain-groups 0 measures nothing: give --retrain-groups G")
    args.record_bytes = record_bytes(args.window)
    return args


def collect_sections(args: argparse.Namespace) -> dict:
    """The object store's cost of one collector file, then one run per K: ``{"put": …, "collect": [...]}``."""
    from edge_agent.contract.signing import keygen

    facts: dict = {}
    total = args.gateways * args.sensors * args.records_per_sensor
    print(f"fleet scale: {args.gateways:,} gateways x {args.sensors} sensors x {args.records_per_sensor} records "
          f"= {total:,} records of {args.record_bytes / 1024:.0f} KiB, K = {args.collectors}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-scale-") as tmp:
        work = Path(tmp)
        _, public_key = keygen(work / "collector.key")
        store = S3Server(work / "s3")
        store.start()
        os.environ.update(store.env())  # this process reads the dataset as the collectors write it: S3 tools' way
        try:
            facts["put"] = put_latency(store, args.window, args.put_samples)
            print(f"one collector file (encode + PUT): p50 {facts['put']['p50_ms']:.1f} ms", flush=True)
            facts["collect"] = []
            for k in args.collectors:
                r = collect_section(args, k, store, work / "collector.key", public_key, work)
                facts["collect"].append(r)
                lat = r["latency_ms"] or {}
                print(f"K={k}: {r['records_per_s']:.0f} records/s, latency p50 {lat.get('p50', 0) / 1e3:.2f} s "
                      f"p99 {lat.get('p99', 0) / 1e3:.2f} s, {r['in_dataset']}/{r['records']} in the dataset, "
                      f"{r['missing']} missing, {r['doubled']} doubled", flush=True)
        finally:
            store.stop()
    return facts


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    facts: dict = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "out"}}
    if not args.skip_collect:
        facts |= collect_sections(args)
    if args.retrain_groups:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-retrain-") as tmp:
            facts["retrain"] = retrain_section(args, Path(tmp))
    facts["machine"]["load_after"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = table(facts)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(facts, indent=2, default=str))
    plot(facts, args.out.with_suffix(".png"))
    print(text)
    print(f"wrote {args.out}, {args.out.with_suffix('.json')}, {args.out.with_suffix('.png')}")
    return facts


if __name__ == "__main__":
    main()
