"""Benchmark: how many sensors one core of the gateway sustains, every window scored, nothing dropped.

For each case (25.6 kHz x 2 channels, FEMTO-like; 20 kHz x 4 channels, IMS-like; firmware_sim's bearing model) a
features-mode bundle is trained as in ``bench_agent.py`` (blocks of 1024 samples, windows of 8 blocks, hop 2; the
default LSTM autoencoder, int8), then for N = 1, 2, 4, 8, 16, 24, 32, ... until the agent fails:

* a feeder process (pinned to the other cores) opens N real pseudo-terminals and streams a healthy bearing signal
  into each in real time: binary int16 frames of 256 samples, paced by the sensor clock, the N sensors' frames
  staggered over each frame period;
* one real ``edge-agent run`` process, pinned to one core (``os.sched_setaffinity``), serves a gateway config with N
  ``[[sensors]]`` (one serial source each, all with the same bundle);
* measured over ``--seconds`` of streaming: the agent's CPU % of its core (``/proc/<pid>/stat``), frames dropped
  anywhere (pty overflow at the feeder, the agent's queues, CRC errors, sequence gaps), windows scored against
  those the samples sent make, the per-window scoring latency p50 (median over sensors) / p99 (worst sensor) from
  the status, the largest queue backlog seen (in ms of signal) and the RSS.

N is sustained when nothing was dropped, every window was scored (after at most ``DRAIN_S`` s), the per-window
p99 is under 5 ms, the agent's queues never held more than 1 s of signal, and the feeder streamed in real time
(an agent whose readers fall behind fills the ptys, which holds the feeder back: "streamed in real time"). The sweep of a case stops at the first N that is not: the knee lies between the last two rows.

    python bench/bench_sensors.py [--cases femto,ims] [--sensors 1,2,4,8,16,24,32,48,64] [--seconds 20]
                                  [--core N] [--model lstm|conv1d] [--bundle DIR] [--out runs/bench_sensors.md]

The machine may be shared: the agent's CPU % is its own, but its latency and backlog feel whatever else runs on its
core. ``python bench/bench_sensors.py feed ...`` is the feeder (started by the benchmark itself).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.contract.binary import encode_frame, int16_scale  # noqa: E402
from edge_agent.contract.bundle import Bundle  # noqa: E402

CASES = {"femto": (25600.0, 2), "ims": (20000.0, 4)}
FRAME = 256
LOOP_S = 4.0  # seconds of signal each feeder loops over
DRAIN_S = 5.0  # the agent may finish the windows of the last frames this long after the feeder stopped
P99_LIMIT_MS = 5.0
BACKLOG_LIMIT_MS = 1000.0  # frames queued in the agent, in ms of signal: beyond this the windows fall behind
REALTIME = 0.99  # the feeder must have streamed at this share of the sensor rate (a full pty holds it back)
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------- the feeder process
def feed(args: argparse.Namespace) -> None:
    """N ptys streaming one case's healthy bearing signal in real time (the feeder process: stdin/stdout protocol)."""
    from firmware_sim import signals
    from firmware_sim.link import PtyLink

    rate, _ = CASES[args.case]
    frame = args.frame
    x = signals.generate(signals.make_source("bearing", state="healthy", preset=args.case, seed=11), int(rate * LOOP_S))
    scale = int16_scale(signals.PRESETS[args.case].full_scale)
    tmp = Path(args.dir)
    links = [PtyLink(tmp / f"tty{i}", write_timeout=0.5) for i in range(args.n)]  # a 20 KB pty: ride out stalls
    print(json.dumps({"ports": [lk.path for lk in links]}), flush=True)
    command = sys.stdin.readline().split()  # "go SECONDS"
    seconds = float(command[1])
    frames = int(seconds * rate // frame)
    period = frame / rate
    n = len(links)
    offsets = [(i * 7919 * frame) % (len(x) - frame) // frame * frame for i in range(n)]
    sent = [0] * n
    late = 0.0
    c0, start = time.process_time(), time.monotonic()
    for k in range(frames):
        for i, lk in enumerate(links):
            due = start + (k + 1 + i / n) * period  # a frame leaves when its last sample is taken; sensors staggered
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                late = max(late, -wait)
            a = (offsets[i] + k * frame) % (len(x) - frame)
            lk.send(encode_frame(k * frame, x[a : a + frame], t0_us=round(k * period * 1e6), scale=scale))
            sent[i] += 1
    elapsed = time.monotonic() - start
    print(json.dumps({"frames_sent": sent, "samples_sent": [s * frame for s in sent],
                      "overflow_bytes": [lk.overflow_bytes for lk in links], "frame_bytes": len(encode_frame(
                          0, x[:frame], scale=scale)), "elapsed_s": elapsed, "achieved_rate_hz": frames * frame / elapsed,
                      "max_late_ms": late * 1e3, "feeder_cpu_pct": 100 * (time.process_time() - c0) / elapsed}),
          flush=True)
    sys.stdin.readline()  # "quit": the ptys stay open until the agent has drained them
    for lk in links:
        lk.close()


# ------------------------------------------------------------------------------------------- the benchmark
def bundle_for(case: str, model: str, cache: Path) -> Path:
    """A features-mode bundle for the case, trained as bench_agent.py does (cached in ``cache``)."""
    out = cache / f"{case}-{model}"
    if not (out / "bundle" / "manifest.json").exists():
        from bench.bench_agent import train

        print(f"[{case}] training a {model} bundle ...", flush=True)
        train(case, out, model)
    return out / "bundle"


def gateway_config(tmp: Path, ports: list[str], bundle: Path, rate: float) -> Path:
    sensors = "".join(f"""
[[sensors]]
device = "s{i:02d}"
[sensors.source.serial]
port = "{port}"
""" for i, port in enumerate(ports))
    cfg = tmp / "gateway.toml"
    cfg.write_text(f"""gateway = "bench"
[source]
kind = "serial"
sample_rate = {rate}
[bundle]
path = "{bundle}"
[alerts]
cooldown_s = 0
[alerts.sinks]
log = false
[status]
every_s = 1.0
file = "{tmp}/status.json"
mqtt = false
{sensors}""")
    return cfg


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _rss_mb(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return 0.0


def _status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def expected_windows(samples: int, bundle: Bundle) -> int:
    spec = bundle.spec
    steps = samples // spec.block
    return 0 if steps < spec.window else (steps - spec.window) // spec.hop + 1


def run_point(case: str, n: int, bundle_dir: Path, seconds: float, core: int, profile: Path | None = None,
              frame: int = FRAME) -> dict:
    """Stream N sensors for ``seconds`` into one pinned agent; what it sustained. With ``profile``, py-spy samples
    the agent while it streams (collapsed stacks per thread, ``profile/<case>-<n>.txt``)."""
    rate, _ = CASES[case]
    bundle = Bundle.load(bundle_dir)
    others = (set(os.sched_getaffinity(0)) - {core}) or {core}
    with tempfile.TemporaryDirectory(prefix="bench-sensors-") as tmp:
        tmp = Path(tmp)
        feeder = subprocess.Popen(
            [sys.executable, __file__, "feed", "--case", case, "--n", str(n), "--dir", str(tmp), "--frame", str(frame)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.sched_setaffinity(0, others),
        )
        agent = None
        try:
            ports = json.loads(feeder.stdout.readline())["ports"]
            cfg = gateway_config(tmp, ports, bundle_dir, rate)
            agent = subprocess.Popen([str(BIN / "edge-agent"), "run", "--config", str(cfg)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: os.sched_setaffinity(0, {core}))
            status_file = tmp / "status.json"
            deadline = time.monotonic() + 120
            while _status(status_file).get("sensors_total") != n:
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"agent did not start: {agent.stderr.read()[-2000:] if agent.poll() is not None else ''}")
                time.sleep(0.1)
            time.sleep(1.0)  # the serial readers open their ports
            feeder.stdin.write(f"go {seconds}\n")
            feeder.stdin.flush()
            t_go = time.monotonic()
            warm = min(2.0, seconds / 4)
            time.sleep(warm)
            ticks0, t0 = _cpu_ticks(agent.pid), time.monotonic()
            spy = None
            if profile is not None:
                profile.mkdir(parents=True, exist_ok=True)
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(agent.pid), "--format", "raw", "--threads", "--gil",
                                        "-d", str(int(seconds - warm - 1)), "-o", str(profile / f"{case}-{n}.txt")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rss = backlog = 0.0
            while feeder.poll() is None and time.monotonic() - t_go < seconds:
                time.sleep(0.25)
                rss = max(rss, _rss_mb(agent.pid))
                queued = [d.get("queued_frames", 0) for d in _status(status_file).get("sensors", {}).values()]
                backlog = max(backlog, max(queued, default=0) * frame / rate * 1e3)
            report = json.loads(feeder.stdout.readline())
            if spy is not None:
                spy.wait(30)
            cpu_pct = 100 * (_cpu_ticks(agent.pid) - ticks0) / CLK_TCK / (time.monotonic() - t0)
            sent = report["samples_sent"]
            deadline = time.monotonic() + DRAIN_S
            while time.monotonic() < deadline:
                sensors = _status(status_file).get("sensors", {})
                if len(sensors) == n and all(sensors[f"s{i:02d}"].get("samples_in", 0) >= sent[i] for i in range(n)):
                    time.sleep(1.1)  # one more status period: the windows of the last frames
                    break
                time.sleep(0.2)
            agent.send_signal(signal.SIGTERM)
            out, err = agent.communicate(timeout=60)
            feeder.stdin.write("quit\n")
            feeder.stdin.flush()
            feeder.wait(20)
        finally:
            for p in (agent, feeder):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
        final = _status(status_file)
    stopped = next((line for line in out.splitlines() if line.startswith("edge-agent stopped: ")), None)
    if stopped is None or not final:
        raise RuntimeError(f"agent ended without its summary: {err[-2000:]}")
    sensors = final["sensors"]
    overflow_frames = sum(math.ceil(b / report["frame_bytes"]) for b in report["overflow_bytes"])
    dropped = overflow_frames + sum(d["frames_dropped"] + d["crc_errors"] + d["bad_headers"] for d in sensors.values())
    missing = sum(d["samples_missing"] for d in sensors.values())
    scored = sum(d["windows_scored"] for d in sensors.values())
    expected = sum(expected_windows(s, bundle) for s in sent)
    p50 = float(np.median([d["inference_ms_p50"] for d in sensors.values() if d["inference_ms_p50"] is not None]))
    p99 = max(d["inference_ms_p99"] or 0.0 for d in sensors.values())
    return {
        "case": case, "sensors": n, "cpu_pct": cpu_pct, "frames_dropped": dropped, "samples_missing": missing,
        "windows_scored": scored, "windows_expected": expected, "p50_ms": p50, "p99_ms": p99, "backlog_ms": backlog,
        "rss_mb": rss, "feeder": {k: report[k] for k in ("achieved_rate_hz", "max_late_ms", "feeder_cpu_pct")},
        "sustained": dropped == 0 and missing == 0 and scored == expected and p99 < P99_LIMIT_MS
        and backlog < BACKLOG_LIMIT_MS and report["achieved_rate_hz"] >= REALTIME * rate,
    }


def plot(results: list[dict], path: Path, title: str) -> None:
    """Agent CPU and per-window p99 against N, one line per case (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cpu, ax_p99) = plt.subplots(1, 2, figsize=(10, 3.8))
    for case, colour in zip(CASES, ("tab:blue", "tab:orange"), strict=True):
        rows = [r for r in results if r["case"] == case]
        if not rows:
            continue
        rate, ch = CASES[case]
        n = [r["sensors"] for r in rows]
        label = f"{rate / 1000:g} kHz x {ch}"
        ax_cpu.plot(n, [r["cpu_pct"] for r in rows], "o-", color=colour, label=label)
        ax_p99.plot(n, [r["p99_ms"] for r in rows], "o-", color=colour, label=label)
        for ax, key in ((ax_cpu, "cpu_pct"), (ax_p99, "p99_ms")):
            bad = [r for r in rows if not r["sustained"]]
            ax.plot([r["sensors"] for r in bad], [r[key] for r in bad], "x", color="red", markersize=10)
    ax_cpu.axhline(100, color="grey", lw=0.8)
    ax_p99.axhline(P99_LIMIT_MS, color="grey", lw=0.8, ls="--")
    ax_cpu.set(xlabel="sensors on one agent", ylabel="agent CPU, % of its core", xscale="log", ylim=(0, 110))
    ax_p99.set(xlabel="sensors on one agent", ylabel="per-window scoring p99 (ms)", xscale="log")
    for ax in (ax_cpu, ax_p99):
        ax.set_xticks([r["sensors"] for r in results], [str(r["sensors"]) for r in results])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.suptitle(title + " (red x: not sustained)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _row(r: dict) -> str:
    rate, ch = CASES[r["case"]]
    ok = "yes" if r["sustained"] else "**no**"
    missing = f" (+{r['samples_missing']} samples missing)" if r["samples_missing"] else ""
    realtime = 100 * r["feeder"]["achieved_rate_hz"] / rate
    return (f"| {rate / 1000:g} kHz x {ch} | {r['sensors']} | {r['cpu_pct']:.0f} % | {r['frames_dropped']}{missing} | "
            f"{r['windows_scored']} / {r['windows_expected']} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms | "
            f"{r['backlog_ms']:.0f} ms | {realtime:.0f} % | {r['rss_mb']:.0f} MB | {ok} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "feed":
        fp = argparse.ArgumentParser()
        fp.add_argument("feed")
        fp.add_argument("--case", choices=sorted(CASES), required=True)
        fp.add_argument("--n", type=int, required=True)
        fp.add_argument("--dir", required=True)
        fp.add_argument("--frame", type=int, default=FRAME)
        feed(fp.parse_args())
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="femto,ims")
    ap.add_argument("--sensors", default="1,2,4,8,16,24,32,48,64,96,128", help="the N to sweep, in order")
    ap.add_argument("--seconds", type=float, default=20.0, help="streaming time per N")
    ap.add_argument("--core", type=int, default=max(os.sched_getaffinity(0)), help="the agent's core")
    ap.add_argument("--model", default="lstm", choices=["lstm", "conv1d"])
    ap.add_argument("--bundle", type=Path, help="use this bundle (one case) instead of training one")
    ap.add_argument("--all", action="store_true", help="keep sweeping after the first N that is not sustained")
    ap.add_argument("--frame-samples", type=int, default=FRAME, help="samples per frame")
    ap.add_argument("--profile", type=Path, help="sample the agent with py-spy (on PATH) into this folder")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_sensors.md")
    args = ap.parse_args()
    results = []
    header = ["| sensor | N | agent CPU (its core) | frames dropped | windows scored / expected | per window p50 / p99 "
              "| largest backlog | streamed in real time | RSS | sustained |", "|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(header), flush=True)
    for case in args.cases.split(","):
        bundle = args.bundle or bundle_for(case, args.model, ROOT / "runs" / "bench_sensors")
        for n in (int(v) for v in args.sensors.split(",")):
            r = run_point(case, n, bundle, args.seconds, args.core, args.profile, args.frame_samples)
            results.append(r)
            print(_row(r), f"feeder: {r['feeder']['achieved_rate_hz']:.0f} Hz, late <= {r['feeder']['max_late_ms']:.0f} ms,"
                  f" {r['feeder']['feeder_cpu_pct']:.0f} % CPU", flush=True)
            if not r["sustained"] and not args.all:
                break
    knees = []
    for case in args.cases.split(","):
        rows = [r for r in results if r["case"] == case]
        ok = [r["sensors"] for r in rows if r["sustained"]]
        bad = [r["sensors"] for r in rows if not r["sustained"]]
        rate, ch = CASES[case]
        knees.append(f"{rate / 1000:g} kHz x {ch}: sustained up to {max(ok) if ok else 0} sensors"
                     + (f", not at {min(bad)}" if bad else " (the largest N tried)"))
    cpu = next((re.sub(r"\s+", " ", line.split(":", 1)[1].strip()) for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    load = os.getloadavg()
    text = (f"Sensors per core ({cpu}, {os.cpu_count()} cores shared with other work, load average {load[0]:.1f} at "
            f"the end; agent pinned to core {args.core}; {args.seconds:g} s per N; {args.model} int8 bundle, features "
            f"mode; frames of {args.frame_samples} samples over ptys)\n\n" + "\n".join(header + [_row(r) for r in results])
            + "\n\nKnee: " + "; ".join(knees) + "\n")
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot(results, args.out.with_suffix(".png"), f"edge-agent run pinned to one core, {args.model} int8, features mode; "
         f"{os.cpu_count()}-core machine shared with other work")
    print(f"wrote {args.out} (and .json, .png)")


if __name__ == "__main__":
    main()
