"""The gateway's status document as Prometheus metrics (text exposition format 0.0.4), written by hand.

The agent does not depend on ``prometheus_client``: every number already lives in the status document, and
which metric each one becomes is declared beside the counter itself (``edge_agent.status``) and collected in
``edge_agent.telemetry.catalogue()``; this module only names, types and escapes. Every sensor series carries
``sensor="<device>"``; a key missing from a sensor's status (no model yet) is left out rather than invented.
The complete list is the reference's "Metrics" page, generated from the same catalogue.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from edge_agent import __version__, telemetry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = telemetry.PREFIX


class Exposition:
    """Metric families in the order they are first declared; samples grouped under their family."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_text: str, value: object, labels: Mapping[str, str] | None = None
            ) -> None:
        """One sample of ``PREFIX + name``; None (and non-numbers) are skipped, booleans become 0/1."""
        if value is None or isinstance(value, str) or not isinstance(value, int | float):
            return
        full = name if name.startswith(PREFIX) else PREFIX + name
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


def render(doc: Mapping, *, status_age_s: float | None = None) -> str:
    """The Prometheus text of a gateway status document (``Agent.status()``), family by family as the catalogue
    declares them; ``status_age_s``: seconds since ``doc`` was taken (a scoring loop that stopped shows here)."""
    e = Exposition()
    e.add("build_info", "gauge", "Always 1: the agent's version and gateway id in labels.", 1,
          {"version": __version__, "gateway": str(doc.get("gateway", ""))})
    e.add("status_age_seconds", "gauge", "Seconds since the scoring loop last refreshed these numbers.",
          status_age_s)
    for entry in telemetry.catalogue():
        if entry.metric is None:
            continue
        help_text = telemetry.FAMILY_HELP.get(entry.metric.removeprefix(PREFIX), entry.help)
        for labels, (parent, v) in telemetry.samples(doc, entry):
            if entry.states:
                if isinstance(v, str):
                    states = entry.states if v in entry.states or len(entry.states) == 1 else (*entry.states, v)
                    for state in states:
                        e.add(entry.metric, entry.kind, help_text, int(state == v),
                              labels if len(entry.states) == 1 else labels | {"state": state})
            elif entry.info:
                if v is not None:
                    e.add(entry.metric, entry.kind, help_text, 1,
                          labels | {k: str(parent.get(key) or "") for k, key in entry.info.items()})
            elif isinstance(v, bool):
                e.add(entry.metric, entry.kind, help_text, int(v), labels)
            elif isinstance(v, int | float):
                e.add(entry.metric, entry.kind, help_text, v * entry.scale if entry.scale != 1.0 else v, labels)
    return e.text()
