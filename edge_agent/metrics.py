"""The gateway's status document as Prometheus metrics (text exposition format 0.0.4), written by hand.

The agent does not depend on ``prometheus_client``: every number already lives in the status document
(see README, "Status fields"), so exposing it is a matter of naming, typing and escaping. Every sensor
series carries ``sensor="<device>"``; a key missing from a sensor's status (no model yet, a field a newer
agent adds) is left out rather than invented.

    edge_agent_windows_scored_total{sensor}          counter   windows scored
    edge_agent_inputs_dropped_total{sensor,reason}   counter   frames / MQTT messages / CSV lines dropped
    edge_agent_samples_lost_total{sensor,reason}     counter   samples never scored: gap, invalid, over_range
    edge_agent_inference_p50_seconds{sensor}         gauge     (and _p99_) over the last 1024 windows
    edge_agent_queue_frames{sensor}                  gauge     frames waiting for the scorer (and capacity)
    edge_agent_alert_state{sensor,state}             gauge     1 for the current state, 0 for the others
    edge_agent_health{sensor,state}                  gauge     1 for the current health state
    edge_agent_model_info{sensor,model_id,...}       gauge     always 1: the served model in its labels
    edge_agent_spool_bytes                           gauge     the upload spool on disk
    ... (``FAMILIES`` below is the complete list)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from edge_agent import __version__
from edge_agent.health import CONDITIONS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "edge_agent_"

ALERT_STATES = ("calibrating", "normal", "warning", "critical")
HEALTH_STATES = CONDITIONS  # one definition: edge_agent.health

#: Per-sensor counters: status key -> (metric without prefix, help). Summed keys share a family, by reason.
SENSOR_COUNTERS = {
    "samples_in": ("samples_total", "Samples received from the sensor."),
    "frames_in": ("frames_total", "Frames decoded and queued for scoring."),
    "bytes_in": ("received_bytes_total", "Bytes received from the sensor's link."),
    "windows_scored": ("windows_scored_total", "Windows scored by the model."),
    "alerts": ("alert_events_total", "Alert events (raised, escalated, cleared)."),
    "gaps": ("gaps_total", "Sequence gaps in the sample stream."),
    "bytes_discarded": ("discarded_bytes_total", "Bytes discarded: garbage between frames and rejected frames."),
    "over_range_spans": ("over_range_spans_total", "Window-sized spans of saturated input judged as anomalous."),
    "restarts": ("sender_restarts_total", "Sender restarts (backwards sequence jump with new data)."),
    "resyncs": ("resyncs_total", "Window assembly restarts after a break in the stream."),
    "reconnects": ("reconnects_total", "Reconnections of the sensor's link."),
    "open_failures": ("open_failures_total", "Failed attempts to open the sensor's port."),
    "read_errors": ("read_errors_total", "Read errors on the sensor's link."),
    "internal_errors": ("internal_errors_total", "Frames lost to an internal error (a bug: please report)."),
    "model_swaps": ("model_swaps_total", "New bundles put into service."),
    "model_rejects": ("model_rejects_total", "Bundles refused (the previous model kept serving)."),
    "uploads_offered": ("uploads_offered_total", "Windows offered to the upload spool for retraining."),
}
#: Input units dropped before scoring: status key -> reason label.
DROP_REASONS = {
    "frames_dropped": "queue_full",
    "crc_errors": "crc_error",
    "bad_headers": "bad_header",
    "frames_rejected": "wrong_channels",
    "duplicates": "duplicate",
    "bad_payloads": "bad_payload",
    "oversized_payloads": "oversized_payload",
    "bad_lines": "bad_line",
}
#: Samples that were never scored: status key -> reason label.
SAMPLE_LOSS_REASONS = {
    "samples_missing": "gap",
    "samples_invalid": "invalid",
    "samples_over_range": "over_range",
}
#: Gateway-wide numbers: (path in the status document, metric, type, help).
GATEWAY_VALUES = (
    (("uptime_s",), "uptime_seconds", "gauge", "Seconds since the agent started."),
    (("sensors_total",), "sensors", "gauge", "Sensors configured on this gateway."),
    (("mqtt_connected",), "mqtt_connected", "gauge", "1 while the broker connection is up."),
    (("mqtt", "connects"), "mqtt_connects_total", "counter", "Successful connections to the broker."),
    (("mqtt", "disconnects"), "mqtt_disconnects_total", "counter", "Lost broker connections."),
    (("mqtt", "refused_connects"), "mqtt_refused_connects_total", "counter", "Connections the broker refused."),
    (("mqtt", "publish_refused"), "mqtt_publish_refused_total", "counter", "Publishes skipped while disconnected."),
    (("mqtt", "publish_errors"), "mqtt_publish_errors_total", "counter", "Publishes the client rejected."),
    (("mqtt", "callback_errors"), "mqtt_callback_errors_total", "counter", "Errors in MQTT callbacks."),
    (("uploads", "sent"), "uploads_sent_total", "counter", "Upload records acknowledged by the broker."),
    (("uploads", "pending"), "uploads_pending", "gauge", "Upload records waiting in the spool."),
    (("uploads", "dropped"), "uploads_dropped_total", "counter", "Upload records the spool refused."),
    (("uploads", "failed_attempts"), "upload_failed_attempts_total", "counter", "Failed upload attempts."),
    (("uploads", "spool_evicted"), "spool_evicted_total", "counter", "Records evicted from a full spool."),
    (("uploads", "spool_bytes"), "spool_bytes", "gauge", "Size of the upload spool on disk."),
)


class Exposition:
    """Metric families in the order they are first declared; samples grouped under their family."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_text: str, value: object, labels: Mapping[str, str] | None = None
            ) -> None:
        """One sample of ``PREFIX + name``; None (and non-numbers) are skipped, booleans become 0/1."""
        if value is None or isinstance(value, str) or not isinstance(value, int | float):
            return
        full = PREFIX + name
        family = self._families.setdefault(full, (kind, help_text, []))
        label_text = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in (labels or {}).items())
        family[2].append(f"{full}{{{label_text}}} {format_value(value)}" if label_text else
                         f"{full} {format_value(value)}")

    def text(self) -> str:
        out: list[str] = []
        for name, (kind, help_text, samples) in self._families.items():
            out.append(f"# HELP {name} {escape_help(help_text)}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)
        return "\n".join(out) + "\n"


def escape_label(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float | int | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(doc: Mapping, *, queue_capacity: Mapping[str, int] | None = None, status_age_s: float | None = None
           ) -> str:
    """The Prometheus text of a gateway status document (``Agent.status()``).

    Args:
        doc: ``{gateway summary..., "sensors": {device: sensor status}}``.
        queue_capacity: frames each sensor's queue holds (``source.queue_frames``), by device.
        status_age_s: seconds since ``doc`` was taken (a scoring loop that stopped shows here).
    """
    e = Exposition()
    e.add("build_info", "gauge", "Always 1: the agent's version and gateway id in labels.", 1,
          {"version": __version__, "gateway": str(doc.get("gateway", ""))})
    e.add("status_age_seconds", "gauge", "Seconds since the scoring loop last refreshed these numbers.",
          status_age_s)
    for path, name, kind, help_text in GATEWAY_VALUES:
        e.add(name, kind, help_text, _get(doc, path))
    for device, s in (doc.get("sensors") or {}).items():
        _sensor(e, str(device), s, (queue_capacity or {}).get(device))
    return e.text()


def _sensor(e: Exposition, device: str, s: Mapping, capacity: int | None) -> None:
    lab = {"sensor": device}
    for key, (name, help_text) in SENSOR_COUNTERS.items():
        e.add(name, "counter", help_text, s.get(key), lab)
    for key, reason in DROP_REASONS.items():
        e.add("inputs_dropped_total", "counter",
              "Input dropped before scoring, by reason (a frame, an MQTT message or a CSV line each).",
              s.get(key), lab | {"reason": reason})
    for key, reason in SAMPLE_LOSS_REASONS.items():
        e.add("samples_lost_total", "counter",
              "Samples never scored, by reason: gap (never arrived), invalid (NaN), over_range (saturated).",
              s.get(key), lab | {"reason": reason})
    for q in ("p50", "p99"):
        ms = s.get(f"inference_ms_{q}")
        e.add(f"inference_{q}_seconds", "gauge", f"Per-window scoring time, {q} of the last 1024 windows.",
              None if ms is None else ms / 1000.0, lab)
    e.add("queue_frames", "gauge", "Frames waiting for the scorer.", s.get("queued_frames"), lab)
    e.add("queue_capacity_frames", "gauge", "Frames the queue holds before it drops (source.queue_frames).",
          capacity, lab)
    e.add("anomaly_score", "gauge", "Score of the last window scored.", s.get("last_score"), lab)
    e.add("threshold", "gauge", "Threshold in force.", s.get("threshold"), lab)
    state = s.get("alert_state")
    if state is not None:
        for st in ALERT_STATES:
            e.add("alert_state", "gauge", "1 for the sensor's current alert state.", int(st == state),
                  lab | {"state": st})
    health = s.get("health")
    current = health.get("state") if isinstance(health, Mapping) else ("no_model" if s.get("state") == "no_model"
                                                                        else None)
    if current is not None:
        states = HEALTH_STATES if current in HEALTH_STATES else (*HEALTH_STATES, current)
        for st in states:
            e.add("health", "gauge", "1 for the sensor's current health state (ok: being monitored).",
                  int(st == current), lab | {"state": st})
    if isinstance(health, Mapping):
        e.add("health_events_total", "counter", "Times the sensor's health left ok.", health.get("events"), lab)
        e.add("health_since_seconds", "gauge", "Unix time the current health fault began.", health.get("since"),
              lab)
    if s.get("model_version") is not None:
        e.add("model_info", "gauge", "Always 1: the served model in labels.", 1, lab | {
            "model_id": str(s.get("model_id", "")), "model_version": str(s["model_version"]),
            "quantization": str(s.get("quantization", "")), "threshold_source": str(s.get("threshold_source", ""))})
    drift = s.get("drift")
    if isinstance(drift, Mapping):
        e.add("drift_psi", "gauge", "Population stability index of the recent scores against the training scores.",
              drift.get("psi"), lab)
        e.add("retraining_due", "gauge", "1 while the scores drift from the training distribution.",
              int(drift.get("state") == "drifting"), lab)
    for kind, count in (s.get("uploads_kept") or {}).items():
        e.add("uploads_kept_total", "counter", "Windows kept for retraining, by kind.", count, lab | {"kind": str(kind)})
    rollout = s.get("rollout")
    if isinstance(rollout, Mapping) and rollout.get("state") is not None:
        e.add("rollout_info", "gauge", "Always 1: the sensor's rollout state in labels.", 1, lab | {
            "state": str(rollout["state"]), "model_version": str(rollout.get("model_version") or "")})
    for sink, counts in _items(s.get("sinks")):
        for result in ("delivered", "failed"):
            e.add("alert_deliveries_total", "counter", "Alert events handed to each sink, by result.",
                  counts.get(result), lab | {"sink": sink, "result": result})


def _get(doc: Mapping, path: Iterable[str]) -> object:
    for key in path:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def _items(d: object) -> list[tuple[str, Mapping]]:
    return [(str(k), v) for k, v in d.items() if isinstance(v, Mapping)] if isinstance(d, Mapping) else []
