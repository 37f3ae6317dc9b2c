"""Alert state machine: turns per-window anomaly scores into alerts people can trust.

One ``AlertStateMachine`` per device. The scorer hands over one ``WindowResult`` per scored window;
``update`` returns an ``AlertEvent`` when the alert state changes, else ``None``.

Rules (all levels relative to the threshold in force for that window)::

    above      score >  threshold                     (a "hit" in the k-of-n history)
    critical   score >= critical_ratio * threshold
    clear      score <  clear_ratio * threshold       (hysteresis: a lower level to recover)

    normal   --(>= k hits in the last n windows, not in cooldown)--> warning | critical   "raised"
    warning  --(>= k critical windows in the last n)---------------> critical            "escalated"
    warning | critical --(clear_windows consecutive clear windows)--> normal             "cleared"

- Debounce: fewer than ``k`` hits among the last ``n`` windows never raise; hits further apart than ``n``
  windows never add up.
- Severity at raise time is ``critical`` when the k-of-n rule also holds at the critical level, else
  ``warning``. Escalation is debounced the same way, so one noisy window never pages anyone as critical.
  An alert does not de-escalate: it stays critical until it clears.
- Hysteresis: while an alert is active, windows between the clear level and the threshold keep it active
  and restart the count of consecutive clear windows.
- Cooldown: after a recovery no alert is raised for ``cooldown_s`` seconds of the injected monotonic clock;
  windows are still scored and recorded, so an alert that persists through the cooldown is raised on the
  first window after it.
- A score of ``+inf`` (the pipeline's verdict on a span of saturated or out-of-range input, which is
  beyond anything the model can score) is a hit at every level. Windows with a NaN or negative score,
  or a threshold that is not a positive finite number, are counted in ``invalid`` and ignored.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

from edge_agent.settings import setting

logger = logging.getLogger(__name__)

AlertState = Literal["normal", "warning", "critical"]
EventKind = Literal["raised", "escalated", "cleared"]


@dataclass(frozen=True)
class AlertPolicy:
    """Debounce, hysteresis, cooldown and severity of the alert state machine (``[alerts]`` of the config)."""

    k: int = setting(3, lo=1, hi=1000, doc="windows above the threshold, out of the last n, that raise an alert")
    n: int = setting(5, lo=1, hi=1000, doc="the debounce window: k of the last n windows above the threshold")
    clear_ratio: float = setting(0.8, lo=0.01, hi=1.0, doc="clears below clear_ratio x threshold (hysteresis)")
    clear_windows: int = setting(5, lo=1, hi=100_000, doc="consecutive windows below it that clear the alert")
    cooldown_s: float = setting(60.0, lo=0.0, hi=86_400.0, doc="seconds after a clear before the next raise")
    critical_ratio: float = setting(2.0, lo=1.0, hi=1000.0, doc="critical above critical_ratio x threshold")

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"k: must be 1..n (n = {self.n}), got {self.k}")
        if not 0.0 < self.clear_ratio <= 1.0:
            raise ValueError(f"clear_ratio: must be in (0, 1], got {self.clear_ratio}")
        if self.clear_windows < 1:
            raise ValueError(f"clear_windows: must be >= 1, got {self.clear_windows}")
        if not (self.cooldown_s >= 0.0 and math.isfinite(self.cooldown_s)):
            raise ValueError(f"cooldown_s: must be finite and >= 0, got {self.cooldown_s}")
        if not (self.critical_ratio >= 1.0 and math.isfinite(self.critical_ratio)):
            raise ValueError(f"critical_ratio: must be finite and >= 1, got {self.critical_ratio}")


@dataclass(frozen=True)
class WindowResult:
    """One scored window, as the scorer hands it over.

    ``time`` is wall-clock unix seconds of the window end; ``seq_end`` the sample sequence number of the
    window's last sample; ``stats`` window statistics such as ``{"rms_0": ..., "peak_0": ...}``.
    """

    device: str
    model_version: str
    score: float
    threshold: float
    time: float
    seq_end: int
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AlertEvent:
    """A change of alert state. ``severity`` is the state after the event (``normal`` for "cleared").

    ``window_count`` is the number of windows above the threshold among the last ``n``;
    ``started_at`` the ``time`` of the window that raised the alert.
    """

    kind: EventKind
    severity: AlertState
    device: str
    model_version: str
    score: float
    threshold: float
    time: float
    seq_end: int
    stats: dict[str, float]
    window_count: int
    started_at: float

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (non-finite floats become ``None``)."""
        d = asdict(self)
        d["stats"] = {str(k): _json_float(v) for k, v in self.stats.items()}
        for key in ("score", "threshold", "time", "started_at"):
            d[key] = _json_float(d[key])
        return d


def _json_float(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


class AlertStateMachine:
    """k-of-n debounce, hysteresis, cooldown and severity for one device (see the module docstring).

    Not thread-safe: call ``update`` from one thread (the scoring loop).
    """

    def __init__(self, policy: AlertPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._hits: deque[bool] = deque(maxlen=policy.n)
        self._crit: deque[bool] = deque(maxlen=policy.n)
        self._state: AlertState = "normal"
        self._clear_run = 0
        self._started_at: float | None = None
        self._cooldown_until = -math.inf
        self.invalid = 0
        self.events = 0

    @property
    def state(self) -> AlertState:
        return self._state

    @property
    def in_cooldown(self) -> bool:
        return self._state == "normal" and self._clock() < self._cooldown_until

    def update(self, result: WindowResult) -> AlertEvent | None:
        """Record one window; return the event if the alert state changed, else ``None``."""
        score, threshold = float(result.score), float(result.threshold)
        if math.isnan(score) or score < 0.0 or not (math.isfinite(threshold) and threshold > 0.0):
            self.invalid += 1
            logger.debug("alert: ignoring window seq_end=%d score=%r threshold=%r", result.seq_end, score, threshold)
            return None
        p = self.policy
        self._hits.append(score > threshold)
        self._crit.append(score >= p.critical_ratio * threshold)
        hits, crits = sum(self._hits), sum(self._crit)

        if self._state == "normal":
            if hits >= p.k and self._clock() >= self._cooldown_until:
                self._state = "critical" if crits >= p.k else "warning"
                self._started_at = result.time
                self._clear_run = 0
                return self._event("raised", result, hits)
            return None

        if score < p.clear_ratio * threshold:
            self._clear_run += 1
        else:
            self._clear_run = 0
        if self._clear_run >= p.clear_windows:
            event = self._event("cleared", result, hits, severity="normal")
            self._state = "normal"
            self._started_at = None
            self._clear_run = 0
            self._hits.clear()
            self._crit.clear()
            self._cooldown_until = self._clock() + p.cooldown_s
            return event
        if self._state == "warning" and crits >= p.k:
            self._state = "critical"
            return self._event("escalated", result, hits)
        return None

    def reset(self) -> None:
        """Forget the k-of-n history and the clear run (after a model swap or a restarted sender); keep the active alert."""
        self._hits.clear()
        self._crit.clear()
        self._clear_run = 0

    def _event(self, kind: EventKind, r: WindowResult, hits: int, severity: AlertState | None = None) -> AlertEvent:
        self.events += 1
        started = self._started_at if self._started_at is not None else r.time
        return AlertEvent(
            kind=kind,
            severity=severity if severity is not None else self._state,
            device=r.device,
            model_version=r.model_version,
            score=float(r.score),
            threshold=float(r.threshold),
            time=float(r.time),
            seq_end=int(r.seq_end),
            stats=dict(r.stats),
            window_count=int(hits),
            started_at=float(started),
        )
