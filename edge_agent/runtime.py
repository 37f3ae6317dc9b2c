"""Supervision: source → windower → scorer → alert state machine → sinks, with status and model hot-swap.

Threads (one stop event ends them all)::

    source reader (serial thread / paho network thread) ──bounded queue──► scoring loop (the caller's thread)
                                                                            │ windower.push → scorer.score
                                                                            │ → AlertStateMachine.update → sinks
                                                                            │ every bundle.watch_s: hot-swap check
                                                                            └ every status.every_s: status file + MQTT
    alert sinks (MQTT publisher, command runner) and the uploader have their own small threads.

:class:`Pipeline` is the scoring core, shared by ``run``, ``calibrate`` and ``replay``, so an offline
replay runs exactly the code the gateway runs.

Model hot-swap: the bundle's ``manifest.json`` is checked every ``bundle.watch_s`` (stat, then
sha256 of the manifest when the stat changed). A changed bundle is loaded (``Bundle.load`` validates
the manifest, model digest and tensors), given a test inference, and only then swapped in between two
windows; on any failure the old model keeps serving and ``model_rejects`` counts it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge_agent import calibration
from edge_agent.alerts import AlertEvent, AlertPolicy, WindowResult
from edge_agent.config import AgentConfig
from edge_agent.contract import wire
from edge_agent.contract.bundle import MANIFEST_FILE, Bundle
from edge_agent.contract.errors import AgentError, BundleError
from edge_agent.pipeline import Pipeline, WindowCallback, wall_time_of
from edge_agent.scorer import Scorer
from edge_agent.sinks import AlertDispatcher, CommandSink, JsonlSink, LogSink, MqttAlertSink
from edge_agent.sources import SampleSource
from edge_agent.windows import Window

log = logging.getLogger(__name__)

def load_served_model(path: Path, num_threads: int = 1) -> tuple[Bundle, Scorer, float]:
    """Load and validate a bundle, build its scorer and run one test inference; BundleError on any failure.

    Returns (bundle, scorer, seconds the test inference took).
    """
    bundle = Bundle.load(path)
    scorer = Scorer(bundle, num_threads=num_threads)
    t0 = time.perf_counter()
    scorer.self_test()
    return bundle, scorer, time.perf_counter() - t0


def make_source(cfg: AgentConfig, will: tuple | None = None) -> SampleSource:
    """The configured source (not started)."""
    src = cfg.source
    if src.kind == "serial":
        from edge_agent.sources.serial import SerialSource

        s = src.serial
        return SerialSource(s.port, s.format, s.baudrate, s.channels, s.read_timeout_s, s.reopen_max_s, src.queue_frames)
    from edge_agent.sources.mqtt import MqttSource

    m, broker = src.mqtt, cfg.mqtt
    return MqttSource(
        (m.topic_device if m and m.topic_device else cfg.device),
        host=broker.host,
        port=broker.port,
        client_id=cfg.client_id,
        username=broker.username,
        password=broker.password,
        keepalive=broker.keepalive,
        will=will,
        qos=m.qos if m else 1,
        queue_frames=src.queue_frames,
    )


def policy_of(cfg: AgentConfig) -> AlertPolicy:
    a = cfg.alerts
    return AlertPolicy(a.k, a.n, a.clear_ratio, a.clear_windows, a.cooldown_s, a.critical_ratio)


@dataclass
class _BundleWatch:
    stat: tuple[int, int] | None = None
    sha: str | None = None
    rejected_sha: str | None = None


class Agent:
    """The running gateway agent for one config. ``run(stop)`` blocks until ``stop`` is set.

    Args:
        cfg: validated config.
        on_event: called with every alert event (the CLI prints them), on the scoring thread.
        on_window: called for every scored window (tests, calibration), on the scoring thread.
    """

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        on_event: Callable[[AlertEvent], None] | None = None,
        on_window: WindowCallback | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_event = on_event
        self.on_window_cb = on_window
        self.started = time.time()
        self._t0 = time.monotonic()
        self.model_swaps = 0
        self.model_rejects = 0
        self.first_inference_s: float | None = None
        self.uploads_offered = 0
        self._watch = _BundleWatch()
        self._bundle_path = cfg.resolve(cfg.bundle.path)
        self._calibration_path = cfg.resolve(cfg.calibration.path)
        self._status_path = cfg.resolve(cfg.status.file) if cfg.status.file else None
        self.status_topic = wire.status_topic(cfg.device)

        bundle, scorer, _ = load_served_model(self._bundle_path, cfg.bundle.num_threads)
        self.first_inference_s = time.monotonic() - self._t0
        self._remember_bundle()
        threshold, self.threshold_source = calibration.threshold_in_force(self._calibration_path, bundle, cfg.device)
        self.pipeline = Pipeline(
            bundle, device=cfg.device, threshold=threshold, policy=policy_of(cfg), scorer=scorer,
            on_window=self._on_window, sample_rate=cfg.source.sample_rate,
        )
        log.info("serving model %s %s (%s), threshold %.6g from the %s", bundle.model_id, bundle.version,
                 bundle.quantization, threshold, self.threshold_source)

        will = (self.status_topic, b"offline", 1, True) if cfg.mqtt is not None else None
        self.source = make_source(cfg, will)
        self.connection = getattr(self.source, "connection", None)
        if self.connection is None and cfg.mqtt is not None:
            from edge_agent.mqtt_client import MqttConnection

            m = cfg.mqtt
            self.connection = MqttConnection(
                m.host, m.port, cfg.client_id, username=m.username, password=m.password, keepalive=m.keepalive,
                will=will,
            )
        if self.connection is not None:
            self.connection.add_connect_listener(self._on_connect)
        self.dispatcher = AlertDispatcher(self._make_sinks())
        self._uploader = None
        self._upload_policy = None
        if cfg.uploads.enabled:
            self._setup_uploads()
        self._next_status = 0.0
        self._next_watch = time.monotonic() + cfg.bundle.watch_s

    # ------------------------------------------------------------------ wiring
    def _make_sinks(self) -> list:
        s = self.cfg.alerts.sinks
        sinks: list = []
        if s.log:
            sinks.append(LogSink())
        if s.jsonl:
            sinks.append(JsonlSink(self.cfg.resolve(s.jsonl)))
        if s.mqtt and self.connection is not None:
            sinks.append(MqttAlertSink(self.connection, self.cfg.device))
        if s.command:
            sinks.append(CommandSink(list(s.command), s.command_timeout_s))
        return sinks

    def _setup_uploads(self) -> None:
        from edge_agent.spool import Spool
        from edge_agent.uploader import Uploader, UploadPolicy

        u = self.cfg.uploads
        self._spool = Spool(self.cfg.resolve(u.spool_path), u.spool_max_bytes, u.spool_max_records)
        self._uploader = Uploader(self._spool, self.connection, u.batch, threading.Event())
        self._upload_policy = UploadPolicy(u.every_s, u.only_normal)
        if not self.pipeline.windower.sample_rate:
            log.warning("uploads need the sample rate: the bundle has none, set source.sample_rate; not uploading")

    def _on_connect(self) -> None:
        """On paho's thread after every (re)connect: make the retained status current again (quick)."""
        self._next_status = 0.0

    # ------------------------------------------------------------------ main loop
    def run(self, stop: threading.Event) -> None:
        """Start everything, score until ``stop`` is set, then shut down cleanly."""
        if self.connection is not None and self.connection is not getattr(self.source, "connection", None):
            self.connection.start()
        self.source.start()
        if self._uploader is not None:
            self._uploader.start()
        log.info("edge-agent %s running", self.cfg.device)
        try:
            while not stop.is_set():
                for frame in self.source.read(0.2):
                    self.pipeline.push(frame, wall_time_of(frame, self.pipeline.windower.sample_rate))
                now = time.monotonic()
                if self.cfg.bundle.watch_s > 0 and now >= self._next_watch:
                    self._next_watch = now + self.cfg.bundle.watch_s
                    self.check_bundle()
                if now >= self._next_status:
                    self._next_status = now + self.cfg.status.every_s
                    self.publish_status()
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading, leave "offline" as the retained status, flush the sinks, disconnect."""
        shared = self.connection is not None and self.connection is getattr(self.source, "connection", None)
        if not shared:
            self.source.stop()
        if self._uploader is not None:
            self._uploader.stop()
            self._spool.close()
        info = self.publish_status(final=True)
        if info is not None:
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError) as exc:
                log.debug("final status not confirmed: %s", exc)
        self.dispatcher.close()
        if self.connection is not None:
            self.connection.stop()  # also stops an MQTT source (it shares the connection)

    def _on_window(self, w: Window | None, result: WindowResult, event: AlertEvent | None) -> None:
        if event is not None:
            self.dispatcher.emit(event)
            if self.on_event is not None:
                self.on_event(event)
        if (
            w is not None
            and self._uploader is not None
            and self.pipeline.windower.sample_rate
            and self._upload_policy.should_upload(time.monotonic(), self.pipeline.alerts.state)
        ):
            self._offer_upload(w, result)
        if self.on_window_cb is not None:
            self.on_window_cb(w, result, event)

    def _offer_upload(self, w: Window, result: WindowResult) -> None:
        from edge_agent.contract.upload_record import encode_record

        b = self.pipeline.bundle
        try:
            payload = encode_record(
                device=self.cfg.device, model_id=b.model_id, model_version=b.version, seq_end=w.seq_end,
                time_end=datetime.fromtimestamp(result.time, UTC), sample_rate=self.pipeline.windower.sample_rate,
                channels=list(b.spec.channels), units=b.manifest["signal"].get("units", ""),
                score=result.score, threshold=result.threshold, state=self.pipeline.alerts.state,
                samples=self.pipeline.windower.window_samples(),
            )
        except AgentError as exc:
            log.warning("upload record not made: %s", exc)
            return
        self._uploader.offer(wire.upload_topic(self.cfg.device), payload)
        self.uploads_offered += 1

    # ------------------------------------------------------------------ hot swap
    def _manifest_stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._bundle_path / MANIFEST_FILE)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def _remember_bundle(self) -> None:
        self._watch.stat = self._manifest_stat()
        self._watch.sha = self._manifest_sha()

    def _manifest_sha(self) -> str | None:
        try:
            return hashlib.sha256((self._bundle_path / MANIFEST_FILE).read_bytes()).hexdigest()
        except OSError:
            return None

    def check_bundle(self) -> bool:
        """Swap in a changed bundle if it loads and passes a test inference; return whether it swapped."""
        stat = self._manifest_stat()
        if stat is None or stat == self._watch.stat:
            return False
        self._watch.stat = stat
        sha = self._manifest_sha()
        if sha is None or sha in (self._watch.sha, self._watch.rejected_sha):
            return False
        try:
            bundle, scorer, _ = load_served_model(self._bundle_path, self.cfg.bundle.num_threads)
        except BundleError as exc:
            self.model_rejects += 1
            self._watch.rejected_sha = sha
            log.error("new bundle in %s rejected, keeping model %s: %s", self._bundle_path,
                      self.pipeline.bundle.version, exc)
            return False
        threshold, self.threshold_source = calibration.threshold_in_force(self._calibration_path, bundle, self.cfg.device)
        old = self.pipeline.bundle.version
        self.pipeline.swap(bundle, scorer, threshold)
        self._watch.sha = sha
        self.model_swaps += 1
        log.info("model swapped: %s -> %s (threshold %.6g from the %s)", old, bundle.version, threshold,
                 self.threshold_source)
        self._next_status = 0.0
        return True

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        """The status document (also written to the status file and published retained)."""
        p = self.pipeline
        src = self.source.counters
        wc = p.windower.counters
        lat = p.scorer.latency.percentiles()
        doc = {
            "device": self.cfg.device,
            "state": "online",
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "uptime_s": round(time.monotonic() - self._t0, 1),
            "model_id": p.bundle.model_id,
            "model_version": p.bundle.version,
            "quantization": p.bundle.quantization,
            "threshold": p.threshold,
            "threshold_source": self.threshold_source,
            "alert_state": p.alerts.state,
            "alerts": p.alert_events,
            "last_score": p.last_score,
            "samples_in": wc.samples_in,
            "frames_in": src.get("frames", 0),
            "frames_dropped": src.get("frames_dropped", 0),
            "crc_errors": src.get("crc_errors", 0),
            "bytes_in": src.get("bytes", 0),
            "bytes_discarded": src.get("bytes_discarded", 0),
            "bad_lines": src.get("bad_lines", 0),
            "bad_payloads": src.get("bad_payloads", 0),
            "frames_rejected": wc.frames_rejected,
            "reconnects": src.get("reconnects", 0),
            "gaps": wc.gaps,
            "samples_missing": wc.samples_missing,
            "duplicates": wc.duplicates,
            "samples_invalid": wc.samples_invalid,
            "samples_over_range": wc.samples_over_range,
            "over_range_spans": p.over_range_spans,
            "windows_scored": p.windows_scored,
            "inference_ms_p50": lat["p50"],
            "inference_ms_p99": lat["p99"],
            "first_inference_s": round(self.first_inference_s or 0.0, 3),
            "model_swaps": self.model_swaps,
            "model_rejects": self.model_rejects,
            "mqtt_connected": bool(self.connection is not None and self.connection.connected),
            "uploads_offered": self.uploads_offered,
            "uploads_sent": self._uploader.sent if self._uploader is not None else 0,
            "uploads_pending": self._uploader.pending if self._uploader is not None else 0,
        }
        return doc

    def publish_status(self, final: bool = False):
        """Write the status file and publish the retained status; returns paho's message info or None."""
        doc = self.status()
        if final:
            doc["state"] = "stopped"
        payload = json.dumps(doc, separators=(",", ":"))
        if self._status_path is not None:
            write_json_atomic(self._status_path, doc)
        if self.cfg.status.mqtt and self.connection is not None:
            return self.connection.publish(self.status_topic, "offline" if final else payload, qos=1, retain=True)
        return None


