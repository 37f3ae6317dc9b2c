"""A bounded, persistent spool of records waiting to be uploaded (store-and-forward), on sqlite3.

Records are ``(id, created, topic, payload, attempts, kind, upload_id, sent)``; ids increase monotonically
(``AUTOINCREMENT``), so "oldest first" is "lowest id first", also across restarts. ``kind`` is the upload
record's (``normal``, ``drift``, ``calibration``, ``alert``): records go out most important first (alert,
calibration, drift, normal; oldest first within a kind). With receipts, a record the broker acknowledged is
marked ``sent`` and stays until a collector's receipt names its ``upload_id`` (``confirm``), or is sent again.

Policy when full: records are evicted to make room for the new one, least important first: normal windows
oldest first, then drift, then calibration, alert windows last; a record never evicts a more important
one (it is dropped itself instead). Counted in ``evicted`` and ``evicted_by_kind``. A gateway has a small
disk; a bounded spool that loses the oldest healthy windows during a very long outage beats one that grows
until the disk is full and the agent stops. The bounds are on the number of records and on the sum of
payload sizes (sqlite's own overhead comes on top).

Durability: WAL journal, ``synchronous=NORMAL`` — every committed record survives a crash or restart of
the process; a power cut may lose the last few commits but never corrupts the file.

The file is the spool's own, and nothing else is ever touched:

* one agent per spool: a sidecar ``<name>.lock`` holds the owner's pid under an exclusive ``flock``; a
  second agent is refused with a message naming the holder. The lock dies with its process, so the lock
  file of a process that is gone is taken over;
* before anything is opened, the file must be empty or an SQLite database (header) that is not another
  program's (``application_id`` 0 or ``APPLICATION_ID``; a database without ours must hold no table but
  ``records``): anything else (an alert log, a bundle, another program's database) is refused, untouched;
* ``database is locked`` (an operator's ``sqlite3`` shell in a write transaction, a process that still
  holds the file) is waited for, briefly (``busy_timeout_s``, so the scoring thread never stalls), then
  retried: meanwhile new records wait in memory, in order and bounded (``memory_records`` and
  ``memory_bytes``, oldest evicted first), and are written as soon as the lock is gone;
* only real corruption (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``, a failed ``quick_check``) of a file that is
  ours is renamed aside to ``<name>.corrupt-<unix time>`` (with its ``-wal``/``-shm``), logged as an error
  and counted in ``quarantined``; a fresh spool is started: the agent never stops for a bad spool file.

One connection shared by all threads, serialised by a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_agent.contract.errors import UploadError
from edge_agent.ratelog import RateLimitedLog
from edge_agent.status import SpoolCounters, fields_of

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    created  REAL    NOT NULL,
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    kind      TEXT    NOT NULL DEFAULT 'normal',
    upload_id TEXT,
    sent      REAL
)
"""


_COLUMNS = ("id", "created", "topic", "payload", "attempts")
#: Columns added since the first release (a spool of that release is migrated in place).
_ADDED = (("kind", "TEXT NOT NULL DEFAULT 'normal'"), ("upload_id", "TEXT"), ("sent", "REAL"))
#: Eviction order (lowest first) and sending order (highest first) of the record kinds.
_ADDED_NAMES = tuple(name for name, _ in _ADDED)
_RANK = "CASE kind WHEN 'alert' THEN 3 WHEN 'calibration' THEN 2 WHEN 'drift' THEN 1 ELSE 0 END"
RANKS = {"normal": 0, "drift": 1, "calibration": 2, "alert": 3}
#: A record sent without a receipt goes again after the receipt timeout, then after 2x, 4x, ... up to 64x it
#: (300 s: at most every 5.3 h): bounded resending while no collector answers.
RESEND_DOUBLINGS = 6
#: Seconds a record's ``sent`` time may lie ahead of the clock before the clock counts as stepped back.
CLOCK_SLACK_S = 60.0
#: ``PRAGMA application_id`` of a spool ("VIBE"): marks the file as ours.
APPLICATION_ID = 0x56494245
SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CORRUPT, SQLITE_NOTADB = 5, 6, 11, 26


