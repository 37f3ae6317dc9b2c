"""Soak: the agent as installed, for a long time, at full rate, on several sensors with injected faults.

    python bench/soak.py [--minutes 30] [--serial 3] [--mqtt 1] [--spool-mib 6] [--out runs/soak]   (make soak; not in CI)
    python bench/soak.py --minutes 5 --leak 1       (self-test: an agent leaking 1 MB a minute must FAIL)
    make soak SOAK_ARGS="--minutes 5"               (an early memory check; >= 14 minutes for a steady-state one)
    python bench/soak.py --minutes 5 --probe        (also OUT/probe.jsonl: the agent's heap, SQLite, threads, fds)

What runs (separate processes, real parts): a mosquitto on a free loopback port; one ``edge-agent run`` with
every sensor in one config (uploads on, status every 5 s); per serial sensor a ``firmware-sim run`` over a pty
(IMS bearing preset: 20 kHz x 4 channels, int16 frames of 256 samples) and per MQTT sensor one over MQTT;
every simulator injects faults (drops, corrupted bytes, garbage between frames, NaN and saturated values,
timestamp jitter, link drops on serial). Sensor 0 is healthy; sensor 1 degrades to a failure over the first
30 % of the run (``LIFE_FRACTION``) and then stays failed (alerting); the others are healthy.

What it checks and writes (``OUT/report.md``, ``OUT/report.json``, ``OUT/timeseries.csv``, ``OUT/rss.png``):

* memory stays flat: the agent's RSS every 10 s, judged only after its warm-up (below), while the simulators
  still send, by its trend (Theil-Sen: the median slope between all pairs of samples, which one step, a new
  allocator high-water mark, barely moves; the least-squares slope is reported too). In the steady state
  the bar is 5 MB/h; a run too short for one (under ~14 minutes) gets an early check at 20 MB/h instead (see
  below). A short span or a restless RSS raises the bar to what the run can resolve: 1 MB over the span
  (``NOISE_MB``: the RSS of a healthy agent wanders by up to a MB within minutes, as a batch of 20 records of
  175 KB is read to be sent again, or frames back up while the shared machine starves the agent; so 5 MB/h
  itself takes 12 minutes of steady state, a run of 23 minutes or more, as the default 30), or 3 standard
  errors of the trend. The report says which bar applied. A leak of 1 MB a minute fails any run;
* counters add up, per sensor: samples produced by the simulator = samples_in + samples_missing (lost on the
  way: dropped frames, CRC errors, link drops, queue overflow) + a tail still in flight; and samples_in =
  samples_scored + samples_invalid + samples_discarded + samples_pending (every accepted sample went somewhere);
* uploads flow: every window a sensor kept for upload became a spooled record (none refused);
* the agent's CPU time, windows scored, alerts, uploads, and its exit status after SIGTERM (0, status "stopped").

Warm-up, and why memory is judged after it only. A leak is memory that grows with time in a steady state;
memory an agent takes once, the first time each of its behaviours runs (imports, caches, the allocator's
high-water mark) or while a bounded buffer fills, is not one. The soak's steady state is: every sensor
scoring, the spool at its bound and evicting (no collector answers here, so records wait for receipts until
evicted), records being sent again after the receipt timeout, sensor 1 failed and alerting, and the status
page's score history full (``edge_agent.history``: 600 one-second buckets per sensor, so 10 minutes). Warm-up
lasts until all of that has happened, read from the agent's status file where it says so: the spool's first
eviction (``uploads.spool_evicted``), sensor 1's alert state ``critical``, two receipt timeouts (resending
under way), 10 minutes after the first window; then ``SETTLE_S`` more. A run that ends before the history is
full but leaves ``MIN_JUDGED_S`` after the rest gets the early check: the history's filling is bounded and
known (measured: 21 Python blocks a second, 425 KB of live objects and ~1 MB of RSS for 4 sensors over its
10 minutes, ~6 MB/h), so a bar of 20 MB/h tells a leak from it, and the report says that a 5 MB/h verdict
needs a longer run. A run that has not even that gets no memory verdict at all ("memory: not judged: what was
still warming up; run >= N minutes", verdict NOT JUDGED, exit 2): never a slope of the warm-up passed off as
one of the steady state.

Why not "the second half of the run", as before: measured on 2026-12-04, the +18-20 MB/h that failed 5-minute
runs was neither the spool filling nor a leak. SQLite's own memory (``sqlite3_memory_used``, read inside the
agent) stops at 2.3 MB once the spool passes ~2 MiB (its page cache): RSS stayed at 80.2-80.5 MB while the
spool grew from 2 to 13 MiB, and a spool driven alone to its 64 MiB bound and through 300 evictions kept
RSS flat. The second-half growth was two steps (+0.45 MB, +0.25 MB) right after sensor 1's first drift
notice, alert (11 context records at once) and escalation, at 67-78 % of its life, which was the whole run:
always inside the half that was judged, whatever the run's length; under them the history's slow filling.
Inside the agent nothing else grew: malloc's in-use bytes stayed at 15.6-15.8 MB for 10 minutes, Python's
live allocations (tracemalloc) went back to their level after every burst, and threads (15), file
descriptors and SQLite's memory stayed constant. So the soak makes the rest of warm-up happen early:

* the spool's bound is small (``--spool-mib``, 6 MiB: full after about a minute at this upload rate); its memory
  does not depend on the bound (above), its CPU does (a look for records to send reads every record's row:
  14 ms at 64 MiB, twice a second), so ``--spool-mib 64`` soaks the installed default (full after ~16 minutes;
  the report says how long a run must be);
* records are sent again after 30 s without a receipt (``receipt_timeout_s``; installed: 300 s), so resending
  is part of every run's steady state, not an event in the middle of a long one;
* sensor 1's life is ``LIFE_FRACTION`` of the run (it fails about a quarter of the way in).

``--leak X`` loads bench/soak_inject/sitecustomize.py into the agent (a list that grows X MB a minute, in
written 1-second chunks) to show that the verdict catches a leak; ``--probe`` loads it to look inside.

The simulators and the agent share the machine's cores; the report says how many there were and the load.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firmware_sim.broker import Broker  # noqa: E402

BIN = Path(sys.executable).parent
RATE, CHANNELS, BLOCK, FRAME = 20_000, 4, 1024, 256
SERIAL_FAULTS = ["drop=0.0005", "flip=0.0005", "garbage=0.001", "nan=0.000001", "saturate=0.0000005",
                 "jitter=300", "disconnect=0.0001"]
MQTT_FAULTS = ["drop=0.0005", "flip=0.0005", "nan=0.000001", "jitter=300"]
LIFE_FRACTION = 0.3  # sensor 1 fails (alert escalated) at about 80 % of its life: a quarter of the way in
RECEIPT_TIMEOUT_S = 30.0  # records go again after this long without a receipt, then after 2x, 4x, ...
SETTLE_S = 30.0  # after the last warm-up event, before memory is judged
MIN_JUDGED_S = 120.0  # the shortest steady state worth a memory verdict
SLOPE_BAR = 5.0  # MB per hour
NOISE_MB = 1.0  # how far a healthy agent's RSS wanders within minutes (resend batches, frame backlogs)
EARLY_BAR = 20.0  # MB per hour, before the status page's history is full (it adds ~6 MB/h until then)


def train_bundle(out: Path) -> Path:
    """A features-mode Conv1D int8 bundle for the IMS bearing preset (cached in ``out``)."""
    bundle = out / "bundle"
    if (bundle / "manifest.json").exists():
        return bundle
    from firmware_sim import signals
    from trainer.model import ModelConfig
    from trainer.pipeline import TrainOptions, run
    from trainer.train import FitConfig

    out.mkdir(parents=True, exist_ok=True)
    x = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=1), RATE * 30)
    np.save(out / "healthy.npy", x)
    opts = TrainOptions(
        data=out / "healthy.npy", out=bundle, format="npy", mode="features", window=8, hop=2, block=BLOCK,
        features=("rms", "peak", "kurtosis", "crest"), model=ModelConfig(architecture="conv1d", units=(16, 8), latent=4),
        fit=FitConfig(epochs=30, batch_size=16, patience=5), quantize="int8", latency_windows=50, model_id="soak",
    )
    return run(opts).bundle


def write_config(out: Path, bundle: Path, broker: Broker, devices: list[tuple[str, str]], spool_bytes: int) -> Path:
    lines = [
        'gateway = "soak"',
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}',
        f'[status]\nevery_s = 5.0\nfile = "{out}/status.json"\nmqtt = true',
        f'[uploads]\nspool_path = "{out}/spool.sqlite"\nenabled = true\nevery_s = 10.0\n'
        f'spool_max_bytes = {spool_bytes}\nreceipt_timeout_s = {RECEIPT_TIMEOUT_S}' + receipt_key(),
        f'[bundle]\npath = "{bundle}"\nwatch_s = 5.0',
        '[alerts]\nk = 3\nn = 5\ncooldown_s = 60.0',
        f'[alerts.sinks]\nlog = true\njsonl = "{out}/alerts.jsonl"\nmqtt = true',
        "[logging]\nformat = \"json\"",
    ]
    for device, kind in devices:
        lines.append(f'[[sensors]]\ndevice = "{device}"')
        if kind == "serial":
            lines.append(f'[sensors.source]\nkind = "serial"\nsample_rate = {RATE}\n'
                         f'[sensors.source.serial]\nport = "{out}/tty-{device}"\nreopen_max_s = 0.5')
        else:
            lines.append(f'[sensors.source]\nkind = "mqtt"\nsample_rate = {RATE}')
    path = out / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def receipt_key() -> str:
    """A collector's public key for ``[uploads] receipt_keys``, where the agent has the setting (it needs one while
    receipts are on). Nobody here holds the private half: no receipt ever comes, records wait in the spool."""
    from edge_agent.config import Uploads

    if "receipt_keys" not in getattr(Uploads, "__dataclass_fields__", {}):
        return ""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_agent.contract.signing import public_key_text

    return f'\nreceipt_keys = ["{public_key_text(Ed25519PrivateKey.generate().public_key())}"]'


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def sample(t0: float, pid: int, doc: dict, degrading: str | None, running: bool) -> dict:
    """One row of ``timeseries.csv``: the agent's RSS and CPU, and from its status what warm-up is read from."""
    up = doc.get("uploads") or {}
    sensors = doc.get("sensors") or {}
    return {"t_s": round(time.monotonic() - t0, 1), "rss_mb": round(rss_mb(pid), 2), "cpu_s": round(cpu_s(pid), 2),
            "samples_in": doc.get("samples_in", 0), "windows_scored": doc.get("windows_scored", 0),
            "load1": round(os.getloadavg()[0], 2), "spool_bytes": up.get("spool_bytes", 0),
            "spool_evicted": up.get("spool_evicted", 0), "uploads_sent": up.get("sent", 0),
            "alerts": doc.get("alerts", 0),
            "degrading_state": (sensors.get(degrading) or {}).get("alert_state", "") if degrading else "",
            "simulators_running": int(running)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--serial", type=int, default=3, help="sensors over ptys")
    ap.add_argument("--mqtt", type=int, default=1, help="sensors over MQTT")
    ap.add_argument("--spool-mib", type=float, default=6.0,
                    help="the spool's bound (uploads.spool_max_bytes); the installed default is 64")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "soak")
    ap.add_argument("--leak", type=float, default=0.0, metavar="MB_PER_MIN",
                    help="self-test: make the agent leak this much (bench/soak_inject); the verdict must be FAILED")
    ap.add_argument("--probe", action="store_true",
                    help="OUT/probe.jsonl every 10 s: the agent's RSS by kind, malloc heap, SQLite memory, threads, fds")
    ap.add_argument("--tracemalloc", default="", metavar="T1,T2",
                    help="with --probe: tracemalloc in the agent, and the call sites that grew from T1 to T2 s")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    duration = args.minutes * 60
    spool_bytes = int(args.spool_mib * 2**20)
    print(f"soak: training the bundle (cached in {out})", flush=True)
    bundle = train_bundle(out)
    for stale in ("status.json", "spool.sqlite", "alerts.jsonl", "agent.log", "probe.jsonl"):
        (out / stale).unlink(missing_ok=True)
    devices = [(f"soak-s{i}", "serial") for i in range(args.serial)] + [(f"soak-m{i}", "mqtt") for i in range(args.mqtt)]
    degrading = devices[1][0] if len(devices) > 1 else None
    broker = Broker(Path(tempfile.mkdtemp(prefix="soak-mosquitto-")))
    broker.start()
    cfg = write_config(out, bundle, broker, devices, spool_bytes)
    env = dict(os.environ)
    if args.leak > 0 or args.probe:  # bench/soak_inject/sitecustomize.py, loaded by the agent's interpreter
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "bench" / "soak_inject"), env.get("PYTHONPATH")]))
        if args.leak > 0:
            env["SOAK_LEAK_MB_PER_MIN"] = str(args.leak)
        if args.probe:
            env["SOAK_PROBE"] = str(out / "probe.jsonl")
            if args.tracemalloc:
                env["SOAK_PROBE_TRACEMALLOC"] = "1"
                env["SOAK_PROBE_SNAPSHOTS"] = args.tracemalloc
    agent_log = open(out / "agent.log", "w")  # noqa: SIM115 (kept open for the agent's lifetime)
    agent = subprocess.Popen([str(BIN / "edge-agent"), "run", "--config", str(cfg)], stdout=agent_log,
                             stderr=subprocess.STDOUT, cwd=out, env=env)
    sims: dict[str, subprocess.Popen] = {}
    t0 = time.monotonic()
    rows: list[dict] = []
    try:
        deadline = time.monotonic() + 60
        while not read_status(out / "status.json") and time.monotonic() < deadline:
            time.sleep(0.5)  # bounded wait for the agent's first status
        for i, (device, kind) in enumerate(devices):
            state = (["--state", "degrading", "--life", f"{LIFE_FRACTION * duration:g}"] if device == degrading
                     else ["--state", "healthy"])
            link = (["--link", "serial", "--link-path", str(out / f"tty-{device}")] +
                    [a for f in SERIAL_FAULTS for a in ("--fault", f)]) if kind == "serial" else \
                   (["--link", "mqtt", "--broker", f"{broker.host}:{broker.port}", "--device", device] +
                    [a for f in MQTT_FAULTS for a in ("--fault", f)])
            sims[device] = subprocess.Popen(
                [str(BIN / "firmware-sim"), "run", "--signal", "bearing", "--preset", "ims", *state,
                 "--duration", str(duration), "--frame-samples", str(FRAME), "--seed", str(10 + i), "--json-summary", *link],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=out)
        print(f"soak: {len(devices)} sensors at {RATE} Hz x {CHANNELS} for {args.minutes:g} min; spool bound "
              f"{args.spool_mib:g} MiB; agent pid {agent.pid}" + (f"; LEAKING {args.leak:g} MB/min (self-test)"
                                                                 if args.leak > 0 else ""), flush=True)
        next_sample = time.monotonic()
        while any(p.poll() is None for p in sims.values()):
            if agent.poll() is not None:
                raise SystemExit(f"soak: the agent exited with {agent.returncode}: see {out}/agent.log")
            now = time.monotonic()
            if now >= next_sample:
                rows.append(sample(t0, agent.pid, read_status(out / "status.json"), degrading, True))
                if len(rows) % 6 == 1:
                    r = rows[-1]
                    print(f"soak: {r['t_s'] / 60:5.1f} min  rss {r['rss_mb']:.1f} MB  cpu {r['cpu_s']:.0f} s  "
                          f"windows {r['windows_scored']}  spool {r['spool_bytes'] / 2**20:.1f} MiB "
                          f"(evicted {r['spool_evicted']})  load {r['load1']:.1f}", flush=True)
                next_sample += 10
            time.sleep(0.5)
        summaries = {}
        for device, p in sims.items():
            text = p.stdout.read()
            line = next((x for x in text.splitlines() if x.startswith("{")), "{}")
            summaries[device] = json.loads(line)

        def drained() -> bool:
            doc = read_status(out / "status.json")
            return bool(doc) and all(d.get("queued_frames", 1) == 0 for d in doc["sensors"].values())

        deadline = time.monotonic() + 30
        while not drained() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(6)  # one more status period, so the file holds the drained counters
        final = read_status(out / "status.json")
        rows.append(sample(t0, agent.pid, final, degrading, False))
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(60)
        stopped = read_status(out / "status.json")
    finally:
        for p in sims.values():
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
        broker.stop()
        agent_log.close()
    return report(out, args, devices, degrading, spool_bytes, rows, summaries, final, stopped, rc)


