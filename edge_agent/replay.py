"""Offline replay: a recording through exactly the gateway's pipeline, as fast as it goes.

Each time-contiguous segment of the recording is cut into frames (sequence numbers restart per
segment, so no window spans two segments) and pushed through :class:`edge_agent.runtime.Pipeline`:
the same windower, scorer and alert state machine as ``edge-agent run``. The alert cooldown runs
on recording time, not wall time.

Output: one row per window (``ReplayRow``), written as CSV by :func:`write_csv`.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent import calibration
from edge_agent.alerts import AlertPolicy
from edge_agent.contract import wire
from edge_agent.contract.bundle import Bundle
from edge_agent.runtime import Pipeline
from edge_agent.scorer import Scorer

log = logging.getLogger(__name__)

FRAME_ROWS = 4096
CSV_COLUMNS = ("index_end", "time_end", "score", "threshold", "state", "event")


@dataclass(frozen=True)
class ReplayRow:
    index_end: int  # row index (over the whole recording) just past the window's last sample
    time_end: str  # ISO-8601 of the window's last sample, "" when the recording has no time base
    score: float
    threshold: float | None  # None while the first windows calibrate the threshold
    state: str  # normal | warning | critical | calibrating
    event: str  # raised | escalated | cleared | ""


@dataclass
class ReplayResult:
    rows: list[ReplayRow]
    threshold: float
    threshold_source: str  # bundle | replay-calibration
    samples: int
    seconds: float  # wall time of the replay
    recording_seconds: float | None  # duration of the recording's samples, when the sample rate is known
    counters: dict

    @property
    def speed(self) -> float | None:
        """Recording time / replay time (None without a sample rate)."""
        if self.recording_seconds is None or self.seconds <= 0:
            return None
        return self.recording_seconds / self.seconds


def match_channels(recording, bundle: Bundle):
    """The recording restricted to the bundle's channels (by name, or all when the counts agree)."""
    want = list(bundle.spec.channels)
    if list(recording.channels) == want:
        return recording
    if all(c in recording.channels for c in want):
        return recording.select_channels(want)
    if recording.n_channels == len(want):
        return recording
    raise ValueError(
        f"the recording has channels {list(recording.channels)}, the bundle needs {len(want)}: {want}"
    )


def replay(
    bundle: Bundle,
    recording,
    *,
    policy: AlertPolicy | None = None,
    calibrate: int = 0,
    device: str = "replay",
    threshold: float | None = None,
    model_path: Path | None = None,
) -> ReplayResult:
    """Score ``recording`` (a ``edge_agent.contract.recordings.Recording``) with ``bundle``; see the module docstring.

    ``calibrate`` > 0: the first that many windows are scored without alerting and set the
    threshold with the bundle's method (as ``edge-agent calibrate`` does on a device).
    """
    rec = match_channels(recording, bundle)
    sr = rec.sample_rate
    now = [0.0]  # recording time in seconds of the current window, the alert machine's clock
    time_of: dict = {}  # "fn": the current segment's locator; "last": (index_end, iso) of the window
    rows: list[ReplayRow] = []
    cal_scores: list[float] = []
    th = float(threshold) if threshold is not None else bundle.threshold.value
    state = {"source": "bundle" if threshold is None else "given"}

    def time_fn(w) -> float:  # called before the alert machine looks at its clock
        time_of["last"] = time_of["fn"](w.seq_end)
        return now[0]

    def on_window(w, result, event):
        index_end, iso = time_of["last"] if w is not None else time_of["fn"](result.seq_end)
        if pipeline.alerting or w is None:  # an over-range span (w None) is never a calibration score
            rows.append(ReplayRow(index_end, iso, result.score, result.threshold, pipeline.alerts.state,
                                  event.kind if event else ""))
        else:
            cal_scores.append(result.score)
            rows.append(ReplayRow(index_end, iso, result.score, None, "calibrating", ""))
            if len(cal_scores) == calibrate:  # the next window is scored against the device threshold
                record = calibration.compute(np.asarray(cal_scores), bundle, device)
                pipeline.threshold = record.value
                pipeline.alerting = True
                state["source"] = "replay-calibration"
                log.info("replay: threshold %.6g from the first %d windows (%s)", record.value, calibrate,
                         record.method)

    pipeline = Pipeline(
        bundle, device=device, threshold=th, policy=policy or AlertPolicy(), clock=lambda: now[0],
        time_fn=time_fn, alerting=calibrate <= 0, on_window=on_window,
        scorer=Scorer(bundle, model_path=model_path) if model_path else None,
    )
    t0 = time.perf_counter()
    base = 0
    for seg in rec.segments:
        data = seg.data
        start_s = _epoch_seconds(seg.start) if seg.start is not None else None

        def locate(seq_end: int, base=base, seg=seg, start_s=start_s) -> tuple[int, str]:
            index_end = base + seq_end  # sequence numbers restart at 0 per segment (segments < 2**32 rows)
            if seg.row_times is not None:
                t = _epoch_seconds(seg.row_times[seq_end - 1])
            elif start_s is not None and sr:
                t = start_s + (seq_end - 1) / sr
            else:
                t = None
            now[0] = t if t is not None else (index_end / sr if sr else float(index_end))
            iso = "" if t is None else np.datetime_as_string(np.datetime64(int(round(t * 1000)), "ms"), unit="ms")
            return index_end, iso

        time_of["fn"] = locate
        pipeline.windower.reset_sequence()
        pipeline.alerts.reset()
        for a in range(0, data.shape[0], FRAME_ROWS):
            pipeline.push(wire.Frame(a, 0, data[a : a + FRAME_ROWS]))
        base += data.shape[0]
    if not pipeline.alerting:
        raise ValueError(f"--calibrate {calibrate}: the recording gave only {len(cal_scores)} windows")
    seconds = time.perf_counter() - t0
    counters = pipeline.windower.counters.as_dict()
    counters["alerts"] = pipeline.alert_events
    return ReplayResult(
        rows=rows, threshold=pipeline.threshold, threshold_source=state["source"], samples=base, seconds=seconds,
        recording_seconds=base / sr if sr else None, counters=counters,
    )


def _epoch_seconds(t) -> float:
    return float(np.datetime64(t, "ms").astype(np.int64)) / 1000.0


def write_csv(path: Path, rows: list[ReplayRow]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(CSV_COLUMNS)
        for r in rows:
            out.writerow([r.index_end, r.time_end, f"{r.score:.9g}", "" if r.threshold is None else f"{r.threshold:.9g}",
                          r.state, r.event])


def plot(path: Path, rows: list[ReplayRow], title: str = "") -> None:
    """Score timeline with the threshold in force and the alert states shaded (PNG). Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([r.index_end for r in rows], dtype=np.float64)
    score = np.array([r.score for r in rows])
    thr = np.array([np.nan if r.threshold is None else r.threshold for r in rows])
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
