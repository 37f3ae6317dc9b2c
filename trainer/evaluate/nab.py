"""NAB scoring of alert detections (numpy only), from the Numenta Anomaly Benchmark's published rules.

Rules (NAB ``nab/sweeper.py`` and ``config/profiles.json``; implemented here from the description):

* The first ``PROBATION`` (15 %) of a series' rows, at most ``0.15 * 5000`` rows, is probationary:
  detections there are not scored.
* A detection inside a labelled window scores ``sigma(p) * tp_weight / sigma(-1)`` with the *scaled
  sigmoid* ``sigma(y) = 2 / (1 + exp(5 y)) - 1`` and ``p = -(right - i + 1) / width`` the position in
  the window (``-1`` at its left edge, ``0`` at its right); only a window's best (earliest) detection
  counts. A window without a detection costs ``-fn_weight``.
* A detection outside every window scores ``sigma(y) * fp_weight`` with ``y = |i - right| / (width - 1)``
  measured from the right edge of the closest preceding window (so a detection just after a window is
  barely penalised), and ``-fp_weight`` when no window precedes it. ``sigma(y) = -1`` for ``y >= 3``.
* Profiles (tp, fp, fn weights): standard (1, 0.11, 1), reward_low_FP_rate (1, 0.22, 1),
  reward_low_FN_rate (1, 0.11, 2).
* Normalised score over a set of series: ``100 * (S - S_null) / (S_perfect - S_null)``, with the null
  detector (no detection: ``-fn_weight`` per window) and the perfect one (``tp_weight`` per window).

Detections here are the rows where an alert was *raised* (one per alert episode), which is what a
maintenance person is paged for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PROBATION = 0.15
PROFILES = {
    "standard": {"tp": 1.0, "fp": 0.11, "fn": 1.0},
    "reward_low_FP_rate": {"tp": 1.0, "fp": 0.22, "fn": 1.0},
    "reward_low_FN_rate": {"tp": 1.0, "fp": 0.11, "fn": 2.0},
}


def scaled_sigmoid(y: float) -> float:
    """NAB's reward curve: 0.987 at y = -1 (window start), 0 at the window end, -1 from y = 3 on."""
    if y >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probationary_rows(n_rows: int) -> int:
    return int(min(math.floor(PROBATION * n_rows), PROBATION * 5000))


@dataclass(frozen=True)
class NabScore:
    raw: float  # the series' score under the profile
    null: float  # score of a detector that never fires
    perfect: float  # score of a detector that fires at every window's start and nowhere else
    tp: int  # windows with a detection
    fn: int  # windows without one
    fp: int  # scored detections outside every window


def score(n_rows: int, windows: list[tuple[int, int]], detections: list[int], profile: str = "standard") -> NabScore:
    """NAB score of one series.

    n_rows: rows in the series. windows: (first row, last row) of each labelled window, inclusive, in order.
    detections: row indices of the detections (alert raises).
    """
    w = PROFILES[profile]
    max_tp = scaled_sigmoid(-1.0)
    probation = probationary_rows(n_rows)
    best = [None] * len(windows)  # best detection score per window
    fp_total, fp_count = 0.0, 0
    for i in sorted(int(d) for d in detections):
        if i < probation:
            continue
        inside = next((k for k, (a, b) in enumerate(windows) if a <= i <= b), None)
        if inside is not None:
            a, b = windows[inside]
            width = b - a + 1
            value = scaled_sigmoid(-(b - i + 1) / width) * w["tp"] / max_tp
            best[inside] = value if best[inside] is None else max(best[inside], value)
            continue
        preceding = [k for k, (_, b) in enumerate(windows) if b < i]
        if not preceding:
            fp_total -= w["fp"]
        else:
            a, b = windows[preceding[-1]]
            width = b - a + 1
            fp_total += scaled_sigmoid(abs(i - b) / max(width - 1, 1)) * w["fp"]
        fp_count += 1
    tp_total = sum(v for v in best if v is not None)
    fn = sum(v is None for v in best)
    return NabScore(raw=tp_total + fp_total - fn * w["fn"], null=-w["fn"] * len(windows), perfect=w["tp"] * len(windows),
                    tp=len(windows) - fn, fn=fn, fp=fp_count)


def normalised(scores: list[NabScore]) -> float | None:
    """100 * (S - S_null) / (S_perfect - S_null) over a set of series; None when no series has a window."""
    raw, null, perfect = (sum(getattr(s, k) for s in scores) for k in ("raw", "null", "perfect"))
    return None if perfect == null else 100.0 * (raw - null) / (perfect - null)


def rows_of(times: np.ndarray, limits: list[tuple[np.datetime64, np.datetime64]]) -> list[tuple[int, int]]:
    """Labelled windows given as (start, end) times -> (first row, last row) of the rows they contain."""
    out = []
    for start, end in limits:
        a = int(np.searchsorted(times, start, side="left"))
        b = int(np.searchsorted(times, end, side="right")) - 1
        if b >= a:
            out.append((a, b))
    return out
