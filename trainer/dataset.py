"""The collected windows as a partitioned Parquet dataset that pyarrow, DuckDB or Spark read directly.

Layout (Hive partitioning: ``key=value`` folders; a device id outside ``[A-Za-z0-9._-]`` is
percent-encoded, as pyarrow decodes it)::

    DATASET/
      device=pump-1/date=2026-11-22/part-<writer>-<n>.parquet
      device=pump-1/date=2026-11-23/...
      device=fan-7/...

One row per window (``FILE_SCHEMA``; the partition columns ``device`` and ``date`` live in the folder
names only, as Hive, Spark and DuckDB expect)::

    id  gateway  model_id  model_version  kind  state  score  threshold  alert_ref
    time_start  time_end (timestamp µs, UTC)  seq_end  sample_rate  units  channels (list<string>)
    n_rows  samples (list<float32>, n_rows × len(channels), row-major)  received  schema
    digest (16 hex: sha256 of the upload as received; null in files of earlier releases)

Writes are atomic per file: a part is written to a hidden temp file in its partition folder
(``.part-….parquet.tmp``, which every reader ignores), fsynced, renamed into place and the folder
fsynced, so a crash mid-write leaves no partial file visible (a writer removes its own temp files left by
a crash when it opens). Ids are unique per device and window: a writer looks up the ids of a partition when
a record for it arrives (a bounded cache of partitions), skips a record it already holds (same digest: a
duplicate) and refuses one whose id it holds with other content (``IdConflict``: a forgery or a bug, never
a silent drop); every read keeps the first row of each (device, id), so a window collected twice (QoS 1, two
collectors, a crash between write and acknowledgement) is read once.

Read it elsewhere::

    pyarrow.dataset.dataset("DATASET", format="parquet", partitioning="hive")
    duckdb: SELECT device, kind, count(*) FROM read_parquet('DATASET/**/*.parquet', hive_partitioning = true) GROUP BY ALL
    spark.read.parquet("DATASET")
"""

from __future__ import annotations

import errno
import logging
import os
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from edge_agent.contract.errors import AgentError
from edge_agent.contract.recordings import DataFormatError, Recording, Segment
from edge_agent.contract.recordings.recording import as_time
from edge_agent.contract.upload_record import KINDS, UploadRecord

log = logging.getLogger(__name__)

TIME = pa.timestamp("us", tz="UTC")
FILE_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("gateway", pa.string()),
    ("model_id", pa.string()),
    ("model_version", pa.string()),
    ("kind", pa.string()),
    ("state", pa.string()),
    ("score", pa.float64()),
    ("threshold", pa.float64()),
    ("alert_ref", pa.string()),
    ("time_start", TIME),
    ("time_end", TIME),
    ("seq_end", pa.int64()),
    ("sample_rate", pa.float64()),
    ("units", pa.string()),
    ("channels", pa.list_(pa.string())),
    ("n_rows", pa.int32()),
    ("samples", pa.list_(pa.float32())),
    ("received", TIME),
    ("schema", pa.int8()),
    ("digest", pa.string()),
])
PARTITION_SCHEMA = pa.schema([("device", pa.string()), ("date", pa.string())])
#: Every column a reader sees: the file's plus the partition folders'.
SCHEMA = pa.schema(list(PARTITION_SCHEMA) + list(FILE_SCHEMA))
#: Low-cardinality columns worth dictionary encoding (a dictionary over the samples costs 4x the write time).
_DICTIONARY = ("gateway", "model_id", "model_version", "kind", "state", "units")
#: Kinds that are healthy operation (what ``healthy_only`` keeps, if scored below the threshold).
HEALTHY_KINDS = ("normal", "calibration", "drift")


def partitioning() -> ds.Partitioning:
    return ds.partitioning(PARTITION_SCHEMA, flavor="hive")


def partition_dir(root: Path, device: str, date: str) -> Path:
    """``root/device=<device, percent-encoded>/date=<YYYY-MM-DD>``."""
    return root / f"device={urllib.parse.quote(device, safe='')}" / f"date={date}"