@dataclass(frozen=True)
class Record:
    """One spooled record; ``created`` is wall-clock unix seconds."""

    id: int
    created: float
    topic: str
    payload: bytes
    attempts: int
    kind: str = "normal"
    upload_id: str | None = None


class Spool:
    """Persistent FIFO of ``(topic, payload)`` records bounded by ``max_records`` and ``max_bytes``.

    ``open`` (or ``with``) takes the spool: UploadError for a path that is not a spool of ours, or a spool another
    live process holds (see the module docstring); never for a locked or corrupt database. ``close`` releases it.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = 64 * 1024 * 1024, max_records: int = 10_000,
                 *, busy_timeout_s: float = 0.25, memory_records: int = 256, memory_bytes: int = 8 << 20):
        if max_bytes <= 0 or max_records <= 0:
            raise ValueError(f"spool: max_bytes and max_records must be > 0, got {max_bytes}, {max_records}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.max_records = int(max_records)
        self.busy_timeout_s = float(busy_timeout_s)
        self.memory_records = int(memory_records)
        self.memory_bytes = int(memory_bytes)
        self._lock = threading.Lock()
        self._ratelog = RateLimitedLog(logger)
        self.counters = SpoolCounters(evicted_by_kind=dict.fromkeys(RANKS, 0))
        self.recovered_from: Path | None = None  # where a corrupt file was moved, if one was
        self._db: sqlite3.Connection | None = None
        # (created, topic, payload, kind, upload_id) held in memory while another program locks the database
        self._waiting: deque[tuple[float, str, bytes, str, str | None]] = deque()
        self._count = self._bytes = 0
        self._lockfd = -1

    def open(self) -> Spool:
        """Take the spool (its lock file, then the database); UploadError when it is not ours to take."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_spool_path(self.path)
        self._lockfd = take_lock(self.path)
        try:
            with self._lock:
                self._connect()
        except BaseException:  # refused: leave nothing behind
            with contextlib.suppress(OSError):
                self.path.with_name(self.path.name + ".lock").unlink()
            os.close(self._lockfd)
            self._lockfd = -1
            raise
        if self._count:
            logger.info("spool %s: %d records (%d bytes) pending from a previous run", self.path, self._count,
                        self._bytes)
        return self

    # ------------------------------------------------------------------ opening
    def _connect(self) -> bool:
        """Open the database (lock held); False while another program holds it locked."""
        if self._db is not None:
            return True
        try:
            self._db = self._open()
        except sqlite3.Error as exc:
            if _locked(exc):
                self._waited(exc)
                return False
            if not _corrupt(exc):
                raise UploadError(f"spool {self.path}: cannot open: {exc}") from exc
            self._quarantine(exc)
            try:
                self._db = self._open()
            except sqlite3.Error as exc2:
                raise UploadError(f"spool {self.path}: cannot create a fresh database: {exc2}") from exc2
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM records").fetchone()
        self._count, self._bytes = int(count), int(size)
        return True

    def _open(self) -> sqlite3.Connection:
        """Connect, check the file is ours and sound (reads only), then make it a WAL spool."""
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=self.busy_timeout_s)
        try:
            (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise _Corrupt(f"quick_check: {check}")
            app = _check_ours(db, self.path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if app != APPLICATION_ID:
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            have = {row[1] for row in db.execute("PRAGMA table_info(records)")}
            for name, decl in _ADDED:  # a spool of an earlier release: its records are normal windows, unsent
                if name not in have:
                    db.execute(f"ALTER TABLE records ADD COLUMN {name} {decl}")
        except (sqlite3.Error, UploadError):
            db.close()
            raise
        return db

    def _quarantine(self, exc: Exception) -> None:
        aside = move_aside(self.path)
        self.counters.quarantined += 1
        self.recovered_from = aside
        logger.error("spool %s is corrupt (%s): moved to %s with its pending records, starting an empty spool",
                     self.path, exc, aside)

    def _waited(self, exc: Exception) -> None:
        self.counters.lock_waits += 1
        self._ratelog.log(logging.WARNING, "locked", "spool %s is locked by another program (%s; an sqlite3 shell in"
                          " a transaction?): %d records wait in memory, retrying", self.path, exc, len(self._waiting))

    # ------------------------------------------------------------------ api
    def put(self, topic: str, payload: bytes, kind: str = "normal", upload_id: str | None = None) -> int:
        """Append a record and return its id (0 while it waits in memory for a locked database, or when a spool
        full of more important records dropped it); evicts less important records if the spool would overflow.

        Raises ``UploadError`` for a record that can never fit or a database error other than a lock.
        """
        if not isinstance(topic, str) or not topic:
            raise UploadError(f"spool: topic must be a non-empty string, got {topic!r}")
        data = bytes(payload)
        if kind not in RANKS:
            raise UploadError(f"spool: kind must be one of {list(RANKS)}, got {kind!r}")
        if len(data) > self.max_bytes:
            raise UploadError(f"spool: record of {len(data)} bytes exceeds the spool size {self.max_bytes}")
        with self._lock:
            record = (time.time(), topic, data, kind, upload_id)
            self._waiting.append(record)
            while len(self._waiting) > self.memory_records or (
                    len(self._waiting) > 1 and sum(len(w[2]) for w in self._waiting) > self.memory_bytes):
                _, _, old, old_kind, _ = self._waiting.popleft()
                self.counters.evicted += 1
                self.counters.evicted_bytes += len(old)
                self.counters.evicted_by_kind[old_kind] += 1
                self._ratelog.log(logging.WARNING, "memory", "spool %s: locked for long; the oldest waiting record"
                                  " was evicted (%d in total)", self.path, self.counters.evicted)
            try:
                return self._write_waiting()
            except UploadError:  # not a lock (a full disk...): this record is refused, the caller counts it
                if self._waiting and self._waiting[-1] is record:
                    self._waiting.pop()
                raise

    def flush(self) -> int:
        """Write the records that wait for a lock (the uploader thread calls it); returns how many still wait."""
        with self._lock:
            if self._waiting:
                self._write_waiting()
            return len(self._waiting)

    def _write_waiting(self) -> int:
        """Write the waiting records in order, in one transaction (lock held); the last one's id, or 0."""
        if not self._connect():
            return 0
        last = 0
        try:
            with self._transaction("store records") as db:
                for created, topic, data, kind, upload_id in self._waiting:
                    if not self._evict_for(len(data), kind):
                        continue  # full of more important records: this one is the one dropped
                    cur = db.execute("INSERT INTO records (created, topic, payload, kind, upload_id) VALUES "
                                     "(?, ?, ?, ?, ?)", (created, topic, data, kind, upload_id))
                    self._count += 1
                    self._bytes += len(data)
                    last = int(cur.lastrowid or 0)
        except _Locked:
            return 0
        self._waiting.clear()
        return last

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction (caller holds the lock). A lock held by another program is ``_Locked``
        (counted, logged); any other sqlite error becomes UploadError naming ``what``."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # sqlite already rolled back after some errors (a full disk)
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._recount()
            if _locked(exc):
                self._waited(exc)
                raise _Locked(str(exc)) from exc
            raise UploadError(f"spool {self.path}: cannot {what}: {exc}") from exc

    def _evict_for(self, size: int, kind: str) -> bool:  # inside the put transaction
        """Make room for a record of ``size`` bytes and ``kind`` by evicting records no more important than it,
        least important and oldest first. False (nothing evicted; the new record counted as evicted) when they
        do not make enough room."""
        over_n = self._count + 1 - self.max_records
        over_b = self._bytes + size - self.max_bytes
        if over_n <= 0 and over_b <= 0:
            return True
        n = b = 0
        victims: list[tuple[int, str]] = []
        cur = self._db.execute(f"SELECT id, LENGTH(payload), kind FROM records WHERE {_RANK} <= ? "
                               f"ORDER BY {_RANK}, id", (RANKS[kind],))
        for rid, length, victim_kind in cur:
            if n >= over_n and b >= over_b:
                break
            n, b = n + 1, b + int(length)
            victims.append((rid, victim_kind))
        cur.close()
        if n < over_n or b < over_b:
            self.counters.evicted += 1
            self.counters.evicted_bytes += size
            self.counters.evicted_by_kind[kind] += 1
            self._ratelog.log(logging.WARNING, "full", "spool %s full of more important records: a new %s record "
                              "was dropped (%d in total)", self.path, kind, self.counters.evicted)
            return False
        for i in range(0, len(victims), 500):
            chunk = [rid for rid, _ in victims[i:i + 500]]
            self._db.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        for _, victim_kind in victims:
            self.counters.evicted_by_kind[victim_kind if victim_kind in RANKS else "normal"] += 1
        self._count -= n
        self._bytes -= b
        self.counters.evicted += n
        self.counters.evicted_bytes += b
        self._ratelog.log(logging.WARNING, "evict", "spool %s full: evicted %d records (%d bytes; %s in total)",
                          self.path, n, b, self.counters.evicted_by_kind)
        return True

    def peek(self, n: int, resend_after_s: float | None = None) -> list[Record]:
        """The next ``n`` records to send, most important kind first, oldest first within a kind (they stay in
        the spool until ``ack`` or ``confirm``). Records marked sent are left out, or, with ``resend_after_s``,
        included once they were sent that long ago without a receipt; the wait doubles with each attempt, up
        to ``2**RESEND_DOUBLINGS`` times (a gateway whose collector is away does not resend its whole spool
        every few minutes). A record marked sent later than now (the wall clock was stepped back since) is due
        at once: it would otherwise wait for as long as the clock jumped."""
        with self._lock:
            if self._waiting:
                self._write_waiting()
            if not self._connect():
                raise UploadError(f"spool {self.path}: locked by another program")
            try:
                rows = self._db.execute(
                    "SELECT id, created, topic, payload, attempts, kind, upload_id FROM records "
                    "WHERE sent IS NULL OR sent + ? * (1 << MIN(MAX(attempts - 1, 0), ?)) < ? OR sent > ? "
                    f"ORDER BY {_RANK} DESC, id LIMIT ?",
                    (0.0, 0, -1.0, float("inf"), int(n)) if resend_after_s is None else
                    (float(resend_after_s), RESEND_DOUBLINGS, time.time(), time.time() + CLOCK_SLACK_S, int(n)),
                ).fetchall()
            except sqlite3.Error as exc:
                if _locked(exc):
                    self._waited(exc)
                raise UploadError(f"spool {self.path}: cannot read records: {exc}") from exc
        return [Record(int(i), float(c), str(t), bytes(p), int(a), str(k), u) for i, c, t, p, a, k, u in rows]

    def mark_sent(self, ids: Iterable[int]) -> int:
        """The broker acknowledged these records: keep them, marked sent, until a receipt confirms them."""
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        with self._lock:
            if not self._connect():
                raise UploadError(f"spool {self.path}: locked by another program")
            try:
                with self._transaction("mark records sent") as db:
                    cur = db.execute(f"UPDATE records SET sent = ? WHERE id IN ({','.join('?' * len(ids))})",
                                     [time.time(), *ids])
            except _Locked as exc:
                raise UploadError(f"spool {self.path}: cannot mark records sent: {exc}") from exc
            return int(cur.rowcount)

    def confirm(self, upload_ids: Iterable[str], topic: str | None = None) -> int:
        """Delete the records whose upload ids a collector's receipt names (only records that were published at
        least once, on ``topic`` when given: a receipt can only account for what it could have received; a receipt
        may come before the broker's acknowledgement does); return how many."""
        ids = [str(i) for i in upload_ids]
        if not ids:
            return 0
        done = 0
        with self._lock:
            if not self._connect():
                raise UploadError(f"spool {self.path}: locked by another program")
            try:
                with self._transaction("delete confirmed records") as db:
                    for i in range(0, len(ids), 500):
                        chunk = ids[i:i + 500]
                        marks = ",".join("?" * len(chunk))
                        where = (f"WHERE upload_id IN ({marks}) AND (sent IS NOT NULL OR attempts > 0)"
                                 + (" AND topic = ?" if topic is not None else ""))
                        args = [*chunk, *([topic] if topic is not None else [])]
                        n, size = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM records "
                                             + where, args).fetchone()
                        db.execute("DELETE FROM records " + where, args)
                        self._count -= int(n)
                        self._bytes -= int(size)
                        done += int(n)
            except _Locked as exc:
                raise UploadError(f"spool {self.path}: cannot delete records: {exc}") from exc
        return done

    def awaiting_receipt(self) -> int:
        """Records the broker acknowledged that no receipt has confirmed yet."""
        with self._lock:
            if self._db is None:
                return 0
            try:
                return int(self._db.execute("SELECT COUNT(*) FROM records WHERE sent IS NOT NULL").fetchone()[0])
            except sqlite3.Error:
                return 0

    def ack(self, ids: Iterable[int]) -> int:
        """Delete delivered records; return how many were still there. UploadError while locked (they are
        delivered again later: uploads are at-least-once)."""
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._lock:
            if not self._connect():
                raise UploadError(f"spool {self.path}: locked by another program")
            try:
                with self._transaction("delete records") as db:
                    n, size = db.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM records WHERE id IN ({marks})", ids
                    ).fetchone()
                    db.execute(f"DELETE FROM records WHERE id IN ({marks})", ids)
            except _Locked as exc:
                raise UploadError(f"spool {self.path}: cannot delete records: {exc}") from exc
            self._count -= int(n)
            self._bytes -= int(size)
            return int(n)

    def mark_attempt(self, ids: Iterable[int]) -> None:
        """Count one more delivery attempt for these records (skipped while the database is locked)."""
        ids = [int(i) for i in ids]
        if not ids:
            return
        with self._lock:
            if not self._connect():
                return
            try:
                self._db.execute(
                    f"UPDATE records SET attempts = attempts + 1 WHERE id IN ({','.join('?' * len(ids))})", ids
                )
            except sqlite3.Error as exc:
                if _locked(exc):
                    self._waited(exc)
                    return
                raise UploadError(f"spool {self.path}: cannot update records: {exc}") from exc

    def __len__(self) -> int:
        return self._count + len(self._waiting)

    @property
    def bytes(self) -> int:
        """Sum of the pending payload sizes (those waiting in memory included)."""
        return self._bytes + sum(len(w[2]) for w in self._waiting)

    @property
    def waiting(self) -> int:
        """Records held in memory while another program locks the database."""
        return len(self._waiting)

    def status(self) -> dict:
        """The spool's part of ``uploads`` in the gateway status."""
        self.counters.bytes, self.counters.waiting = self.bytes, self.waiting
        return fields_of(self.counters)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what waits (for up to ``timeout_s`` while locked), close the database, release the spool."""
        with self._lock:
            deadline = time.monotonic() + timeout_s
            while self._waiting and time.monotonic() < deadline:
                try:
                    self._write_waiting()
                except UploadError as exc:
                    logger.error("%s", exc)
                    break
                if self._waiting:
                    time.sleep(0.1)
            if self._waiting:
                logger.error("spool %s: %d records that waited in memory could not be written and are lost",
                             self.path, len(self._waiting))
                self._waiting.clear()
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._lockfd >= 0:
                os.close(self._lockfd)  # releases the flock
                self._lockfd = -1

    def __enter__(self) -> Spool:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recount(self) -> None:  # with the lock held, after a failed transaction
        try:
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM records"
            ).fetchone()
            self._count, self._bytes = int(count), int(size)
        except sqlite3.Error:
            self._ratelog.log(logging.ERROR, "recount", "spool %s: cannot recount records", self.path, exc_info=True)


class _Locked(Exception):
    """Another program holds the database locked (internal: the caller waits and retries)."""


class _Corrupt(sqlite3.DatabaseError):
    """A database that opens but fails its integrity check."""


def _locked(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED) or "locked" in str(exc)


def _corrupt(exc: sqlite3.Error) -> bool:
    return isinstance(exc, _Corrupt) or getattr(exc, "sqlite_errorcode", 0) & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


def _check_ours(db: sqlite3.Connection, path: Path) -> int:
    """The database's application id if it is a spool (ours, an earlier release's, or empty); UploadError when it
    is another program's. Reads only."""
    (app,) = db.execute("PRAGMA application_id").fetchone()
    if app != APPLICATION_ID:  # an empty file, or a spool of an earlier release: no other table, our columns
        tables = {name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        columns = tuple(row[1] for row in db.execute("PRAGMA table_info(records)"))
        if app != 0 or tables - {"records"} or columns not in ((), _COLUMNS, _COLUMNS + _ADDED_NAMES):
            raise UploadError(f"spool {path}: an SQLite database of another program (application id {app}, tables "
                              f"{', '.join(sorted(tables)) or '-'}): not touched; uploads.spool_path must name the "
                              "agent's own spool file")
    return app


def check_spool_path(path: Path) -> None:
    """UploadError unless ``path`` is absent, empty, or an SQLite database that is ours (or an earlier release's):
    the header first (nothing is opened for a file that is not SQLite), then the schema, read-only. The one check
    of the spool before it touches anything, and of validate-config and doctor."""
    header = read_header(path, "spool")
    if header is None:
        return
    if not header.startswith(SQLITE_HEADER):
        raise UploadError(f"spool {path}: is not an SQLite database (it holds something else): not touched;"
                          " uploads.spool_path must name the agent's own spool file")
    app = int.from_bytes(header[68:72], "big") if len(header) >= 72 else 0
    if app not in (0, APPLICATION_ID):
        raise UploadError(f"spool {path}: an SQLite database of another program (application id {app}): not touched")
    if app == APPLICATION_ID:
        return
    try:
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=0.5)
    except sqlite3.Error as exc:
        raise UploadError(f"spool {path}: cannot be read: {exc}") from exc
    try:
        _check_ours(db, path)
    except sqlite3.Error as exc:
        if not (_locked(exc) or _corrupt(exc)):  # locked: the spool waits; corrupt: it is set aside as its own
            raise UploadError(f"spool {path}: cannot be read: {exc}") from exc
    finally:
        db.close()


