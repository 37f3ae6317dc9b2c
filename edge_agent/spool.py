"""A bounded, persistent spool of records waiting to be uploaded (store-and-forward), on sqlite3.

Records are ``(id, created, topic, payload, attempts)``; ids increase monotonically (``AUTOINCREMENT``),
so "oldest first" is "lowest id first", also across restarts.

Policy when full: the OLDEST records are evicted to make room for the new one, and counted in
``evicted``. A gateway has a small disk; a bounded spool that loses the oldest retraining windows
during a very long outage beats one that grows until the disk is full and the agent stops. The bounds
are on the number of records and on the sum of payload sizes (sqlite's own overhead comes on top).

Durability: WAL journal, ``synchronous=NORMAL`` — every committed record survives a crash or restart of
the process; a power cut may lose the last few commits but never corrupts the file. A file that is not
a readable sqlite database (or fails ``quick_check``) is renamed aside to ``<name>.corrupt-<unix time>``,
logged as an error, and a fresh spool is started: the agent never stops for a bad spool file.

One connection shared by all threads, serialised by a lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_agent.contract.errors import UploadError

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    created  REAL    NOT NULL,
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
)
"""


@dataclass(frozen=True)
class Record:
    """One spooled record; ``created`` is wall-clock unix seconds."""

    id: int
    created: float
    topic: str
    payload: bytes
    attempts: int


class Spool:
    """Persistent FIFO of ``(topic, payload)`` records bounded by ``max_records`` and ``max_bytes``."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = 64 * 1024 * 1024, max_records: int = 10_000):
        if max_bytes <= 0 or max_records <= 0:
            raise ValueError(f"spool: max_bytes and max_records must be > 0, got {max_bytes}, {max_records}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.max_records = int(max_records)
        self._lock = threading.Lock()
        self.evicted = 0
        self.evicted_bytes = 0
        self.recovered_from: Path | None = None  # where a corrupt file was moved, if one was
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            self.recovered_from = self._move_aside(exc)
            try:
                self._db = self._open()
            except sqlite3.Error as exc2:
                raise UploadError(f"spool {self.path}: cannot create a fresh database: {exc2}") from exc2
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM records").fetchone()
        self._count, self._bytes = int(count), int(size)
        if self._count:
            logger.info("spool %s: %d records (%d bytes) pending from a previous run", self.path, count, size)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            db.execute(_SCHEMA)
            db.execute("SELECT id, created, topic, payload, attempts FROM records LIMIT 1").fetchall()
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _move_aside(self, exc: Exception) -> Path:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        logger.error("spool %s is not a usable database (%s): moved to %s, starting an empty spool", self.path,
                     exc, aside)
        return aside

    # ------------------------------------------------------------------ api
    def put(self, topic: str, payload: bytes) -> int:
        """Append a record and return its id; evicts the oldest records if the spool would overflow.

        Raises ``UploadError`` for a record that can never fit or a database error.
        """
        if not isinstance(topic, str) or not topic:
            raise UploadError(f"spool: topic must be a non-empty string, got {topic!r}")
        data = bytes(payload)
        if len(data) > self.max_bytes:
            raise UploadError(f"spool: record of {len(data)} bytes exceeds the spool size {self.max_bytes}")
        with self._lock:
            with self._transaction("store a record") as db:
                self._evict_for(len(data))
                cur = db.execute(
                    "INSERT INTO records (created, topic, payload) VALUES (?, ?, ?)", (time.time(), topic, data)
                )
            self._count += 1
            self._bytes += len(data)
            return int(cur.lastrowid or 0)

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction (caller holds the lock); a sqlite error becomes UploadError naming ``what``."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._recount()
            raise UploadError(f"spool {self.path}: cannot {what}: {exc}") from exc

    def _evict_for(self, size: int) -> None:  # inside the put transaction
        over_n = self._count + 1 - self.max_records
        over_b = self._bytes + size - self.max_bytes
        if over_n <= 0 and over_b <= 0:
            return
        n = b = 0
        last_id = None
        cur = self._db.execute("SELECT id, LENGTH(payload) FROM records ORDER BY id")
        for rid, length in cur:
            if n >= over_n and b >= over_b:
                break
            n, b, last_id = n + 1, b + int(length), rid
        cur.close()
        if last_id is None:
            return
        self._db.execute("DELETE FROM records WHERE id <= ?", (last_id,))
        self._count -= n
        self._bytes -= b
        self.evicted += n
        self.evicted_bytes += b
        logger.warning("spool %s full: evicted the %d oldest records (%d bytes; %d in total)", self.path, n, b,
                       self.evicted)

    def peek(self, n: int) -> list[Record]:
        """The ``n`` oldest records, oldest first (they stay in the spool until ``ack``)."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT id, created, topic, payload, attempts FROM records ORDER BY id LIMIT ?", (int(n),)
                ).fetchall()
            except sqlite3.Error as exc:
                raise UploadError(f"spool {self.path}: cannot read records: {exc}") from exc
        return [Record(int(i), float(c), str(t), bytes(p), int(a)) for i, c, t, p, a in rows]

    def ack(self, ids: Iterable[int]) -> int:
        """Delete delivered records; return how many were still there."""
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._lock:
            with self._transaction("delete records") as db:
                n, size = db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM records WHERE id IN ({marks})", ids
                ).fetchone()
                db.execute(f"DELETE FROM records WHERE id IN ({marks})", ids)
            self._count -= int(n)
            self._bytes -= int(size)
            return int(n)

    def mark_attempt(self, ids: Iterable[int]) -> None:
        """Count one more delivery attempt for these records."""
        ids = [int(i) for i in ids]
        if not ids:
            return
        with self._lock:
            try:
                self._db.execute(
                    f"UPDATE records SET attempts = attempts + 1 WHERE id IN ({','.join('?' * len(ids))})", ids
                )
            except sqlite3.Error as exc:
                raise UploadError(f"spool {self.path}: cannot update records: {exc}") from exc

    def __len__(self) -> int:
        return self._count

    @property
    def bytes(self) -> int:
        """Sum of the pending payload sizes."""
        return self._bytes

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recount(self) -> None:  # with the lock held, after a failed transaction
        try:
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM records"
            ).fetchone()
            self._count, self._bytes = int(count), int(size)
        except sqlite3.Error:
            logger.exception("spool %s: cannot recount records", self.path)
