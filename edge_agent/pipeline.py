"""The scoring pipeline of one sensor: frames → windower → scorer → alert state machine.

::

    Frame (seq, samples (n, C)) ─► StuckWatch (runs of one value per channel: ``stuck()``, health ``stuck``)
        ─► Windower ─► Window (T, F) ─► Scorer ─► score
        ─► [calibrating: collect scores, then set the device threshold]
        ─► TooGoodWatch (a window too good is a hit, ``blind_spots``)
        ─► AlertStateMachine.update ─► AlertEvent | None ─► on_window(window, result, event)

The same class runs in ``edge-agent run`` (one per sensor), ``edge-agent calibrate`` and
``edge-agent replay``, so an offline replay is exactly what the gateway computes.

Clock: the pipeline keeps its own time, derived from the sample index: ``t = anchor_t + (seq -
anchor_seq) / sample_rate``. The anchor is set by the first frame pushed with a time, and again after
a break in the stream (a gap, a restarted sender, a new burst) or when the given time drifts more than
``MAX_CLOCK_DRIFT_S`` from the sample clock. Window times, over-range spans and the alert cooldown all
read this one clock, so a replay runs on recording time and the live agent on sample time.

Breaks in the stream restart window assembly (no window spans a gap) but never the alert debounce,
except when the sender restarted (a backwards sequence jump with new data). A *burst* sensor (a
snapshot every few minutes, sequence numbers restarting per burst) is not a restarting sender: with
``burst=True``, or once bursts are recognised (two restarts at the same start sequence), the debounce
carries across bursts.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from edge_agent import calibration
from edge_agent.alerts import AlertEvent, AlertPolicy, AlertStateMachine, WindowResult
from edge_agent.blind_spots import LevelWatch, Stuck, StuckWatch, TooGoodWatch, stuck_limits
from edge_agent.contract import explain
from edge_agent.contract.bundle import Bundle
from edge_agent.contract.frames import Frame, seq_gap
from edge_agent.scorer import Scorer
from edge_agent.status import counter
from edge_agent.windows import BRIDGE_FRACTION, Window, Windower

log = logging.getLogger(__name__)

#: Least fraction of a window's worth of unscorable input that must be saturated / beyond range for
#: that span to count as an (infinitely) anomalous window: sporadic clipping is counted, never alerted on.
OVER_RANGE_MIN_FRACTION = 1e-3
#: The sample clock is re-anchored when a frame's given time differs from it by more than this.
MAX_CLOCK_DRIFT_S = 2.0
#: Restarts at the same start sequence after which a sender counts as a burst sensor.
BURST_RESTARTS = 1

#: Called for every scored window, and with ``None`` for an over-range span (see ``Pipeline.push``).
WindowCallback = Callable[[Window | None, WindowResult, "AlertEvent | None"], None]
PipelineState = Literal["calibrating", "normal", "warning", "critical"]


def make_windower(bundle: Bundle, sample_rate: float | None = None, bridge_fraction: float = 0.0,
                  device: str = "") -> Windower:
    """The windower for a bundle: range check from ``signal.range``; sample rate from ``signal.sample_rate``,
    the preprocessing spec, or else ``sample_rate`` (the config's ``source.sample_rate``); up to
    ``bridge_fraction`` of a window's samples may be missing (``windows.Windower``'s ``bridge``)."""
    signal = bundle.manifest.get("signal", {})
    value_range = signal.get("range")
    return Windower(
        bundle.spec,
        value_range=float(value_range) if isinstance(value_range, int | float) and value_range > 0 else None,
        sample_rate=signal.get("sample_rate") or bundle.spec.sample_rate or sample_rate,
        bridge=int(bridge_fraction * bundle.spec.window_samples),
        device=device,
    )


def make_stuck_watch(bundle: Bundle, sample_rate: float | None, device: str = "") -> StuckWatch:
    """The stuck-channel check for a bundle (``edge_agent.blind_spots``); off, said once in the log, for a bundle
    written before ``signal.flat_runs``."""
    facts = bundle.flat_runs
    channels = bundle.spec.channels
    if facts is None:
        log.info("%s: bundle %s has no signal.flat_runs (written before the stuck-channel check): a frozen channel "
                 "is not reported for it; retrain to turn the check on", device or "sensor", bundle.version)
        return StuckWatch(channels, None, (0,) * len(channels), sample_rate)
    return StuckWatch(channels, stuck_limits(facts.longest, facts.changed, bundle.spec.window_samples), facts.longest,
                      sample_rate)


def make_too_good_watch(bundle: Bundle, device: str = "") -> TooGoodWatch:
    """The too-good check for a bundle (``edge_agent.blind_spots``); off, said once in the log, for a bundle written
    before ``score_quantiles.healthy_served_span_max``."""
    if not bundle.span_floors:
        log.info("%s: bundle %s has no score_quantiles.healthy_served_span_max (written before the too-good check): "
                 "windows that match too well (an expected pattern that does not happen) are not reported for it; "
                 "retrain to turn the check on", device or "sensor", bundle.version)
    return TooGoodWatch(bundle.span_floors, bundle.threshold.value)


def make_level_watch(bundle: Bundle, threshold: float, device: str = "") -> LevelWatch:
    """The level check for a raw-mode bundle (``edge_agent.blind_spots``); off, said once in the log, for one written
    before ``signal.window_means`` and for a device calibrated on its own windows (``threshold`` other than the
    bundle's: its level may sit elsewhere than the training rows', and it is judged by the calibrated threshold)."""
    facts = bundle.window_means
    if bundle.spec.mode == "raw" and facts is None:
        log.info("%s: bundle %s has no signal.window_means (written before the level check): a channel's level shift "
                 "too small for the score is not reported for it; retrain to turn the check on", device or "sensor",
                 bundle.version)
    if facts is not None and threshold != bundle.threshold.value:
        log.info("%s: the level check is off: the device is calibrated on its own windows (threshold %.6g, the "
                 "bundle's %.6g), whose level need not be the training rows'", device or "sensor", threshold,
                 bundle.threshold.value)
        facts = None
    return LevelWatch(facts, tuple(bundle.spec.channels))


def flat_stats(stats: dict | None) -> dict[str, float]:
    """{"rms": [a, b], "peak": [c, d]} -> {"rms_0": a, "rms_1": b, "peak_0": c, "peak_1": d}."""
    out: dict[str, float] = {}
    for name, values in (stats or {}).items():
        for i, v in enumerate(values):
            out[f"{name}_{i}"] = float(v)
    return out


class SampleClock:
    """Time of a sample index: ``anchor_t + (seq - anchor_seq) / rate`` (seconds).

    Anchored by the first frame, re-anchored at a break in the stream or when a given time drifts
    from it. Without a sample rate a given time holds for the whole frame; without any given time the
    clock counts seconds of samples (or samples, without a rate) from the first one, forwards only.
    """

    def __init__(self, rate: float | None) -> None:
        self.rate = float(rate) if rate else None
        self._seq: int | None = None
        self._t = 0.0
        self._given = False

    def anchor(self, seq: int, t: float, given: bool = True) -> None:
        self._seq, self._t, self._given = int(seq), float(t), given

    def at(self, seq: int) -> float:
        if self._seq is None:
            return 0.0
        if self.rate is None and self._given:
            return self._t
        return self._t + seq_gap(self._seq, seq) / (self.rate or 1.0)

    def observe(self, frame: Frame, t: float | None, gap: int | None, now: float) -> None:
        """Account for ``frame`` (first sample taken at ``t`` when known; ``gap`` from the expected sequence
        number, None for the first frame; ``now`` the time so far)."""
        if t is not None:
            if (self._seq is None or not self._given or gap != 0 or self.rate is None
                    or abs(self.at(frame.seq) - t) > MAX_CLOCK_DRIFT_S):
                self.anchor(frame.seq, t)
        elif self._seq is None:
            self.anchor(frame.seq, 0.0, given=False)
        elif gap is not None and gap < 0:  # went backwards: keep time running forwards
            self.anchor(frame.seq, now, given=self._given)


@dataclass
class ScoringCounters:
    """What the pipeline did with the windows it was given (scoring thread)."""

    windows_scored: int = counter("Windows scored by the model.")
    alert_events: int = counter("Alert events (raised, escalated, cleared).", "alert_events_total", key="alerts")
    restarts: int = counter("Sender restarts that reset the debounce (the sequence jumped back with new data).",
                            "sender_restarts_total")
    bursts: int = counter("Restarts taken as a new burst of a snapshot sensor (the debounce kept).")
    over_range_spans: int = counter("Window-sized spans of saturated input (or beyond signal.range) judged as "
                                    "anomalous without scoring.")
    too_good_windows: int = counter("Windows too good to be healthy: the latest windows all scored far below any "
                                    "healthy stretch as long (an expected pattern did not happen); each a hit for "
                                    "the alert debounce.")
    level_windows: int = counter("Windows whose channel means strayed off their training level further than the "
                                 "level check allows (raw mode); each a hit for the alert debounce.")
    stuck_episodes: int = counter("Times a channel froze: one raw value repeated longer than the training data ever "
                                  "held one (health condition stuck).")


class Pipeline:
    """Windower → scorer → (calibration) → alert state machine for one sensor. Not thread-safe: one thread pushes.

    Args:
        bundle: the served bundle.
        device: device id (goes into every result and alert).
        threshold: the threshold in force (bundle default or the device's calibration).
        policy: alert policy.
        scorer: the bundle's scorer (built here when None).
        sample_rate: Hz, when the bundle has none (config ``source.sample_rate``, a table's row rate).
        calibrate: score this many windows first without alerting, then set the threshold from them with
            the bundle's method (``calibration.compute``) and start alerting.
        burst: True: the sender is a burst sensor (the debounce carries across restarts); None: recognise it.
        bridge_fraction: share of a window's samples that may be missing or NaN and left out instead of
            restarting assembly (``windows.Windower``'s ``bridge``; 0 = never; the default is the agent's).
        on_window: called for every scored window (and over-range span) with its event, if any.
        on_calibrated: called with the ``DeviceThreshold`` once calibration finished.
        cooldown_clock: the clock of the alert cooldown; default the pipeline clock (recording time in a replay).
            The live agent passes ``time.monotonic``: its pipeline clock follows the wall clock (re-anchored when
            the frames' arrival times drift), and a wall clock stepped back by NTP must not stretch a cooldown
            by the size of the step, nor one stepped forward cut it short.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: str,
        threshold: float,
        policy: AlertPolicy,
        scorer: Scorer | None = None,
        num_threads: int = 1,
        sample_rate: float | None = None,
        calibrate: int = 0,
        burst: bool | None = None,
        bridge_fraction: float = BRIDGE_FRACTION,
        on_window: WindowCallback | None = None,
        on_calibrated: Callable[[calibration.DeviceThreshold], None] | None = None,
        cooldown_clock: Callable[[], float] | None = None,
    ) -> None:
        self.device = device
        self.bundle = bundle
        self.sample_rate = sample_rate
        self.bridge_fraction = float(bridge_fraction)
        self.scorer = scorer or Scorer(bundle, num_threads=num_threads)
        self.windower = make_windower(bundle, sample_rate, self.bridge_fraction, device)
        self.stuck_watch = make_stuck_watch(bundle, self.windower.sample_rate, device)
        self.too_good = make_too_good_watch(bundle, device)
        self.level_watch = make_level_watch(bundle, float(threshold), device)
        self.clock = SampleClock(self.windower.sample_rate)
        self.alerts = AlertStateMachine(policy, clock=cooldown_clock or self.now)
        self.threshold = float(threshold)
        self.on_window = on_window
        self.on_calibrated = on_calibrated
        self.calibrate_windows = int(calibrate)
        self.calibration_scores: list[float] = []
        self.burst_declared = burst
        self.bursts_recognised = False
        self._restart_seqs: list[int] = []
        self.last_score: float | None = None
        self.counters = ScoringCounters()
        self._unscored = self._unscored_over_range = 0  # input since the last window, and how much was over range
        self._now = 0.0
        self._break = False

    # ------------------------------------------------------------------ state
    @property
    def calibrating(self) -> bool:
        return self.calibrate_windows > 0 and len(self.calibration_scores) < self.calibrate_windows

    @property
    def state(self) -> PipelineState:
        return "calibrating" if self.calibrating else self.alerts.state

    @property
    def burst(self) -> bool:
        return bool(self.burst_declared) or self.bursts_recognised

    def now(self) -> float:
        """The pipeline clock (seconds): time of the latest sample accounted for."""
        return self._now

    # ------------------------------------------------------------------ input
    def push(self, frame: Frame, t: float | None = None) -> int:
        """Feed one frame whose first sample was taken at ``t`` (unix or recording seconds; None: derive it
        from the sample index). Returns the number of windows it completed (each scored and judged).

        Saturated or out-of-range samples are never scored, but a machine shaking beyond the sensor's
        range must not go quiet: each ``window_samples`` of accepted input that completed no window, and
        of which at least ``OVER_RANGE_MIN_FRACTION`` was over range, counts for the alert state machine
        as a window with an infinite score. An isolated clipped sample never does.
        """
        wc = self.windower.counters
        expected = self.windower.expected_seq
        resyncs, gaps, samples_in, over_range = wc.resyncs, wc.gaps, wc.samples_in, wc.samples_over_range
        gap = None if expected is None else seq_gap(expected, frame.seq)
        restarted = gap is not None and gap < 0
        if not (restarted and self.windower.is_duplicate(frame)):
            self.clock.observe(frame, t, 1 if self._break and gap == 0 else gap, self._now)
            self._break = False
            self._watch_flat(frame, gap)
        self._now = self.clock.at(frame.seq)
        n = self.windower.push(frame, self._on_window)
        if wc.resyncs != resyncs and restarted:
            self._sender_restarted(frame.seq)
        elif expected is None:
            self._restart_seqs.append(frame.seq)
        if wc.gaps != gaps:
            self._unscored = self._unscored_over_range = 0
        self._now = self.clock.at(frame.next_seq)
        if n:
            self._unscored = self._unscored_over_range = 0
            return n
        self._unscored += wc.samples_in - samples_in
        self._unscored_over_range += wc.samples_over_range - over_range
        spans, rest = divmod(self._unscored, self.bundle.spec.window_samples)
        if spans:
            fraction = min(1.0, self._unscored_over_range / self._unscored)
            if fraction >= OVER_RANGE_MIN_FRACTION:
                for _ in range(spans):
                    self._over_range_span(frame, fraction)
            # carry the remainder over, with its share of the over-range samples
            self._unscored, self._unscored_over_range = rest, round(self._unscored_over_range * rest / self._unscored)
        return n

    def _watch_flat(self, frame: Frame, gap: int | None) -> None:
        """Follow each channel's run of identical values (a gap or a restart: the runs start over)."""
        x = frame.samples
        if x.ndim != 2 or x.shape[1] != len(self.stuck_watch.channels):
            return  # refused by the windower, counted there
        if gap:
            self.stuck_watch.reset()
        self.counters.stuck_episodes += self.stuck_watch.push(x)

    def stuck(self) -> list[Stuck]:
        """The channels stuck now (``edge_agent.blind_spots``; the health monitor reports them)."""
        return self.stuck_watch.stuck()

    def break_stream(self) -> None:
        """The next frame does not follow the last one (a new snapshot of a recording): restart window
        assembly and re-anchor the clock at the next frame's time; keep the alert debounce."""
        self.stuck_watch.reset()
        self.windower.restart()
        self._break = True
        self._unscored = self._unscored_over_range = 0

    def _sender_restarted(self, seq: int) -> None:
        """A backwards jump with new data: a restarted sender, or the next burst of a burst sensor."""
        seen = self._restart_seqs
        if not self.burst and seen and seen.count(seq) >= BURST_RESTARTS and self.burst_declared is None:
            self.bursts_recognised = True
            log.info("%s: the sender restarts at seq %d again: taken as a burst sensor (debounce kept)", self.device,
                     seq)
        seen.append(seq)
        del seen[:-8]
        self._unscored = self._unscored_over_range = 0
        if self.burst:
            self.counters.bursts += 1
            return
        self.counters.restarts += 1
        self.alerts.reset()  # a restarted sender: its history says nothing now
        self.too_good.reset()

    # ------------------------------------------------------------------ windows
    def _over_range_span(self, frame: Frame, fraction: float) -> None:
        result = WindowResult(
            device=self.device,
            model_version=self.bundle.version,
            score=math.inf,
            threshold=self.threshold,
            time=self._now,
            seq_end=frame.next_seq,
            stats={"over_range_fraction": fraction},
        )
        self.counters.over_range_spans += 1
        self._judge(None, result)

    def _on_window(self, w: Window) -> None:
        score = self.scorer.score(w.steps)
        self.last_score = score
        self.counters.windows_scored += 1
        self._now = self.clock.at(w.seq_end)
        result = WindowResult(
            device=self.device,
            model_version=self.bundle.version,
            score=score,
            threshold=self.threshold,
            time=self._now,
            seq_end=w.seq_end,
            stats=flat_stats(w.stats) | ({"bridged_samples": float(w.bridged)} if w.bridged else {}),
        )
        if self.calibrating:
            self._calibration_window(w, result)
        else:
            self._judge(w, result)

    def _calibration_window(self, w: Window, result: WindowResult) -> None:
        if self.on_window is not None:  # while ``calibrating`` is still true
            self.on_window(w, result, None)
        self.calibration_scores.append(result.score)
        if self.calibrating:
            return
        try:
            record = calibration.compute(np.asarray(self.calibration_scores), self.bundle, self.device)
        except ValueError as exc:
            log.error("%s: calibration on %d windows failed (%s); keeping threshold %.6g", self.device,
                      len(self.calibration_scores), exc, self.threshold)
            return
        self.threshold = record.value
        self.too_good.calibrated(np.asarray(self.calibration_scores))
        self.level_watch = make_level_watch(self.bundle, self.threshold, self.device)
        log.info("%s: threshold %.6g from the first %d windows (%s)", self.device, record.value, record.n,
                 record.method)
        if self.on_calibrated is not None:
            self.on_calibrated(record)

    def _judge(self, w: Window | None, result: WindowResult) -> None:
        """Hand a result to the alert state machine and to the ``on_window`` callback. A too-good window
        (``blind_spots.TooGoodWatch``) is a hit for the debounce like one above the threshold."""
        too_good = self.too_good.update(result.score, result.threshold) if w is not None else None
        level = (self.level_watch.check(self.windower.window_samples())
                 if w is not None and self.level_watch.facts is not None else None)
        if level is not None:
            if level.ratio > 1.0:
                self.counters.level_windows += 1
            result = replace(result, level=level.ratio, level_reason=level.describe() if level.ratio > 1.0 else "")
        if too_good is None:
            event = self.alerts.update(result)
        else:
            self.counters.too_good_windows += 1
            event = self.alerts.update(replace(result, too_good=too_good.describe()))
            if event is not None:
                event = replace(event, stats=event.stats | {"too_good_span": float(too_good.span),
                                                            "too_good_highest": too_good.highest,
                                                            "too_good_limit": too_good.limit})
        if event is not None and event.kind != "cleared" and w is not None:
            event = replace(event, explanation=self.explain_last())
        if event is not None:
            self.counters.alert_events += 1
        if self.on_window is not None:
            self.on_window(w, result, event)

    def explain_last(self) -> dict | None:
        """Which channels and features carry the error of the window scored last (``contract.explain``), from
        the served model's own reconstruction; None before the first window."""
        if self.scorer.windows == 0:
            return None
        healthy = (self.bundle.manifest.get(explain.MANIFEST_KEY) or {}).get("healthy")
        return explain.explain(self.scorer.feature_errors(), self.bundle.spec, healthy).to_dict()

    # ------------------------------------------------------------------ model swap
    def swap(self, bundle: Bundle, scorer: Scorer, threshold: float) -> None:
        """Serve a new, already tested model from the next window on (restarts the debounce: scores of
        two models are not comparable)."""
        if bundle.spec != self.bundle.spec or bundle.manifest.get("signal") != self.bundle.manifest.get("signal"):
            counters, expected = self.windower.counters, self.windower.expected_seq
            self.windower = make_windower(bundle, self.sample_rate, self.bridge_fraction, self.device)
            self.windower.counters = counters
            self.windower.expected_seq = expected
            self.stuck_watch = make_stuck_watch(bundle, self.windower.sample_rate, self.device)
            if self.windower.sample_rate != self.clock.rate:
                anchor = self._now
                self.clock = SampleClock(self.windower.sample_rate)
                if expected is not None:
                    self.clock.anchor(expected, anchor)
        self.bundle, self.scorer, self.threshold = bundle, scorer, float(threshold)
        self.too_good = make_too_good_watch(bundle, self.device)
        self.level_watch = make_level_watch(bundle, float(threshold), self.device)
        self.alerts.reset()
        self._unscored = self._unscored_over_range = 0


def wall_time_of(frame: Frame, rate: float | None, received: float | None = None) -> float:
    """Wall-clock time of a live frame's first sample: its arrival time minus its duration."""
    now = time.time() if received is None else received
    return now - (frame.n_samples / rate if rate else 0.0)
