"""What to do: one short text per alert kind and health condition, written for maintenance staff, and the
sensor's asset name and location, on every event and in the status.

The texts are declared once, as the defaults of :class:`AdviceTexts` (``[advice]`` of the config: every
sensor's, ``[sensors.advice]``: one sensor's, key by key; an unknown key is refused at start). Each key
applies to::

    changed        an alert at warning: the vibration changed from normal (watch)
    degrading      an alert at critical: far from normal, or still rising (act)
    over_range     an alert raised by saturated input: the signal is beyond the sensor's range, no model can judge it
    no_data        health no_data: nothing arrives
    no_windows     health no_windows: data arrives, none of it can be judged
    invalid_data   health invalid_data: too many invalid values to judge
    no_model       health no_model: no model to judge with
    flooding       health flooding: the sensor sends more than the gateway reads for it
    partial        health partial: part of the data is lost before it is judged
    stuck          health stuck: a channel repeats one value (a failed sensor or cable)
    not_monitored  any other health condition (one this release does not know by name)
    calibrating    the sensor is learning its threshold from its first windows: no alert yet
    retraining_due the notice of that name: normal has shifted, the model should be retrained

:class:`Advisor` (one per sensor, used on the scoring thread) adds to every event its ``advice_key``, ``advice``
(None for a clear or a recovery), ``asset`` and ``location`` (:class:`Advised`: the event's own fields plus
these four, in the MQTT alert payload, the JSONL line and the command's environment), and gives the sensor's
status the same four for what is wrong *now*: a sensor that is not monitored first, then an active alert (an
over-range alert as ``over_range``, whatever its severity), then partial coverage, then calibration; None while
the sensor is monitored and normal.
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from dataclasses import dataclass

from edge_agent.alerts import STAGES
from edge_agent.settings import setting

#: Characters a text may hold at most (it travels in every alert and every status message).
MAX_ADVICE = 500
#: Characters an asset name or a location may hold at most.
MAX_NAME = 120


def check_text(key: str, value: str | None, limit: int) -> None:
    """ValueError naming ``key`` when ``value`` is too long, blank or holds a control character (a NUL cannot go
    into a program's environment, an escape sequence would reach a terminal); line breaks and tabs are fine."""
    if value is None:
        return
    if not value.strip():
        raise ValueError(f"{key}: must hold some text, got {value!r}")
    if len(value) > limit:
        raise ValueError(f"{key}: at most {limit} characters (it travels in every alert and status), got {len(value)}")
    bad = next((c for c in value if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf", "Cs")), None)
    if bad is not None:
        raise ValueError(f"{key}: control character U+{ord(bad):04X} at position {value.index(bad)}: write plain text")


@dataclass(frozen=True)
class AdviceTexts:
    """What to do, one text per alert kind and health condition (the defaults are written for maintenance staff:
    replace one with your site's own procedure, a phone number, a work-order code)."""

    changed: str = setting(
        "The vibration has changed from what this machine normally does. Nothing needs stopping yet: look at the "
        "machine at your next round (noise, heat, leaks, loose parts) and note what changed (load, speed, product, "
        "recent work on it). Watch whether the alert turns to degrading.",
        doc="an alert at warning (stage changed)")
    degrading: str = setting(
        "The vibration is far from normal or still rising: plan an inspection soon. Check the bearings (noise, "
        "heat), the lubrication, the mounting bolts and the coupling; if it keeps rising, arrange a stop before "
        "the machine fails.",
        doc="an alert at critical (stage degrading)")
    over_range: str = setting(
        "The signal is beyond the sensor's range (saturated), so it cannot be judged. Check the sensor's range "
        "setting and its mounting: a loose sensor or a wrong range saturates. If both are right, the machine "
        "shakes harder than the sensor can measure: inspect it now.",
        doc="an alert raised by saturated or out-of-range input (the score is then shown as 'over range')")
    no_data: str = setting(
        "Nothing arrives from this sensor. Check its cable and connector, its power, and that the port or the "
        "wireless node named in the reason is there. The gateway keeps trying and recovers by itself once data "
        "arrives.",
        doc="health no_data: nothing arrives from the sensor")
    no_windows: str = setting(
        "Data arrives but none of it can be judged (the reason says why: invalid values, gaps, the wrong number "
        "of channels). Check the cable and connector for loose contacts and the sensor's settings against the "
        "model (ask whoever set it up).",
        doc="health no_windows: data arrives, no window can be scored")
    invalid_data: str = setting(
        "The sensor sends invalid values too often to be judged. Check its cable, connector and power supply, "
        "then the sensor itself: replace it if the values stay invalid.",
        doc="health invalid_data: too many invalid values (NaN) to judge")
    no_model: str = setting(
        "There is no model to judge this sensor with. Ask whoever runs the models to deploy one (edge-agent "
        "deploy); the reason says why the last one was refused.",
        doc="health no_model: no valid bundle to score with")
    flooding: str = setting(
        "The sensor sends more data than the gateway reads for it, so part of it is skipped. Check the sensor's "
        "sample rate and message size against its configuration (ask whoever set it up).",
        doc="health flooding: the reader is paused for its intake budget")
    partial: str = setting(
        "Part of the data is lost before it can be judged (the reason says how much and why). Check the cable and "
        "connector, or the radio or network link. Alerts still work, on less data.",
        doc="health partial: less than health.min_coverage of the samples reach a scored window")
    stuck: str = setting(
        "A channel keeps sending the same value: the sensor or its cable has probably failed. Check the "
        "connector and the sensor; replace it if the value stays frozen.",
        doc="health stuck: a channel repeats one raw value longer than the training data ever did")
    not_monitored: str = setting(
        "Nothing this sensor sends is being judged: read the reason, check the sensor, its cable and its link, "
        "and tell whoever runs the gateway.",
        doc="any other health fault (a condition this text table has no key for)")
    calibrating: str = setting(
        "The sensor is learning its normal level from its first windows and raises no alert until then. Nothing "
        "to do, unless the machine is not running normally now: then tell whoever set it up (the level learned "
        "would be wrong).",
        doc="the alert state calibrating (calibration.windows): not judged yet")
    retraining_due: str = setting(
        "The machine's normal vibration has shifted for a long time (a new operating point, or after "
        "maintenance). Nothing is broken: ask whoever runs the models to retrain on recent data.",
        doc="the notice retraining_due (the scores drift from the model's training data)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_text(f.name, getattr(self, f.name), MAX_ADVICE)

    def text(self, key: str | None) -> str | None:
        """The text for ``key`` (None for None or a key this table does not have)."""
        return getattr(self, key) if key in KEYS else None


#: Every advice key, in the order of the table.
KEYS = tuple(f.name for f in dataclasses.fields(AdviceTexts))


class Advised:
    """An event with its sensor's advice: it reads as the event (every attribute is the event's), and its
    ``to_dict`` is the event's plus ``advice_key``, ``advice``, ``asset`` and ``location``."""

    __slots__ = ("event", "extra")

    def __init__(self, event, extra: dict) -> None:
        self.event = event
        self.extra = extra

    def __getattr__(self, name: str):
        return getattr(self.event, name)

    def to_dict(self) -> dict:
        return self.event.to_dict() | self.extra


class Advisor:
    """One sensor's what-to-do texts, asset and location: put on its events (``annotate``) and its status
    (``status``). Remembers what the active alert is about (over range, or its stage); scoring thread only."""

    def __init__(self, texts: AdviceTexts | None = None, asset: str | None = None,
                 location: str | None = None) -> None:
        self.texts = texts if texts is not None else AdviceTexts()
        self.asset = asset
        self.location = location
        self._alert_key: str | None = None  # the active alert's key, from its latest raise or escalation

    def key_of(self, event) -> str | None:
        """What ``event`` (an alert event, a health event or a notice) asks people to do: its advice key, None for
        a clear, a recovery or a notice without a text."""
        kind = event.kind
        if kind == "health":
            return None if event.state != "fault" else event.condition if event.condition in KEYS else "not_monitored"
        if kind == "notice":
            return event.notice if event.state == "raised" and event.notice in KEYS else None
        if kind in ("raised", "escalated"):
            return "over_range" if not math.isfinite(float(event.score)) else STAGES.get(event.severity)
        return None

    def annotate(self, event) -> Advised:
        """``event`` with its advice, asset and location (and the active alert's key remembered)."""
        key = self.key_of(event)
        if event.kind in ("raised", "escalated"):
            self._alert_key = key
        elif event.kind == "cleared":
            self._alert_key = None
        return Advised(event, {"advice_key": key, "advice": self.texts.text(key), "asset": self.asset,
                               "location": self.location})

    def key_now(self, health: str, alert_state: str | None, state: str = "online") -> str | None:
        """What is wrong now, as an advice key: a sensor not monitored, an active alert (``over_range`` when saturated
        input raised or escalated it last), partial coverage, calibration; None while all is well."""
        if health not in ("ok", "partial"):
            return health if health in KEYS else "not_monitored"
        if state == "no_model":
            return "no_model"
        if alert_state in STAGES:
            return self._alert_key or STAGES[alert_state]
        if health == "partial":
            return "partial"
        return "calibrating" if alert_state == "calibrating" else None

    def status(self, health: str, alert_state: str | None, state: str = "online") -> dict:
        """The sensor status's ``asset``, ``location``, ``advice_key`` and ``advice`` now."""
        key = self.key_now(health, alert_state, state)
        return {"asset": self.asset, "location": self.location, "advice_key": key, "advice": self.texts.text(key)}
