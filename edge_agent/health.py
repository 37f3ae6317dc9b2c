"""Whether a sensor is monitored at all: the failures no anomaly score can show.

A sensor goes unmonitored in ways that raise no alert: nothing arrives (a port gone, a dead sensor, a broker
away), data arrives but no window can be scored (NaN now and then, dropped frames, the wrong channel count:
a window needs ``window_samples`` valid contiguous samples), or there is no model to score with. The
:class:`HealthMonitor` of each sensor watches for these on the scoring thread and returns a
:class:`HealthEvent` when the sensor's health changes; the sensor sends it through its alert sinks::

    ok ──(no frame for no_data limit)──────────────────────────────► no_data      "fault"
    ok ──(data, >= a window of it, none scored for no_window_s)────► no_windows   "fault"
    ok ──(no model to serve)───────────────────────────────────────► no_model     "fault"
    ok ──(the reader paused > FLOOD_SHARE of coverage_s)───────────► flooding     "fault"
    ok ──(< min_coverage of the samples reached a scored window)──► partial      "fault"
    ok ──(a channel's value frozen longer than training ever held)─► stuck        "fault"
    any fault ──(windows scored, coverage back, channels moving)───► ok           "recovered"

Coverage: windows are scored but samples are lost on the way (dropped frames, NaN that break windows, a
queue that overflowed): over the last ``coverage_s`` seconds, the share of the samples that should have
arrived (``samples_in`` + lost ones) that reached a window, i.e. were not missing, dropped, invalid (other than
over range: that is judged) or discarded with a broken window. Below ``min_coverage`` the sensor is only
partly monitored, and says so: a sensor that scores two windows a minute is not healthy. A sensor whose reader
had to pause (it sends more than its intake budget decodes: ``sources.IntakeBudget``) floods, and says that.

Stuck: a channel whose raw value does not change for longer than the training data ever held one value (the
pipeline's ``blind_spots.StuckWatch``, from the bundle's ``signal.flat_runs``) is a sensor fault the scores cannot
show: a frozen reading is easy to reconstruct. Windows are still scored, but they judge a dead reading; the reason
names the channel, the value and for how long. It clears when the value changes again.

A fault that turns into another (data comes back, still nothing scores) is a new "fault" event. A burst
sensor (snapshots with silences between them) must not look dead between bursts: once the pipeline knows
it as one, the no-data limit is ``max(no_data_s, BURST_MARGIN x the longest recent silence)``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edge_agent.blind_spots import Stuck
from edge_agent.status import HealthState

Condition = Literal["ok", "no_data", "no_windows", "no_model", "flooding", "partial", "stuck"]
CONDITIONS = ("ok", "no_data", "no_windows", "no_model", "flooding", "partial", "stuck")
#: A reader paused more than this share of the coverage period floods.
FLOOD_SHARE = 0.05

#: A burst sensor may stay silent this many times its longest recent silence before it counts as dead.
BURST_MARGIN = 2.0
#: Silences longer than this (seconds) are remembered as gaps between bursts.
MIN_SILENCE_S = 1.0
#: How often (seconds) the conditions are evaluated when nothing was scored.
EVERY_S = 0.25


@dataclass(frozen=True)
class HealthEvent:
    """A change of a sensor's health, sent through the alert sinks (``kind`` is always ``"health"``).

    ``state`` is ``"fault"`` or ``"recovered"``; ``condition`` the health after the event (``ok`` when
    recovered); ``since`` unix seconds since when the sensor was not monitored; ``time`` of the event.
    """

    state: Literal["fault", "recovered"]
    condition: Condition
    device: str
    reason: str
    since: float | None
    time: float
    model_version: str | None = None
    kind: Literal["health"] = "health"

    @property
    def severity(self) -> str:
        return self.state

    def to_dict(self) -> dict:
        return {"kind": self.kind, "state": self.state, "condition": self.condition, "device": self.device,
                "reason": self.reason, "since": self.since,
                "time": round(self.time, 3), "model_version": self.model_version}


@dataclass(frozen=True)
class Notice:
    """A maintenance notice about a monitored sensor, sent through the alert sinks (``kind`` is ``"notice"``):
    nothing is wrong with the machine or the link, but someone should act — e.g. "retraining due" when the
    scores drift from the model's training distribution. ``state`` is ``"raised"`` or ``"cleared"``."""

    state: Literal["raised", "cleared"]
    notice: str
    device: str
    reason: str
    time: float
    model_version: str | None = None
    kind: Literal["notice"] = "notice"

    @property
    def severity(self) -> str:
        return self.state

    def to_dict(self) -> dict:
        return {"kind": self.kind, "state": self.state, "notice": self.notice, "device": self.device,
                "reason": self.reason, "time": round(self.time, 3), "model_version": self.model_version}


