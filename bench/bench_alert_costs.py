"""Benchmark: what a sensor's condition and its trend cost every window, and an alert's explanation and bearing
diagnosis cost per alert, on one core of the gateway (issue 17).

What the agent runs (``edge_agent/sensor.py`` ``_judge_condition``, ``edge_agent/pipeline.py`` ``_judge``):

* every scored window: the raw window's copy (``Windower.window_samples``), ``SensorCondition.on_window``
  (velocity RMS through ``severity.SeverityTracker``: one FFT per window; with ``[bearing]`` set, the envelope
  baseline learner on the first 30 healthy windows), ``TrendStore.add`` (the minute's aggregate in memory; the
  first window of a new minute writes the finished minute's row, one sqlite transaction);
* every status tick: ``TrendStore.flush`` (the finished minutes of every sensor, one transaction);
* every raised or escalated alert: ``Pipeline.explain_last`` (``contract/explain.py`` from the scoring buffers) and
  ``SensorCondition.diagnose`` (``diagnosis.diagnose``, envelope analysis, against the learned baseline if any).

Per case (25.6 kHz x 2 channels, FEMTO-like; 20 kHz x 4, IMS-like) the features-mode bundle of
``bench_sensors.py`` (LSTM, int8, windows of 8 blocks of 1024 samples, hop 2 blocks; trained once and cached in
``runs/bench_sensors``) scores ``--seconds`` of firmware_sim's healthy bearing through a real ``Pipeline``; after
each scored window the calls above are timed in the order the agent makes them, for three sensor configs: no
units (the bench bundles' ``signal.units`` is empty: velocity is refused, what ``bench_sensors.py`` measures),
``units = "g"``, and ``units = "g"`` with the simulator's bearing as ``[bearing]``. ``diagnose`` is timed on the
bundle's own window (what an alert runs) and on 1 s windows (``bench_diagnosis.py``'s: an inner-race fault at
severity 0.1), without and with a baseline learned on 30 healthy windows as the gateway learns it. The trend's
minute writes are timed on a tmp file, empty and holding a week of minute rows of 16 sensors (the most it keeps
before rolling up), with the flush of 16 sensors' finished minutes.

The process is pinned to one core with ``os.sched_setaffinity`` where the platform has it (after the bundles
are trained). On a shared machine the p90s feel the other work; the medians are the robust figures. The share
of a core is the mean × the calls per second: velocity measures one overlapping window in four (hop 2 blocks of
8), so its median is the cheap call that measures nothing.

    python bench/bench_alert_costs.py [--cases femto,ims] [--seconds 30] [--repeat 100] [--core N]
                                      [--out runs/bench_alert_costs.md]

``python bench/bench_alert_costs.py sensors [--units g] [--bearing] [bench_sensors.py's options]`` runs the
sensors-per-core benchmark (``bench_sensors.py``) with ``[severity] units`` and the simulator's bearing as
``[bearing]`` in its gateway config: ``bench_sensors.py`` sets neither, so there velocity is refused (the bundles'
units are unknown) and no baseline is learned.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_diagnosis import at_severity, geometry  # noqa: E402
from bench.bench_sensors import CASES, FRAME, bundle_for  # noqa: E402
from edge_agent.alerts import AlertPolicy  # noqa: E402
from edge_agent.condition import BASELINE_WINDOWS, SensorCondition  # noqa: E402
from edge_agent.contract.binary import FrameDecoder, encode_frame, int16_scale  # noqa: E402
from edge_agent.contract.bundle import Bundle  # noqa: E402
from edge_agent.diagnosis import AVERAGE_WINDOWS, BaselineLearner, diagnose  # noqa: E402
from edge_agent.pipeline import Pipeline  # noqa: E402
from edge_agent.severity import SeverityPolicy  # noqa: E402
from edge_agent.trend import TrendStore  # noqa: E402
from firmware_sim import signals  # noqa: E402

T0 = 1_800_000_000.0  # a whole hour, unix seconds: the trend's clock in this benchmark
SENSORS = 16  # the gateway's target per core
LEARNING = " (baseline not learned yet)"
WEEK = "a week of 16 sensors' rows"


class Timings:
    """µs per call, by name."""

    def __init__(self) -> None:
        self.us: dict[str, list[float]] = {}

    def call(self, name: str, fn: Callable, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.us.setdefault(name, []).append((time.perf_counter() - t0) * 1e6)
        return out

    def summary(self, name: str) -> dict:
        v = np.asarray(self.us.get(name, []))
        if not len(v):
            return {"median_us": None, "mean_us": None, "p90_us": None, "calls": 0}
        return {"median_us": float(np.median(v)), "mean_us": float(np.mean(v)), "p90_us": float(np.percentile(v, 90)),
                "calls": len(v)}


def pin(core: int) -> str:
    """Pin this process to ``core``; says what was done."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no os.sched_setaffinity on this platform)"
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core} (os.sched_setaffinity)"


