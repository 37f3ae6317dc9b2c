"""Offline replay: a recording through exactly the gateway's pipeline, as fast as it goes.

Each time-contiguous segment of the recording (a snapshot, a file, a whole table) is cut into
frames and pushed through :class:`edge_agent.pipeline.Pipeline`: the same windower, scorer, calibration
and alert state machine as ``edge-agent run``. Between segments window assembly restarts (no window
spans two snapshots) but the alert debounce carries on: the time between snapshots is a sampling gap
of one machine's life, as for a burst sensor. The pipeline's clock runs on recording time (segment
starts, a table's row times), so the alert cooldown and every row's time are the recording's.

Output: one row per window (``ReplayRow``), written as CSV by :func:`write_csv`.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.alerts import AlertPolicy
from edge_agent.contract.bundle import Bundle
from edge_agent.contract.frames import SEQ_MOD, Frame
from edge_agent.contract.recordings import Recording
from edge_agent.pipeline import Pipeline
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
    recording: Recording,
    *,
    policy: AlertPolicy | None = None,
    calibrate: int = 0,
    device: str = "replay",
    threshold: float | None = None,
    model_path: Path | None = None,
) -> ReplayResult:
    """Score ``recording`` with ``bundle`` through the gateway's :class:`Pipeline`; see the module docstring.

    ``calibrate`` > 0: the first that many windows are scored without alerting and set the
    threshold with the bundle's method (as ``edge-agent calibrate`` does on a device).
    """
    rec = match_channels(recording, bundle)
    rate = rec.sample_rate or _row_rate(rec)
    timed = all(seg.start is not None for seg in rec.segments)
    rows: list[ReplayRow] = []

    def on_window(w, result, event):
        iso = _iso(result.time) if timed else ""
        if w is not None and pipeline.calibrating:
            rows.append(ReplayRow(result.seq_end, iso, result.score, None, "calibrating", ""))
        else:
            rows.append(ReplayRow(result.seq_end, iso, result.score, result.threshold, pipeline.alerts.state,
                                  event.kind if event else ""))

    pipeline = Pipeline(
        bundle, device=device, threshold=bundle.threshold.value if threshold is None else float(threshold),
        policy=policy or AlertPolicy(), scorer=Scorer(bundle, model_path=model_path) if model_path else None,
        sample_rate=rate, calibrate=calibrate, burst=True, on_window=on_window,
    )
    t0 = time.perf_counter()
    seq = 0
    for seg in rec.segments:
        pipeline.break_stream()  # a new snapshot: a sampling gap, not a restarted sender
        for a, b, t in _frames(seg, rate):
            pipeline.push(Frame(seq % SEQ_MOD, 0, seg.data[a:b]), t=t)
            seq += b - a
    if pipeline.calibrating:
        raise ValueError(f"--calibrate {calibrate}: the recording gave only {len(pipeline.calibration_scores)} windows")
    seconds = time.perf_counter() - t0
    counters = pipeline.windower.counters.as_dict()
    counters["alerts"] = pipeline.counters.alert_events
    counters["too_good_windows"] = pipeline.counters.too_good_windows
    counters["stuck_episodes"] = pipeline.counters.stuck_episodes
    source = "bundle" if threshold is None else "given"
    return ReplayResult(
        rows=rows, threshold=pipeline.threshold, threshold_source="replay-calibration" if calibrate > 0 else source,
        samples=seq, seconds=seconds, recording_seconds=seq / rec.sample_rate if rec.sample_rate else None,
        counters=counters,
    )


def _row_rate(rec: Recording) -> float | None:
    """Rows per second of a table without a sample rate (median spacing of its row times), or None."""
    gaps = [np.diff(seg.row_times.astype("datetime64[ms]").astype(np.int64)) for seg in rec.segments
            if seg.row_times is not None and seg.n_rows > 1]
    gaps = np.concatenate(gaps) if gaps else np.empty(0)
    gaps = gaps[gaps > 0]
    return 1000.0 / float(np.median(gaps)) if gaps.size else None


def _frames(seg, rate: float | None):
    """(start row, end row, time of the start row or None) of the frames a segment is pushed in: at most
    ``FRAME_ROWS`` rows, split where a table's row times leave their regular spacing (the clock re-anchors)."""
    n = seg.n_rows
    if seg.row_times is None or not rate:
        start = _epoch_seconds(seg.start) if seg.start is not None else None
        for a in range(0, n, FRAME_ROWS):
            yield a, min(n, a + FRAME_ROWS), None if start is None else start + (a / rate if rate else 0.0)
        return
    ms = seg.row_times.astype("datetime64[ms]").astype(np.int64)
    irregular = np.flatnonzero(np.abs(np.diff(ms) - 1000.0 / rate) > 500.0 / rate) + 1
    cuts = sorted({0, n, *irregular.tolist(), *range(FRAME_ROWS, n, FRAME_ROWS)})
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        yield a, b, ms[a] / 1000.0


def _epoch_seconds(t) -> float:
    return float(np.datetime64(t, "ms").astype(np.int64)) / 1000.0


def _iso(t: float) -> str:
    return np.datetime_as_string(np.datetime64(int(round(t * 1000)), "ms"), unit="ms")


def write_csv(path: Path, rows: list[ReplayRow]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(CSV_COLUMNS)
        for r in rows:
            out.writerow([r.index_end, r.time_end, f"{r.score:.9g}", "" if r.threshold is None else f"{r.threshold:.9g}",
                          r.state, r.event])
