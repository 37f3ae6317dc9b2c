"""One sensor's part in the fleet loop: what it keeps for retraining, whether its scores drift, its rollouts.

The sensor calls :meth:`SensorFleet.on_window` for every scored window (scoring thread)::

    window ─► DriftMonitor (PSI of recent scores vs the manifest's training quantiles)
           ─► SensorRollout.observe (recent windows for shadow scoring and probation)
           ─► WindowKeeper (alert context, reservoir, calibration, drift windows) ─► upload records (schema 3: with
              the technician's answer to the window's alert, when there is one, and the sensor's group)

and :meth:`status` for its status document (``uploads_kept``, ``drift``, ``notices``, ``rollout``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from edge_agent.answers import SensorAnswers
from edge_agent.contract import topics
from edge_agent.contract.errors import AgentError
from edge_agent.contract.upload_record import encode_record, new_id
from edge_agent.drift import DriftMonitor, DriftPolicy
from edge_agent.health import Notice
from edge_agent.ratelog import RateLimitedLog
from edge_agent.rollout import SensorRollout
from edge_agent.status import FleetCounters, fields_of
from edge_agent.uploader import KeepPolicy, Kept, WindowKeeper

log = logging.getLogger(__name__)

RETRAINING_DUE = "retraining due"


@dataclass(frozen=True)
class Upload:
    """An encoded record ready for the spool."""

    topic: str
    payload: bytes
    kind: str
    id: str


class SensorFleet:
    """Keeper, drift monitor and rollout of one sensor (any of them may be absent)."""

    def __init__(self, device: str, gateway: str, *, keep: KeepPolicy | None, drift: DriftPolicy | None,
                 rollout: SensorRollout | None, manifest: dict | None, group: str | None = None) -> None:
        self.device = device
        self.gateway = gateway
        self.group = group
        self.keeper = WindowKeeper(keep) if keep is not None else None
        self.drift = DriftMonitor(manifest or {}, drift) if drift is not None else None
        self.rollout = rollout
        self.counters = FleetCounters()
        self._ratelog = RateLimitedLog(log)
        self.on_notice: Callable[[Notice], None] | None = None  # the sensor sends notices through its sinks
        # the sensor's answers (``answers.SensorAnswers``): the alert id of a raise, the answer an alert's records carry
        self.answers: SensorAnswers | None = None

    def model_changed(self, manifest: dict) -> None:
        """A new model serves: its own training distribution."""
        if self.drift is not None:
            self.drift.reset(manifest)

    def on_window(self, pipeline, w, result, event) -> list[Upload]:
        """The scoring thread, once per scored window (``w`` the windower's window, ``result`` its WindowResult,
        ``event`` the alert event it caused). Returns the records to spool."""
        calibrating = pipeline.calibrating
        state = pipeline.alerts.state
        score = result.score
        if not calibrating:
            if self.drift is not None:
                was = self.drift.drifting
                self.drift.update(score, alerting=state != "normal")
                if self.drift.drifting != was:
                    self._drift_notice(pipeline, result.time)
            if self.rollout is not None and math.isfinite(score):
                self.rollout.observe(w.steps, score, result.threshold, pipeline.bundle.version)
        if self.keeper is None:
            return []
        rate = pipeline.windower.sample_rate
        if not rate:  # an upload record needs the sample rate: neither the bundle nor source.sample_rate has one
            if not self.counters.uploads_not_kept_no_rate:
                log.warning("%s: windows are not kept for retraining: the sample rate is unknown "
                            "(set source.sample_rate)", self.device)
            self.counters.uploads_not_kept_no_rate += 1
            return []
        kept = Kept("normal", pipeline.windower.window_samples(), score if math.isfinite(score) else None,
                    None if calibrating else result.threshold, state, result.time, w.seq_end,
                    pipeline.bundle.version)
        alert_id = self.answers.alert_id() if self.answers is not None and event is not None else None
        chosen = self.keeper.window(kept, event_kind=None if event is None else event.kind, calibrating=calibrating,
                                    drifting=bool(self.drift and self.drift.drifting), now=time.monotonic(),
                                    alert_id=alert_id)
        return [u for k in chosen if (u := self._encode(pipeline, k, rate)) is not None]

    def _drift_notice(self, pipeline, t: float) -> None:
        d = self.drift
        reason = (f"scores drift from the training distribution: PSI {d.value:.3f} > {d.policy.psi_limit:g} over the "
                  f"last {len(d._scores)} windows" if d.drifting else
                  f"scores are back within the training distribution: PSI {d.value:.3f}")
        (log.warning if d.drifting else log.info)("%s: %s: %s", self.device, RETRAINING_DUE, reason)
        if self.on_notice is not None:
            self.on_notice(Notice("raised" if d.drifting else "cleared", RETRAINING_DUE, self.device, reason, t,
                                  pipeline.bundle.version))

    def _encode(self, pipeline, k: Kept, rate: float) -> Upload | None:
        b = pipeline.bundle
        rid = new_id()
        answer = self.answers.record_answer(k.alert_ref) if self.answers is not None and k.alert_ref else None
        try:
            payload = encode_record(
                device=self.device, model_id=b.model_id, model_version=k.model_version, seq_end=k.seq_end,
                time_end=datetime.fromtimestamp(k.time, UTC), sample_rate=rate, channels=list(b.spec.channels),
                units=b.manifest["signal"].get("units") or "", score=k.score, threshold=k.threshold, state=k.state,
                samples=k.samples, id=rid, kind=k.kind, gateway=self.gateway, alert_ref=k.alert_ref,
                answer=answer, group=self.group,
            )
        except AgentError as exc:  # NaN samples and the like: counted, never a crash
            self.counters.uploads_not_encoded += 1
            self.counters.uploads_last_encode_error = str(exc)[:300]
            self._ratelog.warning("encode", "%s: a window kept for upload could not be made a record: %s",
                                  self.device, exc)
            return None
        return Upload(topics.upload_topic(self.device), payload, k.kind, rid)

    def status(self) -> dict:
        doc: dict = {}
        if self.keeper is not None:
            self.counters.uploads_kept = self.keeper.kept
            doc |= fields_of(self.counters)
        if self.drift is not None:
            doc["drift"] = self.drift.status()
            doc["notices"] = [RETRAINING_DUE] if self.drift.drifting else []
        if self.rollout is not None:
            doc["rollout"] = self.rollout.status()
        return doc
