"""One path from a counter to the dashboard: the catalogue of every status field and every metric.

The status document is made of typed objects (``edge_agent.status``, ``WindowerCounters``,
``ScoringCounters``) placed at fixed paths (``LAYOUT``). Each field declares what it is (``counter``,
``gauge``, ``value``); :func:`catalogue` reads those declarations, and ``edge_agent.metrics`` renders
``/metrics`` from the catalogue alone. A number that is not a metric says why (``value(..., why=...)``);
``tests/agent/test_telemetry.py`` fails on a numeric status field that is neither exported nor excused.

Paths use ``*`` for a mapping's keys, each named by a label: ``sensors.*.sinks.*.delivered`` with labels
``(sensor, sink)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache

from edge_agent import status as st
from edge_agent.condition import ConditionCounters
from edge_agent.health import CONDITIONS
from edge_agent.pipeline import ScoringCounters
from edge_agent.trend import TrendCounters
from edge_agent.windows import WindowerCounters

ALERT_STATES = ("calibrating", "normal", "warning", "critical")


@dataclass(frozen=True)
class Section:
    """Where a typed object sits in the status document; ``labels`` name the path's ``*`` in order."""

    path: str
    cls: type
    labels: tuple[str, ...] = ()


SENSOR = ("sensor",)
#: The status document, object by object.
LAYOUT = (
    Section("", st.GatewaySummary),
    Section("mqtt", st.MqttCounters),
    Section("uploads", st.UploadCounters),
    Section("uploads", st.SpoolCounters),
    Section("http", st.HttpCounters),
    Section("homeassistant", st.DiscoveryCounters),
    Section("answers", st.AnswerCounters),
    Section("trend", TrendCounters),
    Section("sensors.*", st.SensorState, SENSOR),
    Section("sensors.*", st.SourceCounters, SENSOR),
    Section("sensors.*", WindowerCounters, SENSOR),
    Section("sensors.*", ScoringCounters, SENSOR),
    Section("sensors.*", st.Counters, SENSOR),
    Section("sensors.*", st.FleetCounters, SENSOR),
    Section("sensors.*", ConditionCounters, SENSOR),
    Section("sensors.*.condition", st.ConditionState, SENSOR),
    Section("sensors.*.health", st.HealthState, SENSOR),
    Section("sensors.*.answers", st.SensorAnswers, SENSOR),
    Section("sensors.*.sinks.*", st.SinkCounters, ("sensor", "sink")),
    Section("sensors.*.drift", st.DriftStatus, SENSOR),
    Section("sensors.*.rollout", st.RolloutState, SENSOR),
    Section("sensors.*.rollout", st.RolloutCounters, SENSOR),
    Section("sensors.*.rollout", st.RolloutFigures, SENSOR),
)

#: HELP of the families several fields share (each field's own help is in the status reference).
FAMILY_HELP = {
    "inputs_dropped_total": "Input dropped before scoring, by reason (a frame, an MQTT message or a CSV line each).",
    "samples_lost_total": "Samples never scored, by reason: gap (never arrived), invalid (NaN), over_range "
                          "(saturated).",
    "alert_deliveries_total": "Alert events handed to each sink, by result.",
}


@dataclass(frozen=True)
class Entry:
    """One status field and what it becomes in ``/metrics``.

    ``metric`` is the full family name (None: status only, ``excluded`` says why); ``labels`` name the path's
    ``*`` in order, ``fixed`` are labels of constant value (``reason="gap"``); ``states``: a text field exported as one 0/1 series per state;
    ``info``: a text field exported as a constant 1 whose labels are sibling fields (label -> sibling key).
    """

    path: str
    help: str
    kind: str | None
    metric: str | None
    labels: tuple[str, ...] = ()
    fixed: Mapping[str, str] = field(default_factory=dict)
    excluded: str | None = None
    scale: float = 1.0
    states: tuple[str, ...] = ()
    info: Mapping[str, str] = field(default_factory=dict)


PREFIX = "edge_agent_"

