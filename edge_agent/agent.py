"""The gateway agent: many sensors, one scoring thread, nothing that can kill it.

Threads::

    serial reader per serial sensor ─────────┐
    paho network thread per MQTT sensor ─────┴─► bounded queue per sensor ─► scoring loop (the caller's thread):
                                                  round robin Sensor.poll over the sensors,
                                                  every status.every_s: status file + MQTT
    bundle watcher ─ loads and tests changed bundles and rollouts, hands them to their sensor (swapped between
                     frames)
    the gateway's paho thread, the alert sinks (MQTT publisher, command runner), the uploader, the web server
    ([http]: status page and /metrics, reading the snapshot the scoring loop refreshes every second).
    Technicians' answers (``edge_agent.answers``) arrive on the web server's threads (the page's POST) and paho's
    (``vib/<device>/answer/set``); the book they go into is shared, behind its lock.

Lifecycle: the constructor makes the parts, ``start`` acquires them in order and ``close`` releases them in
reverse (one ``ExitStack``); ``run(stop)`` scores until the caller's ``stop`` is set. ``closing`` is the one
event the agent's own threads (watcher, uploader) stop on; each source, sink and connection is stopped by its
``close``/``stop``. The agent owns the gateway's :class:`MqttConnection` (its last will marks the gateway
offline) and hands it to the alert sinks, the status publisher, the rollouts and the uploader; each MQTT sensor
has a connection of its own (a sensor that floods cannot starve another).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from edge_agent import calibration
from edge_agent.alerts import AlertEvent
from edge_agent.answers import AnswerBook
from edge_agent.bundle_watch import load_served_model
from edge_agent.config import AgentConfig, SensorConfig, http_write_token
from edge_agent.contract import rollout as rollout_topics
from edge_agent.contract import topics
from edge_agent.contract.answer import AnswerError, decode_command
from edge_agent.contract.errors import AgentError, BundleError, ConfigError, UploadError
from edge_agent.contract.signing import keyring
from edge_agent.fleet import SensorFleet
from edge_agent.mqtt_client import MqttConnection, connection_for
from edge_agent.pipeline import Pipeline, WindowCallback
from edge_agent.ratelog import RateLimitedLog
from edge_agent.rollout import SensorRollout
from edge_agent.sensor import Sensor, make_source
from edge_agent.sinks import AlertDispatcher, CommandSink, JsonlSink, LogSink, MqttAlertSink
from edge_agent.status import GatewaySummary, fields_of, write_json_atomic
from edge_agent.trend import TrendError, TrendStore
from edge_agent.uploader import ByteBudget

log = logging.getLogger(__name__)

#: Seconds between refreshes of the status snapshot the web server reads.
SNAPSHOT_S = 1.0
#: After a wake-up the scoring loop lets this long pass before it polls, so that one round serves the frames
#: of many sensors: a wake-up per frame (thousands a second with tens of sensors) cost ~10 % of a core.
WAKE_COALESCE_S = 0.002


class Agent:
    """The running gateway for one config: ``start()``, then ``run(stop)`` until ``stop`` is set (``run`` starts
    it when needed and always closes it).

    Args:
        cfg: validated config.
        on_event: called with every alert event (the CLI prints them), on the scoring thread.
        on_window: called for every scored window (tests), on the scoring thread.

    The constructor only makes the parts; ``start`` acquires them in order (the spool, the models, the sinks,
    the broker connection, the uploader, the sources, the bundle watcher, the web server) and ``close``
    releases them in the reverse order, once; a start that fails half-way releases what it had acquired.
    ``start`` raises BundleError when no sensor has a model it can serve; a sensor whose bundle fails at start
    waits for a valid one (watched like any bundle) while the others run.
    """

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        on_event: Callable[[AlertEvent], None] | None = None,
        on_window: WindowCallback | None = None,
    ) -> None:
        self.cfg = cfg
        self.started = time.time()
        self._t0 = time.monotonic()
        self.wake = threading.Event()
        self.closing = threading.Event()  # the one stop signal of the agent's own threads (set by close)
        self._status_path = cfg.resolve(cfg.status.file) if cfg.status.file else None
        self.availability_topic = topics.gateway_topic(cfg.gateway, "availability")
        self.status_topic = topics.gateway_topic(cfg.gateway, "status")
        self.connection: MqttConnection | None = None
        if cfg.mqtt is not None:
            self.connection = connection_for(cfg, will=(self.availability_topic, b"offline", 1, True))
        self.discovery = None
        if cfg.homeassistant.enabled and self.connection is not None:
            from edge_agent.homeassistant import Discovery

            self.discovery = Discovery(cfg, self.connection)
        self.answers = AnswerBook([s.device for s in cfg.sensors],
                                  cfg.resolve(cfg.answers.file) if cfg.answers_enabled else None)
        self.answers.listeners.append(self._on_answer)
        self.web = None
        if cfg.http.enabled:
            from edge_agent.web import StatusServer

            self.web = StatusServer(self, cfg.http.listen, cfg.http.port,
                                    write_token=(lambda: http_write_token(cfg)) if cfg.page_writable else None)
        self.trend = TrendStore(cfg.resolve(cfg.status.trend_file), cfg.status.trend_max_bytes) \
            if cfg.status.trend_file else None
        self._jsonl: dict[Path, JsonlSink] = {}
        self._log_sink = LogSink()
        self._spool = None
        self._uploader = None
        self._uplink = None
        if cfg.uploads_enabled:
            from edge_agent.spool import Spool
            from edge_agent.uploader import UplinkState, Uploader

            u = cfg.uploads
            self._spool = Spool(cfg.resolve(u.spool_path), u.spool_max_bytes, u.spool_max_records)
            self._uplink = UplinkState() if u.uplink_topic else None
            self._uploader = Uploader(
                self._spool, self.connection, u.batch, self.closing, uplink=self._uplink, receipts=u.receipts,
                receipt_timeout_s=u.receipt_timeout_s, receipt_keys=keyring(u.receipt_keys),
                budget=ByteBudget(u.max_bytes_per_hour) if u.max_bytes_per_hour else None)
        self.sensors = [Sensor(
            scfg, cfg, connection=self.connection,
            dispatcher=AlertDispatcher(self._make_sinks(scfg), scfg.advisor(), self.answers.sensor(scfg.device)),
            offer_upload=self._offer_upload if scfg.uploads.enabled else None, wake=self.wake,
            on_event=on_event, on_window=on_window, answers=self.answers.sensor(scfg.device)) for scfg in cfg.sensors]
        self._next_status = 0.0
        self._snapshot: tuple[dict, float] | None = None
        self._next_snapshot = 0.0
        self._watcher: threading.Thread | None = None
        self._parts: contextlib.ExitStack | None = None  # what start acquired, released by close
        self._ratelog = RateLimitedLog(log)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Agent:
        """Acquire every part in order; on failure release what was acquired and raise. Idempotent."""
        if self._parts is not None:
            return self
        with contextlib.ExitStack() as parts:
            self.answers.open()  # never raises: a file it cannot use leaves the answers in memory (said in status)
            parts.callback(self.answers.close)
            if self._spool is not None:
                try:
                    self._spool.open()
                except UploadError as exc:
                    raise UploadError(f"uploads.spool_path: {exc}") from None
                parts.callback(self._spool.close)
            self._load_models()
            for sink in self._sinks():
                self._start_sink(sink)
                parts.callback(_quietly, sink.close, f"alert sink {type(sink).__name__}")
            if self.connection is not None:
                self._subscribe()
                self.connection.start()
                parts.callback(self.connection.stop)
            parts.callback(self._final_status)
            if self._uploader is not None:
                self._uploader.start()
                parts.callback(self._uploader.stop)
            for sensor in self.sensors:
                sensor.source.start()
                parts.callback(sensor.source.stop)
            self._watcher = threading.Thread(target=self._watch_bundles, name="bundle-watch", daemon=True)
            self._watcher.start()
            parts.callback(self._stop_watcher)
            self._open_trend(parts)  # last: an agent that cannot start leaves no trend file behind
            if self.web is not None:
                self.web.start()
                parts.callback(self.web.stop)
            self._refresh_snapshot(time.monotonic())
            self._parts = parts.pop_all()
        return self

    def _open_trend(self, parts: contextlib.ExitStack) -> None:
        """The trend file, for every sensor; one that is not ours costs the trend, never the agent (said in status)."""
        if self.trend is None:
            return
        try:
            self.trend.open()
        except (TrendError, UploadError) as exc:
            log.error("no trend over weeks: %s", exc)
            self.trend.counters.error = str(exc)[:500]
            return
        parts.callback(self.trend.close)
        for sensor in self.sensors:
            sensor.trend = self.trend

    def trend_of(self, device: str, span: str, as_csv: bool = False) -> dict | str | None:
        """A sensor's trend (``TrendStore.series`` or ``csv``); None for an unknown sensor or no trend. ValueError
        for an unknown span."""
        if self.trend is None or self.trend.counters.error or device not in {s.device for s in self.sensors}:
            return None
        return self.trend.csv(device, span) if as_csv else self.trend.series(device, span)

    def close(self) -> None:
        """Release what ``start`` acquired, in reverse order: stop serving the page, watching and reading; stop the
        uploader; leave "stopped"/"offline" as the retained state; disconnect; close the sinks; close the spool."""
        self.closing.set()
        parts, self._parts = self._parts, None
        if parts is not None:
            parts.close()

    def _load_models(self) -> None:
        """Each sensor's bundle (BundleError when none can serve), then its part in the fleet loop."""
        errors: list[str] = []
        for sensor in self.sensors:
            try:
                sensor.load_model()
            except BundleError as exc:
                errors.append(f"{sensor.device}: {exc}")
                sensor.counters.model_rejects += 1
                sensor.counters.model_last_reject = str(exc)[:500]
                log.error("sensor %s has no model to serve (waiting for a valid bundle in %s): %s", sensor.device,
                          sensor.bundle_path, exc)
            sensor.attach_fleet(self._fleet_of(sensor))
        if len(errors) == len(self.sensors):
            raise BundleError("no sensor has a model it can serve: " + "; ".join(errors))

    def _sinks(self) -> list:
        """Every alert sink once (the log sink and a JSONL file may serve several sensors)."""
        unique: dict[int, object] = {}
        for sensor in self.sensors:
            for sink in sensor.dispatcher.sinks:
                unique.setdefault(id(sink), sink)
        return list(unique.values())

    def _start_sink(self, sink) -> None:
        try:
            sink.start()
        except OSError as exc:  # the JSONL file: name the key
            raise ConfigError(f"alerts.sinks.jsonl: cannot open {getattr(sink, 'path', '?')}: "
                              f"{exc.strerror or exc}") from exc

    def _stop_watcher(self) -> None:
        self.closing.set()
        if self._watcher is not None:
            self._watcher.join(10)

    def _final_status(self) -> None:
        """The last status: "stopped" in the file, "offline" retained on the broker (waited for, briefly)."""
        for info in self.publish_status(final=True):
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError) as exc:
                log.debug("final status not confirmed: %s", exc)

    # ------------------------------------------------------------------ access
    def sensor(self, device: str | None = None) -> Sensor:
        """The sensor with this device id (the only one when None)."""
        if device is None and len(self.sensors) == 1:
            return self.sensors[0]
        for s in self.sensors:
            if s.device == device:
                return s
        raise KeyError(device)

    def connections(self) -> list[MqttConnection]:
        """Every broker connection of the gateway: its own, and each MQTT sensor's."""
        own = [self.connection] if self.connection is not None else []
        return own + [c for s in self.sensors if (c := getattr(s.source, "connection", None)) is not None
                      and c is not self.connection]

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every connection is up with its subscriptions acknowledged; return whether they are."""
        deadline = time.monotonic() + timeout
        return all(c.wait_subscribed(max(0.0, deadline - time.monotonic())) for c in self.connections())

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline of a single-sensor gateway."""
        pipeline = self.sensor().pipeline
        if pipeline is None:
            raise AgentError("the sensor has no model")
        return pipeline

    # ------------------------------------------------------------------ wiring
    def _make_sinks(self, scfg: SensorConfig) -> list:
        s = scfg.alerts.sinks
        sinks: list = []
        if s.log:
            sinks.append(self._log_sink)
        if s.jsonl:
            path = self.cfg.resolve(s.jsonl).resolve()
            sinks.append(self._jsonl.setdefault(path, JsonlSink(path)))
        if s.mqtt and self.connection is not None:
            sinks.append(MqttAlertSink(self.connection, scfg.device))
        if s.command:
            sinks.append(CommandSink(list(s.command), s.command_timeout_s, keep_env=s.command_env))
        return sinks

    def _fleet_of(self, sensor: Sensor) -> SensorFleet | None:
        """The sensor's part in the fleet loop: what it keeps for upload, its drift monitor, its rollouts."""
        scfg, cfg = sensor.cfg, self.cfg
        u = scfg.uploads
        keep = u if u.enabled else None
        drift = scfg.drift if scfg.drift.enabled else None
        rollout = None
        if cfg.rollout is not None and self.connection is not None:
            r = cfg.rollout
            rollout = SensorRollout(
                sensor.device, sensor.bundle_path,
                r,
                serving=sensor.served_model, offer_model=sensor.adopt_model, publish=self._publish_retained,
                num_threads=scfg.bundle.num_threads, group=scfg.group)
        if keep is None and drift is None and rollout is None:
            return None
        manifest = sensor.pipeline.bundle.manifest if sensor.pipeline is not None else None
        return SensorFleet(sensor.device, cfg.gateway, keep=keep, drift=drift, rollout=rollout, manifest=manifest,
                           group=scfg.group)

    def _subscribe(self) -> None:
        """Before the connection starts: availability on connect, Home Assistant discovery, the uplink flag, rollout
        topics (the fleet's, fanned out to every sensor; each group's, fanned out to that group's sensors; each
        sensor's own) and upload receipts."""
        self.connection.add_connect_listener(self._on_connect)
        if self.discovery is not None:
            self.discovery.start()
        if self._uplink is not None:
            self.connection.subscribe(self.cfg.uploads.uplink_topic, 1,
                                      lambda msg: self._uplink.on_message(msg.payload))
        rollouts = [s.fleet.rollout for s in self.sensors if s.fleet is not None and s.fleet.rollout is not None]
        if rollouts:
            fleet_filter = rollout_topics.subscriptions(self.sensors[0].device)[0]
            self.connection.subscribe(fleet_filter, 1, lambda msg: [r.on_message(msg.topic, msg.payload)
                                                                    for r in rollouts])
            for r in rollouts:
                self.connection.subscribe(rollout_topics.subscriptions(r.device)[1], 1,
                                          lambda msg, r=r: r.on_message(msg.topic, msg.payload))
            groups: dict[str, list[SensorRollout]] = {}
            for r in rollouts:
                if r.group is not None:
                    groups.setdefault(r.group, []).append(r)
            for group, members in groups.items():  # one filter per group (a filter has one route)
                self.connection.subscribe(rollout_topics.subscriptions(members[0].device, group)[2], 1,
                                          lambda msg, rs=members: [r.on_message(msg.topic, msg.payload) for r in rs])
        if self.cfg.answers_mqtt:
            for s in self.sensors:
                self.connection.subscribe(topics.answer_command_topic(s.device), 1,
                                          lambda msg, d=s.device: self._on_answer_command(d, msg))
        if self._uploader is not None and self._uploader.receipts:
            for s in self.sensors:
                if s.cfg.uploads.enabled:
                    self.connection.subscribe(topics.receipt_topic(s.device), 1,
                                              lambda msg, d=s.device: self._uploader.on_receipt(d, msg.payload))

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        self.connection.publish(topic, payload, qos=1, retain=True)

    def _offer_upload(self, sensor: Sensor, uploads: list) -> None:
        """The records a sensor chose (scoring thread): into the spool, never onto the network here."""
        for u in uploads:
            self._uploader.offer(u.topic, u.payload, u.kind, u.id)

    def _on_connect(self) -> None:
        """On paho's thread after every (re)connect: availability, the retained status and answers become current
        again."""
        self.connection.publish(self.availability_topic, b"online", qos=1, retain=True)
        self._next_status = 0.0
        for device in self.answers.devices:
            self._publish_answer_state(device)

    # ------------------------------------------------------------------ answers (web and paho threads)
    def answer(self, device: str, payload: bytes, via: str) -> dict:
        """Take a technician's answer for ``device`` (``contract.answer`` command): the answer as recorded.
        AnswerError (counted by reason) when it is no command or cannot be taken."""
        try:
            command = decode_command(payload)
        except AnswerError:
            self.answers.refuse("bad_request")
            raise
        return self.answers.answer(device, command, via).to_dict()

    def _on_answer_command(self, device: str, msg) -> None:
        """paho's thread: one message on ``vib/<device>/answer/set`` (the device is the topic's: the ACL's)."""
        if msg.retain:  # a retained command would be taken again at every reconnect (a silence extended forever)
            self.answers.refuse("retained")
            self._ratelog.log(logging.WARNING, "retained", "%s: a retained answer on %s was refused (answers are never "
                              "retained: clear it with an empty retained message)", device, msg.topic)
            return
        try:
            self.answer(device, bytes(msg.payload), "mqtt")
        except AnswerError as exc:
            self._ratelog.log(logging.WARNING, f"answer-{exc.reason}", "%s: answer on %s refused: %s", device,
                              msg.topic, exc)

    def _on_answer(self, device: str, answer: dict) -> None:
        """A recorded answer (any thread): into the sensor's alert history, out as the retained answer state; the
        status is refreshed at once."""
        self.sensor(device).history.record_answer(answer)
        self._publish_answer_state(device)
        self._next_status = self._next_snapshot = 0.0
        self.wake.set()

    def _publish_answer_state(self, device: str) -> None:
        if self.cfg.answers_mqtt and self.connection is not None:
            self.connection.publish(topics.answer_topic(device), json.dumps(self.answers.state(device),
                                                                            separators=(",", ":")), qos=1, retain=True)

    # ------------------------------------------------------------------ main loop
    def run(self, stop: threading.Event) -> None:
        """Start (unless started), score until ``stop`` is set, then close."""
        try:
            self.start()
            log.info("edge-agent %s running %d sensor(s)", self.cfg.gateway, len(self.sensors))
            while not stop.is_set():
                self.wake.clear()
                busy = sum(sensor.poll() for sensor in self.sensors)
                now = time.monotonic()
                if now >= self._next_snapshot:
                    self._refresh_snapshot(now)
                if now >= self._next_status:
                    self._next_status = now + self.cfg.status.every_s
                    for sink in self._jsonl.values():
                        sink.retry()  # alert lines a full disk held back
                    self._tick_answers()
                    if self.trend is not None and not self.trend.counters.error:
                        self.trend.flush()
                    self.publish_status()
                if not busy and self.wake.wait(0.1):
                    stop.wait(WAKE_COALESCE_S)
        finally:
            self.close()

    def _tick_answers(self) -> None:
        """Silences that ended: their state published again, what they held back sent (scoring thread)."""
        for device in self.answers.tick():
            self._publish_answer_state(device)
        for sensor in self.sensors:
            sensor.dispatcher.tick()

    def _watch_bundles(self) -> None:
        """The watcher thread: each sensor's bundle, every ``bundle.watch_s`` of that sensor."""
        while not self.closing.wait(0.1):
            now = time.monotonic()
            for sensor in self.sensors:
                if sensor.watch_due(now) and sensor.check_bundle():
                    self._next_status = 0.0
                    self.wake.set()
                rollout = sensor.fleet.rollout if sensor.fleet is not None else None
                if rollout is not None:
                    try:
                        if rollout.step():
                            self._next_status = 0.0
                            self.wake.set()
                    except Exception:  # the watcher thread lives on whatever a rollout does
                        sensor.counters.internal_errors += 1
                        log.exception("%s: rollout step failed", sensor.device)

    # ------------------------------------------------------------------ web (read by the web server's threads)
    def _refresh_snapshot(self, now: float) -> None:
        """Scoring thread: the status document the web server serves (replaced whole, never mutated)."""
        self._next_snapshot = now + SNAPSHOT_S
        self._snapshot = (self.status(), now)

    def snapshot(self) -> tuple[dict, float]:
        """The latest status snapshot and its age in seconds (taken now when the loop has not run yet)."""
        snap = self._snapshot
        if snap is None:
            return self.status(), 0.0
        return snap[0], time.monotonic() - snap[1]

    def histories(self) -> dict:
        return {s.device: s.history for s in self.sensors}

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        """The gateway's status document: a summary and one entry per sensor (``edge_agent.telemetry``)."""
        sensors = {s.device: s.status() for s in self.sensors}
        total = lambda key: sum(d.get(key) or 0 for d in sensors.values())  # noqa: E731
        summary = GatewaySummary(
            gateway=self.cfg.gateway, state="online", time=datetime.now(UTC).isoformat(timespec="seconds"),
            uptime_s=round(time.monotonic() - self._t0, 1), sensors_total=len(sensors),
            sensors_alerting=sum(d.get("alert_state") in ("warning", "critical") for d in sensors.values()),
            sensors_without_model=sum(d["state"] == "no_model" for d in sensors.values()),
            sensors_unmonitored=sum(d["health"]["state"] != "ok" for d in sensors.values()),
            sensors_retraining_due=sum(bool(d.get("notices")) for d in sensors.values()),
            samples_in=total("samples_in"), windows_scored=total("windows_scored"), alerts=total("alerts"),
            mqtt_connected=bool(self.connection is not None and self.connection.connected))
        return fields_of(summary) | {
            "mqtt": None if self.connection is None else self.connection.status(),
            "uploads": None if self._uploader is None else self._uploader.status(),
            "http": None if self.web is None else self.web.status(),
            "homeassistant": None if self.discovery is None else self.discovery.status(),
            "answers": self.answers.status(),
            "trend": None if self.trend is None else fields_of(self.trend.counters),
            "sensors": sensors,
        }

    def publish_status(self, final: bool = False) -> list:
        """Write the status file and publish the retained statuses; returns paho's message infos."""
        doc = self.status()
        if final:
            doc["state"] = "stopped"
            for d in doc["sensors"].values():
                d["state"] = "stopped"
        if self._status_path is not None:
            write_json_atomic(self._status_path, doc)
        infos: list = []
        if not (self.cfg.status.mqtt and self.connection is not None):
            return infos
        summary = {k: v for k, v in doc.items() if k != "sensors"}
        summary["sensors"] = {dev: {k: d.get(k) for k in ("state", "alert_state", "model_version", "windows_scored")}
                              | {"health": d["health"]["state"]} for dev, d in doc["sensors"].items()}
        messages = [(self.status_topic, json.dumps(summary, separators=(",", ":")))]
        for dev, d in doc["sensors"].items():
            messages.append((topics.status_topic(dev), "offline" if final else
                             json.dumps(d | {"gateway": self.cfg.gateway}, separators=(",", ":"))))
        if final:
            messages.append((self.availability_topic, "offline"))
        for topic, payload in messages:
            info = self.connection.publish(topic, payload, qos=1, retain=True)
            if info is not None:
                infos.append(info)
        return infos


