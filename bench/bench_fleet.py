"""Benchmark: the fleet loop's throughput.

* Collection: windows per second from gateways into the Parquet dataset, through one collector and through
  two collectors sharing one MQTT 5 subscription ($share/bench/vib/+/upload), end to end: from the first
  publish until every window is in a visible, fsynced dataset file (and acknowledged). A mosquitto is started
  on a free loopback port; the publisher (QoS 1, many gateways' worth of records) and each collector run in
  their own processes.
* Gateway spool: the cost of storing one window in the sqlite spool (``Spool.put``, WAL, synchronous=NORMAL),
  per record size, and of taking it out again (``peek`` + ``ack``, batches of 50).

    python bench/bench_fleet.py [--windows 4000] [--out runs/bench_fleet.md]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from edge_agent.contract.upload_record import encode_record  # noqa: E402
from edge_agent.spool import Spool  # noqa: E402
from firmware_sim.broker import Broker  # noqa: E402

#: (label, rows, channels): an IMS-table window (10 x 4), a features-mode window of raw samples (8 blocks of
#: 1024 x 4 at 20 kHz), and 1 s of 2 channels at 25.6 kHz.
SIZES = [("10 x 4", 10, 4), ("8192 x 4", 8192, 4), ("25600 x 2", 25600, 2)]


def records(n: int, rows: int, channels: int, devices: int = 8) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(rows, channels)).astype(np.float32)
    out = []
    for i in range(n):
        dev = f"pump-{i % devices}"
        out.append((f"vib/{dev}/upload", encode_record(
            device=dev, model_id="m", model_version="v1", seq_end=i * rows, time_end=f"2026-11-22T10:00:{i % 60:02d}",
            sample_rate=1000.0, channels=[f"c{j}" for j in range(channels)], score=0.1, threshold=0.5,
            state="normal", samples=base + i)))
    return out


def _collector(host: str, port: int, out: str, member: int, stop) -> None:
    import threading

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_agent.mqtt_client import MqttConnection
    from trainer.collect import CollectOptions, collect

    event = threading.Event()
    threading.Thread(target=lambda: (stop.wait(), event.set()), daemon=True).start()
    opts = CollectOptions(out=Path(out), group="bench", member=member, client_id=f"bench-{member}", flush_s=0.5,
                          key=Ed25519PrivateKey.generate())  # receipts signed, as in the field
    connection = MqttConnection(host, port, opts.cid, session_expiry_s=opts.session_expiry_s,
                                receive_maximum=opts.receive_maximum, manual_ack=True)
    collect(connection, opts, event)


def _publisher(host: str, port: int, payloads: list[tuple[str, bytes]], done) -> None:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-gateways")
    client.max_inflight_messages_set(100)
    client.connect(host, port)
    client.loop_start()
    infos = []
    for topic, payload in payloads:
        infos.append(client.publish(topic, payload, qos=1))
        while len(infos) > 2000:  # stay far from paho's 65535 message ids
            infos.pop(0).wait_for_publish(30)
    for info in infos:
        info.wait_for_publish(30)
    done.value = time.monotonic()
    client.disconnect()
    client.loop_stop()


def durable_rows(root: Path) -> int:
    """Rows in visible dataset files (Parquet footers only)."""
    total = 0
    for f in root.rglob("part-*.parquet"):
        try:
            total += pq.read_metadata(f).num_rows
        except OSError:
            continue
    return total


def bench_collect(n_collectors: int, payloads: list[tuple[str, bytes]], work: Path) -> dict:
    broker = Broker(work / f"broker-{n_collectors}", extra_conf="allow_anonymous true\nmax_queued_messages 0\n")
    broker.start()
    out = work / f"dataset-{len(payloads[0][1])}-{n_collectors}"
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs = [ctx.Process(target=_collector, args=(broker.host, broker.port, str(out), m + 1, stop))
             for m in range(n_collectors)]
    for p in procs:
        p.start()
    time.sleep(3.0)  # spawn + import + subscribe
    done = ctx.Value("d", 0.0)
    t0 = time.monotonic()
    pub = ctx.Process(target=_publisher, args=(broker.host, broker.port, payloads, done))
    pub.start()
    deadline = t0 + 600
    while time.monotonic() < deadline and not (out.exists() and durable_rows(out) >= len(payloads)):
        time.sleep(0.05)
    t1 = time.monotonic()
    pub.join(60)
    stop.set()
    for p in procs:
        p.join(30)
    broker.stop()
    got = durable_rows(out)
    mb = sum(len(p) for _, p in payloads) / 1e6
    return {"collectors": n_collectors, "windows": len(payloads), "durable": got, "seconds": t1 - t0,
            "windows_per_s": got / (t1 - t0), "mb_per_s": mb / (t1 - t0),
            "publish_s": (done.value - t0) if done.value else None}


def bench_spool(rows: int, channels: int, work: Path, n: int = 500) -> dict:
    payload = records(1, rows, channels)[0][1]
    with Spool(work / f"spool-{rows}x{channels}.sqlite", max_bytes=1 << 34, max_records=10 ** 7) as spool:
        t0 = time.perf_counter()
        for _ in range(n):
            spool.put("vib/pump-0/upload", payload)
        put_s = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        while len(spool):
            batch = spool.peek(50)
            spool.ack(r.id for r in batch)
        take_s = (time.perf_counter() - t0) / n
    return {"record_bytes": len(payload), "put_us": put_s * 1e6, "take_us": take_s * 1e6,
            "put_mb_per_s": len(payload) / put_s / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=4000, help="windows per collection case (8192 x 4: 1/4 of it)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_fleet.md"))
    args = ap.parse_args()
    facts: dict = {"collect": [], "spool": []}
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        for label, rows, channels in SIZES[:2]:
            n = args.windows if rows < 1000 else max(200, args.windows // 4)
            payloads = records(n, rows, channels)
            for k in (1, 2):
                r = bench_collect(k, payloads, work) | {"window": label, "record_bytes": len(payloads[0][1])}
                facts["collect"].append(r)
                print(f"collect {label:>10s}  {k} collector(s): {r['windows_per_s']:8.0f} windows/s "
                      f"({r['mb_per_s']:.1f} MB/s), {r['durable']}/{r['windows']} durable", flush=True)
        for label, rows, channels in SIZES:
            r = bench_spool(rows, channels, work) | {"window": label}
            facts["spool"].append(r)
            print(f"spool {label:>10s}: put {r['put_us']:8.0f} µs, take {r['take_us']:6.0f} µs per window "
                  f"({r['record_bytes']} B)", flush=True)
    cpu = platform.processor() or platform.machine()
    lines.append(f"Fleet benchmark ({cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
                 "mosquitto, publisher and collectors on this machine)\n")
    lines.append("| window (rows x channels) | record | collectors | windows/s | MB/s | durable |")
    lines.append("|---|---|---|---|---|---|")
    for r in facts["collect"]:
        lines.append(f"| {r['window']} | {r['record_bytes'] / 1024:.1f} KiB | {r['collectors']} | "
                     f"{r['windows_per_s']:.0f} | {r['mb_per_s']:.1f} | {r['durable']}/{r['windows']} |")
    lines.append("\n| window (rows x channels) | record | spool put per window | peek + ack per window | put MB/s |")
    lines.append("|---|---|---|---|---|")
    for r in facts["spool"]:
        lines.append(f"| {r['window']} | {r['record_bytes'] / 1024:.1f} KiB | {r['put_us']:.0f} µs | "
                     f"{r['take_us']:.0f} µs | {r['put_mb_per_s']:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(facts, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