#: Text fields exported as state sets and info series (the numbers come from the declarations).
DERIVED = (
    Entry("sensors.*.alert_state", "1 for the sensor's current alert state.", "gauge", PREFIX + "alert_state",
          SENSOR, states=ALERT_STATES),
    Entry("sensors.*.health.state", "1 for the sensor's current health state (ok: being monitored).", "gauge",
          PREFIX + "health", SENSOR, states=CONDITIONS),
    Entry("sensors.*.model_version", "Always 1: the served model in labels.", "gauge", PREFIX + "model_info", SENSOR,
          info={"model_id": "model_id", "model_version": "model_version", "quantization": "quantization",
                "threshold_source": "threshold_source"}),
    Entry("sensors.*.condition.zone", "1 for the sensor's current ISO 10816-3 zone.", "gauge",
          PREFIX + "vibration_zone", SENSOR, states=("A", "B", "C", "D")),
    Entry("sensors.*.drift.state", "1 while the scores drift from the training distribution.", "gauge",
          PREFIX + "retraining_due", SENSOR, states=("drifting",)),
    Entry("sensors.*.rollout.state", "Always 1: the sensor's rollout state in labels.", "gauge",
          PREFIX + "rollout_info", SENSOR, info={"state": "state", "model_version": "model_version"}),
)


@cache
def catalogue() -> tuple[Entry, ...]:
    """Every status field (``LAYOUT``), with the metric it is exported as, and the derived series."""
    out: list[Entry] = []
    for section in LAYOUT:
        out.extend(_entries(section))
    by_path = {e.path: e for e in out}
    for d in DERIVED:  # the text field is documented once, with the metric it feeds
        base = by_path.get(d.path)
        out.append(dataclasses.replace(d, help=f"{base.help} {d.help}" if base else d.help))
        if base is not None:
            out.remove(base)
    return tuple(out)


def _entries(section: Section) -> Iterator[Entry]:
    for f in dataclasses.fields(section.cls):
        m = f.metadata
        if "help" not in m:
            raise TypeError(f"{section.cls.__name__}.{f.name}: declare it with status.counter, gauge or value")
        key = st.key_of(f)
        path = f"{section.path}.{key}" if section.path else key
        labels = section.labels
        if m.get("by"):
            path, labels = f"{path}.*", (*labels, m["by"])
        kind = m["kind"]
        if kind is None:
            yield Entry(path, m["help"], None, None, labels, excluded=m.get("why") or "text")
            continue
        name = m.get("metric") or (f"{key}_total" if kind == "counter" else key)
        yield Entry(path, m["help"], kind, PREFIX + name, labels, dict(m.get("labels") or {}),
                    scale=m.get("scale", 1.0))


def samples(doc: Mapping, entry: Entry) -> Iterator[tuple[dict[str, str], tuple[Mapping, object]]]:
    """Where ``entry`` occurs in a status document: its labels, and (the mapping holding it, its value)."""
    for keys, parent, leaf in _walk(doc, entry.path.split("."), ()):
        yield dict(zip(entry.labels, keys, strict=True)) | dict(entry.fixed), (parent, leaf)


def _walk(node: object, parts: list[str], keys: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Mapping, object]]:
    if not isinstance(node, Mapping):
        return
    head, rest = parts[0], parts[1:]
    items = [(str(k), v) for k, v in node.items()] if head == "*" else (
        [(head, node[head])] if head in node else [])
    for k, v in items:
        ks = (*keys, k) if head == "*" else keys
        if rest:
            yield from _walk(v, rest, ks)
        else:
            yield ks, node, v


def uncatalogued(doc: Mapping) -> list[str]:
    """The numeric fields of a status document that are neither exported as a metric nor excused with a reason
    (``value(..., why=...)``): each one a counter that would never reach a dashboard."""
    patterns = {e.path: e for e in catalogue()}
    out: list[str] = []

    def visit(node: object, path: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                visit(v, (*path, str(k)))
            return
        if node is None or isinstance(node, str) or not isinstance(node, int | float):
            return
        entry = next((e for p, e in patterns.items() if _matches(p, path)), None)
        if entry is None or (entry.metric is None and entry.excluded in (None, "text")):
            out.append(".".join(path))

    visit(doc, ())
    return out


def _matches(pattern: str, path: tuple[str, ...]) -> bool:
    parts = pattern.split(".")
    return len(parts) == len(path) and all(p in ("*", k) for p, k in zip(parts, path, strict=True))
