"""Benchmark and figures of physical severity (``edge_agent/severity.py``): its cost per window, and velocity RMS
with its ISO 10816-3 zone over the life of real bearings.

* Cost: ``velocity_rms`` and ``SeverityTracker.update`` on 1 s windows of 25.6 kHz x 2 channels (FEMTO-like) and
  20 kHz x 4 channels (IMS-like), float32 as the ring holds them; median and p90 over ``--repeat`` windows, in µs
  per window and per channel (one process, optionally pinned to ``--core``; a shared machine makes p90 noisy).
* ``docs/figures/severity-femto.png``: the six FEMTO/PRONOSTIA learning-set bearings (25.6 kHz, g; every 4th
  0.1 s snapshot, 10 s apart in the full run) run to failure: velocity RMS per snapshot and channel over the hours
  of the run, on the zones of ISO 10816-3 group 2 / rigid (the strictest row), with the data README's rough onset.
* ``docs/figures/severity-ims.png``: IMS test 1 (20.48 kHz, g): the 50 raw snapshots of 1 s the shared data holds
  (the healthy first 4.6 h; no raw run-to-failure snapshots are public in ../shared), 8 channels.

    python bench/bench_severity.py [--data ../shared/data] [--repeat 200] [--core N] [--no-figures]
                                   [--out runs/bench_severity.md]

Writes a markdown summary (timings, each bearing's first/last velocity and zone) to ``--out`` and stdout.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.severity import (  # noqa: E402
    ZONE_TABLE,
    SeverityPolicy,
    SeverityTracker,
    band_for,
    velocity_rms,
    zone,
)

CASES = {"25.6 kHz x 2": (25_600.0, 2), "20 kHz x 4": (20_000.0, 4)}
FEMTO = ("Bearing1_1", "Bearing1_2", "Bearing2_1", "Bearing2_2", "Bearing3_1", "Bearing3_2")
#: The data README's rough onset (snapshot index of the full run): RMS above 2x its early-life median.
FEMTO_ONSET = {"Bearing1_1": 2200, "Bearing1_2": 828, "Bearing2_1": 280, "Bearing2_2": 232, "Bearing3_1": 493,
               "Bearing3_2": 1610}
FEMTO_RATE, FEMTO_PERIOD_S = 25_600.0, 10.0
IMS_RATE = 20_480.0  # the effective rate of the IMS snapshots (20 kHz nominal)
ZONE_COLOURS = {"A": "#d8f0d8", "B": "#f4f4c8", "C": "#fbe0c0", "D": "#f6cccc"}


def timing(repeat: int) -> list[dict]:
    """µs per window and per channel of velocity_rms and of a tracker's update, 1 s windows of float32."""
    rng = np.random.default_rng(0)
    rows = []
    for case, (rate, channels) in CASES.items():
        n = int(rate)
        t = np.arange(n) / rate
        x = (0.05 * rng.standard_normal((n, channels)) + 0.2 * np.sin(2 * np.pi * 87.0 * t)[:, None]).astype(
            np.float32)
        tracker = SeverityTracker(SeverityPolicy(), rate, "g")
        calls = {"velocity_rms": lambda x=x, rate=rate: velocity_rms(x, rate, "g"),
                 "tracker.update": lambda x=x, tracker=tracker: tracker.update(x)}
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for i in range(repeat + 5):  # the two calls alternate, so both see the same load on a shared machine
            for name, call in calls.items():
                t0 = time.perf_counter()
                call()
                if i >= 5:
                    samples[name].append(time.perf_counter() - t0)
        for name, s in samples.items():
            us = np.array(s) * 1e6
            rows.append({"case": case, "call": name, "channels": channels, "p50_us": float(np.median(us)),
                         "p90_us": float(np.percentile(us, 90))})
    return rows


def femto(data: Path) -> dict[str, dict]:
    """Per bearing: hours (S,), velocity (S, 2) mm/s per snapshot, the onset in hours."""
    out = {}
    for name in FEMTO:
        path = data / "femto_pronostia_learning_set" / f"femto_learning_{name}_every4th.npz"
        if not path.is_file():
            print(f"skipped {name}: no {path}", file=sys.stderr)
            continue
        with np.load(path) as d:
            acc, index = d["acc"], d["snapshot_index"]
        v = np.stack([velocity_rms(a, FEMTO_RATE, "g") for a in acc])
        out[name] = {"hours": index * FEMTO_PERIOD_S / 3600.0, "velocity": v,
                     "onset_h": FEMTO_ONSET[name] * FEMTO_PERIOD_S / 3600.0}
    return out


def ims(data: Path) -> dict | None:
    """IMS test 1's raw snapshots: hours since the first (S,), velocity (S, 8) mm/s."""
    folder = data / "ims_bearing" / "raw_1st_test_first50"
    files = sorted(folder.glob("*.gz"))
    if not files:
        print(f"skipped IMS: no snapshots in {folder}", file=sys.stderr)
        return None
    stamps, velocities = [], []
    for path in files:
        with gzip.open(path, "rt") as f:
            x = np.loadtxt(f, dtype=np.float32)
        stamps.append(time.mktime(time.strptime(path.name[:-3], "%Y.%m.%d.%H.%M.%S")))
        velocities.append(velocity_rms(x, IMS_RATE, "g"))
    return {"hours": (np.array(stamps) - stamps[0]) / 3600.0, "velocity": np.stack(velocities)}


