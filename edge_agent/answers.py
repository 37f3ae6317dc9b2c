"""Technicians' answers to alerts, per sensor, kept across restarts: acknowledge, confirmed fault, false alarm,
and "maintenance in progress, silence for N hours" (``contract.answer``)::

    status page (POST, write token) ─┐
    vib/<device>/answer/set (MQTT) ──┴─► AnswerBook.answer(device, command, via) ─► that sensor's record:
                                         its alert, the answer its records carry, its latest answer, its silence
                                         ─► listeners: the page's alert history, the retained vib/<device>/answer
    the scoring thread, per sensor (SensorAnswers):
        on_event(alert event)     a raise gives the alert its id (its upload records' alert_ref), a clear ends it
        silence()                 the silence in force: the dispatcher holds events back from the sinks
        record_answer(alert_ref)  the answer an upload record of that alert carries (None before one is given)

Which alert an answer goes to: the sensor's current alert, or its last one after it cleared (a technician often
looks after the machine has calmed down); a command naming another alert (a page left open on an older one) is
refused as ``stale_alert``, and ``ack``/``confirmed``/``false_alarm`` before any alert as ``no_alert``. The answer an
alert's records carry is its latest verdict (``confirmed``, ``false_alarm``), else its latest ``ack`` or
``silence``. Silencing holds back alerts from the sinks, never scoring, the status or the uploads.

The file (``[answers] file``) is written only when something can answer (a write token, or ``answers.mqtt``), as
one JSON object that starts with ``FORMAT``, replaced whole through a temporary file and a rename (a power cut
leaves the old or the new one). It is the agent's own and nothing else is ever touched: a file that is not empty
and does not start with ``FORMAT`` is refused untouched (the agent runs on, its answers in memory only, and says
so in the status); a ``<name>.lock`` (flock) keeps a second agent out; a file of ours that does not parse is moved
aside to ``<name>.corrupt-<unix time>``. A write that fails (a full disk) never stops anything: the answers stay
in memory, the failure is counted, and the write is tried again at the next change or status tick.

Thread-safe: answers arrive on the web server's and paho's threads, alert events on the scoring thread; one lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.contract import answer as wire
from edge_agent.contract.answer import AnswerError, Command
from edge_agent.contract.errors import UploadError
from edge_agent.ratelog import RateLimitedLog
from edge_agent.spool import read_header, take_lock
from edge_agent.status import AnswerCounters, fields_of
from edge_agent.status import SensorAnswers as SensorAnswersStatus

log = logging.getLogger(__name__)

#: How an answers file starts (the JSON written by ``AnswerBook``: its first key).
FORMAT = '{"format":"edge-agent-answers"'
VERSION = 1
#: The channels an answer comes through.
VIA = ("page", "mqtt")
#: The latest answers kept per sensor (the page's history and the file).
RECENT = 20
#: Answers one sensor may take per minute (a script gone wrong must not fill the log and the disk).
MAX_PER_MINUTE = 60


@dataclass
class Alert:
    """The alert answers go to: ``id`` (its upload records' ``alert_ref``), ``severity``, ``started_at`` (the
    pipeline clock of the window that raised it), ``raised`` (gateway unix time), ``active``."""

    id: str
    severity: str
    started_at: float
    raised: float
    active: bool = True

    def to_dict(self) -> dict:
        return {"id": self.id, "severity": self.severity, "started_at": self.started_at, "raised": self.raised,
                "active": self.active}

    @classmethod
    def from_dict(cls, d: dict) -> Alert:
        if not (isinstance(d["id"], str) and wire.ALERT_ID.fullmatch(d["id"])):
            raise ValueError("bad alert id")
        return cls(d["id"], str(d["severity"]), float(d["started_at"]), float(d["raised"]), bool(d["active"]))


@dataclass(frozen=True)
class Answer:
    """One recorded answer: ``time`` gateway unix seconds, ``via`` the channel, ``alert`` the id it answers (None for
    a silence given without an alert), ``until`` a silence's end (unix seconds)."""

    kind: str
    by: str
    time: float
    via: str
    alert: str | None = None
    hours: float | None = None
    until: float | None = None

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "by": self.by, "time": self.time, "via": self.via, "alert": self.alert}
        if self.hours is not None:
            d |= {"hours": self.hours, "until": self.until}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Answer:
        kind, via = d["kind"], d["via"]
        if kind not in wire.KINDS or via not in VIA:
            raise ValueError(f"bad answer kind {kind!r} or via {via!r}")
        wire.check_by(d["by"])
        alert = d.get("alert")
        if alert is not None and not (isinstance(alert, str) and wire.ALERT_ID.fullmatch(alert)):
            raise ValueError("bad alert id")
        hours, until = d.get("hours"), d.get("until")
        return cls(kind, d["by"], float(d["time"]), via, alert, None if hours is None else float(hours),
                   None if until is None else float(until))


