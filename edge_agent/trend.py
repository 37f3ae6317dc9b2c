"""The trend over weeks: a bounded, persistent history of every sensor on the gateway (sqlite3).

Maintenance decisions are made on trends over days and weeks; the status page's live chart covers minutes. Per
sensor, every scored window goes into the current minute's aggregate (memory); a finished minute becomes one row;
rows older than ``minute_days`` are rolled up into hourly rows; when the file grows past ``max_bytes`` the oldest
hourly rows go::

    add(window) ─► minute aggregate ─(minute over)─► minute rows ─(older than a week)─► hour rows ─(bytes)─► gone

    row = (device, t, windows, score_max, score_mean, threshold, rms_max, velocity_max, zone, state, alerts)
        t             unix seconds of the row's start (minute or hour)
        score_max     the highest score (``inf`` stored as NULL in score_max with over_range = 1)
        state         the worst alert state seen: critical > warning > normal > calibrating
        zone          the worst vibration-severity zone seen (A < B < C < D), NULL without velocity
        alerts        alerts raised in it

Alert events are kept too (``events``: raised, escalated, cleared), for the episodes drawn on the charts.

The file is the trend store's own, and nothing else is ever touched: it must be absent, empty, or an SQLite
database with the trend's ``application_id`` (anything else is refused, untouched, with a message naming the
key); a sidecar ``<name>.lock`` (flock) keeps a second agent out. A corrupt file of ours is moved aside to
``<name>.corrupt-<unix time>`` and a fresh one started. A full disk or a locked file never stops scoring:
finished rows wait in memory (``memory_rows``, oldest dropped first, counted) and are written at the next
minute. WAL journal, ``synchronous=NORMAL``: a crash loses nothing committed; a power cut at most the last rows.
Thread-safe: the scoring threads add, the web threads read; one connection behind a lock.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.contract.errors import UploadError
from edge_agent.ratelog import RateLimitedLog
from edge_agent.spool import SQLITE_HEADER, move_aside, read_header, take_lock
from edge_agent.status import counter, gauge, value

log = logging.getLogger(__name__)

#: ``PRAGMA application_id`` of a trend file ("VTRD").
APPLICATION_ID = 0x56545244
#: Columns of a row, in order (``minutes`` and ``hours`` tables).
COLUMNS = ("device", "t", "windows", "score_max", "score_mean", "threshold", "rms_max", "velocity_max", "zone",
           "state", "alerts", "over_range")
STATE_RANK = {"calibrating": 0, "normal": 1, "warning": 2, "critical": 3}
ZONES = ("A", "B", "C", "D")
#: Spans the page draws, seconds, and the table each reads.
SPANS = {"1h": 3600, "24h": 86400, "30d": 30 * 86400}
_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    device TEXT NOT NULL, t REAL NOT NULL, windows INTEGER NOT NULL, score_max REAL, score_mean REAL,
    threshold REAL, rms_max REAL, velocity_max REAL, zone TEXT, state TEXT NOT NULL, alerts INTEGER NOT NULL,
    over_range INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (device, t)
) WITHOUT ROWID
"""
_EVENTS = """
CREATE TABLE IF NOT EXISTS events (
    device TEXT NOT NULL, t REAL NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL, reason TEXT
)
"""
SQLITE_FULL = 13


class TrendError(UploadError):
    """The trend file cannot be used (not ours, unreadable): the agent runs on without a trend."""


@dataclass
class TrendCounters:
    """The trend store's part of the gateway status."""

    rows_written: int = counter("Per-minute trend rows written (one per sensor and minute with windows).",
                                "trend_rows_written_total")
    write_errors: int = counter("Trend writes refused (full disk, locked file); the rows waited in memory.",
                                "trend_write_errors_total")
    rows_dropped: int = counter("Trend rows dropped: memory was full while the file could not be written.",
                                "trend_rows_dropped_total")
    quarantined: int = counter("Corrupt trend files moved aside (a fresh one started).", "trend_quarantined_total")
    bytes: int = gauge("Bytes of the trend file (bounded by status.trend_max_bytes).", "trend_bytes")
    error: str | None = value("Why the gateway keeps no trend (the file it was given is not its own, ...), or None.")