def per_window(case: str, bundle_dir: Path, seconds: float, keep: int = 40) -> tuple[Timings, dict]:
    """Stream ``seconds`` of the healthy bearing through a Pipeline and time, after each scored window, what the
    agent runs then; then ``diagnose`` on the last ``keep`` raw windows (n, C) float32."""
    rate, ch = CASES[case]
    bundle = Bundle.load(bundle_dir)
    geo = geometry(case)
    conditions = {"no units": SensorCondition("s00", None, None),
                  "units g": SensorCondition("s00", SeverityPolicy(units="g"), None),
                  "units g + bearing": SensorCondition("s00", SeverityPolicy(units="g"), geo)}
    timings = Timings()
    kept: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="bench-alert-costs-") as tmp:
        trend = TrendStore(Path(tmp) / "trend.sqlite", clock=lambda: T0).open()
        pipe = Pipeline(bundle, device="s00", threshold=bundle.threshold.value, policy=AlertPolicy(), sample_rate=rate)
        for c in conditions.values():
            c.serve(bundle, pipe.windower.sample_rate)
        hop_s = bundle.spec.hop_samples / pipe.windower.sample_rate

        def on_window(w, result, event) -> None:
            if w is None or w.bridged:
                return
            samples = timings.call("window copy", pipe.windower.window_samples)
            timings.call("explain_last", pipe.explain_last)
            order = list(conditions.items())
            k = pipe.counters.windows_scored % len(order)  # each config first as often: none gains the warm caches
            for name, c in order[k:] + order[:k]:
                learning = c.geometry is not None and c.baseline is None
                timings.call(f"on_window, {name}" + (LEARNING if learning else ""), c.on_window, samples, hop_s,
                             healthy=pipe.state == "normal")
            sev = conditions["units g"].severity
            rms = [v for k, v in result.stats.items() if k.startswith("rms_")]
            timings.call("trend.add", trend.add, "s00", T0 + result.time, result.score, result.threshold, pipe.state,
                         rms=max(rms) if rms else None, velocity=sev.max_mm_s, zone=sev.zone)
            kept.append(samples)
            del kept[:-keep]

        pipe.on_window = on_window
        x = signals.generate(signals.make_source("bearing", state="healthy", preset=case, seed=3), int(rate * seconds))
        scale = int16_scale(signals.PRESETS[case].full_scale)
        decoder = FrameDecoder()
        stream = b"".join(encode_frame(a, x[a : a + FRAME], scale=scale) for a in range(0, len(x) - FRAME + 1, FRAME))
        for i in range(0, len(stream), 65536):  # bulk reads, as the serial source does
            for frame in decoder.feed(stream[i : i + 65536]):
                pipe.push(frame)
        trend.close()
    bearing = conditions["units g + bearing"]
    no_baseline = SensorCondition("s00", SeverityPolicy(units="g"), geo)
    no_baseline.serve(bundle, rate)
    verdicts = {}
    n = bundle.spec.window_samples
    for name, c in (("without baseline", no_baseline), ("with baseline", bearing)):
        if c.baseline is None and name == "with baseline":
            continue  # not learned: the window is too short for this bearing (said in the facts)
        for w in kept:
            rep = timings.call(f"diagnose, bundle window {n} × {ch}, {name}", c.diagnose, w)
        verdicts[name] = rep["verdict"]
    if bearing.baseline is not None:  # what a raised alert runs now: up to AVERAGE_WINDOWS windows that do not overlap
        apart = kept[::-max(1, round(n / bundle.spec.hop_samples))][:AVERAGE_WINDOWS]
        for _ in kept:
            rep = timings.call(f"diagnose, bundle windows averaged ({len(apart)} × {n} × {ch}), with baseline", diagnose,
                               np.stack(apart), rate, geo, bearing.baseline)
        verdicts[f"{len(apart)} windows averaged, with baseline"] = rep.verdict
    facts = {"windows_scored": pipe.counters.windows_scored, "window_samples": n,
             "windows_per_s": rate / bundle.spec.hop_samples, "hop_s": hop_s, "bundle_window_verdicts": verdicts,
             "baseline_learned": bearing.baseline is not None,
             "bundle_window_note": (bearing.diagnose(kept[-1]) or {}).get("summary", "")}
    return timings, facts