def history_s() -> float:
    """How long the status page's score history takes to fill (``SensorHistory``: points x bucket_s, 600 x 1 s)."""
    import inspect

    from edge_agent.history import SensorHistory

    p = inspect.signature(SensorHistory).parameters
    return float(p["points"].default) * float(p["bucket_s"].default)


def warm_up(rows: list[dict], spool_bytes: int, degrading: str | None, duration: float) -> dict:
    """When warm-up ended, read from the samples taken while the simulators ran.

    ``quick_s``: the last of the spool's first eviction (it reached its bound), the degrading sensor's alert
    state ``critical`` (it failed) and two receipt timeouts (records sent again), plus ``SETTLE_S``;
    ``steady_s``: that and the status page's score history full (``history_s`` after the first window), plus
    ``SETTLE_S``. None: not within this run. ``need_*_min``: the shortest runs that leave ``MIN_JUDGED_S``
    after them (estimated from what this one measured)."""
    run = [r for r in rows if r["simulators_running"]] or rows[-1:]
    last = run[-1]
    events, missing = [], []
    full = next((r["t_s"] for r in run if r["spool_evicted"] > 0 or r["spool_bytes"] >= spool_bytes), None)
    if full is None:
        rate = last["spool_bytes"] / last["t_s"] if last["t_s"] > 0 else 0.0  # bytes per second
        full_eta = spool_bytes / rate if rate > 0 else None
        missing.append(f"the spool was still filling at the end ({last['spool_bytes'] / 2**20:.1f} of "
                       f"{spool_bytes / 2**20:g} MiB" + (f"; full after ~{full_eta / 60:.0f} min at "
                                                         f"{rate * 60 / 2**20:.1f} MiB/min)" if full_eta else
                                                         "; no upload record reached it)"))
    else:
        full_eta = full
        events.append(f"spool at its bound ({spool_bytes / 2**20:g} MiB) at minute {full / 60:.1f}")
    failed, failed_fraction = None, LIFE_FRACTION
    if degrading is not None:
        failed = next((r["t_s"] for r in run if r["degrading_state"] == "critical"), None)
        if failed is None:
            missing.append(f"{degrading} had not failed (its alert state never critical)")
        else:
            events.append(f"{degrading} failed (alert critical) at minute {failed / 60:.1f}")
            failed_fraction = failed / duration
    resend = 2 * RECEIPT_TIMEOUT_S
    if last["t_s"] < resend:
        missing.append(f"records not yet sent again ({resend:g} s: 2 receipt timeouts)")
    else:
        events.append(f"resending under way (from {resend:g} s)")
    quick = None if missing else max(t for t in (full, failed, resend) if t is not None) + SETTLE_S
    first_window = next((r["t_s"] for r in run if r["windows_scored"] > 0), run[0]["t_s"])
    history = first_window + history_s()
    steady = None if quick is None or last["t_s"] < history else max(quick, history + SETTLE_S)
    # sensor 1 fails a fixed fraction into the run, the spool fills at its own pace, the history takes its
    # 10 minutes: the runs that leave MIN_JUDGED_S after them, with half a minute to spare
    after = SETTLE_S + MIN_JUDGED_S + 30
    need_quick = max(after + resend, after / max(1 - failed_fraction, 0.1), after + (full_eta or float("inf")))
    need_steady = max(need_quick, after + history)
    need_bar = max(need_steady, history + SETTLE_S + NOISE_MB / SLOPE_BAR * 3600 + 30)  # 12 min at 5 MB/h
    return {"quick_s": quick, "steady_s": steady, "history_full_s": history, "events": events,
            "still_warming": missing,
            "need_quick_min": int(np.ceil(need_quick / 60)) if np.isfinite(need_quick) else None,
            "need_steady_min": int(np.ceil(need_steady / 60)) if np.isfinite(need_steady) else None,
            "need_5mb_per_h_min": int(np.ceil(need_bar / 60)) if np.isfinite(need_bar) else None}


