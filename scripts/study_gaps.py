"""Which keeps detection on a lossy link: restarting window assembly at every gap, bridging short gaps, or
filling them? Measured with the real scorer and alert state machine on firmware_sim bearing signals.

    python scripts/study_gaps.py [--seconds 50] [--out runs/gap_study]

For two features bundles (IMS-like 20 kHz x 4, windows of 8 blocks of 1024 samples; FEMTO-like 25.6 kHz x 2,
windows of 25 blocks = 25,600 samples, the issue's case) trained here on healthy signals, a healthy and a
degrading recording (fault onset at 60 % of it) are cut into 256-sample frames and damaged: NaN values at
1e-4 and 1e-3, 1 % of frames dropped, 1 % dropped plus 5 % corrupted (lost to their CRC). Each damaged
stream is pushed through ``edge_agent.pipeline.Pipeline`` with:

* ``restart``  the gateway's behaviour before: every gap or NaN restarts window assembly;
* ``bridge N %`` (``windows.Windower(bridge=...)``): up to N % of a window's samples may be missing (left out);
* ``hold``     the gaps and NaNs are filled with the last valid value (done here, before the pipeline).

Per case: windows scored (per second of signal), windows above threshold and alerts raised on healthy data
(false alarms), and on degrading data the first alert after the onset and the share of windows above the
threshold after it. Writes ``OUT/gap_study.md`` (the table) and ``OUT/gap_study.png``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.alerts import AlertPolicy
from edge_agent.contract.bundle import MANIFEST_FILE, Bundle
from edge_agent.contract.frames import Frame
from edge_agent.pipeline import Pipeline
from edge_agent.scorer import Scorer

FRAME = 256
ONSET = 0.6


@dataclass(frozen=True)
class Case:
    name: str
    preset: str
    rate: int
    window: int
    hop: int


CASES = (Case("ims 20 kHz x 4, window 8 x 1024", "ims", 20_000, 8, 2),
         Case("femto 25.6 kHz x 2, window 25 x 1024", "femto", 25_600, 25, 5))
DAMAGE = {"clean": {}, "NaN 1e-4": {"nan": 1e-4}, "NaN 1e-3": {"nan": 1e-3}, "1 % dropped": {"drop": 0.01},
          "1 % dropped + 5 % corrupted": {"drop": 0.06}}
STRATEGIES = ("restart", "bridge 2 %", "bridge 5 %", "bridge 10 %", "bridge 20 %", "hold")


def train(case: Case, root: Path) -> Path:
    """A features bundle for ``case`` (cached in ``root``)."""
    bundle = root / f"bundle-{case.preset}"
    if (bundle / MANIFEST_FILE).exists():
        return bundle
    from firmware_sim import signals
    from trainer.model import ModelConfig
    from trainer.pipeline import TrainOptions, run
    from trainer.train import FitConfig

    healthy = signals.generate(signals.make_source("bearing", state="healthy", preset=case.preset, seed=1),
                               case.rate * 60)
    np.save(root / f"train-{case.preset}.npy", healthy)
    run(TrainOptions(
        data=root / f"train-{case.preset}.npy", out=bundle, format="npy", mode="features", window=case.window,
        hop=case.hop, block=1024, features=("rms", "peak", "kurtosis", "crest"),
        model=ModelConfig(architecture="conv1d", units=(16, 8), latent=4),
        fit=FitConfig(epochs=40, batch_size=16, patience=6), quantize="int8", latency_windows=50,
        model_id=f"gap-study-{case.preset}",
    ))
    return bundle


def frames(x: np.ndarray, damage: dict, seed: int) -> list[Frame | None]:
    """256-sample frames of ``x`` (None where one was lost), NaN injected per value."""
    rng = np.random.default_rng(seed)
    out: list[Frame | None] = []
    for a in range(0, len(x) - FRAME + 1, FRAME):
        if rng.random() < damage.get("drop", 0.0):
            out.append(None)
            continue
        chunk = x[a:a + FRAME].copy()
        if damage.get("nan"):
            chunk[rng.random(chunk.shape) < damage["nan"]] = np.nan
        out.append(Frame(seq=a, t0_us=0, samples=chunk))
    return out


def hold(stream: list[Frame | None], channels: int) -> list[Frame]:
    """Lost frames and NaN values replaced by the last valid value of each channel."""
    last = np.zeros(channels, np.float32)
    out = []
    for i, f in enumerate(stream):
        x = np.tile(last, (FRAME, 1)) if f is None else f.samples.copy()
        for c in range(channels):
            col = x[:, c]
            bad = ~np.isfinite(col)
            if bad.any():  # forward fill within the frame, from the last valid value
                idx = np.where(~bad, np.arange(len(col)), -1)
                np.maximum.accumulate(idx, out=idx)
                col[:] = np.where(idx >= 0, col[np.maximum(idx, 0)], last[c])
            last[c] = col[-1]
        out.append(Frame(seq=i * FRAME, t0_us=0, samples=x))
    return out


def run_pipeline(bundle: Bundle, scorer: Scorer, stream, strategy: str, rate: int) -> dict:
    policy = AlertPolicy(cooldown_s=60.0)
    bridge = float(strategy.split()[1]) / 100 if strategy.startswith("bridge") else 0.0
    results, events = [], []
    pipe = Pipeline(bundle, device="study", threshold=bundle.threshold.value, policy=policy, scorer=scorer,
                    sample_rate=rate, bridge_fraction=bridge,
                    on_window=lambda w, r, e: (results.append((r.seq_end / rate, r.score)),
                                               e is not None and events.append((e.kind, e.seq_end / rate))))
    frames_in = hold(stream, len(bundle.spec.channels)) if strategy == "hold" else [f for f in stream if f]
    for f in frames_in:
        pipe.push(f)
    return {"results": np.array(results, np.float64).reshape(-1, 2), "events": events,
            "bridged": pipe.windower.counters.windows_bridged, "withheld": pipe.windower.counters.windows_withheld}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=50.0, help="length of each recording")
    ap.add_argument("--out", type=Path, default=Path("runs/gap_study"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from firmware_sim import signals

    rows, curves = [], {}
    for case in CASES:
        path = train(case, args.out)
        bundle = Bundle.load(path)
        scorer = Scorer(bundle)
        n = int(case.rate * args.seconds)
        healthy = signals.generate(signals.make_source("bearing", state="healthy", preset=case.preset, seed=7), n)
        degrading = signals.generate(signals.make_source("bearing", state="degrading", preset=case.preset, seed=8,
                                                         life_s=args.seconds), n)
        onset = ONSET * args.seconds
        for dname, damage in DAMAGE.items():
            streams = {"healthy": frames(healthy, damage, 11), "degrading": frames(degrading, damage, 12)}
            for strategy in STRATEGIES:
                if dname == "clean" and strategy != "restart":
                    continue
                t0 = time.perf_counter()
                h = run_pipeline(bundle, scorer, streams["healthy"], strategy, case.rate)
                d = run_pipeline(bundle, scorer, streams["degrading"], strategy, case.rate)
                thr = bundle.threshold.value
                hs, ds = h["results"], d["results"]
                after = ds[ds[:, 0] >= onset, 1] if len(ds) else np.array([])
                first = next((t for k, t in d["events"] if k == "raised" and t >= onset), None)
                rows.append({
                    "case": case.name, "damage": dname, "strategy": strategy,
                    "windows_per_s": len(hs) / args.seconds,
                    "bridged": h["bridged"], "healthy_above": float(np.mean(hs[:, 1] > thr)) if len(hs) else None,
                    "false_alerts": sum(k == "raised" for k, _ in h["events"])
                    + sum(k == "raised" and t < onset for k, t in d["events"]),
                    "first_alert_s": None if first is None else first - onset,
                    "after_above": float(np.mean(after > thr)) if len(after) else None,
                    "healthy_p50": float(np.median(hs[:, 1])) if len(hs) else None,
                })
                curves[(case.preset, dname, strategy)] = (ds, thr, onset)
                r = rows[-1]
                print(f"{case.preset:5s} {dname:28s} {strategy:11s} windows/s {r['windows_per_s']:6.2f} "
                      f"false {r['false_alerts']} first {r['first_alert_s']} ({time.perf_counter() - t0:.1f} s)",
                      flush=True)
    write_table(args.out / "gap_study.md", rows, args.seconds)
    plot(args.out / "gap_study.png", curves)
    print(f"wrote {args.out / 'gap_study.md'} and {args.out / 'gap_study.png'}")


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def write_table(path: Path, rows: list[dict], seconds: float) -> None:
    lines = [f"Gap study: {seconds:g} s healthy and {seconds:g} s degrading (onset at {ONSET:.0%}) per case, "
             "256-sample frames, default alert policy (3 of 5).", "",
             "| bundle | damage | strategy | windows/s (healthy) | healthy windows above thr. | healthy median score |"
             " false alerts | first alert after onset | windows above thr. after onset |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['damage']} | {r['strategy']} | {r['windows_per_s']:.2f} | "
                     f"{_fmt(r['healthy_above'], '.3f')} | {_fmt(r['healthy_p50'], '.4f')} | {r['false_alerts']} | "
                     f"{_fmt(r['first_alert_s'], '.1f')} s | {_fmt(r['after_above'], '.2f')} |")
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = sorted({k[0] for k in curves})
    damages = [d for d in DAMAGE if d != "clean"]
    fig, axes = plt.subplots(len(presets), len(damages), figsize=(4.2 * len(damages), 3.2 * len(presets)),
                             sharex=True, squeeze=False)
    for i, preset in enumerate(presets):
        for j, dname in enumerate(damages):
            ax = axes[i][j]
            clean, thr, onset = curves[(preset, "clean", "restart")]
            ax.plot(clean[:, 0], clean[:, 1], color="0.75", lw=1, label="clean")
            for strategy, color in (("hold", "C1"), ("bridge 10 %", "C0"), ("restart", "C3")):
                ds, _, _ = curves[(preset, dname, strategy)]
                if len(ds):
                    ax.plot(ds[:, 0], ds[:, 1], ".", ms=2.5, color=color, label=f"{strategy} ({len(ds)} windows)")
            ax.axhline(thr, color="k", ls="--", lw=0.8)
            ax.axvline(onset, color="k", ls=":", lw=0.8)
            ax.set_yscale("log")
            ax.set_title(f"{preset}: {dname} (degrading run; dashed: threshold)", fontsize=8)
            ax.legend(fontsize=6, loc="upper left")
            if j == 0:
                ax.set_ylabel("score (degrading run)")
            if i == len(presets) - 1:
                ax.set_xlabel("s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