def diagnosis_1s(case: str, repeat: int, timings: Timings) -> dict:
    """``diagnose`` on a 1 s window (an inner-race fault at severity 0.1), without and with a baseline learned from
    30 healthy 1 s windows by ``BaselineLearner`` (the gateway's learner); the learner's cost per window."""
    rate, _ = CASES[case]
    geo = geometry(case)
    healthy = at_severity(case, 0.0, "healthy", seed=900, seconds=BASELINE_WINDOWS)
    n = int(rate)
    learner = BaselineLearner(rate, geo)
    for i in range(BASELINE_WINDOWS):
        timings.call(f"baseline learner.add, 1 s window {n} × {CASES[case][1]}", learner.add, healthy[i * n : (i + 1) * n])
    base = learner.baseline()
    x = at_severity(case, 0.1, "inner", seed=1)
    verdicts = {}
    for name, b in (("without baseline", None), ("with baseline", base)):
        diagnose(x, rate, geo, b)  # the plan's cache, as after a sensor's first alert
        for _ in range(repeat):
            rep = timings.call(f"diagnose, 1 s window {n} × {CASES[case][1]}, {name}", diagnose, x, rate, geo, b)
        verdicts[name] = rep.verdict
    return {"shape_1s": list(x.shape), "verdicts_1s": verdicts}


