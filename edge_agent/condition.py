"""A sensor's condition in physical terms, beside the model's score: velocity RMS and ISO zone every window, and
at an alert the bearing report (``severity.py``, ``diagnosis.py``; numpy only).

::

    raw window (n, C) ─► SeverityTracker.update ─► velocity mm/s, zone A-D        every scored window
                      ─► BaselineLearner.add (the first healthy windows)            until the baseline is learned
    alert raised / escalated ─► diagnose(raw window, geometry, baseline) ─► "likely outer race" | ... | "no pattern"

Velocity needs raw vibration (features mode, a sample rate of 1 kHz or more) in known units (the sensor's
``[sensors.severity] units`` or the bundle's ``signal.units``); diagnosis needs ``[sensors.bearing]``. What cannot
be measured says why, once in the log and in ``notes``, and is counted; nothing here ever stops scoring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from edge_agent.contract.bundle import Bundle
from edge_agent.diagnosis import BaselineLearner, BearingGeometry, EnvelopeBaseline, diagnose
from edge_agent.ratelog import RateLimitedLog
from edge_agent.severity import Severity, SeverityPolicy, SeverityTracker, resolve_units
from edge_agent.status import counter

log = logging.getLogger(__name__)

#: Healthy windows the envelope baseline is learned from (a healthy window then exceeds the largest healthy level
#: with probability 1/31).
BASELINE_WINDOWS = 30


@dataclass
class ConditionCounters:
    """Velocity and bearing diagnosis of one sensor."""

    velocity_windows: int = counter("Windows whose vibration velocity RMS was measured.")
    velocity_refused: int = counter("Windows without a velocity (units unknown, sample rate too low, bad samples).")
    diagnoses: int = counter("Bearing diagnoses made at an alert.")
    diagnosis_refused: int = counter("Alerts whose window could not be diagnosed (rate, window length, samples).")


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

    def serve(self, bundle: Bundle, sample_rate: float | None) -> None:
        """A (new) model serves: its rate, units and channels; the averages and the baseline start over."""
        self._rate = sample_rate or bundle.spec.sample_rate
        self._channels = bundle.spec.channels
        units = resolve_units(self.policy, bundle.manifest)
        self.tracker = SeverityTracker(self.policy, self._rate, units)
        self.baseline = None
        self._learner = None
        if self.geometry is not None and self._rate:
            try:
                self._learner = BaselineLearner(self._rate, self.geometry)
            except ValueError as exc:
                self._ratelog.log(logging.WARNING, "geometry", "no bearing diagnosis: %s", exc)

    def on_window(self, samples: np.ndarray, new_s: float | None, healthy: bool) -> Severity | None:
        """Measure one scored window's raw samples (n, C); ``healthy``: the alert state is normal (the baseline
        learns only from such windows)."""
        if self.tracker is None:
            return None
        self.severity = self.tracker.update(samples, new_s)
        if self.severity.max_mm_s is None:
            self.counters.velocity_refused += 1
            self._ratelog.log(logging.INFO, "velocity", "no vibration velocity: %s", "; ".join(self.severity.notes))
        else:
            self.counters.velocity_windows += 1
        if healthy and self._learner is not None and self.baseline is None:
            try:
                self._learner.add(samples)
            except ValueError as exc:
                self._ratelog.log(logging.WARNING, "baseline", "healthy window left out of the bearing baseline: %s",
                                  exc)
            else:
                if self._learner.count >= BASELINE_WINDOWS:
                    self.baseline = self._learner.baseline()
                    self._learner = None
                    log.info("sensor %s: bearing baseline learned on %d healthy windows", self.device,
                             BASELINE_WINDOWS)
        return self.severity

    def diagnose(self, samples: np.ndarray) -> dict | None:
        """The bearing report of an alert's raw window (n, C), or None without a bearing configured. A window
        that cannot be analysed gives a report that says why (``verdict`` "not analysed")."""
        if self.geometry is None or not self._rate:
            return None
        try:
            report = diagnose(samples, self._rate, self.geometry, self.baseline, channels=self._channels)
        except ValueError as exc:
            self.counters.diagnosis_refused += 1
            self.last_verdict = "not analysed"
            return {"verdict": "not analysed", "summary": f"bearing diagnosis not possible: {exc}", "notes": [str(exc)]}
        self.counters.diagnoses += 1
        self.last_verdict = report.verdict
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