def shade_zones(ax, top: float) -> None:
    """The zones of ISO 10816-3 group 2 / rigid as bands behind the curves, labelled at the right."""
    ab, bc, cd = ZONE_TABLE[(2, "rigid")]
    edges = [1e-3, ab, bc, cd, max(top, cd * 2)]
    for (lo, hi), name in zip(zip(edges[:-1], edges[1:], strict=True), "ABCD", strict=True):
        ax.axhspan(lo, hi, color=ZONE_COLOURS[name], zorder=0)
        ax.text(1.005, np.sqrt(max(lo, 0.05) * hi), name, transform=ax.get_yaxis_transform(), fontsize=8,
                va="center", color="0.35")


def plot_femto(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(11, 9.5))
    top = max(float(np.nanmax(r["velocity"])) for r in runs.values()) * 1.3
    for ax, (name, r) in zip(axes.flat, runs.items(), strict=False):
        shade_zones(ax, top)
        ax.plot(r["hours"], r["velocity"][:, 0], lw=0.8, color="tab:blue", label="horizontal")
        ax.plot(r["hours"], r["velocity"][:, 1], lw=0.8, color="tab:orange", label="vertical", alpha=0.85)
        ax.axvline(r["onset_h"], color="0.3", ls="--", lw=0.8, label="README's rough onset")
        ax.set(yscale="log", ylim=(0.05, top), xlim=(0, r["hours"][-1] * 1.01), title=name,
               xlabel="hours into the run", ylabel="velocity RMS, mm/s (10-1000 Hz)")
        ax.grid(alpha=0.3, which="both", lw=0.4)
    axes.flat[0].legend(loc="upper left", fontsize=7)
    fig.suptitle("FEMTO/PRONOSTIA learning set, run to failure: velocity RMS per 0.1 s snapshot; zones of "
                 "ISO 10816-3 group 2 / rigid (A/B 1.4, B/C 2.8, C/D 4.5 mm/s) shaded.\nA small accelerated-life "
                 "rig, not a 15 kW+ machine: the zones are a scale, not a verdict on this rig.", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_ims(run: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8))
    top = 10.0
    shade_zones(ax, top)
    for c in range(run["velocity"].shape[1]):
        ax.plot(run["hours"], run["velocity"][:, c], "o-", ms=2.5, lw=0.8,
                label=f"bearing {c // 2 + 1} {'xy'[c % 2]}")
    ax.set(yscale="log", ylim=(0.05, top), xlabel="hours since 2003-10-22 12:06",
           ylabel="velocity RMS, mm/s (10-1000 Hz)")
    ax.grid(alpha=0.3, which="both", lw=0.4)
    ax.legend(fontsize=7, ncol=4, loc="upper left")
    ax.set_title("IMS test 1, the first 50 raw 1 s snapshots (healthy), 20.48 kHz, 8 channels; zones of ISO "
                 "10816-3 group 2 / rigid shaded", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(rows: list[dict], runs: dict[str, dict], ims_run: dict | None) -> str:
    policy = SeverityPolicy()
    out = [f"# Physical severity: cost and real data ({platform.machine()}, numpy {np.__version__})\n",
           "| case | call | µs per 1 s window (p50 / p90) | µs per window per channel (p50) |", "|---|---|---|---|"]
    out += [f"| {r['case']} | `{r['call']}` | {r['p50_us']:.0f} / {r['p90_us']:.0f} | "
            f"{r['p50_us'] / r['channels']:.0f} |" for r in rows]
    if runs:
        out += ["", f"FEMTO, 0.1 s snapshots ({'; '.join(band_for(FEMTO_RATE, 2560).notes)}); zone by "
                f"{policy.table()}:", "",
                "| bearing | first snapshot, mm/s (H / V) | median of the first 10 % | last snapshot | max | "
                "zone at the end |", "|---|---|---|---|---|---|"]
        for name, r in runs.items():
            v = r["velocity"]
            early = np.median(v[: max(1, len(v) // 10)].max(axis=1))
            out.append(f"| {name} | {v[0, 0]:.2f} / {v[0, 1]:.2f} | {early:.2f} | {v[-1, 0]:.2f} / {v[-1, 1]:.2f} | "
                       f"{np.nanmax(v):.1f} | {zone(float(v[-1].max()), policy)} |")
    if ims_run is not None:
        v = ims_run["velocity"]
        out += ["", "IMS test 1, first 50 snapshots (healthy): velocity RMS per channel, mm/s, median (min..max):",
                "", "| " + " | ".join(f"B{c // 2 + 1}{'xy'[c % 2]}" for c in range(v.shape[1])) + " |",
                "|" + "---|" * v.shape[1],
                "| " + " | ".join(f"{np.median(v[:, c]):.2f} ({v[:, c].min():.2f}..{v[:, c].max():.2f})"
                                  for c in range(v.shape[1])) + " |"]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--core", type=int, default=None, help="pin the process to this core")
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_severity.md")
    args = ap.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    rows = timing(args.repeat)
    runs, ims_run = ({}, None) if args.no_figures else (femto(args.data), ims(args.data))
    figures = ROOT / "docs" / "figures"
    if runs:
        plot_femto(runs, figures / "severity-femto.png")
    if ims_run is not None:
        plot_ims(ims_run, figures / "severity-ims.png")
    text = report(rows, runs, ims_run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