def theil_sen(x: np.ndarray, y: np.ndarray) -> float:
    """The median of the slopes between every pair of samples: a trend that persists over the whole span, which
    one step (a new allocator high-water mark) barely moves; a least-squares line leans on the step."""
    i, j = np.triu_indices(len(x), 1)
    keep = x[j] > x[i]
    return float(np.median((y[j][keep] - y[i][keep]) / (x[j][keep] - x[i][keep])))


def judge_memory(t: np.ndarray, rss: np.ndarray, running: np.ndarray, warm: dict) -> dict:
    """The memory verdict: ``ok`` True / False, or None (not judged), and how (``mode``).

    ``steady``: after the whole warm-up, bar 5 MB/h (or what the span resolves); ``early``: a run too short for
    that, judged after the quick part of warm-up (spool, failure, resends) while the status page's history
    still fills (a bounded ~6 MB/h), bar ``EARLY_BAR``; ``not judged``: not even that."""
    def span_from(start: float | None) -> tuple[np.ndarray, float]:
        part = running & (t >= start) if start is not None else np.zeros_like(running)
        return part, float(t[part][-1] - t[part][0]) if part.sum() >= 2 else 0.0

    mode, start = "steady", warm["steady_s"]
    part, span = span_from(start)
    if span < MIN_JUDGED_S:
        mode, start = "early", warm["quick_s"]
        part, span = span_from(start)
    if span < MIN_JUDGED_S:
        why = "; ".join(warm["still_warming"]) if start is None else (
            f"warm-up ended at minute {start / 60:.1f}, leaving {span / 60:.1f} min (< {MIN_JUDGED_S / 60:g})")
        need = f"run >= {warm['need_quick_min']} minutes" if warm["need_quick_min"] else "uploads never reached the spool"
        return {"ok": None, "mode": "not judged", "judged_from_s": start, "judged_span_s": span,
                "text": f"memory: not judged: {why}; {need} ({warm['need_steady_min'] or '?'} for a steady-state "
                        f"verdict)"}
    x, y = t[part] / 3600, rss[part]
    slope = theil_sen(x, y)
    coef = np.polyfit(x, y, 1)
    stderr = float(np.sqrt(np.sum((y - np.polyval(coef, x)) ** 2) / max(len(x) - 2, 1) / np.sum((x - x.mean()) ** 2)))
    first = ("the steady-state bar" if mode == "steady" else
             f"an early check, the status page's {history_s() / 60:g}-minute score history still "
             f"filling (bounded, ~6 MB/h for 4 sensors); a steady-state verdict needs a run >= "
             f"{warm['need_steady_min']} minutes, one at {SLOPE_BAR:g} MB/h >= {warm['need_5mb_per_h_min']}")
    bars = {first: SLOPE_BAR if mode == "steady" else EARLY_BAR,
            f"{NOISE_MB:g} MB over {span / 60:.1f} min, what so short a span resolves ({SLOPE_BAR:g} MB/h from a run of "
            f"{warm['need_5mb_per_h_min']} minutes)": NOISE_MB / (span / 3600),
            f"3 standard errors of this run's trend ({stderr:.1f} MB/h each)": 3 * stderr}
    why, bar = max(bars.items(), key=lambda kv: kv[1])
    ok = abs(slope) < bar
    word = ("flat" if mode == "steady" else "no leak (early check)") if ok else "NOT FLAT"
    return {"ok": bool(ok), "mode": mode, "judged_from_s": start, "judged_span_s": span,
            "slope_mb_per_h": round(slope, 2), "least_squares_slope_mb_per_h": round(float(coef[0]), 2),
            "slope_stderr_mb_per_h": round(stderr, 2), "bar_mb_per_h": round(bar, 2),
            "rss_mb_from": float(y[0]), "rss_mb_to": float(y[-1]),
            "text": f"memory: {word}: RSS trend {slope:+.2f} MB/h ({slope * span / 3600:+.2f} MB; least squares "
                    f"{coef[0]:+.2f} MB/h) over {span / 60:.1f} min from minute {start / 60:.1f}, {y[0]:.1f} -> "
                    f"{y[-1]:.1f} MB (bar {bar:.1f} MB/h: {why})"}


