"""What the status page draws: a bounded recent history of one sensor's scores and alert events.

Written by the scoring thread (``record``, ``record_event``), read by the web server's threads (``snapshot``),
so every access holds the lock. Memory is bounded whatever the window rate: scores are kept per bucket of
``bucket_s`` seconds of wall-clock time (the time the gateway scored them), at most ``points`` buckets::

    bucket = [t, score, threshold, state, rms]
        t          wall-clock unix seconds of the bucket's last window
        score      the bucket's highest score (``inf`` for a span of saturated / out-of-range input)
        threshold  the threshold in force for the bucket's last window
        state      the worst state seen in the bucket: critical > warning > normal > calibrating
        rms        the highest per-channel RMS of the raw window (the vibration level), None without stats

The alert list holds the alert events (``kind`` raised, escalated, cleared; ``alert`` the alert's id, ``silenced``
when a silence held it back from the sinks; ``stage`` changed / degrading and ``reason``; in brief, the
``explanation`` (``summary``, the leading ``channels``) and the ``condition`` (``velocity_mm_s``, ``zone``,
``bearing_verdict``, ``bearing_summary``) of a raised or escalated alert) and the technicians' answers
(``kind`` ``answer``, ``answer`` its kind: ack, confirmed, false_alarm, silence, unsilence; ``by``, ``via``,
``time``, ``alert``, and a silence's ``hours`` and ``until``), oldest first.

The default, 600 buckets of one second, is ten minutes at any rate of one window per second or more (a
600-pixel chart: one point per pixel), and the last 600 windows of a slower sensor. The highest score is
kept because a chart of averages would hide the one window that matters.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from edge_agent.alerts import AlertEvent, WindowResult

#: Worst-state order of the alert states (and of the calibration phase, which never alerts).
STATE_RANK = {"calibrating": 0, "normal": 1, "warning": 2, "critical": 3}
#: Longest text (reason, summaries) an alert entry keeps.
TEXT = 500


class SensorHistory:
    """The last ``points`` score buckets and the last ``events`` alert events of one sensor. Thread-safe."""

    def __init__(self, points: int = 600, bucket_s: float = 1.0, events: int = 50,
                 clock: Callable[[], float] = time.time) -> None:
        if points < 1 or bucket_s <= 0 or events < 1:
            raise ValueError("history: points, bucket_s and events must be positive")
        self.bucket_s = float(bucket_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: deque[list] = deque(maxlen=points)
        self._key: int | None = None  # bucket index (t // bucket_s) of the newest bucket
        self._events: deque[dict] = deque(maxlen=events)
        self.windows = 0  # windows recorded since start

    def record(self, result: WindowResult, state: str) -> None:
        """Account for one scored window (or over-range span) and the state after judging it."""
        t = self._clock()
        key = math.floor(t / self.bucket_s)
        score = float(result.score)
        rms = max((v for k, v in result.stats.items() if k.startswith("rms_")), default=None)
        with self._lock:
            self.windows += 1
            if key == self._key and self._buckets:
                b = self._buckets[-1]
                b[0] = t
                b[1] = max(b[1], score)
                b[2] = result.threshold
                if STATE_RANK.get(state, 0) > STATE_RANK.get(b[3], 0):
                    b[3] = state
                if rms is not None:
                    b[4] = rms if b[4] is None else max(b[4], rms)
                return
            self._key = key
            self._buckets.append([t, score, result.threshold, state, rms])

    def record_event(self, event: AlertEvent, alert: str | None = None, silenced: bool = False) -> None:
        """Keep an alert event (raised / escalated / cleared) for the page's alert list, with its alert's id and
        whether a silence held it back."""
        d = event.to_dict()
        entry = {k: d[k] for k in ("kind", "severity", "time", "score", "threshold", "window_count", "started_at",
                                   "model_version")}
        entry |= {"recorded": self._clock(), "alert": alert, "silenced": silenced, "stage": d["stage"],
                  "reason": d["reason"][:TEXT], "explanation": _brief_explanation(event.explanation),
                  "condition": _brief_condition(event.condition)}
        with self._lock:
            self._events.append(entry)

    def record_answer(self, answer: dict) -> None:
        """Keep a technician's answer (``answers.Answer.to_dict()``) in the alert list."""
        entry = {"kind": "answer", "answer": answer["kind"], "recorded": self._clock()}
        entry |= {k: answer.get(k) for k in ("by", "via", "time", "alert", "hours", "until")}
        with self._lock:
            self._events.append(entry)

    def snapshot(self) -> dict:
        """A JSON-ready copy: columns ``t``, ``score`` (None = over range), ``threshold``, ``state``, ``rms``,
        and ``alerts`` (oldest first)."""
        with self._lock:
            buckets = [list(b) for b in self._buckets]
            events = list(self._events)
            windows = self.windows
        return {
            "bucket_s": self.bucket_s,
            "windows": windows,
            "t": [round(b[0], 3) for b in buckets],
            "score": [_finite(b[1], 6) for b in buckets],
            "threshold": [_finite(b[2], 6) for b in buckets],
            "state": [b[3] for b in buckets],
            "rms": [_finite(b[4], 6) for b in buckets],
            "alerts": events,
        }


def _brief_explanation(x: dict | None) -> dict | None:
    """What the page shows of an alert's explanation: its summary and its three leading channels."""
    if not x:
        return None
    channels = [{k: c.get(k) for k in ("name", "share", "ratio")} for c in (x.get("channels") or [])[:3]]
    return {"summary": str(x.get("summary") or "")[:TEXT], "channels": channels}


def _brief_condition(x: dict | None) -> dict | None:
    """What the page shows of an alert's condition: velocity (mm/s), zone, the bearing verdict and summary."""
    if not x:
        return None
    sev, bearing = x.get("severity") or {}, x.get("bearing") or {}
    return {"velocity_mm_s": sev.get("max_mm_s"), "zone": sev.get("zone"),
            "bearing_verdict": bearing.get("verdict"),
            "bearing_summary": None if bearing.get("summary") is None else str(bearing["summary"])[:TEXT]}


def _finite(x: float | None, digits: int) -> float | None:
    """``x`` to ``digits`` significant digits; None for None, NaN and infinities (JSON has none of them)."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")
