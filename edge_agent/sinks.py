"""Where alert events go: a configurable set of sinks behind one dispatcher.

- ``LogSink``       one structured log line per event (``key=value``).
- ``JsonlSink``     appends one JSON object per line to a file, flushed and fsynced per event. A line that
                    cannot be written (a full disk) waits, in order, in a bounded queue and is written
                    before the next one, or at the next ``retry``; a failed write never leaves half a line.
- ``MqttAlertSink`` publishes the CURRENT alert state, retained, QoS 1, on ``vib/<device>/alert``, so a
                    dashboard that connects later sees it (the current health on ``vib/<device>/health``, the
                    latest notice on ``vib/<device>/notice``).
                    While the link is down the latest state is kept and published on reconnect; the last
                    state the broker retains is always the latest event (see the class docstring).
- ``CommandSink``   runs a local program (a buzzer or relay script) per event, in a worker thread behind a
                    bounded queue: a slow, failing, hanging or chatty program never blocks scoring, and only
                    the last ``STDERR_TAIL`` bytes of what it writes to stderr are kept.
- ``AlertDispatcher`` emits to every sink and isolates failures: one failing sink never stops the others. It
                    puts the sensor's what-to-do text, asset and location on every event first
                    (``advice.Advisor``): ``advice_key``, ``advice``, ``asset`` and ``location`` are in the MQTT
                    payload and the JSONL line, and ``EDGE_ALERT_ADVICE``, ``EDGE_ALERT_ASSET`` and
                    ``EDGE_ALERT_LOCATION`` in the command's environment.

Silence (a technician's answer "maintenance in progress, silence for N h", ``edge_agent.answers``): while a
sensor is silenced, its raised and escalated alerts and its health faults still reach every sink, marked
``"silenced": {"until", "by"}``: the JSONL line and the MQTT state say so, the log line is at INFO and says so,
and the command sink does not run its program (the buzzer stays quiet); each sink counts them (``silenced``).
Clears and recoveries always go out as usual (a relay a command switched on is switched off). When the silence
ends, what it held back and is still in force (the alert not cleared since, the fault not recovered) goes out once
more, unmarked, with ``"after_silence": true``. Scoring, the status and uploads never stop for a silence.

Events are ``alerts.AlertEvent`` (kind raised / escalated / cleared), ``health.HealthEvent`` (kind
health: a sensor that is not monitored, and its recovery) and ``health.Notice`` (kind notice: e.g.
"retraining due" while the scores drift, raised and cleared). Every sink counts what it delivered, what failed,
what waits and what it dropped (``status.SinkCounters``); nothing here raises into the scoring loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import selectors
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from paho.mqtt.enums import MQTTErrorCode

from edge_agent.advice import Advised, Advisor
from edge_agent.alerts import AlertEvent
from edge_agent.contract.topics import alert_topic, health_topic, notice_topic
from edge_agent.mqtt_client import MqttConnection
from edge_agent.ratelog import RateLimitedLog
from edge_agent.status import SinkCounters

logger = logging.getLogger(__name__)


#: Bytes of a command's stderr kept (the end of it): enough for an error message, never the whole stream.
STDERR_TAIL = 4096


@runtime_checkable
class AlertSink(Protocol):
    """What the agent needs of a sink: ``start`` acquires (a file, a thread), ``emit`` never blocks or raises into
    the scoring loop, ``counters`` say what happened to the events, ``close`` releases."""

    def start(self) -> None: ...

    def emit(self, event: AlertEvent) -> None: ...

    @property
    def counters(self) -> SinkCounters: ...

    def close(self) -> None: ...



def silenced_of(event) -> dict | None:
    """The silence an event was emitted under (``{"until", "by"}``, put on by the dispatcher), or None."""
    extra = getattr(event, "extra", None)
    return extra.get("silenced") if isinstance(extra, dict) else None


def event_json(event: AlertEvent) -> bytes:
    """The event as compact UTF-8 JSON (the payload of the JSONL, MQTT and command sinks)."""
    return json.dumps(event.to_dict(), separators=(",", ":"), sort_keys=True).encode("utf-8")


class LogSink:
    """One structured log line per event: WARNING for raised/escalated and health faults, INFO for the rest."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self._log = log or logger
        self.emitted = 0
        self.silenced = 0

    def start(self) -> None:
        """Nothing to acquire."""

    def close(self) -> None:
        """Nothing to release."""

    def emit(self, event: AlertEvent) -> None:
        silenced = silenced_of(event)
        if silenced is not None:
            self.silenced += 1
            self._log.info("silenced until %s by %r (still scored): %s %s device=%s", silenced["until"],
                           silenced["by"], event.kind, getattr(event, "condition", None) or event.severity,
                           event.device)
        elif event.kind == "health":
            self._log.log(logging.WARNING if event.state == "fault" else logging.INFO,
                          "health state=%s condition=%s device=%s reason=%s", event.state, event.condition,
                          event.device, event.reason)
        elif event.kind == "notice":
            self._log.log(logging.WARNING if event.state == "raised" else logging.INFO,
                          "notice %s state=%s device=%s reason=%s", event.notice, event.state, event.device,
                          event.reason)
        else:
            level = logging.INFO if event.kind == "cleared" else logging.WARNING
            self._log.log(
                level,
                "alert kind=%s severity=%s device=%s model=%s score=%.6g threshold=%.6g windows=%d seq_end=%d "
                "time=%.3f started_at=%.3f",
                event.kind, event.severity, event.device, event.model_version, event.score, event.threshold,
                event.window_count, event.seq_end, event.time, event.started_at,
            )
        self.emitted += 1

    @property
    def counters(self) -> SinkCounters:
        return SinkCounters(delivered=self.emitted, silenced=self.silenced)