@dataclass(frozen=True)
class Input:
    """What the monitor needs to explain a fault: the windower's counters (plain ints)."""

    samples_in: int = 0
    samples_invalid: int = 0
    samples_over_range: int = 0
    gaps: int = 0
    samples_missing: int = 0
    frames_rejected: int = 0
    samples_discarded: int = 0  # valid samples of windows that broke
    samples_dropped: int = 0  # queue overflow (counted as loss only where gaps cannot show it)
    throttled_s: float = 0.0  # the reader paused (intake budget)
    gaps_detectable: bool = True
    burst: bool = False  # a burst sensor: the tail of each burst is discarded by design

    def lost(self) -> int:
        """Samples that should have been scored and were not (see the module docstring)."""
        return (self.samples_missing + self.samples_invalid - self.samples_over_range
                + (0 if self.burst else self.samples_discarded) + (0 if self.gaps_detectable else self.samples_dropped))

    def expected(self) -> int:
        return self.samples_in + self.samples_missing + (0 if self.gaps_detectable else self.samples_dropped)


class HealthMonitor:
    """The health of one sensor (scoring thread only).

    Args:
        device: the sensor's id (goes into the events).
        no_data_s: seconds without a frame after which the sensor is ``no_data``.
        no_window_s: seconds without a scored window, while data arrives, after which it is ``no_windows``
            (only once at least ``window_samples`` samples arrived since the last window).
        clock, wall: monotonic and wall-clock time sources.
    """

    def __init__(self, device: str, no_data_s: float, no_window_s: float, *, coverage_s: float = 60.0,
                 min_coverage: float = 0.9, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.device = device
        self.no_data_s = float(no_data_s)
        self.no_window_s = float(no_window_s)
        self.coverage_s = float(coverage_s)
        self.min_coverage = float(min_coverage)
        self.coverage: float | None = None  # over the last coverage_s (None: not enough data yet)
        self._history: deque[tuple[float, Input, int]] = deque()  # (monotonic time, counters, judged) every ~1 s
        self._clock, self._wall = clock, wall
        self.state = HealthState()
        now = clock()
        self._started, self._started_wall = now, wall()
        self._last_data: float | None = None
        self._last_data_wall: float | None = None
        self._judged: int | None = None  # windows scored + over-range spans, at the last look
        self._last_window: float | None = None
        self._last_window_wall: float | None = None
        self._unscored_since: float | None = None  # first frame after the last scored window
        self._unscored_since_wall: float | None = None
        self._base = Input()  # the counters when the last window was scored
        self._silences: deque[float] = deque(maxlen=8)
        self._next = 0.0

    def no_data_limit(self, burst: bool) -> float:
        """Seconds of silence that make the sensor ``no_data`` (longer for a burst sensor)."""
        if burst and self._silences:
            return max(self.no_data_s, BURST_MARGIN * max(self._silences))
        return self.no_data_s

    def update(self, *, data: bool, judged: int | None, counts: Callable[[], Input], burst: bool = False,
               window_samples: int = 1, model_version: str | None = None, no_model: str = "",
               hint: Callable[[], str] | None = None, stuck: Callable[[], list[Stuck]] | None = None
               ) -> HealthEvent | None:
        """Account for one look at the sensor; return an event when its health changed.

        Args:
            data: frames arrived since the last look.
            judged: windows scored plus over-range spans judged so far (None: no model).
            counts: the windower's counters now (called only when needed).
            burst: the pipeline takes the sensor for a burst sensor.
            window_samples: samples one window needs.
            no_model: why there is no model (with ``judged`` None).
            hint: a short note on the source's state for a ``no_data`` reason.
            stuck: the channels frozen now (``Pipeline.stuck``; called only when needed).
        """
        now = self._clock()
        if data:
            if self._last_data is not None and now - self._last_data > MIN_SILENCE_S:
                self._silences.append(now - self._last_data)
            self._last_data, self._last_data_wall = now, self._wall()
            if self._unscored_since is None:
                self._unscored_since, self._unscored_since_wall = now, self._last_data_wall
        scored = False
        if judged is not None and judged != self._judged:
            fresh = self._judged is None  # the first look, or a model just put in service
            self._judged = judged
            self._base = counts()
            if fresh and judged == 0:  # nothing scored yet: unscored time counts from now on
                self._unscored_since = self._unscored_since_wall = None
                if data:
                    self._unscored_since, self._unscored_since_wall = now, self._last_data_wall
            else:
                self._last_window, self._last_window_wall = now, self._wall()
                self._unscored_since = self._unscored_since_wall = None
                scored = True
        if now < self._next and not (scored and self.state.state in ("no_data", "no_windows", "no_model")):
            return None
        self._next = now + EVERY_S
        if scored:
            if self.state.state in ("no_data", "no_windows", "no_model"):
                self._history.clear()  # coverage is measured from the recovery on: the outage was its own fault
            return self._set(*self._scored_health(now, counts(), judged, window_samples, stuck), model_version)
        if judged is None:
            return self._set("no_model", f"no model to score with: {no_model}" if no_model else "no model to score with",
                             self._started_wall, model_version)
        silent_for = now - (self._last_data if self._last_data is not None else self._started)
        if silent_for >= self.no_data_limit(burst):
            since = self._last_data_wall if self._last_data_wall is not None else self._started_wall
            note = hint() if hint is not None else ""
            return self._set("no_data", f"no data for {silent_for:.0f} s" + (f" ({note})" if note else ""), since,
                             model_version)
        c = counts()
        if (self._unscored_since is not None and now - self._unscored_since >= self.no_window_s
                and c.samples_in - self._base.samples_in >= window_samples):
            since = self._last_window_wall if self._last_window_wall is not None else self._unscored_since_wall
            return self._set("no_windows", self._why_no_windows(now, c, window_samples), since, model_version)
        if self.state.state in ("no_data", "no_windows", "no_model"):
            return None  # cleared by the next scored window
        return self._set(*self._scored_health(now, c, judged, window_samples, stuck), model_version)

    def _scored_health(self, now: float, c: Input, judged: int, window_samples: int,
                       stuck: Callable[[], list[Stuck]] | None) -> tuple[Condition, str, float | None]:
        """The health of a sensor whose windows are scored: stuck when a channel is frozen, else by coverage."""
        coverage = self._coverage(now, c, judged, window_samples)  # always: it keeps the coverage history
        frozen = stuck() if stuck is not None else []
        if not frozen:
            return coverage
        longest = max((f.seconds for f in frozen if f.seconds is not None), default=None)
        since = self.state.since if self.state.state == "stuck" else (
            self._wall() - longest if longest is not None else self._wall())
        return "stuck", _why_stuck(frozen, len(frozen) == frozen[0].of_channels), since

    def _coverage(self, now: float, c: Input, judged: int, window_samples: int) -> tuple[Condition, str, float | None]:
        """ok, flooding or partial over the last ``coverage_s`` (see the module docstring); partial only while some
        windows are scored (none at all is ``no_windows``, after ``no_window_s``)."""
        h = self._history
        if not h or now - h[-1][0] >= 1.0:
            h.append((now, c, judged))
        while len(h) > 2 and now - h[1][0] >= self.coverage_s:
            h.popleft()
        t0, a, judged0 = h[0]
        span = now - t0
        expected, lost = c.expected() - a.expected(), c.lost() - a.lost()
        self.coverage = max(0.0, 1.0 - lost / expected) if expected >= window_samples else None
        paused = c.throttled_s - a.throttled_s
        if span >= min(self.coverage_s, 5.0) and paused > FLOOD_SHARE * span:
            lost_part = "" if self.coverage is None else f", {_percent(1 - self.coverage)} of its samples lost"
            return ("flooding", f"the sensor sends more than its intake budget decodes: reading paused "
                    f"{_percent(paused / span)} of the last {span:.0f} s{lost_part} (check the node's rate and "
                    f"payload size; source.intake_cpu)", self._wall() - span)
        if span < min(self.coverage_s, 5.0) or self.coverage is None:
            s = self.state
            return (s.state, s.reason, s.since) if s.state in ("partial", "flooding") else ("ok", "", None)
        if self.coverage < self.min_coverage and judged > judged0:
            return ("partial", f"only {_percent(self.coverage)} of the samples of the last {span:.0f} s reached a scored "
                    f"window: {self._why_lost(a, c)}", self._wall() - span)
        return "ok", "", None

    @staticmethod
    def _why_lost(a: Input, c: Input) -> str:
        parts = []
        for what, n in (("missing (dropped frames, gaps)", c.samples_missing - a.samples_missing),
                        ("invalid (NaN or inf)", (c.samples_invalid - c.samples_over_range)
                         - (a.samples_invalid - a.samples_over_range)),
                        ("discarded with windows the invalid or missing ones broke",
                         0 if c.burst else c.samples_discarded - a.samples_discarded),
                        ("dropped: the scorer fell behind", 0 if c.gaps_detectable else
                         c.samples_dropped - a.samples_dropped)):
            if n > 0:
                parts.append(f"{n} {what}")
        return ", ".join(parts) or "samples lost"

    def _why_no_windows(self, now: float, c: Input, window_samples: int) -> str:
        b = self._base
        n = c.samples_in - b.samples_in
        invalid, over = c.samples_invalid - b.samples_invalid, c.samples_over_range - b.samples_over_range
        gaps, missing = c.gaps - b.gaps, c.samples_missing - b.samples_missing
        rejected = c.frames_rejected - b.frames_rejected
        since = self._last_window if self._last_window is not None else self._unscored_since
        parts = []
        if invalid:
            kinds = " or ".join(k for k, v in (("NaN", invalid - over), ("over range", over)) if v)
            parts.append(f"{_percent(invalid / max(n, 1))} of input invalid ({kinds})")
        if gaps:
            parts.append(f"{gaps} gaps ({missing} samples lost)")
        if rejected:
            parts.append(f"{rejected} frames with the wrong channel count")
        why = ", ".join(parts) if parts else f"{n} samples arrived"
        return f"no windows scored for {now - since:.0f} s: {why}; a window needs {window_samples} valid contiguous samples"

    def _set(self, condition: Condition, reason: str, since: float | None, model_version: str | None
             ) -> HealthEvent | None:
        s = self.state
        changed = condition != s.state
        s.reason = reason
        if not changed:
            return None
        was_fault, was = s.state != "ok", s.state
        s.state, s.since = condition, None if since is None else round(since, 3)
        if condition == "ok" and not was_fault:
            return None
        if not was_fault:
            s.events += 1  # times the sensor stopped being monitored
        if condition == "ok":
            why = ("the samples reach scored windows again" if was in ("partial", "flooding") else
                   "the frozen channel changes again" if was == "stuck" else "windows are scored again")
            return HealthEvent("recovered", "ok", self.device, why, None, self._wall(), model_version)
        return HealthEvent("fault", condition, self.device, reason, s.since, self._wall(), model_version)


def _why_stuck(frozen: list[Stuck], every_channel: bool) -> str:
    """The stuck fault in words: which channels, what they read, how long, and what to check."""
    what = "; ".join(f.describe() for f in frozen)
    if every_channel:
        return (f"{what}: every channel is frozen, so the node is probably resending its last reading (a hung "
                "firmware or converter): restart the sensor node and check its power; the model's scores mean "
                "nothing until the values move again")
    return (f"{what}: a reading that does not change at all is a sensor fault, not the machine: check that sensor, "
            "its cable and connector, and its input on the node; its scores mean little until it moves again")


def _percent(x: float) -> str:
    """0.93 -> '93 %', 4e-4 -> '0.04 %' (two significant digits below 1 %)."""
    pct = 100.0 * x
    return f"{pct:.0f} %" if pct >= 1 else f"{pct:.2g} %"