def move_aside(path: Path) -> Path:
    """Rename the agent's own corrupt SQLite file (with its ``-wal``/``-shm``) to ``<name>.corrupt-<unix time>``."""
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            os.replace(src, Path(str(aside) + suffix))
    return aside


def read_header(path: Path, what: str, error: type[Exception] = UploadError) -> bytes | None:
    """The first 100 bytes of the agent's own state file ``path`` (``what`` names it in messages); None when it is
    absent or empty; ``error`` when it is not a regular file or cannot be read. Opens nothing else."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"{what} {path}: cannot be used: {exc.strerror or exc}") from exc
    if not path.is_file():
        raise error(f"{what} {path}: is a {'directory' if path.is_dir() else 'special file'}, not a {what} file")
    if st.st_size == 0:
        return None
    try:
        with open(path, "rb") as f:
            return f.read(100)
    except OSError as exc:
        raise error(f"{what} {path}: cannot be read: {exc.strerror or exc}") from exc


def take_lock(path: Path, what: str = "spool", key: str = "uploads.spool_path") -> int:
    """Hold ``<file>.lock`` (flock, our pid inside) for this process; UploadError naming the holder if another
    live process has it. A lock file left by a process that is gone is taken over (the flock died with it)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UploadError(f"{what} {path}: cannot create its lock file {lock_path}: {exc.strerror or exc}") from exc
    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise UploadError(f"{what} {path} is in use by another edge-agent (pid {holder or '?'}, see {lock_path}):"
                          f" two agents cannot share one {key}") from exc
    if holder and holder != str(os.getpid()):
        logger.info("%s %s: taking over the lock of pid %s, which is no longer running", what, path, holder)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