def write_json_atomic(path: Path, doc: dict) -> None:
    """Write JSON to ``path`` via a temp file and rename (readers never see half a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)


def collect_scores(cfg: AgentConfig, n_windows: int, timeout_s: float) -> tuple[Bundle, np.ndarray]:
    """Score ``n_windows`` windows from the live source without alerting (for calibration).

    Returns (bundle, scores (n,) float64); SourceError-free: a source that yields too little in
    ``timeout_s`` gives fewer scores (the caller decides).
    """
    bundle, scorer, _ = load_served_model(cfg.resolve(cfg.bundle.path), cfg.bundle.num_threads)
    scores: list[float] = []
    pipeline = Pipeline(
        bundle, device=cfg.device, threshold=bundle.threshold.value, policy=policy_of(cfg), scorer=scorer,
        calibrate=n_windows + 1, on_window=lambda w, r, _e: w is not None and scores.append(r.score),
        sample_rate=cfg.source.sample_rate,
    )
    source = make_source(cfg)
    deadline = time.monotonic() + timeout_s
    source.start()
    try:
        while len(scores) < n_windows and time.monotonic() < deadline:
            for frame in source.read(0.2):
                pipeline.push(frame)
                if len(scores) >= n_windows:
                    break
    finally:
        source.stop()
    return bundle, np.asarray(scores[:n_windows], np.float64)