class JsonlSink:
    """Append one JSON line per event to ``path`` (parent directories created); fsync each line.

    A line that cannot be written (disk full, read-only file system, the file gone) is kept in a queue of at
    most ``max_pending`` lines and written, in order, before the next event's line or at the next ``retry``
    (the agent calls it every status period); when the queue is full the oldest waiting line is dropped.
    A failed write is undone (the file is truncated back to where the line began), so the file never holds
    half a line. The file is reopened when it was moved or deleted (log rotation).

    Counters: ``delivered`` lines written (late ones included), ``failed`` events not written when emitted,
    ``pending`` waiting, ``dropped`` discarded from a full queue: emitted = delivered + pending + dropped.
    ``start`` (or ``with``) opens the file and raises OSError (the agent reports the config key); nothing raises
    afterwards.
    """

    def __init__(self, path: str | os.PathLike[str], max_pending: int = 1000) -> None:
        self.path = Path(path)
        self.max_pending = int(max_pending)
        self._lock = threading.Lock()
        self._pending: deque[bytes] = deque()
        self._fd = -1
        self._ratelog = RateLimitedLog(logger)
        self.emitted = 0
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.silenced = 0

    def start(self) -> None:
        """Open the file for appending (its folder made): OSError when it cannot be."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    @property
    def counters(self) -> SinkCounters:
        return SinkCounters(delivered=self.delivered, failed=self.failed, pending=len(self._pending),
                            dropped=self.dropped, silenced=self.silenced)

    def emit(self, event: AlertEvent) -> None:
        line = event_json(event) + b"\n"
        with self._lock:
            self.emitted += 1
            self.silenced += silenced_of(event) is not None
            if len(self._pending) >= self.max_pending:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(line)
            self._flush()
            if self._pending and self._pending[-1] is line:
                self.failed += 1

    def retry(self) -> None:
        """Write the lines that wait (from the scoring thread's status tick)."""
        with self._lock:
            if self._pending:
                self._flush()

    def close(self) -> None:
        with self._lock:
            if self._pending:
                self._flush()
                if self._pending:
                    logger.error("alerts file %s: %d alert lines could not be written and are lost", self.path,
                                 len(self._pending))
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> JsonlSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _flush(self) -> None:  # with the lock held
        while self._pending:
            try:
                self._write(self._pending[0])
            except OSError as exc:
                self._ratelog.log(logging.ERROR, "write", "alerts file %s: cannot write (%s): %d alert lines wait",
                                  self.path, exc.strerror or exc, len(self._pending))
                return
            self._pending.popleft()
            self.delivered += 1

    def _write(self, line: bytes) -> None:
        """Append one whole line and fsync it, or leave the file as it was and raise OSError."""
        try:
            if self._fd < 0 or os.fstat(self._fd).st_ino != os.stat(self.path).st_ino:
                raise FileNotFoundError
        except FileNotFoundError:  # moved or deleted under us: write where the path points now
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._open()
        start = os.fstat(self._fd).st_size
        try:
            n = os.write(self._fd, line)
            if n != len(line):
                raise OSError(28, "No space left on device (short write)")
            os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise


class MqttAlertSink:
    """Retained current alert state on ``vib/<device>/alert`` (QoS 1).

    The payload is the event's JSON plus ``"state"`` (``normal``/``warning``/``critical``). A small
    publisher thread owns all publishing; ``emit`` only records the latest state and wakes it.

    Retained state is last-writer-wins at the broker, and paho re-sends unacknowledged QoS 1 messages
    after a reconnect *after* anything published from the connect callback. So the publisher
    republishes the latest state (a) on every connect and (b) whenever the broker acknowledges an older
    state after the latest one was acknowledged. The broker therefore always ends with the latest state.

    Health events (kind ``health``) go the same way to ``vib/<device>/health``, and notices to
    ``vib/<device>/notice``, through two more instances the first one owns: the retained alert state is never
    overwritten by a health state. ``start`` registers on the connection and starts the publisher threads.

    Counters: ``published`` (acknowledged publishes), ``failures`` (publishes refused or rejected while the
    link was down; the state is kept and retried).
    """

    def __init__(self, connection: MqttConnection, device: str, *, qos: int = 1, retry_s: float = 1.0,
                 topic: str | None = None) -> None:
        self.connection = connection
        self.device = device
        self.topic = topic or alert_topic(device)
        # health and notice states, each on its own retained topic (owned by the alert topic's sink)
        self._side: dict[str, MqttAlertSink] = {} if topic is not None else {
            kind: MqttAlertSink(connection, device, qos=qos, retry_s=retry_s, topic=make(device))
            for kind, make in (("health", health_topic), ("notice", notice_topic))}
        self.qos = qos
        self._retry_s = retry_s
        self._cond = threading.Condition()
        self._latest: bytes | None = None
        self._version = 0
        self._dirty = False
        self._stopping = False
        self._pending: dict[int, int] = {}  # mid -> version, publishes not yet acknowledged
        self._last_acked = 0  # version of the most recent acknowledgement: what the broker retains
        self.published = 0
        self.failures = 0
        self.emitted = 0
        self.silenced = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen for connects and acknowledgements, and start the publisher thread (and the side topics')."""
        self.connection.add_connect_listener(self._on_connect)
        self.connection.add_publish_listener(self._on_ack)
        self._thread = threading.Thread(target=self._run, name=f"alert-mqtt-{self.device}", daemon=True)
        self._thread.start()
        for side in self._side.values():
            side.start()

    def emit(self, event: AlertEvent) -> None:
        if silenced_of(event) is not None:
            self.silenced += 1  # published as usual: the retained state stays true, and says it is silenced
        side = self._side.get(event.kind)
        if side is not None:
            side.emit(event)
            return
        payload = event.to_dict() if event.kind in ("health", "notice") else dict(event.to_dict(),
                                                                                   state=event.severity)
        data = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
        with self._cond:
            self._version += 1
            self._latest = data
            self._dirty = True
            self.emitted += 1
            self._cond.notify_all()

    @property
    def latest(self) -> bytes | None:
        """The payload of the latest state (what the broker retains once the link allows)."""
        with self._cond:
            return self._latest

    def wait_synced(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged the latest state last; return whether it has."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._version > 0 and not self._dirty and self._last_acked == self._version, timeout
            )

    @property
    def counters(self) -> SinkCounters:
        with self._cond:
            c = SinkCounters(delivered=self.published, failed=self.failures,
                             pending=int(self._version > 0 and (self._dirty or self._last_acked != self._version)),
                             silenced=self.silenced)
        for side in list(self._side.values()):
            h = side.counters
            c = SinkCounters(c.delivered + h.delivered, c.failed + h.failed, c.pending + h.pending,
                             silenced=c.silenced)
        return c

    def close(self, timeout: float = 5.0) -> None:
        for side in list(self._side.values()):
            side.close(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # network thread: only touches our own state under the condition's lock, never calls paho
    def _on_connect(self) -> None:
        with self._cond:
            if self._latest is not None:
                self._dirty = True
                self._cond.notify_all()

    def _on_ack(self, mid: int) -> None:
        with self._cond:
            version = self._pending.pop(mid, None)
            if version is None:
                return  # not ours (uploads, status) or not registered yet (handled in _run)
            self._acked(version)

    def _acked(self, version: int) -> None:  # with self._cond held
        self.published += 1
        self._last_acked = version
        if version < self._version and self._version not in self._pending.values():
            self._dirty = True  # an older state was applied after the latest: publish the latest again
        self._cond.notify_all()

    def _run(self) -> None:
        retry = False
        while True:
            with self._cond:
                if retry:  # paho refused the last try: pause before the next
                    self._cond.wait_for(lambda: self._stopping, self._retry_s)
                    retry = False
                self._cond.wait_for(lambda: self._stopping or self._dirty)
                if self._stopping:
                    return
                if self._latest is None:
                    self._dirty = False
                    continue
                data, version = self._latest, self._version
                self._dirty = False
            info = self.connection.publish(self.topic, data, qos=self.qos, retain=True)  # outside the lock
            with self._cond:
                if info is None or info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                    self.failures += 1
                    if info is not None:  # paho refused it: retry; a down link retries from _on_connect
                        self._dirty, retry = True, True
                    continue
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self.failures += 1  # queued by paho, re-sent by paho on reconnect; ack via _on_ack
                self._pending[info.mid] = version
                try:
                    acked = info.is_published()
                except (RuntimeError, ValueError):
                    acked = False
                if acked and self._pending.pop(info.mid, None) is not None:  # acknowledged before we registered it
                    self._acked(version)


#: The agent's environment variables a child program inherits (``child_env``): what a program needs to run, and
#: nothing that may hold a secret (the broker password of ``mqtt.password_env``, tokens, keys).
CHILD_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES",
             "TZ", "TMPDIR", "TERM")


def child_env(extra: dict[str, str] | None = None, keep: Sequence[str] = ()) -> dict[str, str]:
    """The environment for a child program: ``CHILD_ENV`` and ``keep`` (names the config lists:
    ``alerts.sinks.command_env``) from the agent's own, plus ``extra``."""
    names = set(CHILD_ENV) | set(keep)
    return {k: v for k, v in os.environ.items() if k in names} | (extra or {})


class CommandSink:
    """Run ``argv`` once per event in a worker thread: event JSON on stdin, and the environment variables
    ``EDGE_ALERT_KIND``, ``EDGE_ALERT_SEVERITY``, ``EDGE_ALERT_SCORE``, ``EDGE_ALERT_DEVICE``, and
    ``EDGE_ALERT_ADVICE`` (what to do), ``EDGE_ALERT_ASSET``, ``EDGE_ALERT_LOCATION`` (empty when the event has
    none). The program inherits only ``CHILD_ENV`` and the variables named in ``keep_env`` from the agent: never
    a secret.

    For a health event ``EDGE_ALERT_KIND`` is ``health``, ``EDGE_ALERT_SEVERITY`` ``fault`` or ``recovered``,
    ``EDGE_ALERT_SCORE`` empty and ``EDGE_HEALTH_CONDITION`` names the condition.

    An event emitted while the sensor is silenced is not run: counted in ``silenced`` and logged (INFO, rate
    limited). What the silence held back runs when it ends (``"after_silence": true`` in the JSON on stdin).

    ``emit`` never blocks: events queue (``queue_size``) and overflow is dropped and counted. A program that
    exits non-zero or cannot start counts in ``failed``; one running past ``timeout_s`` is killed and counts
    in ``timed_out``. The program's stderr is read as it comes and only its last ``STDERR_TAIL`` bytes are
    kept (``last_stderr``, and in the log when it fails): a program writing gigabytes costs no memory.
    """

    def __init__(self, argv: Sequence[str], timeout_s: float = 10.0, *, queue_size: int = 16,
                 keep_env: Sequence[str] = ()) -> None:
        if not argv:
            raise ValueError("command sink: argv must not be empty")
        self.argv = [str(a) for a in argv]
        self.keep_env = tuple(keep_env)
        self.timeout_s = float(timeout_s)
        self._queue: queue.Queue[AlertEvent] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._ratelog = RateLimitedLog(logger)
        self.ran = 0
        self.failed = 0
        self.timed_out = 0
        self.dropped = 0
        self.silenced = 0
        self.last_stderr = b""
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread that runs the program."""
        self._thread = threading.Thread(target=self._run, name="alert-command", daemon=True)
        self._thread.start()

    def emit(self, event: AlertEvent) -> None:
        silenced = silenced_of(event)
        if silenced is not None:
            self.silenced += 1
            self._ratelog.log(logging.INFO, "silenced", "alert command %s not run for %s's %s: silenced until %s by %r",
                              self.argv[0], event.device, event.kind, silenced["until"], silenced["by"])
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            self._ratelog.log(logging.ERROR, "full", "alert command %s: queue full, event dropped", self.argv[0])

    @property
    def counters(self) -> SinkCounters:
        return SinkCounters(delivered=self.ran, failed=self.failed + self.timed_out,
                            pending=self._queue.qsize() + int(self._busy), dropped=self.dropped,
                            silenced=self.silenced)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued event has been handled; return whether that happened in time."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._busy and self._queue.empty(), timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop after the command now running (at most ``timeout_s``); queued events are discarded."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 5.0 if timeout is None else timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._queue.get(timeout=0.25)
            except queue.Empty:
                continue
            with self._idle:
                self._busy = True
            try:
                self._execute(event)
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()

    def _execute(self, event: AlertEvent) -> None:
        env = child_env({"EDGE_ALERT_KIND": event.kind, "EDGE_ALERT_SEVERITY": event.severity,
                         "EDGE_ALERT_DEVICE": event.device}, self.keep_env)
        if event.kind == "health":
            env |= {"EDGE_ALERT_SCORE": "", "EDGE_HEALTH_CONDITION": event.condition}
        elif event.kind == "notice":
            env |= {"EDGE_ALERT_SCORE": "", "EDGE_NOTICE": event.notice}
        else:
            env["EDGE_ALERT_SCORE"] = repr(float(event.score))
        d = event.to_dict()
        for name, key in (("EDGE_ALERT_ADVICE", "advice"), ("EDGE_ALERT_ASSET", "asset"),
                          ("EDGE_ALERT_LOCATION", "location")):
            env[name] = str(d.get(key) or "")
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            self.failed += 1
            self._ratelog.log(logging.ERROR, "oserror", "alert command %s: cannot run: %s", self.argv[0], exc)
            return
        deadline = time.monotonic() + self.timeout_s
        try:
            with contextlib.suppress(BrokenPipeError):  # a program that does not read its input
                proc.stdin.write(event_json(event))
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            self.last_stderr = _read_tail(proc.stderr, deadline)
            rc = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.timed_out += 1
            self._ratelog.log(logging.ERROR, "timeout", "alert command %s: killed after %.1f s",
                              self.argv[0], self.timeout_s)
            return
        finally:
            proc.stderr.close()
        if rc != 0:
            self.failed += 1
            self._ratelog.log(logging.ERROR, "rc", "alert command %s: exit status %d: %s", self.argv[0],
                              rc, self.last_stderr.decode("utf-8", "replace")[-500:].strip())
            return
        self.ran += 1


def _read_tail(stream, deadline: float, keep: int = STDERR_TAIL) -> bytes:
    """Read ``stream`` (a pipe) to its end, keeping only its last ``keep`` bytes; TimeoutExpired at ``deadline``."""
    tail = bytearray()
    fd = stream.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired("alert command", 0)
            if not sel.select(left):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return bytes(tail)
            tail += chunk
            del tail[:-keep]


class AlertDispatcher:
    """Emit each event to every sink; a sink that raises is logged and counted, the others still run. The
    dispatcher does not own its sinks (several sensors may share one): whoever made them starts and closes them.
    Each event goes out with its sensor's advice, asset and location (``advisor``: ``SensorConfig.advisor()``; the
    default texts when none is given).

    ``delivered`` and ``failures`` are per-sink counters keyed ``"<index>:<ClassName>"``.

    ``answers`` (the sensor's ``answers.SensorAnswers``) says whether the sensor is silenced: then raised and
    escalated alerts and health faults go out marked ``silenced`` (see the module docstring), and ``tick`` (the
    scoring thread, every status period) sends what the silence held back once it is over.
    """

    def __init__(self, sinks: Iterable[AlertSink], advisor: Advisor | None = None, answers=None) -> None:
        self.advisor = advisor if advisor is not None else Advisor()
        self.answers = answers
        self._held: dict[str, object] = {}  # "alert" / "health": the latest event a silence held back
        self.sinks = list(sinks)
        self.names = [f"{i}:{type(s).__name__}" for i, s in enumerate(self.sinks)]
        self.delivered = dict.fromkeys(self.names, 0)
        self.failures = dict.fromkeys(self.names, 0)
        self._ratelog = RateLimitedLog(logger)

    def emit(self, event: AlertEvent) -> None:
        try:
            event = self.advisor.annotate(event)
        except Exception:  # the event still goes out, without its advice
            self._ratelog.log(logging.ERROR, "advice", "alert advice failed for a %s event", event.kind, exc_info=True)
        try:
            silence = self._silence(event)
        except Exception:  # an answers bug must not cost an alert: it goes out unsilenced
            silence = None
            self._ratelog.log(logging.ERROR, "silence", "alert silence check failed", exc_info=True)
        if silence is not None:
            event = _with(event, silenced=silence)
        self._send(event)

    def _silence(self, event) -> dict | None:
        """The silence ``event`` goes out under (None: as usual); remembers what it holds back."""
        kind = event.kind
        if kind == "cleared":
            self._held.pop("alert", None)
            return None
        if kind == "health" and event.state != "fault":
            self._held.pop("health", None)
            return None
        if kind not in ("raised", "escalated", "health") or self.answers is None:
            return None
        silence = self.answers.silence()
        if silence is not None:
            self._held["health" if kind == "health" else "alert"] = event
            self.answers.count_silenced()
        return silence

    def tick(self) -> None:
        """Once a silence is over, send what it held back and is still in force (scoring thread)."""
        if not self._held or self.answers is None or self.answers.silence() is not None:
            return
        held, self._held = self._held, {}
        for event in held.values():
            self._send(_with(event, after_silence=True))

    def _send(self, event) -> None:
        for name, sink in zip(self.names, self.sinks, strict=True):
            try:
                sink.emit(event)
            except Exception:  # isolate sinks from each other and from the scoring loop
                self.failures[name] += 1
                self._ratelog.log(logging.ERROR, name, "alert sink %s failed", name, exc_info=True)
            else:
                self.delivered[name] += 1

    def status(self) -> dict[str, dict[str, int]]:
        """Per sink: delivered, failed, pending, dropped, silenced. A sink's own counters where it keeps them (what it
        really wrote or ran, not what it accepted); emits that raised count as failed on top."""
        out = {}
        for name, sink in zip(self.names, self.sinks, strict=True):
            own = getattr(sink, "counters", None)
            c = own if isinstance(own, SinkCounters) else SinkCounters(delivered=self.delivered[name])
            out[name] = dict(c.as_dict(), failed=c.failed + self.failures[name])
        return out


def _with(event, **extra) -> Advised:
    """``event`` (advised or not) with more fields in its ``to_dict``."""
    base = event.event if isinstance(event, Advised) else event
    return Advised(base, (event.extra if isinstance(event, Advised) else {}) | extra)
