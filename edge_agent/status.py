"""What the gateway reports about itself: typed counters, the status document, one atomic JSON writer.

Every number the agent reports is a field of a dataclass here (or of ``WindowerCounters``,
``ScoringCounters``), declared with :func:`counter`, :func:`gauge` or :func:`value`. The status document is
made of these objects (:func:`fields_of`) and ``/metrics`` is generated from the same declarations
(``edge_agent.telemetry``), so a counter cannot be kept without reaching ``edge-agent status``, the status file,
the retained MQTT status and Prometheus, or being excluded there with a reason::

    status file / `edge-agent status`     {GatewaySummary ..., "mqtt", "uploads", "http", "homeassistant",
                                           "sensors": {device: sensor status}}
    vib/<device>/status                   the status of that sensor ("offline" after a clean stop)
    vib/gateway/<gateway>/status          the gateway summary
    vib/gateway/<gateway>/availability    "online" / "offline" (the connection's last will)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def counter(help: str, metric: str | None = None, *, key: str | None = None, by: str | None = None,
            **labels: str):
    """A count that only grows, exported as ``edge_agent_<metric>`` (default ``<name>_total``).

    Args:
        help: what one unit of it is, for the status reference and the metric's HELP.
        metric: the metric family (shared by fields that differ only in ``labels``, e.g. a ``reason``).
        key: its name in the status document when not the field's name.
        by: the field is a mapping ``{label value: count}``; ``by`` names the label.
        labels: fixed labels of this field's series.
    """
    return field(default_factory=dict if by else int, metadata={
        "kind": "counter", "help": help, "metric": metric, "key": key, "by": by, "labels": labels})


def gauge(help: str, metric: str | None = None, *, default: object = 0, key: str | None = None,
          scale: float = 1.0, **labels: str):
    """A level that goes up and down (a queue's length, a score), exported as ``edge_agent_<metric>``
    (default: the field's name); ``scale`` converts to the metric's unit (ms -> s: 0.001)."""
    return field(default=default, metadata={
        "kind": "gauge", "help": help, "metric": metric, "key": key, "by": None, "labels": labels, "scale": scale})


def value(help: str, *, default: object = None, key: str | None = None, why: str | None = None):
    """A field of the status document only: text, a time, a list — or a number that is not a metric, with
    ``why`` (the completeness test refuses a number without one)."""
    return field(default=default, metadata={"kind": None, "help": help, "key": key, "why": why})


def key_of(f: dataclasses.Field) -> str:
    """The field's name in the status document."""
    return f.metadata.get("key") or f.name


def fields_of(obj: object) -> dict:
    """A counters object as status-document keys (``key=`` applied; mappings copied)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[key_of(f)] = dict(v) if isinstance(v, dict) else v
    return out


@dataclass
class SourceCounters:
    """What a sample source received and refused (each written by the source's own thread)."""

    bytes: int = counter("Bytes received from the sensor's link.", "received_bytes_total", key="bytes_in")
    messages: int = counter("MQTT messages received on the sensor's topic.", "messages_total")
    frames: int = counter("Frames decoded and queued for scoring.", "frames_total", key="frames_in")
    frames_dropped: int = counter("Frames dropped because the queue was full: the scorer fell behind.",
                                  "inputs_dropped_total", reason="queue_full")
    crc_errors: int = counter("Binary frames with a wrong CRC.", "inputs_dropped_total", reason="crc_error")
    bad_headers: int = counter("Binary frames with an impossible header.", "inputs_dropped_total",
                               reason="bad_header")
    bytes_discarded: int = counter("Bytes discarded: garbage between frames and rejected frames.",
                                   "discarded_bytes_total")
    bad_lines: int = counter("CSV lines that are not a sample.", "inputs_dropped_total", reason="bad_line")
    bad_payloads: int = counter("MQTT payloads that decode to no frame.", "inputs_dropped_total",
                                reason="bad_payload")
    oversized_payloads: int = counter("MQTT payloads refused unparsed for their size.", "inputs_dropped_total",
                                      reason="oversized_payload")
    reconnects: int = counter("Reconnections of the sensor's link.")
    open_failures: int = counter("Failed attempts to open the sensor's port.")
    read_errors: int = counter("Read errors on the sensor's link.")
    samples_dropped: int = counter("Samples in the frames dropped for a full queue.", "samples_dropped_total")
    intake_throttled_s: float = counter(
        "Seconds the reader paused: the sensor sent more than its intake budget (source.intake_cpu) decodes.",
        "intake_throttled_seconds_total")
    intake_throttles: int = counter("Times the reader paused for its intake budget.")
    gaps_detectable: bool = gauge("1 when the payloads carry a sequence number (gaps can be seen).",
                                  default=True)

    def as_dict(self) -> dict:
        return fields_of(self)


@dataclass
class SinkCounters:
    """One alert sink: events handed to it, delivered, failed (and waiting for a retry, where it retries)."""

    delivered: int = counter("Alert events the sink delivered (written, published, run).",
                             "alert_deliveries_total", result="delivered")
    failed: int = counter("Alert events the sink failed to deliver when emitted.", "alert_deliveries_total",
                          result="failed")
    pending: int = gauge("Alert events waiting in the sink for a retry.", "alert_sink_pending")
    dropped: int = counter("Alert events the sink discarded from a full queue.", "alert_sink_dropped_total")
    silenced: int = counter("Alert events handed over while the sensor was silenced (a technician's answer): marked "
                            "silenced; the command sink did not run its program.", "alert_sink_silenced_total")

    def as_dict(self) -> dict:
        return fields_of(self)


@dataclass
class UploadCounters:
    """The uploader's part of ``uploads`` in the gateway status (the spool's is ``SpoolCounters``)."""

    sent: int = counter("Upload records acknowledged by the broker.", "uploads_sent_total")
    sent_bytes: int = counter("Bytes of upload records acknowledged by the broker.", "uploads_sent_bytes_total")
    pending: int = gauge("Upload records waiting in the spool.", "uploads_pending")
    dropped: int = counter("Upload records the spool refused.", "uploads_dropped_total")
    failed_attempts: int = counter("Failed upload attempts.", "upload_failed_attempts_total")
    confirmed: int = counter("Records a collector's signed receipt confirmed (then deleted here).",
                             "uploads_confirmed_total")
    awaiting_receipt: int | None = gauge("Records sent and waiting for a collector's receipt (None: receipts off).",
                                         "uploads_awaiting_receipt", default=None)
    rejected: int = counter("Records a collector refused (quarantined centrally): deleted here, never resent.",
                            "uploads_rejected_by_collector_total", key="rejected_by_collector")
    last_rejected: str | None = value("The collector's reason the last time it refused a record.")
    receipts_refused: int = counter("Receipt messages refused: unsigned, unknown key, another device's, malformed.",
                                    "upload_receipts_refused_total")
    last_receipt_refused: str | None = value("Why the last receipt message was refused.")
    throttled: int = counter("Upload rounds deferred by the byte budget (uploads.max_bytes_per_hour).",
                             "upload_throttled_rounds_total")
    uplink: bool | None = gauge("1 while the bridge reports the uplink up (None: no uploads.uplink_topic).",
                                "uplink_up", default=None)
    uplink_waits: int = counter("Upload rounds deferred because the bridge reported the uplink down.",
                                "upload_uplink_waits_total")

    def as_dict(self) -> dict:
        return fields_of(self)


@dataclass
class SpoolCounters:
    """The upload spool's part of ``uploads`` in the gateway status."""

    evicted: int = counter("Records evicted from a full spool (oldest, least useful kinds first).",
                           "spool_evicted_total", key="spool_evicted")
    evicted_by_kind: dict = counter("Records evicted from a full spool, by kind.", "spool_evicted_by_kind_total",
                                    key="spool_evicted_by_kind", by="kind")
    evicted_bytes: int = counter("Payload bytes of the records evicted from a full spool.",
                                 "spool_evicted_bytes_total", key="spool_evicted_bytes")
    bytes: int = gauge("Payload bytes waiting in the upload spool.", "spool_bytes", key="spool_bytes")
    quarantined: int = counter("Spool rows that could not be read back (moved aside, never sent).",
                               "spool_quarantined_total", key="spool_quarantined")
    lock_waits: int = counter("Spool operations that found the database locked by another program.",
                              "spool_lock_waits_total", key="spool_lock_waits")
    waiting: int = gauge("Records held in memory while the spool's disk refused writes.",
                         "spool_waiting_in_memory", key="spool_waiting_in_memory")

    def as_dict(self) -> dict:
        return fields_of(self)


@dataclass
class MqttCounters:
    """One broker connection (``mqtt`` in the gateway status). Never holds the credentials."""

    connected: bool = value("Whether the connection is up.", default=False,
                            why="exported once, as the summary's mqtt_connected")
    tls: bool = value("Whether the connection uses TLS.", default=False, why="configuration, not a measurement")
    connects: int = counter("Successful connections to the broker.", "mqtt_connects_total")
    disconnects: int = counter("Lost broker connections.", "mqtt_disconnects_total")
    refused_connects: int = counter("Connections the broker refused (bad credentials, not authorised).",
                                    "mqtt_refused_connects_total")
    connect_failures: int = counter("Connection attempts that failed before the broker answered.",
                                    "mqtt_connect_failures_total")
    last_error: str | None = value("The latest connection error, in words.")
    last_error_at: str | None = value("When the latest connection error happened (ISO 8601).")
    published: int = counter("Messages handed to the broker connection.", "mqtt_published_total")
    publish_refused: int = counter("Publishes skipped while disconnected.", "mqtt_publish_refused_total")
    publish_errors: int = counter("Publishes the client rejected.", "mqtt_publish_errors_total")
    messages_in: int = counter("Messages received on the connection's subscriptions.", "mqtt_messages_in_total")
    callback_errors: int = counter("Errors in MQTT callbacks (a bug: please report).", "mqtt_callback_errors_total")

    def as_dict(self) -> dict:
        return fields_of(self)


@dataclass
class HttpCounters:
    """The status page and /metrics server (``http`` in the gateway status)."""

    url: str | None = value("Where the page is served.")
    error: str | None = value("Why the server is not serving (a port taken), or None.")
    requests: int = counter("HTTP requests answered.", "http_requests_total")
    refused: int = counter("Requests refused: unknown path or method.", "http_refused_total")
    errors: int = counter("Requests that failed while answering.", "http_errors_total")
    overloaded: int = counter("Connections closed because every worker was busy.", "http_overloaded_total")
    slow_clients: int = counter("Connections closed for not sending a request head in time.",
                                "http_slow_clients_total")
    client_resets: int = counter("Clients that reset the connection before the answer was sent.",
                                 "http_client_resets_total")
    oversized: int = counter("Requests refused for a head over 16 KiB (431).", "http_oversized_total")
    writable: bool = value("Whether the page takes answers to alerts (http.write_token_file or write_token_env).",
                           default=False, why="configuration, not a measurement")
    writes_refused: dict = counter("Answers refused before they reached the agent, by reason: read_only (no write "
                                   "token configured), cross_site (sent by another site's page), not_json (what a "
                                   "form sends), no_token, bad_token, too_large, not_found.",
                                   "http_writes_refused_total", by="reason")

    def as_dict(self) -> dict:
        return fields_of(self)


@dataclass
class DiscoveryCounters:
    """Home Assistant discovery (``homeassistant`` in the gateway status)."""

    entities: int = gauge("Entities announced to Home Assistant.", "homeassistant_entities")
    published: int = counter("Discovery configs handed to the broker.", "homeassistant_published_total")
    removed: int = counter("Stale discovery configs cleared.", "homeassistant_removed_total")

    def as_dict(self) -> dict:
        return fields_of(self)


@dataclass
class AnswerCounters:
    """Technicians' answers to alerts (``answers`` in the gateway status; each sensor's are in its own)."""

    file: str | None = value("Where the answers are kept across restarts; None: in memory only (nothing can answer: "
                             "no write token and answers.mqtt off, or the file cannot be used: see error).")
    error: str | None = value("Why the answers file is not used, or why its last write failed.")
    refused: dict = counter("Answers refused by the agent, by reason: bad_request (not a valid command), "
                            "unknown_sensor, no_alert (nothing to answer), stale_alert (the alert the sender saw "
                            "is no longer the sensor's), retained (a retained MQTT command), too_fast (over 60 a "
                            "minute for one sensor).",
                            "answers_refused_total", by="reason")
    write_errors: int = counter("Writes of the answers file that failed (a full disk): the answers stay in memory "
                                "and the write is tried again.", "answers_write_errors_total")
    quarantined: int = counter("Corrupt answers files moved aside (a fresh one started).", "answers_quarantined_total")

    def as_dict(self) -> dict:
        return fields_of(self)


@dataclass
class SensorAnswers:
    """A sensor's alert as the answers see it, the answer its upload records carry, and its silence."""

    alert: dict | None = value("The alert answers go to: the current one, or the last one after it cleared "
                               "({id, severity, started_at, raised, active}; times in unix seconds).")
    answer: dict | None = value("The answer to that alert its upload records carry: the latest confirmed or "
                                "false_alarm, else the latest ack or silence ({kind, by, time, via, alert}).")
    last: dict | None = value("The latest answer of any kind.")
    silenced_until: float | None = gauge("Unix time the silence in force ends (None: not silenced): until then its "
                                         "alert and health events are held back from the sinks.",
                                         "silenced_until_seconds", default=None)
    silenced_by: str | None = value("Who silenced the sensor's alerts, in their words.")
    answers: dict = counter("Answers recorded for the sensor, by kind.", "answers_total", by="kind")
    events_silenced: int = counter("Alert and health events held back by a silence: every sink got them marked "
                                   "silenced, the command was not run.", "alert_events_silenced_total")


@dataclass
class ConditionState:
    """The machine's condition in physical terms beside the model's score (``edge_agent.condition``)."""

    velocity_mm_s: float | None = gauge("Vibration velocity RMS in mm/s over 10-1000 Hz (ISO 10816-3), the largest "
                                        "channel, averaged over severity.average_s; None: not measured (note says why).",
                                        "vibration_velocity_mm_s", default=None)
    velocity_channel: str | None = value("The channel of the largest velocity.")
    zone: str | None = value("ISO 10816-3 zone of the velocity: A (new) B (unrestricted) C (limited time: plan the "
                             "repair) D (damaging), for the machine group and foundation set in [severity].")
    zone_meaning: str | None = value("What the zone means for the machine, in words.")
    zone_table: str | None = value("Where the zone boundaries come from (the ISO table's row, or custom).")
    velocity_note: str | None = value("Why there is no velocity (units, sample rate), or what limits it (a cut band).")
    bearing_baseline_windows: int | None = gauge("Healthy windows the bearing diagnosis baseline has learned (30: "
                                                 "learned); None without [sensors.bearing].",
                                                 "bearing_baseline_windows", default=None)
    bearing_verdict: str | None = value("The last alert's bearing diagnosis: likely outer race / inner race / "
                                        "rolling element / cage, or no bearing defect pattern.")


@dataclass
class HealthState:
    """Whether the sensor is being monitored: ``ok``, or a fault (``no_data``, ``no_windows``, ...) with its reason."""

    state: str = value("ok, or the fault: no_data, no_windows, invalid_data, over_range, flooding, partial, "
                       "no_model (edge_agent.health).", default="ok")
    reason: str = value("The fault in words: what is wrong and what to check.", default="")
    since: float | None = gauge("Unix time the current fault began (None while ok).", "health_since_seconds",
                                default=None)
    events: int = counter("Times the sensor's health left ok.", "health_events_total")
    coverage: float | None = gauge("Share of the last health.coverage_s of samples that reached a scored window.",
                                   "coverage_ratio", default=None)

    def as_dict(self) -> dict:
        return fields_of(self)


@dataclass
class Counters:
    """Counters of one sensor that are not owned by the source, the windower or the pipeline."""

    internal_errors: int = counter("Frames lost to an internal error (a bug: please report).")
    calibration_ignored: int = counter("Calibration files present but not applied (unreadable, invalid, stale).")
    calibration_note: str | None = value("Why, the last time a calibration file was not applied.")
    model_swaps: int = counter("New bundles put into service.")
    model_rejects: int = counter("Bundles refused (the previous model kept serving).")
    model_last_reject: str | None = value("Why the last bundle was refused.")
    uploads_offered: int = counter("Windows offered to the upload spool for retraining.")


@dataclass
class FleetCounters:
    """One sensor's part in the fleet loop: what it kept for upload and what it could not."""

    uploads_kept: dict = counter("Windows kept for retraining, by kind.", "uploads_kept_total", by="kind")
    uploads_not_kept_no_rate: int = counter("Windows not kept: no sample rate is known for their upload record.")
    uploads_not_encoded: int = counter("Windows not kept: their upload record could not be encoded.")
    uploads_last_encode_error: str | None = value("Why the last upload record could not be encoded.")


@dataclass
class DriftStatus:
    """Score drift against the bundle's training scores (``drift`` in a sensor's status)."""

    state: str = value("unknown (no training scores in the bundle), collecting, stable or drifting.",
                       default="unknown")
    psi: float | None = gauge("Population stability index of the recent scores against the training scores.",
                              "drift_psi", default=None)
    windows: int = gauge("Recent scores the index is computed on.", "drift_windows")
    limit: float = value("drift.psi_limit: drifting above it.", default=0.0, why="configuration")
    events: int = counter("Times the scores started drifting.", "drift_events_total")


@dataclass
class RolloutState:
    """Where one sensor's rollout stands."""

    state: str | None = value("idle, received, waiting (a transient error: retried), shadow, serving, rejected or "
                              "rolled_back.")
    rollout_id: str | None = value("The rollout in progress or last finished.")
    model_version: str | None = value("The version the rollout brings.")
    serving_version: str | None = value("The version serving now.")
    probation: bool = gauge("1 while a rolled-out model is on probation (the previous one kept to roll back to).",
                            "rollout_probation", default=False)
    reason: str | None = value("Why the rollout was rejected or rolled back, or is waiting.")
    last_ignored: str | None = value("Why the last rollout message was ignored.")
    time: str | None = value("When this state was reported (ISO 8601, UTC).")


@dataclass
class RolloutCounters:
    """One sensor's signed rollouts (``rollout`` in a sensor's status, with its state)."""

    messages: int = counter("Rollout messages received.", "rollout_messages_total")
    dropped: int = counter("Rollout messages dropped from a full inbox (retained ones come again).",
                           "rollout_dropped_total")
    ignored: int = counter("Rollout messages ignored: unsigned, unknown key, malformed, another device's.",
                           "rollout_ignored_total")
    stale: int = counter("Rollout messages ignored as replays or downgrades.", "rollout_stale_total")
    rejected: int = counter("Rollouts refused: a bundle that failed its checks, shadow or probation.",
                            "rollout_rejected_total")
    retries: int = counter("Rollout steps retried after a transient error (a full disk).", "rollout_retries_total")
    swaps: int = counter("Models a rollout put into service.", "rollout_swaps_total")
    rollbacks: int = counter("Rollouts rolled back after probation.", "rollout_rollbacks_total")


@dataclass
class RolloutFigures:
    """What the last shadow and probation measured (None until they ran)."""

    shadow_windows: int | None = gauge("Windows the candidate was shadow-scored on.", "rollout_shadow_windows",
                                       default=None)
    shadow_alert_rate: float | None = gauge("Share of shadow windows the candidate judged anomalous.",
                                            "rollout_shadow_alert_rate", default=None)
    serving_alert_rate: float | None = gauge("Share of the same windows the serving model judged anomalous.",
                                             "rollout_serving_alert_rate", default=None)
    probation_windows: int | None = gauge("Windows scored in probation.", "rollout_probation_windows",
                                          default=None)
    probation_alert_rate: float | None = gauge("Share of probation windows the new model judged anomalous.",
                                               "rollout_probation_alert_rate", default=None)
    previous_alert_rate: float | None = gauge("Share of probation windows the previous model judged anomalous.",
                                              "rollout_previous_alert_rate", default=None)


@dataclass
class SensorState:
    """What a sensor's status says besides its counters: the model serving, the alert state, the last score."""

    device: str = value("The sensor's id.", default="")
    state: str = value("online, no_model (waiting for a valid bundle) or stopped (after a clean stop).",
                       default="online")
    model_id: str | None = value("Model id of the served bundle.")
    model_version: str | None = value("Version of the served bundle.")
    quantization: str | None = value("float32, float16 or int8.")
    threshold: float | None = gauge("Threshold in force.", default=None)
    threshold_source: str | None = value("bundle or calibration: where the threshold comes from.")
    alert_state: str | None = value("calibrating, normal, warning or critical.")
    last_score: float | None = gauge("Score of the last window scored.", "anomaly_score", default=None)
    burst_mode: str | None = value("declared, recognised or off: whether the sensor sends snapshots.")
    samples_pending: int | None = gauge("Samples waiting for their window to fill.", default=None)
    inference_ms_p50: float | None = gauge("Per-window scoring time, median of the last 1024 windows (ms).",
                                           "inference_p50_seconds", default=None, scale=0.001)
    inference_ms_p99: float | None = gauge("Per-window scoring time, 99th percentile of the last 1024 windows (ms).",
                                           "inference_p99_seconds", default=None, scale=0.001)
    first_inference_s: float | None = gauge("Seconds the model took to load and score its first window.",
                                            "first_inference_seconds", default=None)
    source: str = value("serial or mqtt.", default="serial")
    link_up: bool = gauge("1 while the sensor's port is open or its MQTT connection is up.", default=False)
    queued_frames: int = gauge("Frames waiting for the scorer.", "queue_frames")
    queue_capacity: int = gauge("Frames the queue holds before it drops (source.queue_frames).",
                                "queue_capacity_frames")
    notices: list | None = value("Notices in force, e.g. retraining_due while the scores drift.")
    asset: str | None = value("What the sensor is mounted on, in the plant's words (config: asset).")
    location: str | None = value("Where it is (config: location).")
    advice_key: str | None = value("What is wrong now, as a key of the advice table (edge_agent.advice): a health "
                                   "condition, changed, degrading, over_range, partial or calibrating; None while the "
                                   "sensor is monitored and normal.")
    advice: str | None = value("What to do now, in words for maintenance staff (the config's advice.<key>, or its "
                               "default); None while the sensor is monitored and normal.")


@dataclass
class GatewaySummary:
    """The gateway's own lines of the status document (``vib/gateway/<gateway>/status``)."""

    gateway: str = value("The gateway's id.", default="")
    state: str = value("online, or stopped after a clean stop.", default="online")
    time: str = value("When the document was made (ISO 8601, UTC).", default="")
    uptime_s: float = gauge("Seconds since the agent started.", "uptime_seconds")
    sensors_total: int = gauge("Sensors configured on this gateway.", "sensors")
    sensors_alerting: int = gauge("Sensors in warning or critical.")
    sensors_without_model: int = gauge("Sensors waiting for a valid bundle.")
    sensors_unmonitored: int = gauge("Sensors whose health is not ok: nothing they send is being judged.")
    sensors_retraining_due: int = gauge("Sensors with a notice in force (retraining due).")
    samples_in: int = value("Samples received, all sensors.", default=0, why="the sum of the sensors' samples_total")
    windows_scored: int = value("Windows scored, all sensors.", default=0,
                                why="the sum of the sensors' windows_scored_total")
    alerts: int = value("Alert events, all sensors.", default=0, why="the sum of the sensors' alert_events_total")
    mqtt_connected: bool = gauge("1 while the gateway's broker connection is up.", default=False)


def write_json_atomic(path: Path, doc: object, *, indent: int | None = 2) -> bool:
    """Write JSON to ``path`` through a temp file in the same folder and a rename: readers never see half a
    file. Returns False (logged) when it cannot be written; never raises for an OS error."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=indent)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True
