"""Soak: the agent as installed, for a long time, at full rate, on several sensors with injected faults.

    python bench/soak.py [--minutes 30] [--serial 3] [--mqtt 1] [--out runs/soak]      (make soak; not in CI)

What runs (separate processes, real parts): a mosquitto on a free loopback port; one ``edge-agent run`` with
every sensor in one config (uploads on, status every 5 s); per serial sensor a ``firmware-sim run`` over a pty
(IMS bearing preset: 20 kHz x 4 channels, int16 frames of 256 samples) and per MQTT sensor one over MQTT;
every simulator injects faults (drops, corrupted bytes, garbage between frames, NaN and saturated values,
timestamp jitter, link drops on serial). Sensor 0 is healthy, sensor 1 degrades to a failure over the run,
the others are healthy.

What it checks and writes (``OUT/report.md``, ``OUT/report.json``, ``OUT/timeseries.csv``, ``OUT/rss.png``):

* memory stays flat: the agent's RSS every 10 s; its slope (MB per hour) over the second half of the run, after
  warm-up (allocator, caches, and the upload spool filling to its bound: no collector answers here, so records
  wait for receipts until the spool evicts them); the slope from minute 3 is reported too;
* counters add up, per sensor: samples produced by the simulator = samples_in + samples_missing (lost on the
  way: dropped frames, CRC errors, link drops, queue overflow) + a tail still in flight; and samples_in =
  samples_scored + samples_invalid + samples_discarded + samples_pending (every accepted sample went somewhere);
* the agent's CPU time, windows scored, alerts, uploads, and its exit status after SIGTERM (0, status "stopped").

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

from tests.broker import Broker  # noqa: E402  (the project's real-broker helper)

BIN = Path(sys.executable).parent
RATE, CHANNELS, BLOCK, FRAME = 20_000, 4, 1024, 256
SERIAL_FAULTS = ["drop=0.0005", "flip=0.0005", "garbage=0.001", "nan=0.000001", "saturate=0.0000005",
                 "jitter=300", "disconnect=0.0001"]
MQTT_FAULTS = ["drop=0.0005", "flip=0.0005", "nan=0.000001", "jitter=300"]


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


def write_config(out: Path, bundle: Path, broker: Broker, devices: list[tuple[str, str]]) -> Path:
    lines = [
        'gateway = "soak"',
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}',
        f'[status]\nevery_s = 5.0\nfile = "{out}/status.json"\nmqtt = true',
        f'[uploads]\nspool_path = "{out}/spool.sqlite"\nenabled = true\nevery_s = 10.0',
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--serial", type=int, default=3, help="sensors over ptys")
    ap.add_argument("--mqtt", type=int, default=1, help="sensors over MQTT")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "soak")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    duration = args.minutes * 60
    print(f"soak: training the bundle (cached in {out})", flush=True)
    bundle = train_bundle(out)
    for stale in ("status.json", "spool.sqlite", "alerts.jsonl", "agent.log"):
        (out / stale).unlink(missing_ok=True)
    devices = [(f"soak-s{i}", "serial") for i in range(args.serial)] + [(f"soak-m{i}", "mqtt") for i in range(args.mqtt)]
    broker = Broker(Path(tempfile.mkdtemp(prefix="soak-mosquitto-")))
    broker.start()
    cfg = write_config(out, bundle, broker, devices)
    agent_log = open(out / "agent.log", "w")  # noqa: SIM115 (kept open for the agent's lifetime)
    agent = subprocess.Popen([str(BIN / "edge-agent"), "run", "--config", str(cfg)], stdout=agent_log,
                             stderr=subprocess.STDOUT, cwd=out)
    sims: dict[str, subprocess.Popen] = {}
    t0 = time.monotonic()
    rows: list[dict] = []
    try:
        deadline = time.monotonic() + 60
        while not read_status(out / "status.json") and time.monotonic() < deadline:
            time.sleep(0.5)  # bounded wait for the agent's first status
        for i, (device, kind) in enumerate(devices):
            state = ["--state", "degrading", "--life", str(duration)] if i == 1 else ["--state", "healthy"]
            link = (["--link", "serial", "--link-path", str(out / f"tty-{device}")] +
                    [a for f in SERIAL_FAULTS for a in ("--fault", f)]) if kind == "serial" else \
                   (["--link", "mqtt", "--broker", f"{broker.host}:{broker.port}", "--device", device] +
                    [a for f in MQTT_FAULTS for a in ("--fault", f)])
            sims[device] = subprocess.Popen(
                [str(BIN / "firmware-sim"), "run", "--signal", "bearing", "--preset", "ims", *state,
                 "--duration", str(duration), "--frame-samples", str(FRAME), "--seed", str(10 + i), "--json-summary", *link],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=out)
        print(f"soak: {len(devices)} sensors at {RATE} Hz x {CHANNELS} for {args.minutes:g} min; agent pid {agent.pid}",
              flush=True)
        next_sample = time.monotonic()
        while any(p.poll() is None for p in sims.values()):
            if agent.poll() is not None:
                raise SystemExit(f"soak: the agent exited with {agent.returncode}: see {out}/agent.log")
            now = time.monotonic()
            if now >= next_sample:
                doc = read_status(out / "status.json")
                rows.append({"t_s": round(now - t0, 1), "rss_mb": round(rss_mb(agent.pid), 2),
                             "cpu_s": round(cpu_s(agent.pid), 2), "samples_in": doc.get("samples_in", 0),
                             "windows_scored": doc.get("windows_scored", 0), "load1": os.getloadavg()[0]})
                if len(rows) % 6 == 1:
                    r = rows[-1]
                    print(f"soak: {r['t_s'] / 60:5.1f} min  rss {r['rss_mb']:.1f} MB  cpu {r['cpu_s']:.0f} s  "
                          f"windows {r['windows_scored']}  load {r['load1']:.1f}", flush=True)
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
        rows.append({"t_s": round(time.monotonic() - t0, 1), "rss_mb": round(rss_mb(agent.pid), 2),
                     "cpu_s": round(cpu_s(agent.pid), 2), "samples_in": final.get("samples_in", 0),
                     "windows_scored": final.get("windows_scored", 0), "load1": os.getloadavg()[0]})
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
    return report(out, args, devices, rows, summaries, final, stopped, rc)


def report(out: Path, args, devices, rows, summaries, final, stopped, rc) -> int:
    with open(out / "timeseries.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    t = np.array([r["t_s"] for r in rows])
    rss = np.array([r["rss_mb"] for r in rows])
    def slope_from(start_s: float) -> float:
        part = t >= start_s
        return float(np.polyfit(t[part] / 3600, rss[part], 1)[0]) if part.sum() >= 3 else float("nan")

    steady = t >= min(180.0, t[-1] / 3)
    slope_after_3min = slope_from(min(180.0, t[-1] / 3))
    slope = slope_from(t[-1] / 2)
    sensors, ok = {}, rc == 0 and stopped.get("state") == "stopped"
    for device, _ in devices:
        d, s = final["sensors"][device], summaries.get(device, {})
        produced = int(s.get("samples", 0))
        arrived = d["samples_in"] + d["samples_missing"]
        accounted = d["samples_scored"] + d["samples_invalid"] + d["samples_discarded"] + d["samples_pending"]
        tail = produced - arrived
        counted = (s.get("dropped_samples", 0) + s.get("outage_samples", 0) + d["frames_dropped"] * FRAME
                   + (d.get("crc_errors", 0) + d.get("bad_payloads", 0)) * FRAME)
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
        }
        # what nobody can count: frames in a pty's buffer when the simulator closes it (at a link drop, and at
        # the end of the run: the tail), or in flight; at most about a pty buffer's worth each time
        ok &= (row["identity_in"] and 0 <= tail <= RATE // 4 and d["internal_errors"] == 0
               and 0 <= row["missing_in_link_drops"] <= (s.get("disconnects", 0) + 1) * RATE // 4)
        sensors[device] = row
    minutes = t[-1] / 60
    doc = {
        "minutes": round(minutes, 1), "sensors": len(devices), "rate_hz": RATE, "channels": CHANNELS,
        "cores": os.cpu_count(), "load1_mean": round(float(np.mean([r["load1"] for r in rows])), 2),
        "rss_mb_start": float(rss[steady][0]) if steady.any() else None, "rss_mb_end": float(rss[-1]),
        "rss_mb_max": float(rss.max()), "rss_slope_mb_per_h": round(slope, 2),
        "rss_slope_from_3min_mb_per_h": round(slope_after_3min, 2),
        "agent_cpu_pct_of_one_core": round(100 * rows[-1]["cpu_s"] / t[-1], 1),
        "exit_code": rc, "final_state": stopped.get("state"), "uploads": final.get("uploads"),
        "mqtt": final.get("mqtt"), "per_sensor": sensors,
    }
    ok &= abs(slope) < 5.0  # MB per hour: flat within measurement noise
    doc["ok"] = bool(ok)
    (out / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3))
        ax.plot(t / 60, rss)
        ax.set_xlabel("minutes")
        ax.set_ylabel("agent RSS (MB)")
        ax.set_ylim(0, max(rss.max() * 1.2, 1))
        ax.set_title(f"soak: {len(devices)} sensors x {RATE // 1000} kHz x {CHANNELS} ch, faults injected")
        fig.tight_layout()
        fig.savefig(out / "rss.png", dpi=100)
    except ImportError:
        pass
    lines = [f"# soak: {minutes:.1f} min, {len(devices)} sensors, {RATE} Hz x {CHANNELS} ch, {os.cpu_count()} cores "
             f"(load average {doc['load1_mean']})", "",
             f"agent RSS {doc['rss_mb_start']:.1f} MB after warm-up, {doc['rss_mb_end']:.1f} MB at the end "
             f"(max {doc['rss_mb_max']:.1f}; slope over the second half {slope:+.2f} MB/h, from minute 3 "
             f"{slope_after_3min:+.2f} MB/h); spool {(final.get('uploads') or {}).get('spool_bytes', 0) / 2**20:.1f} MiB, "
             f"evicted {(final.get('uploads') or {}).get('spool_evicted', 0)}; CPU {doc['agent_cpu_pct_of_one_core']} % of one "
             f"core; exit {rc}, final state {stopped.get('state')}", "",
             "| sensor | produced | in | missing | tail | scored | invalid | discarded | pending | in = sum | windows "
             "| alerts | p50 / p99 ms |", "|" + "---|" * 13]
    for device, r in sensors.items():
        lines.append(f"| {device} | {r['produced']} | {r['samples_in']} | {r['samples_missing']} | "
                     f"{r['tail_not_arrived']} | {r['samples_scored']} | {r['samples_invalid']} | "
                     f"{r['samples_discarded']} | {r['samples_pending']} | {'yes' if r['identity_in'] else 'NO'} | "
                     f"{r['windows_scored']} | {r['alerts']} | {r['inference_ms_p50']} / {r['inference_ms_p99']} |")
    lines += ["", "missing samples = dropped by the simulator + its link outages + frames x 256 refused (CRC, bad "
              "payload) or dropped (queue) + what a pty buffer held at a link drop:", ""]
    lines += [f"- {device}: missing {r['samples_missing']} = {r['missing_explained']} counted + "
              f"{r['missing_in_link_drops']} in link drops; " + ", ".join(f"{k} {v}" for k, v in r["why_missing"].items())
              for device, r in sensors.items()]
    lines += ["", f"verdict: {'OK' if ok else 'FAILED'}"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
