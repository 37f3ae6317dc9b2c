"""Benchmark: what an MQTT payload costs the gateway to decode, and what an oversized one costs it.

For each payload shape (a binary int16 frame, the wire JSON object, a sensor's own JSON through a
``JsonMapping``: the IBM Watson IoT tutorial's one-sample messages, a batch of one array per channel,
a batch of sample objects), the median and p99 time of ``PayloadDecoder.decode`` per message, per sample,
and as a share of one core at the sensor's rate. ``json.loads`` alone is the floor of any JSON path
(the json module's C parser); "wire JSON, per-value checks" is the decoder before it was vectorised (kept
below as the reference the figure compares against).

Memory: peak RSS growth of a fresh process decoding one wire JSON payload: 8 MB through the decoder before
payloads were bounded, the largest valid one (2.4 MB) now, and 80 MB now (refused on its length).

    python bench/bench_payloads.py [--n 3000] [--out runs/bench_payloads.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.contract.binary import MAX_FRAME_SIZE, encode_frame, int16_scale  # noqa: E402
from edge_agent.contract.errors import FrameError  # noqa: E402
from edge_agent.contract.frames import MAX_CHANNELS, MAX_SAMPLES, SEQ_MOD, Frame  # noqa: E402
from edge_agent.contract.json_mapping import JsonMapping, PayloadDecoder  # noqa: E402
from edge_agent.contract.mqtt_payload import WIRE_JSON_LIMIT, encode_json_payload  # noqa: E402

BATCH, CHANNELS = 256, 4


def _legacy_decode_json(data: bytes) -> Frame:
    """The wire JSON decoder before vectorising (flatten, check every value in Python, convert per value)."""
    obj = json.loads(data)
    seq, t0 = obj.get("seq"), obj.get("t0_us", 0)
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < SEQ_MOD:
        raise FrameError("seq")
    rows = obj.get("samples")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise FrameError("samples")
    width = len(rows[0])
    if len(rows) > MAX_SAMPLES or not 1 <= width <= MAX_CHANNELS or any(len(r) != width for r in rows):
        raise FrameError("shape")
    flat = [v for r in rows for v in r]
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in flat):
        raise FrameError("numbers")
    values = np.array([np.nan if v is None else v for v in flat], dtype=np.float64)
    with np.errstate(over="ignore"):
        samples = values.astype(np.float32).reshape(len(rows), width)
    return Frame(seq, t0, samples)


def _time(fn, arg, n: int) -> tuple[float, float]:
    for _ in range(min(200, n)):
        fn(arg)
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn(arg)
        times[i] = time.perf_counter() - t0
    return float(np.median(times)) * 1e6, float(np.percentile(times, 99)) * 1e6


def cases() -> list[tuple[str, object, bytes, int]]:
    """(name, decode function, one payload, samples in it)."""
    x = (np.random.default_rng(0).standard_normal((BATCH, CHANNELS)) * 3).astype(np.float32)
    xyz = x[:, :3]
    ibm = JsonMapping(fields=("x", "y", "z"))
    batch = JsonMapping(fields=("x", "y", "z", "w"), seq_field="seq", time_field="t", time_unit="ms")
    wire_json = encode_json_payload(0, x)
    return [
        ("binary int16 frame", PayloadDecoder().decode, encode_frame(0, x, scale=int16_scale(10.0)), BATCH),
        ("wire JSON object", PayloadDecoder().decode, wire_json, BATCH),
        ("wire JSON object, per-value checks (before)", _legacy_decode_json, wire_json, BATCH),
        ("json.loads alone (the floor)", json.loads, wire_json, BATCH),
        ("own JSON, one sample per message (IBM tutorial)", PayloadDecoder(ibm).decode,
         ibm.encode(0, xyz[:1])[0], 1),
        ("own JSON, one array per channel", PayloadDecoder(batch).decode,
         batch.encode(0, x, t0_us=10**15, layout="columns")[0], BATCH),
        ("own JSON, array of sample objects", PayloadDecoder(batch).decode,
         batch.encode(0, x, t0_us=10**15, layout="records")[0], BATCH),
    ]


_MEM_PROBE = r"""
import json, resource, sys, time
from bench.bench_payloads import _legacy_decode_json
from edge_agent.contract.errors import FrameError
from edge_agent.contract.json_mapping import PayloadDecoder
size, how = int(sys.argv[1]), sys.argv[2]
row = b"[0.123456789,-1.23456789,2.3456789,-3.456789],"
payload = b'{"seq":0,"samples":[' + row * (size // len(row)) + b"[0,0,0,0]]}"
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
try:
    (_legacy_decode_json if how == "legacy" else PayloadDecoder().decode)(payload)
except FrameError as exc:  # a frame holds 4096 samples at most: both refuse it, one after parsing it
    refused = type(exc).__name__
dt = time.perf_counter() - t0
print(json.dumps({"mb": len(payload) / 1e6, "peak_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
                  "us": dt * 1e6}))
"""


def memory(size: int, how: str) -> dict:
    """Peak RSS growth of a fresh process decoding one wire JSON payload of ``size`` bytes (legacy or now)."""
    out = subprocess.run([sys.executable, "-c", _MEM_PROBE, str(size), how], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="timed decodes per case")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_payloads.md")
    args = ap.parse_args()
    rows = []
    for name, fn, payload, samples in cases():
        p50, p99 = _time(fn, payload, args.n)
        per_sample = p50 / samples
        rows.append(f"| {name} | {len(payload):,} B, {samples} x {3 if samples == 1 else CHANNELS} | {p50:.1f} / {p99:.1f} us"
                    f" | {per_sample:.2f} us | {per_sample * 20000 / 1e4:.1f} % |")
        print(rows[-1], flush=True)
    mem = [("the decoder before the bound (parses, then refuses: > 4096 samples)", memory(8_000_000, "legacy")),
           ("PayloadDecoder, the largest valid wire JSON (parsed)", memory(WIRE_JSON_LIMIT - 64, "now")),
           ("PayloadDecoder, refused on its length", memory(80_000_000, "now"))]
    table = "\n".join([
        "| payload | size | decode p50 / p99 per message | per sample | one core at 20 kHz |",
        "|---|---|---|---|---|", *rows])
    limits = (
        f"Limits (checked before parsing): binary {MAX_FRAME_SIZE:,} B, wire JSON {WIRE_JSON_LIMIT:,} B, "
        f"IBM x/y/z mapping {JsonMapping(fields=('x', 'y', 'z')).max_payload_bytes:,} B.\n\n"
        "| memory (wire JSON payload) | payload | peak RSS growth | time |\n|---|---|---|---|\n"
        + "".join(f"| {name} | {m['mb']:.1f} MB | {m['peak_growth_mb']:.0f} MB ({m['peak_growth_mb'] / m['mb']:.1f}x) | "
                  f"{m['us'] / 1e3:.3f} ms |\n" for name, m in mem)
    )
    print(table + "\n\n" + limits)
    cpu = next((re.sub(r"\s+", " ", line.split(":", 1)[1].strip()) for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"Payload decoding ({cpu}, {os.cpu_count()} cores shared with other work, Python "
                        f"{sys.version.split()[0]}, numpy {np.__version__}; {args.n} decodes per case)\n\n"
                        + table + "\n\n" + limits)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
