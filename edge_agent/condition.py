"""A sensor's condition in physical terms, beside the model's score: velocity RMS and ISO zone every window, and
at an alert the bearing report (``severity.py``, ``diagnosis.py``; numpy only).

::

    raw window (n, C) ─► SeverityTracker.update ─► velocity mm/s, zone A-D        every scored window
                      ─► BaselineLearner.add (the first healthy windows)            until the baseline is learned
                      ─► kept if above the threshold and clear of the last kept     up to DIAGNOSIS_WINDOWS - 1
    alert raised / escalated ─► diagnose([kept windows + this one], geometry, baseline)
                             ─► "likely outer race" | ... | "no pattern", and how many windows it averaged

At an alert the squared-envelope spectra of the alert's windows are averaged (``diagnosis.diagnose``): the noise
varies K times less, so weaker defect lines stand out. The windows are the alert's own: those that scored above
the threshold in the k-of-n debounce that raised it and while it is active, not overlapping one another (the
agent's windows overlap by window - hop; overlapping windows share samples, and their spectra are not the
independent ones the averaged null law assumes), the most recent first, at most ``DIAGNOSIS_WINDOWS``. With the
usual hop of half a window, a raise has 2-3 of them and later escalations up to ``DIAGNOSIS_WINDOWS``.

Velocity needs raw vibration (features mode, a sample rate of 1 kHz or more) in known units (the sensor's
``[sensors.severity] units`` or the bundle's ``signal.units``); diagnosis needs ``[sensors.bearing]``. What cannot
be measured says why, once in the log and in ``notes``, and is counted; nothing here ever stops scoring.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

from edge_agent.contract.bundle import Bundle
from edge_agent.diagnosis import (
    AVERAGE_WINDOWS,
    BaselineLearner,
    BearingGeometry,
    EnvelopeBaseline,
    diagnose,
    windows_apart,
)
from edge_agent.ratelog import RateLimitedLog
from edge_agent.severity import Severity, SeverityPolicy, SeverityTracker, resolve_units
from edge_agent.status import counter

log = logging.getLogger(__name__)

#: Healthy windows the envelope baseline is learned from (a healthy window then exceeds the largest healthy level
#: with probability 1/31).
BASELINE_WINDOWS = 30
#: An alert's raw windows whose envelope spectra are averaged at most (the baseline learns averages of as many).
DIAGNOSIS_WINDOWS = AVERAGE_WINDOWS


@dataclass
class ConditionCounters:
    """Velocity and bearing diagnosis of one sensor."""

    velocity_windows: int = counter("Windows whose vibration velocity RMS was measured.")
    velocity_refused: int = counter("Windows without a velocity (units unknown, sample rate too low, bad samples).")
    diagnoses: int = counter("Bearing diagnoses made at an alert.")
    diagnosis_refused: int = counter("Alerts whose window could not be diagnosed (rate, window length, samples).")
    diagnosis_windows: int = counter("Raw windows averaged in the bearing diagnoses (an alert's, not overlapping).")


class SensorCondition:
    """Velocity and zone per window, bearing diagnosis at alerts, for one sensor (scoring thread only)."""

    def __init__(self, device: str, policy: SeverityPolicy | None, geometry: BearingGeometry | None) -> None:
        self.device = device
        self.policy = policy or SeverityPolicy()
        self.geometry = geometry
        self.counters = ConditionCounters()
        self.severity: Severity | None = None
        self.tracker: SeverityTracker | None = None
        self.baseline: EnvelopeBaseline | None = None
        self._learner: BaselineLearner | None = None
        self._channels: tuple[str, ...] = ()
        self._rate: float | None = None
        self._ratelog = RateLimitedLog(log, 3600.0, prefix=f"sensor {device}: ")
        self.last_verdict: str | None = None
        self.last_windows: int | None = None  # windows the last diagnosis averaged
        # the alert's windows: (scored-window index, seq_end, (n, C) samples), above the threshold, not overlapping
        self._alert_windows: deque[tuple[int, int, np.ndarray]] = deque(maxlen=DIAGNOSIS_WINDOWS - 1)
        self._index = 0  # windows measured

    def serve(self, bundle: Bundle, sample_rate: float | None) -> None:
        """A (new) model serves: its rate, units and channels; the averages and the baseline start over."""
        self._rate = sample_rate or bundle.spec.sample_rate
        self._channels = bundle.spec.channels
        units = resolve_units(self.policy, bundle.manifest)
        self.tracker = SeverityTracker(self.policy, self._rate, units)
        self.baseline = None
        self._learner = None
        self._alert_windows.clear()
        if self.geometry is not None and self._rate:
            try:
                self._learner = BaselineLearner(self._rate, self.geometry)
            except ValueError as exc:
                self._ratelog.log(logging.WARNING, "geometry", "no bearing diagnosis: %s", exc)

    def on_window(self, samples: np.ndarray, new_s: float | None, healthy: bool, *, hit: bool = False,
                  seq_end: int | None = None, debounce: int = 5) -> Severity | None:
        """Measure one scored window's raw samples (n, C) float32 (kept, not copied: hand a fresh array);
        ``healthy``: the alert state is normal (the baseline learns only from such windows); ``hit``: it scored
        above the threshold; ``seq_end``: its end in the sensor's sample sequence (mod 2**32), to tell overlapping
        windows apart; ``debounce``: the alert policy's n (while normal, hits older than that many windows are
        forgotten: they could not raise an alert)."""
        if self.tracker is None:
            return None
        self._index += 1
        self.severity = self.tracker.update(samples, new_s)
        if self.severity.max_mm_s is None:
            self.counters.velocity_refused += 1
            self._ratelog.log(logging.INFO, "velocity", "no vibration velocity: %s", "; ".join(self.severity.notes))
        else:
            self.counters.velocity_windows += 1
        if self.geometry is not None:
            self._keep(samples, healthy, hit, seq_end, debounce)
        if healthy and self._learner is not None and self.baseline is None:
            try:
                self._learner.add(samples, seq_end)
            except ValueError as exc:
                self._ratelog.log(logging.WARNING, "baseline", "healthy window left out of the bearing baseline: %s",
                                  exc)
            else:
                if self._learner.count >= BASELINE_WINDOWS:
                    self.baseline = self._learner.baseline()
                    log.info("sensor %s: bearing baseline learned on %d healthy windows (%d not overlapping: the "
                             "bound for averages of K windows)", self.device, BASELINE_WINDOWS,
                             self._learner.separate)
                    self._learner = None
        return self.severity

    def _keep(self, samples: np.ndarray, healthy: bool, hit: bool, seq_end: int | None, debounce: int) -> None:
        kept = self._alert_windows
        if healthy:
            while kept and kept[0][0] <= self._index - debounce:
                kept.popleft()  # outside the k-of-n history: it cannot be one of the windows that raise the alert
        if hit and (not kept or windows_apart(kept[-1][1], seq_end, samples.shape[0])) \
                and not any(np.array_equal(samples, x) for _, _, x in kept):  # a stuck stream: one window
            kept.append((self._index, seq_end, samples))

    def alert_cleared(self) -> None:
        """The alert cleared: its windows are no evidence for the next one."""
        self._alert_windows.clear()

    def diagnose(self, samples: np.ndarray, seq_end: int | None = None) -> dict | None:
        """The bearing report of an alert: this window's raw samples (n, C), ending at ``seq_end``, averaged with
        the alert's earlier windows that do not overlap it (``windows`` in the report says how many), or None
        without a bearing configured. Windows that cannot be analysed give a report that says why (``verdict``
        "not analysed")."""
        if self.geometry is None or not self._rate:
            return None
        windows = [samples]
        for _, end, x in reversed(self._alert_windows):
            if len(windows) >= DIAGNOSIS_WINDOWS:
                break
            if x.shape == samples.shape and windows_apart(end, seq_end, samples.shape[0]) \
                    and not any(np.array_equal(x, w) for w in windows):  # copies are not independent windows
                windows.append(x)
        try:
            report = diagnose(windows if len(windows) > 1 else samples, self._rate, self.geometry, self.baseline,
                              channels=self._channels)
        except ValueError as exc:
            self.counters.diagnosis_refused += 1
            self.last_verdict = "not analysed"
            self.last_windows = None
            return {"verdict": "not analysed", "summary": f"bearing diagnosis not possible: {exc}", "notes": [str(exc)],
                    "windows": len(windows)}
        self.counters.diagnoses += 1
        self.counters.diagnosis_windows += report.windows
        self.last_verdict = report.verdict
        self.last_windows = report.windows
        out = report.as_dict()
        if self.baseline is None:
            out["notes"] = [*out.get("notes", []), "no healthy baseline yet: judged against the window's own floor"]
        return out

    def status(self) -> dict:
        """The status document's ``condition``: the last velocity and zone, the baseline's progress."""
        sev = None if self.severity is None else self.severity.as_dict()
        learning = None if self._learner is None else self._learner.count
        return {"severity": sev, "bearing": None if self.geometry is None else {
            "baseline_windows": BASELINE_WINDOWS if self.baseline is not None else (learning or 0),
            "baseline_learned": self.baseline is not None}}
