"""One sensor of the gateway: its source, its scoring pipeline, its model, its alerts and uploads.

::

    source (serial thread | MQTT subscription) ─► bounded queue ─► Sensor.poll (the gateway's scoring thread)
        ─► Pipeline.push ─► window result / alert event ─► AlertDispatcher (sinks) ─► upload policy ─► Uploader

A sensor never lets its own trouble reach the others: a failing port is that source's reopen loop; a
model swap is loaded by the gateway's watcher thread and applied here between two frames; an exception
in its pipeline is counted (``internal_errors``), logged at a rate limit, and window assembly restarts.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from edge_agent import calibration
from edge_agent.alerts import AlertEvent
from edge_agent.answers import SensorAnswers
from edge_agent.bundle_watch import BundleWatch, LoadedModel
from edge_agent.condition import SensorCondition
from edge_agent.config import AgentConfig, SensorConfig
from edge_agent.contract.errors import AgentError, BundleError
from edge_agent.fleet import SensorFleet
from edge_agent.health import HealthMonitor
from edge_agent.health import Input as HealthInput
from edge_agent.history import SensorHistory
from edge_agent.mqtt_client import MqttConnection
from edge_agent.pipeline import Pipeline, WindowCallback, wall_time_of
from edge_agent.ratelog import RateLimitedLog
from edge_agent.sinks import AlertDispatcher
from edge_agent.sources import SampleSource
from edge_agent.status import ConditionState, Counters, SensorState, fields_of
from edge_agent.trend import TrendStore
from edge_agent.windows import Window

log = logging.getLogger(__name__)

#: Frames one sensor may consume per round of the scoring loop (fairness between sensors).
FRAMES_PER_ROUND = 64


def make_source(cfg: SensorConfig, gateway: AgentConfig, wake: threading.Event | None = None,
                client_id: str | None = None) -> SampleSource:
    """The sensor's configured source (not started). An MQTT source gets a connection of its own to the gateway's
    broker (client id ``<gateway client id>-<device>``): the broker then keeps a queue per sensor, and a sensor that
    floods cannot make it drop another sensor's messages."""
    src = cfg.source
    if src.kind == "serial":
        from edge_agent.sources.serial import SerialSource

        s = src.serial
        return SerialSource(s.port, s.format, s.baudrate, s.channels, s.read_timeout_s, s.reopen_max_s,
                            src.queue_frames, wake, src.intake_cpu)
    from edge_agent.config import MqttSection
    from edge_agent.mqtt_client import connection_for
    from edge_agent.sources.mqtt import MqttSource

    if gateway.mqtt is None:
        raise AgentError(f"sensor {cfg.device}: an MQTT source needs the gateway's [mqtt] broker")
    m = src.mqtt or MqttSection()
    connection = connection_for(gateway, client_id or f"{gateway.client_id}-{cfg.device}")
    return MqttSource(connection, m.samples_topic(cfg.device), qos=m.qos, decoder=m.decoder(),
                      queue_frames=src.queue_frames, wake=wake, intake_cpu=src.intake_cpu, own_connection=True)