def report(out: Path, args, devices, degrading, spool_bytes, rows, summaries, final, stopped, rc) -> int:
    with open(out / "timeseries.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    t = np.array([r["t_s"] for r in rows])
    rss = np.array([r["rss_mb"] for r in rows])
    running = np.array([bool(r["simulators_running"]) for r in rows])
    warm = warm_up(rows, spool_bytes, degrading, args.minutes * 60)
    events, missing = warm["events"], warm["still_warming"]
    memory = judge_memory(t, rss, running, warm)
    start = memory["judged_from_s"]

    def slope_from(start_s: float) -> float:  # for comparison with earlier reports: all samples from start_s
        part = t >= start_s
        return float(np.polyfit(t[part] / 3600, rss[part], 1)[0]) if part.sum() >= 3 else float("nan")

    sensors, ok = {}, rc == 0 and stopped.get("state") == "stopped"
    for device, _ in devices:
        d, s = final["sensors"][device], summaries.get(device, {})
        produced = int(s.get("samples", 0))
        arrived = d["samples_in"] + d["samples_missing"]
        accounted = d["samples_scored"] + d["samples_invalid"] + d["samples_discarded"] + d["samples_pending"]
        tail = produced - arrived
        counted = (s.get("dropped_samples", 0) + s.get("outage_samples", 0) + d["frames_dropped"] * FRAME
                   + (d.get("crc_errors", 0) + d.get("bad_payloads", 0)) * FRAME)
        kept = sum((d.get("uploads_kept") or {}).values())
        row = {
            "produced": produced, "samples_in": d["samples_in"], "samples_missing": d["samples_missing"],
            "tail_not_arrived": tail, "samples_scored": d["samples_scored"], "samples_invalid": d["samples_invalid"],
            "samples_discarded": d["samples_discarded"], "samples_pending": d["samples_pending"],
            "identity_in": d["samples_in"] == accounted,
            "missing_explained": counted, "missing_in_link_drops": d["samples_missing"] - counted,
            "why_missing": {"sim_dropped": s.get("dropped_samples", 0), "sim_outage": s.get("outage_samples", 0),
                            "sim_flipped_frames": s.get("flipped_frames", 0), "crc_errors": d.get("crc_errors", 0),
                            "bad_payloads": d.get("bad_payloads", 0), "queue_dropped_frames": d["frames_dropped"],
                            "gaps": d["gaps"], "resyncs": d["resyncs"], "duplicates": d["duplicates"]},
            "windows_scored": d["windows_scored"], "alerts": d["alerts"], "over_range_spans": d["over_range_spans"],
            "inference_ms_p50": d["inference_ms_p50"], "inference_ms_p99": d["inference_ms_p99"],
            "internal_errors": d["internal_errors"],
            "uploads_kept": kept, "uploads_offered": d.get("uploads_offered", 0),
        }
        # what nobody can count: frames in a pty's buffer when the simulator closes it (at a link drop, and at
        # the end of the run: the tail), or in flight; at most about a pty buffer's worth each time
        ok &= (row["identity_in"] and 0 <= tail <= RATE // 4 and d["internal_errors"] == 0
               and 0 <= row["missing_in_link_drops"] <= (s.get("disconnects", 0) + 1) * RATE // 4)
        sensors[device] = row
    uploads = final.get("uploads") or {}
    # every window kept for upload became a spooled record (an agent that cannot encode them uploads nothing)
    uploads_ok = all(r["uploads_offered"] == r["uploads_kept"] > 0 for r in sensors.values()) and uploads.get("sent", 0) > 0
    ok &= uploads_ok
    minutes = t[-1] / 60
    run_rows = [r for r in rows if r["simulators_running"]]
    doc = {
        "minutes": round(minutes, 1), "sensors": len(devices), "rate_hz": RATE, "channels": CHANNELS,
        "cores": os.cpu_count(), "load1_mean": round(float(np.mean([r["load1"] for r in rows])), 2),
        "spool_max_bytes": spool_bytes, "receipt_timeout_s": RECEIPT_TIMEOUT_S, "leak_injected_mb_per_min": args.leak,
        "warm_up": warm | {"settle_s": SETTLE_S},
        "memory": memory,
        "rss_mb_start": float(rss[0]),
        "rss_mb_end": float(rss[running][-1]) if running.any() else float(rss[-1]), "rss_mb_max": float(rss.max()),
        "rss_slope_second_half_mb_per_h": round(slope_from(t[-1] / 2), 2),
        "spool_mib_over_time": {f"{r['t_s'] / 60:.1f}": round(r["spool_bytes"] / 2**20, 1) for r in run_rows[::6]},
        "agent_cpu_pct_of_one_core": round(100 * rows[-1]["cpu_s"] / t[-1], 1),
        "exit_code": rc, "final_state": stopped.get("state"), "uploads": uploads, "uploads_ok": uploads_ok,
        "mqtt": final.get("mqtt"), "per_sensor": sensors,
    }
    verdict = "FAILED" if not ok or memory["ok"] is False else ("NOT JUDGED" if memory["ok"] is None else "OK")
    doc["ok"] = verdict == "OK"
    doc["verdict"] = verdict
    (out / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3))
        ax.plot(t / 60, rss, label="agent RSS")
        ax.set_xlabel("minutes")
        ax.set_ylabel("agent RSS (MB)")
        ax.set_ylim(0, max(rss.max() * 1.2, 1))
        if start is not None:
            ax.axvline(start / 60, color="grey", linestyle="--", linewidth=1)
            ax.text(start / 60, 2, f" judged from here ({memory['mode']})", color="grey", fontsize=8)
        ax2 = ax.twinx()
        ax2.plot(t[running] / 60, [r["spool_bytes"] / 2**20 for r in rows if r["simulators_running"]],
                 color="tab:orange", linewidth=1)
        ax2.set_ylabel("spool (MiB)", color="tab:orange")
        ax2.set_ylim(0, spool_bytes / 2**20 * 1.2)
        ax.set_title(f"soak: {len(devices)} sensors x {RATE // 1000} kHz x {CHANNELS} ch, faults injected")
        fig.tight_layout()
        fig.savefig(out / "rss.png", dpi=100)
    except ImportError:
        pass
    fill = ", ".join(f"{k} min {v}" for k, v in doc["spool_mib_over_time"].items())
    lines = [f"# soak: {minutes:.1f} min, {len(devices)} sensors, {RATE} Hz x {CHANNELS} ch, {os.cpu_count()} cores "
             f"(load average {doc['load1_mean']})" + (f"; a leak of {args.leak:g} MB/min injected (self-test)"
                                                      if args.leak > 0 else ""), "",
             "warm-up: " + "; ".join(events + [f"not yet: {m}" for m in missing]) + "; the status page's score history "
             + (f"full at minute {warm['history_full_s'] / 60:.1f}" if warm["steady_s"] is not None else
                f"not yet full (at minute {warm['history_full_s'] / 60:.1f})")
             + ("" if start is None else f"; warm-up but the history ended at minute {start / 60:.1f} (the last of these + {SETTLE_S:g} s)"
                if memory["mode"] == "not judged" else
                f"; memory judged from minute {start / 60:.1f} ({memory['mode']}: {SETTLE_S:g} s after the last of "
                f"{'these' if memory['mode'] == 'steady' else 'these but the history'})"),
             "",
             memory["text"], "",
             f"agent RSS {rss[0]:.1f} MB at start, {doc['rss_mb_end']:.1f} MB at the end (max {doc['rss_mb_max']:.1f}); "
             f"spool MiB over time: {fill}; at the end {uploads.get('spool_bytes', 0) / 2**20:.1f} MiB, evicted "
             f"{uploads.get('spool_evicted', 0)}, sent {uploads.get('sent', 0)}; uploads "
             f"{'flow' if uploads_ok else 'BROKEN (kept windows not spooled, or nothing sent)'}; CPU "
             f"{doc['agent_cpu_pct_of_one_core']} % of one core; exit {rc}, final state {stopped.get('state')}", "",
             "| sensor | produced | in | missing | tail | scored | invalid | discarded | pending | in = sum | windows "
             "| alerts | uploads kept / spooled | p50 / p99 ms |", "|" + "---|" * 14]
    for device, r in sensors.items():
        lines.append(f"| {device} | {r['produced']} | {r['samples_in']} | {r['samples_missing']} | "
                     f"{r['tail_not_arrived']} | {r['samples_scored']} | {r['samples_invalid']} | "
                     f"{r['samples_discarded']} | {r['samples_pending']} | {'yes' if r['identity_in'] else 'NO'} | "
                     f"{r['windows_scored']} | {r['alerts']} | {r['uploads_kept']} / {r['uploads_offered']} | "
                     f"{r['inference_ms_p50']} / {r['inference_ms_p99']} |")
    lines += ["", "missing samples = dropped by the simulator + its link outages + frames x 256 refused (CRC, bad "
              "payload) or dropped (queue) + what a pty buffer held at a link drop:", ""]
    lines += [f"- {device}: missing {r['samples_missing']} = {r['missing_explained']} counted + "
              f"{r['missing_in_link_drops']} in link drops; " + ", ".join(f"{k} {v}" for k, v in r["why_missing"].items())
              for device, r in sensors.items()]
    lines += ["", f"verdict: {verdict}" + (f" ({memory['text']})" if verdict == "NOT JUDGED" else "")]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"OK": 0, "FAILED": 1}.get(verdict, 2)


if __name__ == "__main__":
    sys.exit(main())
