"""A technician's answer to an alert: the command people send, and the answer an upload record carries.

Kinds::

    ack          acknowledged: someone has seen the alert (no verdict on it)
    confirmed    confirmed fault: the machine really has a problem (its windows: a labelled anomaly)
    false_alarm  false alarm: the machine is fine (its windows: normal data for retraining)
    silence      maintenance in progress: the sensor's alerts are held back from the alert sinks for ``hours``
                 (0 < hours <= MAX_SILENCE_H); scoring, the status and uploads go on
    unsilence    the maintenance is over before its time: alerts go out again

A command is a JSON object of at most ``MAX_COMMAND_BYTES`` (UTF-8), sent on ``vib/<device>/answer/set`` (MQTT,
Home Assistant's buttons) or to ``POST /api/sensors/<device>/answer`` (the status page)::

    {"kind": "false_alarm",   # one of KINDS
     "by": "J. Smith",        # who answers, in words: 1..MAX_BY printable characters (default "unknown")
     "hours": 4,              # silence only, and required there: 0 < hours <= MAX_SILENCE_H
     "alert": "3f2a9c..."}    # optional: the alert the sender was looking at; refused when it is no longer the
                              # sensor's current or last alert (an old page must not answer a new alert)

The device is the one of the topic or the path, never a field: who may answer for which device is the broker's
ACL (MQTT) or the page's write token, and ``by`` is only what the sender says (the gateway records the channel
beside it, ``via``). ``ack``, ``confirmed`` and ``false_alarm`` answer the sensor's current alert, or its last
one after it cleared; ``silence`` and ``unsilence`` need no alert.

The answer an upload record carries (``answer`` in schema 3, ``upload_record``): the verdict on the alert the
window belongs to, the latest ``confirmed`` or ``false_alarm`` when there is one, else the latest ``ack`` or
``silence`` (``RECORD_KINDS``); ``time`` is the gateway's clock (ISO 8601, UTC)::

    {"kind": "false_alarm", "by": "J. Smith", "time": "2026-11-22T10:01:02+00:00"}

Standard library only.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import AgentError

KINDS = ("ack", "confirmed", "false_alarm", "silence", "unsilence")
#: The kinds that answer an alert (they need one).
ALERT_KINDS = ("ack", "confirmed", "false_alarm")
#: A verdict on the alert: what retraining can learn from.
VERDICTS = ("confirmed", "false_alarm")
#: The kinds an upload record's ``answer`` may hold.
RECORD_KINDS = ("ack", "confirmed", "false_alarm", "silence")
#: Longest silence, hours (a week: a silence forgotten on a Friday ends the next Friday at the latest).
MAX_SILENCE_H = 168.0
#: Longest ``by``, characters.
MAX_BY = 64
MAX_COMMAND_BYTES = 1024
#: An alert id: as an upload record's ``alert_ref``.
ALERT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: What ``by`` says when the sender did not say who.
UNKNOWN = "unknown"
#: Why an answer was refused (``AnswerError.reason``; the ``reason`` label of ``answers_refused_total``).
REASONS = ("bad_request", "unknown_sensor", "no_alert", "stale_alert", "retained", "too_fast")


class AnswerError(AgentError):
    """An answer that cannot be taken (``reason``: one of ``REASONS``), or an answers file that is not the
    agent's."""

    def __init__(self, message: str, reason: str = "bad_request") -> None:
        super().__init__(message)
        self.reason = reason


def check_by(value: object, what: str = "by") -> str:
    """``value`` if it is 1..``MAX_BY`` printable characters with some text, else AnswerError naming ``what``."""
    if not isinstance(value, str):
        raise AnswerError(f"answer: {what!r} must be text, got {type(value).__name__}")
    if not value.strip() or len(value) > MAX_BY or not value.isprintable():
        raise AnswerError(f"answer: {what!r} must be 1..{MAX_BY} printable characters, got {value[:40]!r}")
    return value


@dataclass(frozen=True)
class Command:
    """One answer as sent: ``kind`` (``KINDS``), ``by``, ``hours`` (silence only), ``alert`` (optional id)."""

    kind: str
    by: str = UNKNOWN
    hours: float | None = None
    alert: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise AnswerError(f"answer: kind {str(self.kind)[:40]!r} is not one of {', '.join(KINDS)}")
        check_by(self.by)
        if self.kind == "silence":
            h = self.hours
            if isinstance(h, bool) or not isinstance(h, int | float) or not math.isfinite(h) \
                    or not 0.0 < h <= MAX_SILENCE_H:
                raise AnswerError(f"answer: silence needs hours, more than 0 and at most {MAX_SILENCE_H:g} (a week), "
                                  f"got {h!r}")
        elif self.hours is not None:
            raise AnswerError(f"answer: hours is for silence only, not {self.kind}")
        if self.alert is not None and not (isinstance(self.alert, str) and ALERT_ID.fullmatch(self.alert)):
            raise AnswerError(f"answer: alert {str(self.alert)[:40]!r} is not an alert id (1..128 characters of "
                              f"[A-Za-z0-9._:-])")

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind, "by": self.by}
        if self.hours is not None:
            out["hours"] = self.hours
        if self.alert is not None:
            out["alert"] = self.alert
        return out

    def encode(self) -> bytes:
        """The command as compact UTF-8 JSON (what ``decode_command`` reads)."""
        return json.dumps(self.to_dict(), separators=(",", ":")).encode("utf-8")


def decode_command(payload: bytes | str) -> Command:
    """Decode and check one command (see the module docstring). AnswerError (reason ``bad_request``) naming what is
    wrong: too large, not JSON, not an object, an unknown key, a wrong kind, hours or ``by``."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise AnswerError(f"answer: {len(payload)} bytes is more than the {MAX_COMMAND_BYTES} a command may hold")
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise AnswerError(f"answer: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise AnswerError(f"answer: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - {"kind", "by", "hours", "alert"})
    if unknown:
        raise AnswerError(f"answer: unknown keys {[k[:40] for k in unknown[:5]]} (known: kind, by, hours, alert)")
    if "kind" not in obj:
        raise AnswerError(f"answer: 'kind' is required ({', '.join(KINDS)})")
    if not isinstance(obj["kind"], str):
        raise AnswerError(f"answer: 'kind' must be text, got {type(obj['kind']).__name__}")
    return Command(obj["kind"], obj.get("by", UNKNOWN), obj.get("hours"), obj.get("alert"))


def record_answer(kind: str, by: str, time: float) -> dict:
    """The ``answer`` field of an upload record for an answer given at unix ``time`` (gateway clock)."""
    return {"kind": kind, "by": by, "time": datetime.fromtimestamp(time, UTC).isoformat(timespec="seconds")}


def check_record_answer(value: object) -> str | None:
    """None when ``value`` is a valid record ``answer`` (None, or ``{kind, by, time}``), else what is wrong."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"must be an object or null, got {type(value).__name__}"
    if set(value) != {"kind", "by", "time"}:
        return f"must have exactly the keys kind, by, time, got {sorted(str(k)[:20] for k in value)[:6]}"
    if value["kind"] not in RECORD_KINDS:
        return f"kind {str(value['kind'])[:40]!r} is not one of {', '.join(RECORD_KINDS)}"
    try:
        check_by(value["by"])
    except AnswerError as exc:
        return str(exc).removeprefix("answer: ")
    t = value["time"]
    if not isinstance(t, str) or len(t) > 64:
        return "time must be an ISO-8601 string"
    try:
        datetime.fromisoformat(t)
    except ValueError:
        return f"time {t[:40]!r} is not ISO-8601"
    return None
