"""Training report: PNG plots and ``report.json`` (matplotlib, Agg backend; no TensorFlow).

Figures:

* ``loss.png``       training and validation MAE per epoch, best epoch marked.
* ``histogram.png``  score histograms of training, validation and later windows, threshold line.
* ``timeline.png``   the served model's score over the whole recording (time on x when known),
                     the threshold, the train/test cut, and the first persistent crossing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

def _pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: loading data never needs it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Default: a crossing counts as persistent when this many consecutive windows are above threshold.
PERSISTENCE = 6


def first_persistent_crossing(scores: np.ndarray, threshold: float, persistence: int = PERSISTENCE) -> int | None:
    """Index of the first window that starts a run of ``persistence`` consecutive windows above threshold.

    scores: (W,) float. Returns None when no such run exists.
    """
    if persistence < 1:
        raise ValueError("persistence must be >= 1")
    above = np.asarray(scores) > threshold
    if above.size < persistence:
        return None
    run = np.convolve(above.astype(np.int64), np.ones(persistence, np.int64), mode="valid")  # (W - p + 1,)
    hits = np.flatnonzero(run == persistence)
    return int(hits[0]) if hits.size else None


def _x(times: np.ndarray | None, ends: np.ndarray):
    if times is not None:
        return times.astype("datetime64[ms]").astype(object), "time"
    return ends, "row"


def plot_loss(history: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    ax.plot(epochs, history.get("loss", []), label="training")
    if history.get("val_loss"):
        ax.plot(epochs, history["val_loss"], label="validation")
        ax.axvline(history.get("best_epoch", 0), color="grey", ls=":", label=f"best epoch {history.get('best_epoch')}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MAE (scaled)")
    ax.set_yscale("log")
    ax.set_title("Training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_histogram(groups: dict[str, np.ndarray], threshold: float, path: Path) -> None:
    """groups: label -> (n,) scores (empty groups are skipped)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    present = {k: np.asarray(v, np.float64) for k, v in groups.items() if len(v)}
    everything = np.concatenate(list(present.values())) if present else np.array([threshold])
    positive = everything[everything > 0]
    lo = min(float(positive.min()) if positive.size else threshold, threshold) / 1.2
    hi = max(float(everything.max()), threshold) * 1.2
    bins = np.geomspace(lo, hi, 70)  # log-spaced: healthy and failing scores differ by orders of magnitude
    for label, values in present.items():
        ax.hist(np.clip(values, lo, hi), bins=bins, alpha=0.55, label=f"{label} (n={len(values)})")
    ax.axvline(threshold, color="red", lw=1.5, label=f"threshold {threshold:.4g}")
    ax.set_xscale("log")
    ax.set_xlabel("reconstruction MAE")
    ax.set_ylabel("windows")
    ax.set_title("Anomaly score distribution")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_timeline(scores: np.ndarray, times: np.ndarray | None, ends: np.ndarray, threshold: float,
                  n_train: int, crossing: int | None, path: Path, title: str) -> None:
    """scores (W,) of the served model; the first ``n_train`` windows are the training period."""
    x, kind = _x(times, ends)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(x, scores, lw=0.9, label="score (served model)")
    ax.axhline(threshold, color="red", lw=1.2, label=f"threshold {threshold:.4g}")
    if 0 < n_train < len(scores):
        ax.axvline(x[n_train], color="black", ls="--", lw=1, label="end of training data")
    if crossing is not None:
        ax.axvline(x[crossing], color="orange", lw=1.5, label=f"first persistent crossing ({x[crossing]})")
    ax.set_yscale("log")
    ax.set_xlabel(kind if kind == "time" else "row index (window end)")
    ax.set_ylabel("reconstruction MAE")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    if kind == "time":
        fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report_dir: Path, *, history: dict, scores: np.ndarray, times: np.ndarray | None,
                 ends: np.ndarray, n_train: int, groups: dict[str, np.ndarray], threshold: float, title: str,
                 facts: dict, persistence: int = PERSISTENCE) -> dict:
    """Write the three PNGs and report.json into ``report_dir``; returns the report dict.

    scores/times/ends: (W,) for every window of the recording, in order, scored by the served model;
    the first ``n_train`` are the training period. ``facts`` (variants, parity, ...) go into report.json.
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    crossing = first_persistent_crossing(scores[n_train:], threshold, persistence)
    crossing = None if crossing is None else crossing + n_train
    train_scores = scores[:n_train]
    summary = {
        "threshold": threshold,
        "windows": int(len(scores)),
        "training_windows": int(n_train),
        "training_max_score": float(train_scores.max()) if n_train else None,
        "training_windows_above_threshold": int((train_scores > threshold).sum()),
        "later_windows_above_threshold": int((scores[n_train:] > threshold).sum()),
        "persistence_windows": persistence,
        "first_persistent_crossing": None if crossing is None else {
            "window": crossing,
            "row_end": int(ends[crossing]),
            "time": None if times is None else str(times[crossing]),
        },
    }
    plot_loss(history, report_dir / "loss.png")
    plot_histogram(groups, threshold, report_dir / "histogram.png")
    plot_timeline(scores, times, ends, threshold, n_train, crossing, report_dir / "timeline.png", title)
    report = {
        "figures": {"loss": "loss.png", "histogram": "histogram.png", "timeline": "timeline.png"},
        "summary": summary,
        "history": history,
        **facts,
    }
    (report_dir / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n", "utf-8")
    log.info("report: %d training windows above threshold; first persistent crossing %s",
             summary["training_windows_above_threshold"], summary["first_persistent_crossing"])
    return report


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def plot_replay(path: Path, rows: list, title: str = "") -> None:
    """Score timeline of ``edge_agent.replay`` rows with the threshold in force and the alert states shaded (PNG)."""
    x = np.array([r.index_end for r in rows], dtype=np.float64)
    score = np.array([r.score for r in rows])
    thr = np.array([np.nan if r.threshold is None else r.threshold for r in rows])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 4), dpi=100)
    ax.plot(x, score, lw=0.8, color="tab:blue", label="score")
    ax.step(x, thr, where="post", color="tab:red", lw=1.2, label="threshold")
    colors = {"warning": "gold", "critical": "tomato", "calibrating": "lightgrey"}
    for state, color in colors.items():
        mask = np.array([r.state == state for r in rows])
        if mask.any():
            ax.fill_between(x, 0, 1, where=mask, transform=ax.get_xaxis_transform(), color=color, alpha=0.3,
                            step="post", label=state)
    ax.set_yscale("log" if np.all(score > 0) else "linear")
    ax.set_xlabel("sample index (window end)")
    ax.set_ylabel("reconstruction error")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
