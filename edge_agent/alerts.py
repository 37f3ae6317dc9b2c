"""Alert state machine: turns per-window anomaly scores into alerts people can trust.

One ``AlertStateMachine`` per device. The scorer hands over one ``WindowResult`` per scored window;
``update`` returns an ``AlertEvent`` when the alert state changes, else ``None``.

Rules (all levels relative to the threshold in force for that window: the bundle's or device's threshold
times the *baseline*, 1 unless the process settled at a new level, below)::

    above      score >  threshold                     (a "hit" in the k-of-n history)
    critical   score >= critical_ratio * threshold
    clear      score <  clear_ratio * threshold       (hysteresis: a lower level to recover)

    normal   --(>= k hits in the last n windows, not in cooldown)--> warning | critical   "raised"
    warning  --(>= k critical windows in the last n, or rising)----> critical            "escalated"
    warning | critical --(clear_windows consecutive clear windows)--> normal             "cleared"
    warning | critical --(settled at a new, lower level)------------> normal             "cleared" (settled)

The two alert levels mean, for maintenance staff: ``warning`` = **changed** (a persistent shift worth
watching), ``critical`` = **degrading** (act): the scores reach ``critical_ratio`` x the threshold in k of
the last n windows, or they keep rising during the alert (the median of the latest ``trend_windows``
windows is at least ``trend_growth`` x that of the alert's first ``trend_windows``, and their Theil-Sen
slope over the latest ``2 * trend_windows`` windows is positive). ``AlertEvent.reason`` says which.

- Debounce: fewer than ``k`` hits among the last ``n`` windows never raise; hits further apart than ``n``
  windows never add up.
- Severity at raise time is ``critical`` when the k-of-n rule also holds at the critical level, else
  ``warning``. Escalation is debounced the same way, so one noisy window never pages anyone as critical.
  An alert does not de-escalate: it stays critical until it clears.
- Hysteresis: while an alert is active, windows between the clear level and the threshold keep it active
  and restart the count of consecutive clear windows.
- Recovery at a new level (``settle_windows`` > 0): a process that comes back from an event rarely
  returns exactly to the state the model was trained on (a valve reopened, a pump restarted: temperatures
  and pressures settle slowly elsewhere). An alert clears as *settled* when its latest ``settle_windows``
  windows all score at most ``settle_ratio`` x the alert's own level (its k-th highest score, so one spike
  does not set it), below ``critical_ratio`` x the threshold, and not rising (Theil-Sen slope <= 0). The
  settled level times ``settle_margin`` becomes the baseline: until ``clear_windows`` consecutive windows
  are back below the clear level of the original threshold, alerts are judged against it (a new event
  above the settled level still raises). Degradation that keeps rising (bearings) never settles: its
  scores stay near or above the alert's level.
- Cooldown: after a recovery no alert is raised for ``cooldown_s`` seconds of the injected monotonic clock;
  windows are still scored and recorded, so an alert that persists through the cooldown is raised on the
  first window after it.
- A score of ``+inf`` (the pipeline's verdict on a span of saturated or out-of-range input, which is
  beyond anything the model can score) is a hit at every level. Windows with a NaN or negative score,
  or a threshold that is not a positive finite number, are counted in ``invalid`` and ignored.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from edge_agent.settings import setting

logger = logging.getLogger(__name__)

AlertState = Literal["normal", "warning", "critical"]
EventKind = Literal["raised", "escalated", "cleared"]
#: The alert levels in maintenance terms.
STAGES = {"warning": "changed", "critical": "degrading"}


@dataclass(frozen=True)
class AlertPolicy:
    """Debounce, hysteresis, cooldown and severity of the alert state machine (``[alerts]`` of the config)."""

    k: int = setting(3, lo=1, hi=1000, doc="windows above the threshold, out of the last n, that raise an alert")
    n: int = setting(5, lo=1, hi=1000, doc="the debounce window: k of the last n windows above the threshold")
    clear_ratio: float = setting(0.8, lo=0.01, hi=1.0, doc="clears below clear_ratio x threshold (hysteresis)")
    clear_windows: int = setting(5, lo=1, hi=100_000, doc="consecutive windows below it that clear the alert")
    cooldown_s: float = setting(60.0, lo=0.0, hi=86_400.0, doc="seconds after a clear before the next raise")
    critical_ratio: float = setting(2.0, lo=1.0, hi=1000.0, doc="critical above critical_ratio x threshold")
    settle_windows: int = setting(5, lo=0, hi=100_000, doc="windows at a steady, lower level that clear an alert "
                                  "as settled at a new level (0: never)")
    settle_ratio: float = setting(0.6, lo=0.01, hi=1.0, doc="settled: at most settle_ratio x the alert's own level")
    settle_margin: float = setting(1.2, lo=1.0, hi=100.0, doc="after settling, judge against the settled level "
                                   "x settle_margin until the scores return below the clear level")
    trend_windows: int = setting(10, lo=0, hi=100_000, doc="windows compared for 'degrading' by a rising trend "
                                 "(0: by level only)")
    trend_growth: float = setting(1.5, lo=1.0, hi=1000.0, doc="rising: the latest trend_windows score at least "
                                  "trend_growth x the alert's first ones")

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
        if self.settle_windows < 0 or self.trend_windows < 0:
            raise ValueError(f"settle_windows and trend_windows: must be >= 0, got {self.settle_windows} and "
                             f"{self.trend_windows}")
        if not 0.0 < self.settle_ratio <= 1.0:
            raise ValueError(f"settle_ratio: must be in (0, 1], got {self.settle_ratio}")
        if not (self.settle_margin >= 1.0 and math.isfinite(self.settle_margin)):
            raise ValueError(f"settle_margin: must be finite and >= 1, got {self.settle_margin}")
        if not (self.trend_growth >= 1.0 and math.isfinite(self.trend_growth)):
            raise ValueError(f"trend_growth: must be finite and >= 1, got {self.trend_growth}")


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
    too_good: str = ""  # evidence that the window matched too well (blind_spots): a hit whatever its score
    level: float = 0.0  # the level check's ratio (blind_spots.LevelWatch): judged like score / threshold when larger
    level_reason: str = ""  # ... and what it found, in words (for the alert's reason when it carries the alert)


@dataclass(frozen=True)
class AlertEvent:
    """A change of alert state. ``severity`` is the state after the event (``normal`` for "cleared").

    ``window_count`` is the number of windows above the threshold among the last ``n``;
    ``started_at`` the ``time`` of the window that raised the alert; ``reason`` the evidence, in words;
    ``baseline`` the factor on ``threshold`` in force (1, or the settled level's after a settle);
    ``explanation`` which channels and features carry the window's error (``contract.explain``; raised and
    escalated events of scored windows, added by the pipeline); ``condition`` the machine's condition in physical
    terms when the alert changed (velocity mm/s, ISO zone, the bearing report: ``edge_agent.condition``).
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
    reason: str = ""
    baseline: float = 1.0
    explanation: dict | None = None
    condition: dict | None = None

    @property
    def stage(self) -> str:
        """What the severity means to maintenance staff: ``changed`` (watch), ``degrading`` (act), or ``""``."""
        return STAGES.get(self.severity, "")

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (non-finite floats become ``None``), with ``stage``."""
        d = asdict(self)
        d["stage"] = self.stage
        d["stats"] = {str(k): _json_float(v) for k, v in self.stats.items()}
        for key in ("score", "threshold", "time", "started_at"):
            d[key] = _json_float(d[key])
        return d


def _json_float(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


class AlertStateMachine:
    """k-of-n debounce, hysteresis, recovery at a new level, trend, cooldown and severity for one device (see
    the module docstring). Memory is bounded by the policy (n, settle_windows, trend_windows), not by the
    length of an alert.

    Not thread-safe: call ``update`` from one thread (the scoring loop).
    """

    def __init__(self, policy: AlertPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._hits: deque[bool] = deque(maxlen=policy.n)
        self.last_hit = False  # the last window recorded counted as a hit (False: it was invalid)
        self._crit: deque[bool] = deque(maxlen=policy.n)
        self._state: AlertState = "normal"
        self._clear_run = 0
        self._started_at: float | None = None
        self._cooldown_until = -math.inf
        self._baseline = 1.0  # factor on the threshold while the process is judged against a settled level
        self._home_run = 0  # consecutive windows back below the clear level of the original threshold
        self._top: list[float] = []  # the alert's k highest ratios (a min-heap): its level
        self._first: list[float] = []  # the alert's first trend_windows ratios
        self._recent: deque[float] = deque(maxlen=max(policy.settle_windows, 2 * policy.trend_windows, 1))
        self._window: deque[float] = deque(maxlen=policy.n)  # the last n ratios, whatever the state
        self.invalid = 0
        self.events = 0
        self.settled = 0

    @property
    def state(self) -> AlertState:
        return self._state

    @property
    def in_cooldown(self) -> bool:
        return self._state == "normal" and self._clock() < self._cooldown_until

    @property
    def baseline(self) -> float:
        """Factor on the threshold in force: 1, or the settled level x margin after a settle."""
        return self._baseline

    def update(self, result: WindowResult) -> AlertEvent | None:
        """Record one window; return the event if the alert state changed, else ``None``."""
        score, threshold = float(result.score), float(result.threshold)
        if math.isnan(score) or score < 0.0 or not (math.isfinite(threshold) and threshold > 0.0):
            self.invalid += 1
            logger.debug("alert: ignoring window seq_end=%d score=%r threshold=%r", result.seq_end, score, threshold)
            self.last_hit = False
            return None
        p = self.policy
        shifted = math.isfinite(result.level) and result.level * threshold > score
        if shifted:
            score = result.level * threshold
        self._track_home(score / threshold)
        threshold *= self._baseline
        ratio = score / threshold
        too_good = bool(result.too_good)  # a hit, never critical, never a clear window, no level or trend
        if not too_good:
            self._window.append(ratio)
        self.last_hit = too_good or ratio > 1.0
        self._hits.append(self.last_hit)
        self._crit.append(not too_good and ratio >= p.critical_ratio)
        hits, crits = sum(self._hits), sum(self._crit)

        if self._state == "normal":
            if hits >= p.k and self._clock() >= self._cooldown_until:
                self._state = "critical" if crits >= p.k else "warning"
                self._started_at = result.time
                self._clear_run = 0
                self._top, self._first = [], []
                self._recent.clear()
                for r in self._window:  # the windows that raised it belong to the alert
                    if r > 1.0:
                        self._remember(r)
                why = (f"{result.too_good}; {hits} of the last {p.n} windows were hits" if too_good else
                       f"{hits} of the last {p.n} windows above the threshold")
                if shifted and result.level_reason:
                    why += f" or off their level ({result.level_reason})"
                if self._state == "critical":
                    why += f", {crits} at {p.critical_ratio:g} x or more"
                return self._event("raised", result, hits, why)
            return None

        if too_good:
            self._clear_run = 0
            return None
        self._remember(ratio)
        self._clear_run = self._clear_run + 1 if ratio < p.clear_ratio else 0
        if self._clear_run >= p.clear_windows:
            return self._clear(result, hits, f"{p.clear_windows} windows in a row below {p.clear_ratio:g} x the "
                                             "threshold")
        settled = self._settled_level()
        if settled is not None:
            level = sorted(self._top)[0]
            self._baseline *= settled * p.settle_margin
            self._home_run = 0
            self.settled += 1
            return self._clear(result, hits, f"settled at a new level: the last {p.settle_windows} windows score "
                                             f"at most {settled:.2f} x the threshold, steady, against "
                                             f"{level:.2f} x during the alert; judged against "
                                             f"{self._baseline:.2f} x the threshold until the scores come back")
        if self._state == "warning":
            if crits >= p.k:
                self._state = "critical"
                return self._event("escalated", result, hits, f"{crits} of the last {p.n} windows at "
                                                              f"{p.critical_ratio:g} x the threshold or more")
            rising = self._rising()
            if rising:
                self._state = "critical"
                return self._event("escalated", result, hits, rising)
        return None

    def reset(self) -> None:
        """Forget the k-of-n history, the clear run and the trend (after a model swap or a restarted sender);
        keep the active alert. A new model's scores are not comparable: the baseline returns to 1."""
        self._hits.clear()
        self._crit.clear()
        self._clear_run = 0
        self._recent.clear()
        self._window.clear()
        self._top, self._first = [], []
        self._baseline, self._home_run = 1.0, 0

    # ------------------------------------------------------------------ evidence
    def _remember(self, ratio: float) -> None:
        p = self.policy
        if len(self._top) < p.k:
            heapq.heappush(self._top, ratio)
        elif ratio > self._top[0]:
            heapq.heapreplace(self._top, ratio)
        if len(self._first) < p.trend_windows:
            self._first.append(ratio)
        self._recent.append(ratio)

    def _settled_level(self) -> float | None:
        """The settled level (x threshold in force) when the alert's latest windows sit steady well below its
        own level, else None."""
        p, m = self.policy, self.policy.settle_windows
        if m == 0 or len(self._top) < p.k or len(self._recent) < m:
            return None
        last = list(self._recent)[-m:]
        level, high = self._top[0], max(last)
        if not math.isfinite(level) or high > p.settle_ratio * level or high >= p.critical_ratio:
            return None
        return high if _theil_sen(last) <= 0.0 else None

    def _rising(self) -> str:
        """Evidence of a rising trend during the alert, in words, or ``""``."""
        t = self.policy.trend_windows
        if t == 0 or len(self._first) < t or len(self._recent) < 2 * t:
            return ""
        recent = list(self._recent)[-2 * t:]
        early, late = _median(self._first), _median(recent[-t:])
        if not (math.isfinite(late) and late >= self.policy.trend_growth * early and _theil_sen(recent) > 0.0):
            return ""
        return (f"rising: the last {t} windows score {late:.2f} x the threshold (median), against {early:.2f} x "
                f"in the alert's first {t}")

    def _track_home(self, ratio: float) -> None:
        """Back below the clear level of the original threshold for clear_windows windows: the baseline ends."""
        if self._baseline == 1.0:
            return
        self._home_run = self._home_run + 1 if ratio < self.policy.clear_ratio else 0
        if self._home_run >= self.policy.clear_windows:
            logger.info("alert: scores back below %.2f x the threshold for %d windows; the settled baseline "
                        "(%.2f x) ends", self.policy.clear_ratio, self._home_run, self._baseline)
            self._baseline, self._home_run = 1.0, 0

    def _clear(self, result: WindowResult, hits: int, why: str) -> AlertEvent:
        event = self._event("cleared", result, hits, why, severity="normal")
        self._state = "normal"
        self._started_at = None
        self._clear_run = 0
        self._hits.clear()
        self._crit.clear()
        self._cooldown_until = self._clock() + self.policy.cooldown_s
        return event

    def _event(self, kind: EventKind, r: WindowResult, hits: int, reason: str,
               severity: AlertState | None = None) -> AlertEvent:
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
            reason=reason,
            baseline=self._baseline,
        )


def _median(x: list[float]) -> float:
    return float(np.median(x))


def _theil_sen(y: list[float]) -> float:
    """Median of the pairwise slopes of (m,) values (per window); robust to a few outliers."""
    a = np.asarray(y, np.float64)
    if a.size < 2 or not np.isfinite(a).all():
        return math.inf if a.size >= 2 else 0.0
    i, j = np.triu_indices(a.size, 1)
    return float(np.median((a[j] - a[i]) / (j - i)))