def is_dataset(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder laid out as this dataset (``device=…`` folders)."""
    p = Path(path)
    return p.is_dir() and any(e.is_dir() and e.name.startswith("device=") for e in p.iterdir())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------------- writing
@dataclass
class WriteStats:
    """What a writer did (owned by the writing thread)."""

    written: int = 0  # rows in files that are now visible
    duplicates: int = 0  # (device, id) already in the dataset or in this writer's buffer, same content
    files: int = 0
    bytes: int = 0  # of the files written


class IdConflict(AgentError, ValueError):
    """A record whose (device, id) the dataset already holds with other content."""


#: Partitions whose ids a writer keeps in memory (looked up when a record for one arrives).
KNOWN_PARTITIONS = 512


class DatasetWriter:
    """Buffers records and writes them as one Parquet file per (device, date) on ``flush``.

    Not thread-safe: one writer per thread. Several writers (processes, machines on a shared folder)
    may write into one dataset at the same time: their file names never collide. ``open`` before use.

    Args:
        root: the dataset folder (created by ``open``).
        writer_id: part of every file name (default: a random 8 hex digits); stable per collector, so that
            ``open`` can remove the temp files a crash of this writer left.
    """

    def __init__(self, root: str | os.PathLike[str], writer_id: str | None = None) -> None:
        self.root = Path(root)
        self.writer_id = writer_id or uuid.uuid4().hex[:8]
        self._known: OrderedDict[tuple[str, str], dict[str, str | None]] = OrderedDict()
        self._buffer: list[tuple[UploadRecord, datetime, str | None]] = []
        self._buffered: dict[tuple[str, str], str | None] = {}
        self._buffered_bytes = 0
        self._n = 0
        self.stats = WriteStats()
        self.removed_temp = 0  # temp files of this writer left by a crash, removed by ``open``

    def open(self) -> DatasetWriter:
        """Create the folder; remove this writer's temp files left by a crash (``.part-<writer_id>-…tmp``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        prefix = f".part-{self.writer_id}-"
        for tmp in self.root.glob(f"device=*/date=*/{prefix}*.parquet.tmp"):
            tmp.unlink(missing_ok=True)
            self.removed_temp += 1
        if self.removed_temp:
            log.warning("%s: removed %d temp file(s) of writer %s left by a crash", self.root, self.removed_temp,
                        self.writer_id)
        return self

    @property
    def pending(self) -> int:
        """Records buffered, not yet in a visible file."""
        return len(self._buffer)

    @property
    def pending_bytes(self) -> int:
        return self._buffered_bytes

    def _ids(self, device: str, date: str) -> dict[str, str | None]:
        """``{id: digest}`` of a partition (read once, then kept up to date; least recently used evicted)."""
        key = (device, date)
        known = self._known.get(key)
        if known is None:
            known = partition_ids(self.root, device, date)
            self._known[key] = known
            while len(self._known) > KNOWN_PARTITIONS:
                self._known.popitem(last=False)
        else:
            self._known.move_to_end(key)
        return known

    def add(self, record: UploadRecord, received: datetime | None = None, digest: str | None = None) -> bool:
        """Buffer ``record``; False (counted in ``duplicates``) when its (device, id) is already there with the same
        content (or a digest is not known on one side). IdConflict when it is there with other content."""
        key = (record.device, record.id)
        date = record.time_end_utc().date().isoformat()
        seen = self._buffered[key] if key in self._buffered else self._ids(record.device, date).get(record.id, "")
        if seen != "":  # present: "" means absent (a digest of None is an earlier release's row)
            if seen is not None and digest is not None and seen != digest:
                raise IdConflict(f"record {record.id} of {record.device} is already in the dataset with other content "
                                 f"(digest {seen}, this one {digest})")
            self.stats.duplicates += 1
            return False
        self._buffer.append((record, received or datetime.now(UTC).replace(tzinfo=None), digest))
        self._buffered[key] = digest
        self._buffered_bytes += record.samples.nbytes
        return True

    def flush(self) -> tuple[list[Path], list[tuple[UploadRecord, Exception]]]:
        """Write the buffered records (one file per device and date, each atomic).

        Returns (new files, records that cannot be stored: with the error, a partition whose write failed in a
        way retrying cannot fix). Raises OSError for a transient failure (disk full, I/O error, permissions):
        those records stay buffered, nothing partial is visible.
        """
        groups: dict[tuple[str, str], list[tuple[UploadRecord, datetime, str | None]]] = {}
        for row in self._buffer:
            rec = row[0]
            groups.setdefault((rec.device, rec.time_end_utc().date().isoformat()), []).append(row)
        written: list[Path] = []
        failed: list[tuple[UploadRecord, Exception]] = []
        for (device, date), rows in sorted(groups.items()):
            try:
                path = self._write_part(partition_dir(self.root, device, date), rows)
            except OSError as exc:
                if exc.errno in TRANSIENT_ERRNOS:
                    raise
                failed += [(r, exc) for r, _, _ in rows]
            except (pa.ArrowException, ValueError, OverflowError, TypeError) as exc:
                failed += [(r, exc) for r, _, _ in rows]
            else:
                written.append(path)
                self.stats.files += 1
                self.stats.bytes += path.stat().st_size
                self.stats.written += len(rows)
                if (device, date) in self._known:
                    self._known[(device, date)].update({r.id: d for r, _, d in rows})
            done = {(r.device, r.id) for r, _, _ in rows}
            self._buffer = [x for x in self._buffer if (x[0].device, x[0].id) not in done]  # the rest stays
            for k in done:
                self._buffered.pop(k, None)
            self._buffered_bytes = sum(r.samples.nbytes for r, _, _ in self._buffer)
        return written, failed

    def _write_part(self, folder: Path, rows: list[tuple[UploadRecord, datetime, str | None]]) -> Path:
        table = to_table([r for r, _, _ in rows], [t for _, t, _ in rows], [d for _, _, d in rows])
        folder.mkdir(parents=True, exist_ok=True)
        self._n += 1
        name = f"part-{self.writer_id}-{self._n:06d}-{uuid.uuid4().hex[:6]}.parquet"
        final, tmp = folder / name, folder / f".{name}.tmp"
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f, compression="zstd", use_dictionary=list(_DICTIONARY),
                               column_encoding={"samples": "BYTE_STREAM_SPLIT"})
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(folder)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        log.debug("wrote %s (%d windows)", final, len(rows))
        return final