@dataclass
class _Sensor:
    """One sensor's part of the book (under the book's lock)."""

    alert: Alert | None = None
    answer: Answer | None = None  # what the alert's records carry
    last: Answer | None = None
    silence: Answer | None = None  # the silence in force (or ended, until tick() notices)
    counts: dict[str, int] = field(default_factory=dict)
    recent: list[Answer] = field(default_factory=list)
    events_silenced: int = 0
    minute: tuple[int, int] = (0, 0)  # (minute, answers in it): the rate limit

    def to_dict(self) -> dict:
        return {"alert": self.alert.to_dict() if self.alert else None,
                "answer": self.answer.to_dict() if self.answer else None,
                "last": self.last.to_dict() if self.last else None,
                "silence": self.silence.to_dict() if self.silence else None,
                "counts": dict(self.counts), "recent": [a.to_dict() for a in self.recent]}

    @classmethod
    def from_dict(cls, d: dict) -> _Sensor:
        opt = lambda key, make: make(d[key]) if d.get(key) is not None else None  # noqa: E731
        counts = d.get("counts") or {}
        if not isinstance(counts, dict) or not all(k in wire.KINDS and isinstance(v, int) for k, v in counts.items()):
            raise ValueError("bad counts")
        return cls(opt("alert", Alert.from_dict), opt("answer", Answer.from_dict), opt("last", Answer.from_dict),
                   opt("silence", Answer.from_dict), dict(counts),
                   [Answer.from_dict(a) for a in (d.get("recent") or [])][-RECENT:])


