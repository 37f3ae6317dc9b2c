"""Detection metrics from a sequence of scored windows and their alert states (numpy only).

A window is represented by the row index just past its last sample (``ends``, over the whole recording),
its time (``times``, seconds, when known), and the alert state after it (``states``: ``calibrating``,
``normal``, ``warning`` or ``critical``). An *episode* is a maximal run of windows with an alert active;
its start is the window that raised it.
"""

from __future__ import annotations

import numpy as np

ACTIVE = ("warning", "critical")
#: An alert counts as *persistent* when it stays raised for at least this many windows (or to the end).
PERSISTENT_WINDOWS = 6


def episodes(states: np.ndarray) -> list[tuple[int, int]]:
    """(first, last + 1) window indices of every alert episode."""
    active = np.isin(np.asarray(states), ACTIVE).astype(np.int8)
    edges = np.diff(np.concatenate([[0], active, [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def run_to_failure(states: np.ndarray, times: np.ndarray, healthy_until: float,
                   persistent: int = PERSISTENT_WINDOWS) -> dict:
    """Run-to-failure figures; the end of life is the last window.

    times: (W,) seconds of the window ends; healthy_until: seconds, the end of the documented healthy
    part. Returns first persistent alert (fraction of life, hours before the end), alert episodes that
    start in the healthy part, whether the alert stayed raised to the end, and the episode count; and the
    first *degrading* window (state ``critical``: at the critical level in k of n, or rising), the second
    of the two alert levels, with ``degrading_healthy`` when it came in the healthy part.
    """
    times = np.asarray(times, np.float64)
    eps = episodes(states)
    t0, t1 = float(times[0]), float(times[-1])
    life = max(t1 - t0, 1e-9)
    first = next((a for a, b in eps if b - a >= persistent or b == len(states)), None)
    critical = np.flatnonzero(np.asarray(states) == "critical")
    degrading = int(critical[0]) if critical.size else None
    return {
        "first_degrading_life": None if degrading is None else (times[degrading] - t0) / life,
        "degrading_lead_h": None if degrading is None else (t1 - times[degrading]) / 3600.0,
        "degrading_healthy": degrading is not None and bool(times[degrading] < healthy_until),
        "alarmed": first is not None,
        "first_alert_life": None if first is None else (times[first] - t0) / life,
        "lead_h": None if first is None else (t1 - times[first]) / 3600.0,
        "first_any_life": None if not eps else (times[eps[0][0]] - t0) / life,
        "episodes": len(eps),
        "episodes_healthy": sum(1 for a, _ in eps if times[a] < healthy_until),
        "stayed_raised": bool(eps) and eps[-1][1] == len(states),
    }


def window_hits(raise_rows: list[int], windows: list[tuple[int, int]], after_row: int = 0) -> dict:
    """Labelled windows (first row, last row) hit by an alert raise, and raises outside every window
    (those before ``after_row``, the training / probation part, are not counted)."""
    hit = sum(any(a <= r <= b for r in raise_rows) for a, b in windows)
    outside = sum(1 for r in raise_rows if r >= after_row and not any(a <= r <= b for a, b in windows))
    return {"windows": len(windows), "hit": hit, "outside": outside}


def point_flags(ends: np.ndarray, states: np.ndarray, n_rows: int) -> np.ndarray:
    """(n_rows,) bool: a row is flagged when the alert state in force at it (that of the latest window
    ending at or before it) is active; rows before the first window are not flagged."""
    flags = np.zeros(n_rows, bool)
    ends = np.asarray(ends, np.int64)
    active = np.isin(np.asarray(states), ACTIVE)
    for k in np.flatnonzero(active):  # window k decides from its last row to the next window's last row
        flags[ends[k] - 1: ends[k + 1] - 1 if k + 1 < len(ends) else n_rows] = True
    return flags


def point_metrics(flags: np.ndarray, truth: np.ndarray) -> dict:
    """Point by point: precision, recall, F1, false-alarm rate (FP / negatives), missed-alarm rate (FN / positives)."""
    flags, truth = np.asarray(flags, bool), np.asarray(truth, bool)
    tp, fp = int((flags & truth).sum()), int((flags & ~truth).sum())
    fn, tn = int((~flags & truth).sum()), int((~flags & ~truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "far": fp / (fp + tn) if fp + tn else 0.0,
        "mar": fn / (fn + tp) if fn + tp else 0.0,
    }