def trend_minutes(reps: int, week: bool, timings: Timings) -> dict:
    """The trend's writes on a tmp file: ``add`` of a window that starts a new minute (writes the finished
    minute's row), and ``flush`` of 16 sensors' finished minutes (one transaction of 16 rows). ``week``: the file
    first holds a week of minute rows of 16 sensors (the most it keeps before rolling up into hours)."""
    label = WEEK if week else "empty file"
    now = [T0]
    with tempfile.TemporaryDirectory(prefix="bench-alert-costs-") as tmp:
        path = Path(tmp) / "trend.sqlite"
        trend = TrendStore(path, clock=lambda: now[0]).open()
        try:
            if week:
                first = T0 - 7 * 86400 + 3600  # newer than the roll-up's cutoff all through the run
                rows = [(f"s{d:02d}", first + 60 * k, 480, 0.02, 0.01, 0.05, 0.3, 1.2, "A", "normal", 0, 0)
                        for d in range(SENSORS) for k in range(int((T0 - first) // 60))]
                db = sqlite3.connect(path)
                with db:
                    db.executemany(f"INSERT INTO minutes VALUES ({','.join('?' * 12)})", rows)
                db.close()
            for k in range(reps):  # one sensor: its first window of the next minute writes the last one's row
                trend.add("s00", T0 + 60 * k + 1, 0.01, 0.05, "normal", rms=0.3, velocity=1.2, zone="A")
                now[0] = T0 + 60 * k + 61
                timings.call(f"trend.add at a new minute (writes 1 row), {label}", trend.add, "s00",
                             T0 + 60 * (k + 1) + 1, 0.01, 0.05, "normal", rms=0.3, velocity=1.2, zone="A")
            start = T0 + 60 * (reps + 2)
            for k in range(reps):  # 16 sensors: the status tick writes their finished minutes
                for d in range(SENSORS):
                    trend.add(f"s{d:02d}", start + 60 * k + 1, 0.01, 0.05, "normal", rms=0.3, velocity=1.2, zone="A")
                now[0] = start + 60 * k + 61
                timings.call(f"trend.flush, {SENSORS} sensors' finished minutes, {label}", trend.flush)
            written, size = trend.counters.rows_written, trend.counters.bytes
        finally:
            trend.close()
    return {"rows_written": written, "bytes": size}


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _when(name: str, windows_per_s: float | None) -> tuple[str, float | None]:
    """When the agent makes the call, and how often (per second and sensor; None: not a steady rate)."""
    if name.startswith("trend.flush"):
        return f"per minute, all {SENSORS} sensors", 1 / 60 / SENSORS
    if name.startswith("trend.add at a new minute"):
        return "per minute", 1 / 60
    if name.startswith("diagnose") or name == "explain_last":
        return "per alert", None
    if name.startswith("baseline learner"):
        return f"first {BASELINE_WINDOWS} healthy windows", None
    if name.endswith(LEARNING):
        return f"until the baseline is learned ({BASELINE_WINDOWS} healthy windows)", None
    return "per window", windows_per_s


ORDER = ("window copy", "on_window, no units", "on_window, units g", "on_window, units g + bearing (", "on_window, units g "
         "+ bearing", "trend.add", "explain_last", "diagnose, bundle", "baseline learner", "diagnose, 1 s",
         "trend.add at a new minute (writes 1 row), empty", "trend.flush, 16 sensors' finished minutes, empty",
         "trend.add at", "trend.flush")


def _rows(label: str, timings: dict, windows_per_s: float | None) -> list[str]:
    rows = []
    for name, s in sorted(timings.items(), key=lambda kv: next(
            (i for i, prefix in enumerate(ORDER) if kv[0].startswith(prefix)), len(ORDER))):
        when, rate = _when(name, windows_per_s)
        share = "–" if rate is None or s["mean_us"] is None else f"{s['mean_us'] * rate / 1e4:.3f} %"
        rows.append(f"| {label} | {name} | {when} | {_fmt(s['median_us'])} | {_fmt(s['mean_us'])} | "
                    f"{_fmt(s['p90_us'])} | {s['calls']} | {share} |")
    return rows


def report(results: dict, trend: dict) -> tuple[str, str]:
    """The markdown table of every call, and per sensor config what every window costs in all."""
    rows = ["| sensor | call | when | median µs | mean µs | p90 µs | calls | share of a core per sensor (mean) |",
            "|---|---|---|---|---|---|---|---|"]
    sums = []
    minute = trend[f"trend.add at a new minute (writes 1 row), {WEEK}"]["median_us"]
    for case, r in results.items():
        rate, ch = CASES[case]
        label = f"{rate / 1000:g} kHz × {ch}"
        t, wps = r["timings"], r["facts"]["windows_per_s"]
        rows += _rows(label, t, wps)
        for cfg in ("no units", "units g", "units g + bearing"):
            on_window = t.get(f"on_window, {cfg}") or t[f"on_window, {cfg}{LEARNING}"]
            us = t["window copy"]["mean_us"] + on_window["mean_us"] + t["trend.add"]["mean_us"]
            share = (us * wps + minute / 60) / 1e4
            sums.append(f"{label}, {cfg}: {us:.0f} µs per window × {wps:.2f} windows/s + a trend row a minute "
                        f"({minute:.0f} µs on a week's file) = {share:.3f} % of a core per sensor, "
                        f"{SENSORS * share:.2f} % for {SENSORS} sensors")
    rows += _rows("any", trend, None)
    return "\n".join(rows), "\n".join(f"* {s}" for s in sums)


def sensors_per_core(argv: list[str]) -> None:
    """``bench_sensors.py`` with ``[severity] units`` and ``[bearing]`` (the simulator's bearing) in its gateway
    config, for every sensor: its own config leaves both out, so velocity is refused and nothing is diagnosed."""
    import bench.bench_sensors as bs

    ap = argparse.ArgumentParser(prog="bench_alert_costs.py sensors", description=sensors_per_core.__doc__)
    ap.add_argument("--units", choices=["g", "m/s2"], help="[severity] units (none: the bundle's, empty here)")
    ap.add_argument("--bearing", action="store_true", help="[bearing]: the simulator's bearing of the case")
    args, rest = ap.parse_known_args(argv)
    plain = bs.gateway_config

    def gateway_config(tmp: Path, ports: list[str], bundle: Path, rate: float) -> Path:
        cfg = plain(tmp, ports, bundle, rate)
        extra = f'[severity]\nunits = "{args.units}"\n' if args.units else ""
        if args.bearing:
            case = next(c for c, (r, _) in CASES.items() if r == rate)
            geo = geometry(case)
            extra += (f"[bearing]\nshaft_rpm = {geo.shaft_rpm}\nrolling_elements = {geo.rolling_elements}\n"
                      f"ball_diameter = {geo.ball_diameter}\npitch_diameter = {geo.pitch_diameter}\n"
                      f"contact_angle_deg = {geo.contact_angle_deg}\n")
        text = cfg.read_text()
        at = text.index("\n[[sensors]]")  # root tables before the sensors' array
        cfg.write_text(text[:at] + "\n" + extra + text[at:])
        return cfg

    bs.gateway_config = gateway_config
    sys.argv = [bs.__file__, *rest]
    bs.main()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "sensors":
        sensors_per_core(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="femto,ims")
    ap.add_argument("--seconds", type=float, default=30.0, help="healthy signal streamed per case (the bearing "
                    f"baseline needs {BASELINE_WINDOWS} windows: about 3 s)")
    ap.add_argument("--repeat", type=int, default=100, help="calls of diagnose on 1 s windows, of the trend writes")
    ap.add_argument("--core", type=int, default=max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_alert_costs.md")
    args = ap.parse_args()
    cases = args.cases.split(",")
    bundles = {case: bundle_for(case, "lstm", ROOT / "runs" / "bench_sensors") for case in cases}  # before pinning
    pinned = pin(args.core)
    print(f"[bench_alert_costs] {pinned}", flush=True)
    results = {}
    for case in cases:
        print(f"[{case}] {args.seconds:g} s of healthy signal through the pipeline ...", flush=True)
        timings, facts = per_window(case, bundles[case], args.seconds)
        facts |= diagnosis_1s(case, args.repeat, timings)
        results[case] = {"timings": {name: timings.summary(name) for name in timings.us}, "facts": facts}
    print("[trend] minute rows on a tmp file ...", flush=True)
    tt = Timings()
    trend_facts = {"empty": trend_minutes(args.repeat, False, tt), "week": trend_minutes(args.repeat, True, tt)}
    trend = {name: tt.summary(name) for name in tt.us}
    cpu = platform.machine()
    if Path("/proc/cpuinfo").exists():
        cpu = next((re.sub(r"\s+", " ", line.split(":", 1)[1].strip())
                    for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), cpu)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    rows, sums = report(results, trend)
    facts_lines = []
    for case, r in results.items():
        f = r["facts"]
        learned = "learned" if f["baseline_learned"] else "**not learned** (the window is too short for the bearing)"
        facts_lines.append(f"* {case}: {f['windows_scored']} windows scored ({f['windows_per_s']:.2f} a second); "
                           f"bearing baseline on the bundle's window {learned}; diagnose on it: "
                           f"{f['bundle_window_verdicts']} ({f['bundle_window_note'][:200]}); on the 1 s window "
                           f"{f['shape_1s']}: {f['verdicts_1s']}")
    facts_lines.append(f"* trend file after the minute writes: empty start {trend_facts['empty']['bytes'] / 1e6:.2f} MB,"
                       f" a week of {SENSORS} sensors' minute rows {trend_facts['week']['bytes'] / 1e6:.1f} MB")
    text = (f"Alert explanation, bearing diagnosis, velocity and the trend: cost ({cpu}, {os.cpu_count()} cores "
            f"shared with other work, load average {load:.1f} at the end; {pinned}; {args.seconds:g} s of healthy "
            f"signal per case; the bench_sensors LSTM int8 bundles, features mode)\n\n{rows}\n\n"
            f"Per sensor, every window (copy + on_window + trend.add) and the minute's row:\n\n{sums}\n\n"
            + "\n".join(facts_lines) + "\n")
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"cases": results, "trend": trend, "trend_facts": trend_facts},
                                                        indent=2))
    print(f"wrote {args.out} (and .json)")


if __name__ == "__main__":
    main()