def _quietly(close: Callable[[], None], what: str) -> None:
    """Run a release step; log and go on when it fails (the other parts must still be released)."""
    try:
        close()
    except Exception:
        log.exception("%s: close failed", what)


def calibrate_sensor(cfg: AgentConfig, device: str | None, n_windows: int, timeout_s: float
                     ) -> tuple[calibration.DeviceThreshold | None, int]:
    """Score ``n_windows`` windows of one sensor's live source (assumed healthy) and compute its threshold with
    the bundle's method. Returns (record or None when too few windows arrived in ``timeout_s``, windows scored).
    Nothing is saved here."""
    scfg = cfg.sensor(device)
    model = load_served_model(cfg.resolve(scfg.bundle.path), scfg.bundle.num_threads)
    records: list[calibration.DeviceThreshold] = []
    pipeline = Pipeline(
        model.bundle, device=scfg.device, threshold=model.bundle.threshold.value, policy=scfg.alerts,
        scorer=model.scorer, sample_rate=scfg.source.sample_rate, calibrate=n_windows, on_calibrated=records.append,
        bridge_fraction=scfg.health.bridge_fraction,
    )
    source = make_source(scfg, cfg, client_id=f"{cfg.client_id}-calibrate-{scfg.device}")
    source.start()
    deadline = time.monotonic() + timeout_s
    try:
        while pipeline.calibrating and time.monotonic() < deadline:
            for frame in source.read(0.2):
                pipeline.push(frame)
                if not pipeline.calibrating:
                    break
    finally:
        source.stop()
    if pipeline.calibrating and not records:
        return None, len(pipeline.calibration_scores)
    if not records:
        raise ValueError(f"calibration on {len(pipeline.calibration_scores)} windows failed (see the log)")
    return records[0], len(pipeline.calibration_scores)