class _Minute:
    """One sensor's aggregate of the current minute."""

    __slots__ = ("t", "windows", "score_max", "score_sum", "scored", "threshold", "rms_max", "velocity_max", "zone",
                 "state", "alerts", "over_range")

    def __init__(self, t: float) -> None:
        self.t, self.windows, self.score_max, self.score_sum, self.scored = t, 0, -math.inf, 0.0, 0
        self.threshold: float | None = None
        self.rms_max: float | None = None
        self.velocity_max: float | None = None
        self.zone: str | None = None
        self.state, self.alerts, self.over_range = "calibrating", 0, 0

    def row(self, device: str) -> tuple:
        finite = math.isfinite(self.score_max)
        return (device, self.t, self.windows, self.score_max if finite else None,
                self.score_sum / self.scored if self.scored else None, self.threshold, self.rms_max,
                self.velocity_max, self.zone, self.state, self.alerts, self.over_range)


class TrendStore:
    """Per-sensor minute and hour aggregates in one SQLite file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = 32 * 1024 * 1024, minute_days: float = 7.0,
                 memory_rows: int = 4 * 1440, max_events: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.minute_s = float(minute_days) * 86400.0
        self.max_events = int(max_events)
        self.clock = clock
        self.counters = TrendCounters()
        self._pending: deque[tuple] = deque(maxlen=int(memory_rows))
        self._events: deque[tuple] = deque(maxlen=1000)
        self._current: dict[str, _Minute] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._lockfd = -1
        self._ratelog = RateLimitedLog(log, 300.0)

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> TrendStore:
        """Take the file (its lock, then the database); TrendError when it is not ours."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_trend_path(self.path)
        self._lockfd = take_lock(self.path, "trend file", "status.trend_path")
        try:
            with self._lock:
                self._db = self._connect()
                self._measure()
        except BaseException:
            os.close(self._lockfd)
            self._lockfd = -1
            raise
        return self

    def close(self) -> None:
        """Write the current minutes and what waits, then release the file."""
        with self._lock:
            for device, m in self._current.items():
                if m.windows:
                    self._queue(m.row(device))
            self._current.clear()
            self._write()
            if self._db is not None:
                self._db.close()
                self._db = None
        if self._lockfd >= 0:
            os.close(self._lockfd)
            self._lockfd = -1

    def _connect(self) -> sqlite3.Connection:
        try:
            return self._open_db()
        except sqlite3.DatabaseError as exc:
            if "locked" in str(exc):
                raise TrendError(f"trend file {self.path}: locked by another program ({exc})") from exc
            aside = move_aside(self.path)
            self.counters.quarantined += 1
            log.error("trend file %s is corrupt (%s): moved to %s, starting a new trend", self.path, exc, aside)
            return self._open_db()

    def _open_db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=0.2)
        try:
            (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            # before WAL, so that the schema and the application id are in the main file's header at once (a
            # crash before the first checkpoint must not leave a file the next start would refuse)
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file: deleted rows give pages back
            for name in ("minutes", "hours"):
                db.execute(_TABLE.format(name=name))
                db.execute(f"CREATE INDEX IF NOT EXISTS {name}_t ON {name} (t)")  # roll-up, shrink: by time alone
            db.execute(_EVENTS)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            db.close()
            raise
        return db

    # ------------------------------------------------------------------ writing
    def add(self, device: str, t: float, score: float, threshold: float, state: str, rms: float | None = None,
            velocity: float | None = None, zone: str | None = None) -> None:
        """Account one scored window (or an over-range span: ``score`` inf) of ``device`` at wall time ``t``."""
        start = math.floor(t / 60.0) * 60.0
        with self._lock:
            m = self._current.get(device)
            if m is not None and m.t - 60.0 <= start < m.t:
                # stamped a little before the open minute (a burst of frames re-anchors the sample clock): it counts
                # in the open minute; going back would write the earlier minute's row again, over the whole of it
                start = m.t
            if m is None or start != m.t:
                if m is not None and m.windows:
                    self._queue(m.row(device))
                    self._write()
                m = self._current[device] = _Minute(start)
            m.windows += 1
            if math.isfinite(score):
                m.score_max = max(m.score_max, score)
                m.score_sum += score
                m.scored += 1
            elif score > 0:
                m.over_range += 1
                m.score_max = math.inf
            m.threshold = threshold
            if rms is not None and math.isfinite(rms):
                m.rms_max = rms if m.rms_max is None else max(m.rms_max, rms)
            if velocity is not None and math.isfinite(velocity):
                m.velocity_max = velocity if m.velocity_max is None else max(m.velocity_max, velocity)
            if zone in ZONES and (m.zone is None or ZONES.index(zone) > ZONES.index(m.zone)):
                m.zone = zone
            if STATE_RANK.get(state, 0) > STATE_RANK.get(m.state, 0):
                m.state = state

    def add_event(self, device: str, t: float, kind: str, severity: str, reason: str = "") -> None:
        """Keep an alert event (raised, escalated, cleared) for the episodes on the charts."""
        with self._lock:
            m = self._current.get(device)
            if kind == "raised" and m is not None:
                m.alerts += 1
            self._events.append((device, float(t), kind, severity, reason[:300]))

    def flush(self) -> None:
        """Write every finished minute that waits (the agent calls it with its status tick)."""
        now = self.clock()
        with self._lock:
            for device, m in list(self._current.items()):
                if m.windows and now >= m.t + 60.0:
                    self._queue(m.row(device))
                    del self._current[device]
            self._write()

    def _queue(self, row: tuple) -> None:  # lock held
        if len(self._pending) == self._pending.maxlen:
            self.counters.rows_dropped += 1
        self._pending.append(row)

    def _write(self) -> None:  # lock held
        if self._db is None or not (self._pending or self._events):
            return
        rows, events = list(self._pending), list(self._events)
        try:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(f"INSERT OR REPLACE INTO minutes VALUES ({','.join('?' * len(COLUMNS))})", rows)
                db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", events)
                self._roll_up(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self.counters.write_errors += 1
            self._ratelog.log(logging.WARNING, "write", "trend file %s: cannot write (%s): %d rows wait in memory, "
                              "retrying at the next minute", self.path, exc, len(rows))
            return
        self.counters.rows_written += len(rows)
        self._pending.clear()
        self._events.clear()
        self._measure()
        if self.counters.bytes > self.max_bytes:
            self._shrink()

    def _roll_up(self, db: sqlite3.Connection) -> None:
        """Minute rows older than ``minute_days`` become hour rows."""
        cutoff = math.floor((self.clock() - self.minute_s) / 3600.0) * 3600.0
        (oldest,) = db.execute("SELECT MIN(t) FROM minutes").fetchone()
        if oldest is None or oldest >= cutoff:
            self._trim_events(db)
            return
        db.execute("""
            INSERT OR REPLACE INTO hours
            SELECT device, CAST(t / 3600 AS INTEGER) * 3600.0 AS h, SUM(windows), MAX(score_max),
                   SUM(score_mean * windows) / NULLIF(SUM(CASE WHEN score_mean IS NULL THEN 0 ELSE windows END), 0),
                   MAX(threshold), MAX(rms_max), MAX(velocity_max), MAX(zone),
                   CASE MAX(CASE state WHEN 'critical' THEN 3 WHEN 'warning' THEN 2 WHEN 'normal' THEN 1 ELSE 0 END)
                        WHEN 3 THEN 'critical' WHEN 2 THEN 'warning' WHEN 1 THEN 'normal' ELSE 'calibrating' END,
                   SUM(alerts), SUM(over_range)
            FROM minutes WHERE t < ? GROUP BY device, h""", (cutoff,))
        db.execute("DELETE FROM minutes WHERE t < ?", (cutoff,))
        self._trim_events(db)

    def _trim_events(self, db: sqlite3.Connection) -> None:
        (n,) = db.execute("SELECT COUNT(*) FROM events").fetchone()  # the events are few: counting is cheap
        if n > self.max_events:
            db.execute("DELETE FROM events WHERE rowid IN (SELECT rowid FROM events ORDER BY rowid LIMIT ?)",
                       (n - self.max_events,))

    def _shrink(self) -> None:  # lock held: the oldest tenth of the hour rows (then of the minutes) until it fits
        db = self._db
        for _ in range(30):
            for table in ("hours", "minutes"):
                (n,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
                if n:
                    (t,) = db.execute(f"SELECT t FROM {table} ORDER BY t LIMIT 1 OFFSET ?", (max(n // 10, 1) - 1,)).fetchone()
                    db.execute(f"DELETE FROM {table} WHERE t <= ?", (t,))
                    break
            else:
                return
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA incremental_vacuum")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._measure()
            if self.counters.bytes <= self.max_bytes:
                return

    def _measure(self) -> None:
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.stat(str(self.path) + suffix).st_size
        self.counters.bytes = size

    # ------------------------------------------------------------------ reading
    def series(self, device: str, span: str = "24h") -> dict:
        """One sensor's rows over the last ``span`` (``1h``, ``24h``: minutes; ``30d``: hours, the last week's
        minutes rolled up on the fly), oldest first, with the alert events in it in the order they happened.

        Returns ``{"span", "step_s", "columns", "rows", "events"}`` (rows as lists in ``columns`` order)."""
        if span not in SPANS:
            raise ValueError(f"span must be one of {', '.join(SPANS)}, not {span!r}")
        since = self.clock() - SPANS[span]
        with self._lock:
            current = self._current.get(device)
            pending = [r for r in self._pending if r[0] == device and r[1] >= since]
            waiting_events = [e for e in self._events if e[0] == device and e[1] >= since]
            rows: list[tuple] = []
            events: list[tuple] = []
            if self._db is not None:
                if span == "30d":
                    rows = self._db.execute(
                        "SELECT * FROM hours WHERE device = ? AND t >= ? ORDER BY t", (device, since)).fetchall()
                    rows += self._db.execute("""
                        SELECT device, CAST(t / 3600 AS INTEGER) * 3600.0 AS h, SUM(windows), MAX(score_max),
                               AVG(score_mean), MAX(threshold), MAX(rms_max), MAX(velocity_max), MAX(zone),
                               CASE MAX(CASE state WHEN 'critical' THEN 3 WHEN 'warning' THEN 2 WHEN 'normal' THEN 1
                                    ELSE 0 END) WHEN 3 THEN 'critical' WHEN 2 THEN 'warning' WHEN 1 THEN 'normal'
                                    ELSE 'calibrating' END, SUM(alerts), SUM(over_range)
                        FROM minutes WHERE device = ? AND t >= ? GROUP BY h ORDER BY h""", (device, since)).fetchall()
                else:
                    rows = self._db.execute(
                        "SELECT * FROM minutes WHERE device = ? AND t >= ? ORDER BY t", (device, since)).fetchall()
                events = self._db.execute("SELECT t, kind, severity, reason FROM events WHERE device = ? AND t >= ? "
                                          "ORDER BY rowid", (device, since)).fetchall()
            if span != "30d":
                rows += pending + ([current.row(device)] if current is not None and current.windows else [])
        by_t = {r[1]: r for r in rows}  # a pending row replaces its stored twin
        ordered = [list(by_t[t][1:]) for t in sorted(by_t)]
        # in the order they happened (a burst of frames can stamp an escalation a little before its raise)
        events = [list(e) for e in events] + [list(e[1:]) for e in waiting_events]
        return {"span": span, "step_s": 3600 if span == "30d" else 60, "columns": list(COLUMNS[1:]), "rows": ordered,
                "events": events}

    def csv(self, device: str, span: str = "30d") -> str:
        """The same rows as CSV with a header (times as ISO-8601 UTC), for a spreadsheet."""
        s = self.series(device, span)
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["time_utc", *s["columns"][1:]])
        for row in s["rows"]:
            w.writerow([time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row[0])), *row[1:]])
        return out.getvalue()


def check_trend_path(path: Path) -> None:
    """TrendError unless ``path`` is absent, empty, or an SQLite database with the trend's application id (read
    from the header: nothing else is opened). The one check, for ``run`` and ``validate-config``."""
    header = read_header(path, "trend", TrendError)
    if header is None:
        return
    app = int.from_bytes(header[68:72], "big") if len(header) >= 72 else 0
    if not header.startswith(SQLITE_HEADER) or app != APPLICATION_ID:
        raise TrendError(f"trend file {path}: holds something else (not the agent's trend): not touched; "
                         "status.trend_path must name the agent's own trend file")