#: errno values of a write failure that goes away by itself (space, quota, I/O, a lock): retried, not quarantined.
TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ENOMEM, errno.EINTR,
                    errno.EROFS, errno.EACCES, errno.EPERM, errno.ETIMEDOUT, errno.ENFILE, errno.EMFILE}


def to_table(records: Sequence[UploadRecord], received: Sequence[datetime] | None = None,
             digests: Sequence[str | None] | None = None) -> pa.Table:
    """Records as a table of ``FILE_SCHEMA`` (no partition columns)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    received = received or [now] * len(records)
    digests = digests or [None] * len(records)
    samples = [np.ascontiguousarray(r.samples, np.float32).reshape(-1) for r in records]
    offsets = np.zeros(len(samples) + 1, np.int32)
    np.cumsum([s.size for s in samples], out=offsets[1:])
    flat = np.concatenate(samples) if samples else np.empty(0, np.float32)
    cols = {
        "id": [r.id for r in records],
        "gateway": [r.gateway for r in records],
        "model_id": [r.model_id for r in records],
        "model_version": [r.model_version for r in records],
        "kind": [r.kind for r in records],
        "state": [r.state for r in records],
        "score": [r.score for r in records],
        "threshold": [r.threshold for r in records],
        "alert_ref": [r.alert_ref for r in records],
        "time_start": [_utc(r.time_start_utc()) for r in records],
        "time_end": [_utc(r.time_end_utc()) for r in records],
        "seq_end": [r.seq_end for r in records],
        "sample_rate": [r.sample_rate for r in records],
        "units": [r.units for r in records],
        "channels": [list(r.channels) for r in records],
        "n_rows": [r.n_rows for r in records],
        "samples": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float32())),
        "received": [_utc(t) for t in received],
        "schema": [r.schema for r in records],
        "digest": list(digests),
    }
    arrays = [c if isinstance(c, pa.Array) else pa.array(c, FILE_SCHEMA.field(name).type)
              for name, c in cols.items()]
    return pa.Table.from_arrays(arrays, schema=FILE_SCHEMA)


def existing_ids(root: str | os.PathLike[str]) -> set[str]:
    """Every id in the dataset (reads the ``id`` column only; unreadable files are skipped and logged)."""
    out: set[str] = set()
    for table in _fragments(Path(root), None, ["id"]):
        out.update(table.column("id").to_pylist())
    return out


def partition_ids(root: Path, device: str, date: str) -> dict[str, str | None]:
    """``{id: digest}`` of one partition (its files only; unreadable files are skipped and logged)."""
    folder = partition_dir(root, device, date)
    out: dict[str, str | None] = {}
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob("part-*.parquet")):
        try:
            t = pq.read_table(f, columns=[c for c in ("id", "digest") if c in pq.read_schema(f).names])
        except (pa.ArrowException, OSError) as exc:
            log.error("%s: unreadable part skipped: %s", f, exc)
            continue
        digests = t.column("digest").to_pylist() if "digest" in t.column_names else [None] * t.num_rows
        for i, d in zip(t.column("id").to_pylist(), digests, strict=True):
            out.setdefault(i, d)
    return out


# ------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class DataFilter:
    """Which windows to read.

    Attributes:
        devices: keep these devices (empty: all).
        start, end: keep windows whose last sample is in [start, end) (ISO-8601, UTC when naive).
        kinds: keep these kinds (empty: all).
        healthy_only: only healthy operation: a kind of ``HEALTHY_KINDS``, state ``normal``, scored below
            the threshold in force (or before any threshold, while calibrating).
        model_version: keep windows scored by this model version (None: any).
        gateways: keep windows from these gateways (empty: all).
    """

    devices: tuple[str, ...] = ()
    start: str | None = None
    end: str | None = None
    kinds: tuple[str, ...] = ()
    healthy_only: bool = False
    model_version: str | None = None
    gateways: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise ValueError(f"unknown window kind(s) {bad}; kinds are {list(KINDS)}")

    def expression(self) -> ds.Expression | None:
        """The filter as a pyarrow expression (partitions are pruned by ``device``)."""
        parts: list[ds.Expression] = []
        if self.devices:
            parts.append(ds.field("device").isin(list(self.devices)))
        if self.gateways:
            parts.append(ds.field("gateway").isin(list(self.gateways)))
        if self.start is not None:
            parts.append(ds.field("time_end") >= pa.scalar(_ts(self.start), TIME))
        if self.end is not None:
            parts.append(ds.field("time_end") < pa.scalar(_ts(self.end), TIME))
        if self.kinds:
            parts.append(ds.field("kind").isin(list(self.kinds)))
        if self.model_version is not None:
            parts.append(ds.field("model_version") == self.model_version)
        if self.healthy_only:
            parts.append(ds.field("kind").isin(list(HEALTHY_KINDS)) & (ds.field("state") == "normal")
                         & ds.field("score").is_valid()
                         & (ds.field("threshold").is_null() | (ds.field("score") < ds.field("threshold"))))
        if not parts:
            return None
        expr = parts[0]
        for p in parts[1:]:
            expr = expr & p
        return expr


def _ts(value: str) -> datetime:
    t = as_time(value).astype("datetime64[us]").astype(datetime)
    return t.replace(tzinfo=UTC)


def _fragments(root: Path, expr: ds.Expression | None, columns: list[str] | None) -> Iterable[pa.Table]:
    """Each data file's matching rows (with the partition columns); a file that cannot be read is
    skipped with an error in the log, never a failed read of the whole dataset."""
    if not root.is_dir():
        raise DataFormatError(root, message="no such dataset folder")
    dataset = ds.dataset(root, format="parquet", partitioning=partitioning(), schema=SCHEMA,
                         exclude_invalid_files=False)
    for frag in dataset.get_fragments(filter=expr):
        try:
            table = frag.to_table(schema=SCHEMA, columns=columns, filter=expr)
        except (pa.ArrowException, OSError) as exc:
            log.error("%s: unreadable part skipped: %s", frag.path, exc)
            continue
        if table.num_rows:
            yield table


def read_table(root: str | os.PathLike[str], flt: DataFilter | None = None,
               columns: Sequence[str] | None = None) -> pa.Table:
    """The matching windows, one row per (device, id) (the first one read), in time order (``time_end``, ``id``).

    ``columns``: a subset of ``SCHEMA`` (``device``, ``id`` and ``time_end`` are always read).
    """
    flt = flt or DataFilter()
    cols = None if columns is None else list(dict.fromkeys(["device", "id", "time_end", *columns]))
    tables = list(_fragments(Path(root), flt.expression(), cols))
    schema = SCHEMA if cols is None else pa.schema([SCHEMA.field(c) for c in cols])
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables)
    table = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    first = table.group_by(["device", "id"], use_threads=False).aggregate([("_row", "min")]).column("_row_min")
    table = table.take(first).drop_columns(["_row"])
    order = pc.sort_indices(table, [("time_end", "ascending"), ("id", "ascending")])
    return table.take(order)


@dataclass(frozen=True, eq=False)
class Windows:
    """Windows read from the dataset: per-window metadata arrays and the (n, C) samples of each."""

    table: pa.Table  # everything but the samples column
    samples: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.samples)

    def column(self, name: str) -> np.ndarray:
        return self.table.column(name).to_numpy(zero_copy_only=False)


def read_windows(root: str | os.PathLike[str], flt: DataFilter | None = None) -> Windows:
    """The matching windows with their samples as (n_rows, C) float32 arrays (deduplicated, time order)."""
    table = read_table(root, flt)
    samples = []
    lists = table.column("samples")
    n_rows, channels = table.column("n_rows").to_pylist(), table.column("channels").to_pylist()
    for i in range(table.num_rows):
        flat = lists[i].values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        samples.append(flat.reshape(n_rows[i], len(channels[i])))
    return Windows(table.drop_columns(["samples"]), samples)


def load(root: str | os.PathLike[str], flt: DataFilter | None = None,
         channels: Sequence[str | int] | None = None) -> Recording:
    """The matching windows as a ``Recording``: one ``Segment`` per window, in time order.

    Raises:
        DataFormatError: no window matches, or the windows disagree on channels, sample rate or units.
    """
    flt = flt or DataFilter()
    w = read_windows(root, flt)
    if not len(w):
        raise DataFormatError(root, message=f"no windows match {flt}")
    chans, rates, units = (w.table.column(c).to_pylist() for c in ("channels", "sample_rate", "units"))
    for i in range(len(w)):
        for what, a, b in (("channels", chans[i], chans[0]), ("sample_rate", rates[i], rates[0]),
                           ("units", units[i], units[0])):
            if a != b:
                raise DataFormatError(root, message=f"window {w.table.column('id')[i]} has {what} {a!r}, earlier "
                                      f"windows {b!r}: filter by device or model version")
    starts = w.column("time_start").astype("datetime64[ms]")
    segments = [Segment(s, starts[i]) for i, s in enumerate(w.samples)]
    rec = Recording(tuple(segments), tuple(chans[0]), float(rates[0]), units[0], os.fspath(root), "dataset")
    log.info("%s: %d windows (%s)", root, len(segments), flt)
    return rec.select_channels(list(channels)) if channels else rec


def parse_select(items: Sequence[str], *, start: str | None = None, end: str | None = None) -> DataFilter:
    """``("device=pump-1", "kind=normal", ...)`` -> DataFilter (``trainer train --select``).

    Keys: ``device``, ``gateway``, ``kind`` (repeatable or comma-separated), ``model_version``, ``start``,
    ``end``, ``healthy`` (true/false; default true: training takes healthy windows only). ``start``/``end``
    default to ``trainer train --start/--end``.
    """
    multi: dict[str, list[str]] = {"device": [], "gateway": [], "kind": []}
    single: dict[str, str | None] = {"model_version": None, "start": start, "end": end, "healthy": "true"}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not sep or not value:
            raise ValueError(f"--select {item!r} is not KEY=VALUE")
        if key in multi:
            multi[key] += [v.strip() for v in value.split(",") if v.strip()]
        elif key in single:
            single[key] = value
        else:
            raise ValueError(f"--select {item!r}: unknown key {key!r} (known: {', '.join([*multi, *single])})")
    healthy = single["healthy"].lower()
    if healthy not in ("true", "false"):
        raise ValueError(f"--select healthy={single['healthy']!r}: true or false")
    return DataFilter(devices=tuple(multi["device"]), gateways=tuple(multi["gateway"]), kinds=tuple(multi["kind"]),
                      model_version=single["model_version"], start=single["start"], end=single["end"],
                      healthy_only=healthy == "true")


# ------------------------------------------------------------------------------------------- quarantine
QUARANTINE_DIR = "_quarantine"  # readers skip folders that start with "_" (pyarrow, DuckDB globs of *.parquet)


class Quarantine:
    """Uploads a collector could not store, kept for the operator instead of being redelivered forever.

    ``DATASET/_quarantine/date=<UTC date>/<writer_id>.jsonl``, one JSON object per upload::

        {"received": ISO-8601, "topic": str, "code": str, "reason": str, "id": str | null, "bytes": int,
         "sha256": hex, "payload_b64": str | null}

    ``code`` says why (``invalid``, ``foreign_device``, ``bad_topic``, ``clock_ahead``, ``id_conflict``,
    ``unstorable``); the payload is kept while the quarantine holds less than ``max_bytes`` (all writers
    together), else only its size and digest. Appended and fsynced on ``flush``, before the uploads are
    acknowledged. Not thread-safe: one per collecting thread.
    """

    def __init__(self, root: str | os.PathLike[str], writer_id: str, max_bytes: int = 1 << 30) -> None:
        self.root = Path(root)
        self.writer_id = writer_id
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.by_code: dict[str, int] = {}
        self._lines: list[tuple[str, bytes]] = []  # (date, line)

    def open(self) -> Quarantine:
        """Measure what the quarantine holds already (the payload budget is shared by every writer)."""
        folder = self.root / QUARANTINE_DIR
        self.bytes = sum(f.stat().st_size for f in folder.glob("date=*/*.jsonl")) if folder.is_dir() else 0
        return self

    @property
    def pending(self) -> int:
        return len(self._lines)

    def add(self, topic: str, payload: bytes, code: str, reason: str, record_id: str | None = None) -> None:
        """Keep one upload (buffered until ``flush``)."""
        import base64
        import hashlib
        import json

        now = datetime.now(UTC)
        keep = self.bytes + len(payload) * 4 // 3 < self.max_bytes
        line = json.dumps({
            "received": now.isoformat(timespec="milliseconds"), "topic": topic[:256], "code": code,
            "reason": reason[:500], "id": record_id, "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "payload_b64": base64.b64encode(payload).decode("ascii") if keep else None,
        }, separators=(",", ":")).encode() + b"\n"
        self.bytes += len(line)
        self.by_code[code] = self.by_code.get(code, 0) + 1
        self._lines.append((now.date().isoformat(), line))

    def flush(self) -> None:
        """Append the buffered uploads to today's file, fsynced. OSError (kept buffered) when that fails."""
        by_date: dict[str, list[bytes]] = {}
        for date, line in self._lines:
            by_date.setdefault(date, []).append(line)
        for date, lines in by_date.items():
            folder = self.root / QUARANTINE_DIR / f"date={date}"
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f"{self.writer_id}.jsonl", "ab") as f:
                f.write(b"".join(lines))
                f.flush()
                os.fsync(f.fileno())
        self._lines.clear()