class Sensor:
    """A configured sensor, scored on the gateway's scoring thread (``poll``).

    Args:
        cfg: this sensor's config; ``gateway`` resolves its paths.
        connection: the gateway's MQTT connection (MQTT sources subscribe on it), or None.
        dispatcher: the sinks of this sensor's alerts.
        offer_upload: ``(sensor, uploads)`` -> None, the gateway's upload path for the records ``fleet`` chose.
        fleet: what this sensor keeps for retraining, its drift monitor and rollouts (``edge_agent.fleet``).
        wake: set by the source whenever a frame is queued.
        on_event, on_window: observers of alert events and scored windows (scoring thread).
        answers: the sensor's technicians' answers (``edge_agent.answers``): its alerts' ids, silence, upload answers.

    Raises BundleError only from ``load_model`` (the gateway decides what a missing model means).
    """

    def __init__(
        self,
        cfg: SensorConfig,
        gateway: AgentConfig,
        *,
        connection: MqttConnection | None,
        dispatcher: AlertDispatcher,
        offer_upload: Callable[[Sensor, list], None] | None = None,
        fleet: SensorFleet | None = None,
        wake: threading.Event | None = None,
        on_event: Callable[[AlertEvent], None] | None = None,
        on_window: WindowCallback | None = None,
        answers: SensorAnswers | None = None,
    ) -> None:
        self.cfg = cfg
        self.answers = answers
        self.device = cfg.device
        self.bundle_path = gateway.resolve(cfg.bundle.path)
        self.calibration_path = gateway.resolve(cfg.calibration.path)
        self.watch = BundleWatch(self.bundle_path, cfg.bundle.num_threads, cfg.device, cfg.group)
        self.dispatcher = dispatcher
        self.offer_upload = offer_upload
        self.fleet: SensorFleet | None = None
        self.attach_fleet(fleet)
        self.on_event = on_event
        self.on_window_cb = on_window
        self.source = make_source(cfg, gateway, wake)
        self.counters = Counters()
        self.history = SensorHistory()  # what the status page draws (read by the web server's threads)
        self.condition = SensorCondition(cfg.device, cfg.severity, cfg.bearing)
        self.trend: TrendStore | None = None  # the gateway's trend over weeks (set by the gateway when it has one)
        self.pipeline: Pipeline | None = None
        self.threshold_source = "bundle"
        self.first_inference_s: float | None = None
        self.last_frame: float | None = None  # monotonic time of the last frame consumed
        self._pending: LoadedModel | None = None
        self._pending_lock = threading.Lock()
        self._ratelog = RateLimitedLog(log)
        self._next_watch = 0.0
        self.health = HealthMonitor(cfg.device, cfg.health.no_data_s, cfg.health.no_window_s,
                                    coverage_s=cfg.health.coverage_s, min_coverage=cfg.health.min_coverage)

    def attach_fleet(self, fleet: SensorFleet | None) -> None:
        """This sensor's part in the fleet loop; its notices ("retraining due") go where the alerts go."""
        self.fleet = fleet
        if fleet is not None:
            fleet.on_notice = self.dispatcher.emit
            fleet.answers = self.answers

    # ------------------------------------------------------------------ model
    def load_model(self) -> None:
        """Load the configured bundle now (at start). BundleError if it cannot serve."""
        t0 = time.monotonic()
        model = self.watch.load()
        self.first_inference_s = time.monotonic() - t0
        self._serve(model)

    def offer_model(self, model: LoadedModel) -> None:
        """A tested new model (from the watcher thread): served from the next ``poll`` on."""
        with self._pending_lock:
            self._pending = model

    def adopt_model(self, model: LoadedModel) -> None:
        """A model the rollout just deployed into the bundle path (watcher thread): the watcher takes the new
        directory as seen, so it is not loaded a second time, and the sensor serves ``model``."""
        self.watch.changed()
        self.offer_model(model)

    def served_model(self) -> LoadedModel | None:
        """The model serving now (any thread: a reference read)."""
        p = self.pipeline
        return None if p is None else LoadedModel(p.bundle, p.scorer, "", 0.0)

    def check_bundle(self) -> bool:
        """Look for a changed bundle and load it (watcher thread). Returns whether a new model is pending."""
        try:
            model = self.watch.check()
        except Exception as exc:  # BundleError, or anything a hostile bundle provokes: the watcher thread lives on
            self.counters.model_rejects += 1
            self.counters.model_last_reject = str(exc)[:500]
            served = self.pipeline.bundle.version if self.pipeline else "none"
            log.error("%s: new bundle in %s rejected, keeping model %s: %s", self.device, self.bundle_path, served, exc,
                      exc_info=not isinstance(exc, BundleError))
            return False
        if model is None:
            return False
        self.offer_model(model)
        return True

    def watch_due(self, now: float) -> bool:
        """Whether the bundle should be looked at now (``bundle.watch_s``; 0 = never)."""
        if self.cfg.bundle.watch_s <= 0 or now < self._next_watch:
            return False
        self._next_watch = now + self.cfg.bundle.watch_s
        return True

    def _serve(self, model: LoadedModel) -> None:
        """Serve ``model`` (scoring thread, or before the loop starts)."""
        bundle = model.bundle
        choice = calibration.choose(self.calibration_path, bundle, self.device)
        threshold, self.threshold_source = choice.value, choice.source
        if choice.note is not None:
            self.counters.calibration_ignored += 1
            self.counters.calibration_note = choice.note[:500]
        calibrate = self.cfg.calibration.windows if self.threshold_source == "bundle" else 0
        if self.pipeline is None:
            self.pipeline = Pipeline(
                bundle, device=self.device, threshold=threshold, policy=self.cfg.alerts, scorer=model.scorer,
                sample_rate=self.cfg.source.sample_rate, calibrate=calibrate, burst=self.cfg.source.burst,
                on_window=self._on_window,
                on_calibrated=self._calibrated, cooldown_clock=time.monotonic,
                bridge_fraction=self.cfg.health.bridge_fraction,
            )
        else:
            old = self.pipeline.bundle.version
            self.pipeline.swap(bundle, model.scorer, threshold)
            self.counters.model_swaps += 1
            if self.fleet is not None:
                self.fleet.model_changed(bundle.manifest)
            log.info("%s: model swapped: %s -> %s (threshold %.6g from the %s)", self.device, old, bundle.version,
                     threshold, self.threshold_source)
        self.watch.served(model)
        self.condition.serve(bundle, self.pipeline.windower.sample_rate)
        log.info("%s: serving model %s %s (%s), threshold %.6g from the %s", self.device, bundle.model_id,
                 bundle.version, bundle.quantization, threshold, self.threshold_source)

    def _calibrated(self, record: calibration.DeviceThreshold) -> None:
        if not calibration.save(self.calibration_path, record):
            log.error("%s: calibration not saved to %s (in force until the agent stops)", self.device,
                      self.calibration_path)
        self.threshold_source = "calibration"

    # ------------------------------------------------------------------ scoring
    def poll(self, most: int = FRAMES_PER_ROUND) -> int:
        """Serve a pending model, then score up to ``most`` queued frames. Returns the frames consumed."""
        if self._pending is not None:
            with self._pending_lock:
                model, self._pending = self._pending, None
            if model is not None:
                try:
                    self._serve(model)
                except Exception:  # never lose the scoring thread over a swap: keep serving the old model
                    self.counters.internal_errors += 1
                    self.counters.model_rejects += 1
                    log.exception("%s: model %s could not be put in service; keeping the old one", self.device,
                                  model.bundle.version)
        frames = self.source.drain(most)
        pipeline = self.pipeline
        if frames:
            self.last_frame = time.monotonic()
        if frames and pipeline is not None:  # without a model the frames are only counted (by the source)
            rate = pipeline.windower.sample_rate
            for frame in frames:
                try:
                    pipeline.push(frame, wall_time_of(frame, rate))
                except Exception:  # a bug must cost this sensor a window, never the gateway its life
                    self.counters.internal_errors += 1
                    self._ratelog.log(logging.ERROR, "push", "%s: scoring failed on frame seq %d", self.device,
                                      frame.seq, exc_info=True)
                    pipeline.break_stream()
        self._look_after_health(bool(frames))
        return len(frames)

    # ------------------------------------------------------------------ health
    def _look_after_health(self, data: bool) -> None:
        """Is this sensor monitored? A change goes through the alert sinks as a health event (``health.py``)."""
        p = self.pipeline
        try:
            event = self.health.update(
                data=data, judged=None if p is None else p.counters.windows_scored + p.counters.over_range_spans,
                counts=self._health_input, burst=p is not None and p.burst,
                window_samples=p.bundle.spec.window_samples if p is not None else 1,
                model_version=p.bundle.version if p is not None else None,
                no_model=self.counters.model_last_reject or "", hint=self._source_hint,
                stuck=None if p is None else p.stuck,
            )
            if event is None:
                return
            log.log(logging.WARNING if event.state == "fault" else logging.INFO, "%s: health %s (%s): %s",
                    self.device, event.state, event.condition, event.reason)
            self.dispatcher.emit(event)
            if self.on_event is not None:
                self.on_event(event)
        except Exception:
            self.counters.internal_errors += 1
            self._ratelog.log(logging.ERROR, "health", "%s: health check failed", self.device, exc_info=True)

    def _health_input(self) -> HealthInput:
        if self.pipeline is None:
            return HealthInput()
        c, src = self.pipeline.windower.counters, self.source.counters
        return HealthInput(c.samples_in, c.samples_invalid, c.samples_over_range, c.gaps, c.samples_missing,
                           c.frames_rejected, c.samples_discarded, src.samples_dropped, src.intake_throttled_s,
                           src.gaps_detectable, self.pipeline.burst)

    def _source_hint(self) -> str:
        src = self.source
        connected = getattr(src, "connected", None)
        if isinstance(connected, threading.Event) and not connected.is_set():
            return f"port {getattr(src, 'port', '?')} is not open"
        conn = getattr(src, "connection", None)
        if conn is not None and not conn.connected:
            return "the MQTT connection is down"
        return ""

    def _on_window(self, w: Window | None, result, event: AlertEvent | None) -> None:
        self.history.record(result, self.pipeline.state)
        try:
            event = self._judge_condition(w, result, event)
        except Exception:  # the physical side must never cost a window its alert
            self.counters.internal_errors += 1
            self._ratelog.log(logging.ERROR, "condition", "%s: velocity / bearing diagnosis failed", self.device,
                              exc_info=True)
        if event is not None:
            self.history.record_event(event, *self._answer_event(event))
            self.dispatcher.emit(event)
            if self.on_event is not None:
                self.on_event(event)
        if w is not None and self.fleet is not None and not w.bridged:
            try:
                uploads = self.fleet.on_window(self.pipeline, w, result, event)
            except Exception:  # the fleet's bookkeeping must never cost a window its alert
                self.counters.internal_errors += 1
                self._ratelog.log(logging.ERROR, "fleet", "%s: upload/drift bookkeeping failed", self.device,
                                  exc_info=True)
                uploads = []
            if uploads and self.offer_upload is not None:
                self.offer_upload(self, uploads)
                self.counters.uploads_offered += len(uploads)
        if self.on_window_cb is not None:
            self.on_window_cb(w, result, event)

    def _judge_condition(self, w: Window | None, result, event: AlertEvent | None) -> AlertEvent | None:
        """Velocity and zone of the window's raw samples, the trend row, and at a raised or escalated alert the
        machine's condition (velocity, zone, bearing report) on the event."""
        p = self.pipeline
        severity = None
        if w is not None and not w.bridged:
            samples = p.windower.window_samples()
            hop = p.bundle.spec.hop_samples / p.windower.sample_rate if p.windower.sample_rate else None
            severity = self.condition.on_window(samples, hop, healthy=p.state == "normal", hit=p.alerts.last_hit,
                                                seq_end=w.seq_end, debounce=p.alerts.policy.n)
            if event is not None and event.kind != "cleared":  # the alert's windows averaged with this one
                event = dataclasses.replace(event, condition={
                    "severity": None if severity is None else severity.as_dict(),
                    "bearing": self.condition.diagnose(samples, w.seq_end)})
        if event is not None and event.kind == "cleared":
            self.condition.alert_cleared()
        if self.trend is not None:
            rms = [v for k, v in result.stats.items() if k.startswith("rms_")]
            self.trend.add(self.device, result.time, result.score, result.threshold, p.state,
                           rms=max(rms) if rms else None,
                           velocity=None if severity is None else severity.max_mm_s,
                           zone=None if severity is None else severity.zone)
            if event is not None:
                self.trend.add_event(self.device, event.time, event.kind, event.severity, event.reason)
        return event

    def _answer_event(self, event: AlertEvent) -> tuple[str | None, bool]:
        """The alert's id (the answers follow the sensor's alerts) and whether a silence holds it back."""
        if self.answers is None:
            return None, False
        try:
            return self.answers.on_event(event), event.kind != "cleared" and self.answers.silence() is not None
        except Exception:  # the answers' bookkeeping must never cost an alert
            self.counters.internal_errors += 1
            self._ratelog.log(logging.ERROR, "answers", "%s: answers bookkeeping failed", self.device, exc_info=True)
            return None, False

    # ------------------------------------------------------------------ status
    def _condition_status(self) -> dict:
        c = self.condition
        sev = c.severity
        state = ConditionState(bearing_baseline_windows=c.status()["bearing"]["baseline_windows"]
                               if c.geometry is not None else None, bearing_verdict=c.last_verdict)
        if sev is not None:
            chan = (self.pipeline.bundle.spec.channels[sev.channel] if self.pipeline is not None
                    and sev.channel is not None and sev.channel < len(self.pipeline.bundle.spec.channels) else None)
            state = dataclasses.replace(
                state, velocity_mm_s=None if sev.max_mm_s is None else round(sev.max_mm_s, 3), velocity_channel=chan,
                zone=sev.zone, zone_meaning=sev.as_dict()["zone_meaning"], zone_table=sev.table,
                velocity_note="; ".join(sev.notes) or None)
        return fields_of(state)

    def status(self) -> dict:
        """This sensor's status document: its state and every counter of its parts (``edge_agent.telemetry``)."""
        p = self.pipeline
        state = SensorState(
            device=self.device, state="online" if p is not None else "no_model", source=self.cfg.source.kind,
            link_up=bool(getattr(self.source, "link_up", False)), queued_frames=getattr(self.source, "queued", 0),
            queue_capacity=self.cfg.source.queue_frames,
            first_inference_s=None if self.first_inference_s is None else round(self.first_inference_s, 3))
        doc: dict = {}
        if p is not None:
            lat = p.scorer.latency.percentiles()
            state = dataclasses.replace(
                state, model_id=p.bundle.model_id, model_version=p.bundle.version, quantization=p.bundle.quantization,
                threshold=p.threshold, threshold_source=self.threshold_source, alert_state=p.state,
                last_score=p.last_score, samples_pending=p.windower.samples_pending,
                burst_mode="declared" if p.burst_declared else "recognised" if p.bursts_recognised else "off",
                inference_ms_p50=lat["p50"], inference_ms_p99=lat["p99"])
            doc = fields_of(p.windower.counters) | fields_of(p.counters)
        health = self.health.state
        health.coverage = None if self.health.coverage is None else round(self.health.coverage, 4)
        state = dataclasses.replace(state, **self.dispatcher.advisor.status(health.state, state.alert_state,
                                                                            state.state))
        doc = fields_of(state) | doc | self.source.counters.as_dict() | fields_of(self.counters) | fields_of(
            self.condition.counters) | {"condition": self._condition_status()} | {
            "sinks": self.dispatcher.status(), "health": fields_of(health)}
        if self.fleet is not None:
            doc |= self.fleet.status()
        if self.answers is not None:
            doc["answers"] = self.answers.status()
        return doc