class AnswerBook:
    """Every sensor's answers (see the module docstring). ``path`` None: in memory only.

    ``open`` takes the file (its lock, then its content); when the file cannot be used the book runs in memory and
    ``counters.error`` says why (never an exception: answers must not cost the gateway its monitoring).
    """

    def __init__(self, devices: list[str], path: str | os.PathLike[str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else None
        self.clock = clock
        self.counters = AnswerCounters()
        self.listeners: list[Callable[[str, dict], None]] = []  # (device, answer) after every answer taken
        self._sensors = {d: _Sensor() for d in devices}
        self._lock = threading.Lock()
        self._lockfd = -1
        self._dirty = False
        self._ratelog = RateLimitedLog(log, 300.0)

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> AnswerBook:
        """Take and read the file; on any trouble run in memory, with the reason in ``counters.error``."""
        if self.path is None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            check_answers_path(self.path)
            self._lockfd = take_lock(self.path, "answers file", "answers.file")
        except (OSError, UploadError, AnswerError) as exc:
            self.counters.error = str(exc)[:500] if not isinstance(exc, OSError) else \
                f"answers file {self.path}: {exc.strerror or exc}"
            log.error("%s: answers are kept in memory only (lost at a restart)", self.counters.error)
            self.path = None
            return self
        self.counters.file = str(self.path)
        with self._lock:
            self._load()
        return self

    def close(self) -> None:
        """Write what waits, then release the file."""
        with self._lock:
            if self._dirty:
                self._save()
        if self._lockfd >= 0:
            os.close(self._lockfd)
            self._lockfd = -1

    def _load(self) -> None:  # lock held
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            self._quarantine(f"cannot be read ({exc})")
            return
        if not text.strip():
            return
        try:
            doc = json.loads(text)
            if doc.get("format") != "edge-agent-answers" or doc.get("version") != VERSION:
                raise ValueError(f"format {doc.get('format')!r} version {doc.get('version')!r}")
            loaded = {d: _Sensor.from_dict(s) for d, s in (doc.get("sensors") or {}).items()}
        except (ValueError, TypeError, KeyError, AttributeError, AnswerError) as exc:
            self._quarantine(f"does not parse ({type(exc).__name__}: {str(exc)[:200]})")
            return
        for device, s in loaded.items():
            if device in self._sensors:  # a sensor no longer configured: forgotten at the next write
                self._sensors[device] = s
        log.info("answers: %s read (%d sensors with answers)", self.path,
                 sum(1 for s in self._sensors.values() if s.last or s.alert))

    def _quarantine(self, why: str) -> None:  # lock held
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            self.counters.error = f"answers file {self.path}: {why}, and cannot be moved aside: {exc.strerror or exc}"
            log.error("%s; answers are kept in memory only", self.counters.error)
            self.path = None
            self.counters.file = None
            return
        self.counters.quarantined += 1
        log.error("answers file %s %s: moved to %s, starting afresh", self.path, why, aside)

    def _save(self) -> None:  # lock held
        """Write the whole book (a temporary file, fsync, rename); a failure is counted and retried later."""
        if self.path is None:
            self._dirty = False
            return
        doc = {"format": "edge-agent-answers", "version": VERSION,
               "saved": datetime.now(UTC).isoformat(timespec="seconds"),
               "sensors": {d: s.to_dict() for d, s in self._sensors.items()}}
        data = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._dirty = True
            self.counters.write_errors += 1
            self.counters.error = f"answers file {self.path}: cannot write ({exc.strerror or exc}): kept in memory"
            self._ratelog.log(logging.ERROR, "write", "%s, written again at the next change", self.counters.error)
            return
        self._dirty = False
        self.counters.error = None

    def flush(self) -> None:
        """Write the book again if a write failed (the agent's status tick)."""
        with self._lock:
            if self._dirty:
                self._save()

    # ------------------------------------------------------------------ answers (any thread)
    def sensor(self, device: str) -> SensorAnswers:
        """The per-sensor view the scoring thread and the dispatcher use."""
        if device not in self._sensors:
            raise KeyError(device)
        return SensorAnswers(self, device)

    @property
    def devices(self) -> list[str]:
        return list(self._sensors)

    def refuse(self, reason: str) -> None:
        """Count an answer refused before it reached ``answer`` (a retained MQTT command, a payload that is no
        command)."""
        with self._lock:
            self.counters.refused[reason] = self.counters.refused.get(reason, 0) + 1

    def answer(self, device: str, command: Command, via: str) -> Answer:
        """Take one answer for ``device`` (its channel: ``via``). AnswerError (counted by reason) when it cannot be
        taken: an unknown sensor, no alert to answer, an alert that is no longer the sensor's, too many too fast."""
        if via not in VIA:
            raise ValueError(f"via must be one of {VIA}")
        now = self.clock()
        with self._lock:
            try:
                taken = self._take(device, command, via, now)
            except AnswerError as exc:
                self.counters.refused[exc.reason] = self.counters.refused.get(exc.reason, 0) + 1
                raise
            self._save()
            record = taken.to_dict()
        extra = f" for {command.hours:g} h" if command.hours is not None else ""
        log.info("%s: answer %s%s by %r via %s%s", device, command.kind, extra, command.by, via,
                 f" to alert {taken.alert}" if taken.alert else "")
        for listener in list(self.listeners):
            try:
                listener(device, record)
            except Exception:  # a listener (the page's history, the MQTT state) must not undo a recorded answer
                self._ratelog.log(logging.ERROR, "listener", "answers: a listener failed", exc_info=True)
        return taken

    def _take(self, device: str, command: Command, via: str, now: float) -> Answer:  # lock held
        s = self._sensors.get(device)
        if s is None:
            raise AnswerError(f"no sensor {device[:64]!r} on this gateway", "unknown_sensor")
        minute = int(now // 60)
        n = s.minute[1] + 1 if s.minute[0] == minute else 1
        if n > MAX_PER_MINUTE:
            raise AnswerError(f"{device}: more than {MAX_PER_MINUTE} answers in a minute: wait a minute", "too_fast")
        alert = s.alert
        if command.alert is not None and (alert is None or command.alert != alert.id):
            now_is = f"its alert now is {alert.id}" if alert is not None else "it has had no alert"
            raise AnswerError(f"{device}: alert {command.alert} is no longer the sensor's ({now_is}): reload and "
                              "answer again", "stale_alert")
        if command.kind in wire.ALERT_KINDS and alert is None:
            raise AnswerError(f"{device}: no alert to answer (none since the answers were first kept)", "no_alert")
        s.minute = (minute, n)
        if command.kind == "silence":
            until = now + float(command.hours) * 3600.0
            taken = Answer("silence", command.by, now, via, alert.id if alert else None, float(command.hours), until)
            s.silence = taken
        else:
            taken = Answer(command.kind, command.by, now, via, alert.id if alert else None)
            if command.kind == "unsilence":
                s.silence = None
        if taken.kind in wire.RECORD_KINDS and alert is not None and (
                taken.kind in wire.VERDICTS or s.answer is None or s.answer.kind not in wire.VERDICTS):
            s.answer = taken
        s.last = taken
        s.counts[taken.kind] = s.counts.get(taken.kind, 0) + 1
        s.recent = [*s.recent, taken][-RECENT:]
        return taken

    def tick(self) -> list[str]:
        """The sensors whose silence ended since the last call (each once), and a write that failed, again. The
        agent's status tick."""
        now = self.clock()
        ended = []
        with self._lock:
            for device, s in self._sensors.items():
                if s.silence is not None and s.silence.until is not None and s.silence.until <= now:
                    s.silence = None
                    ended.append(device)
            if ended or self._dirty:
                self._save()
        for device in ended:
            log.info("%s: the silence is over: alerts go out again", device)
        return ended

    def status(self) -> dict:
        with self._lock:
            return fields_of(self.counters)

    def state(self, device: str) -> dict:
        """What ``vib/<device>/answer`` holds (retained): the alert, its answer, the latest answer, the silence."""
        with self._lock:
            s = self._sensors[device]
            silence = self._silence_in_force(s)
            return {"alert": s.alert.to_dict() if s.alert else None,
                    "answer": s.answer.to_dict() if s.answer else None,
                    "last": s.last.to_dict() if s.last else None,
                    "silenced_until": silence.until if silence else None,
                    "silenced_hours": silence.hours if silence else None,
                    "silenced_by": silence.by if silence else None}

    def _silence_in_force(self, s: _Sensor) -> Answer | None:  # lock held
        if s.silence is None or s.silence.until is None or s.silence.until <= self.clock():
            return None
        return s.silence


class SensorAnswers:
    """One sensor's view of the book: for its scoring thread (alert events, uploads), its dispatcher (silence), its
    status and the page."""

    def __init__(self, book: AnswerBook, device: str) -> None:
        self.book = book
        self.device = device

    def on_event(self, event) -> str | None:
        """An alert event of this sensor (scoring thread): a raise starts an alert with a new id, an escalation
        raises its severity, a clear ends it (it stays the one answers go to until the next raise). Returns the
        alert's id. Health events and notices are not alerts: ignored."""
        kind = getattr(event, "kind", None)
        if kind not in ("raised", "escalated", "cleared"):
            return None
        b = self.book
        with b._lock:
            s = b._sensors[self.device]
            if kind == "raised" or (s.alert is None and kind == "escalated"):
                s.alert = Alert(uuid.uuid4().hex, event.severity, float(event.started_at), b.clock())
                s.answer = None
            elif s.alert is not None and kind == "escalated":
                s.alert.severity = event.severity
            elif s.alert is not None:
                s.alert.active = False
            b._save()
            return s.alert.id if s.alert is not None else None

    def alert_id(self) -> str | None:
        """The id of the sensor's current (or last) alert."""
        with self.book._lock:
            a = self.book._sensors[self.device].alert
            return a.id if a is not None else None

    def record_answer(self, alert_ref: str) -> dict | None:
        """The ``answer`` of an upload record of the alert ``alert_ref`` (``contract.answer.record_answer``), None
        when that alert has none (or is not the sensor's current or last alert)."""
        with self.book._lock:
            s = self.book._sensors[self.device]
            a = s.answer
            if s.alert is None or s.alert.id != alert_ref or a is None:
                return None
            return wire.record_answer(a.kind, a.by, a.time)

    def silence(self) -> dict | None:
        """The silence in force: ``{"until": ISO 8601, "by": ...}``, or None."""
        with self.book._lock:
            s = self.book._silence_in_force(self.book._sensors[self.device])
            if s is None:
                return None
            return {"until": datetime.fromtimestamp(s.until, UTC).isoformat(timespec="seconds"), "by": s.by}

    def count_silenced(self) -> None:
        """One event held back by the silence (the dispatcher)."""
        with self.book._lock:
            self.book._sensors[self.device].events_silenced += 1

    def status(self) -> dict:
        """The ``answers`` of this sensor's status (``status.SensorAnswers``)."""
        with self.book._lock:
            s = self.book._sensors[self.device]
            silence = self.book._silence_in_force(s)
            return fields_of(SensorAnswersStatus(
                alert=s.alert.to_dict() if s.alert else None, answer=s.answer.to_dict() if s.answer else None,
                last=s.last.to_dict() if s.last else None, silenced_until=silence.until if silence else None,
                silenced_by=silence.by if silence else None, answers=dict(s.counts),
                events_silenced=s.events_silenced))

    def recent(self) -> list[dict]:
        """The latest answers, oldest first."""
        with self.book._lock:
            return [a.to_dict() for a in self.book._sensors[self.device].recent]


def check_answers_path(path: Path) -> None:
    """AnswerError unless ``path`` is absent, empty, or starts as an answers file (only its header is read)."""
    header = read_header(path, "answers", AnswerError)
    if header is None:
        return
    if not header.startswith(FORMAT.encode()):
        raise AnswerError(f"answers file {path}: holds something else (not the agent's answers): not touched; "
                          "answers.file must name the agent's own answers file")
