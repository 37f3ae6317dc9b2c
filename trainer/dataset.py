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

Writes are atomic per file: a part is written to a hidden temp file in its partition folder
(``.part-….parquet.tmp``, which every reader ignores), fsynced, renamed into place and the folder
fsynced, so a crash mid-write leaves no partial file visible. Ids are unique per window: a writer skips ids
it has seen (loaded from the dataset at start), and every read keeps the first row of each id, so a window
collected twice (QoS 1, two collectors, a crash between write and acknowledgement) is read once.

Read it elsewhere::

    pyarrow.dataset.dataset("DATASET", format="parquet", partitioning="hive")
    duckdb: SELECT device, kind, count(*) FROM read_parquet('DATASET/**/*.parquet', hive_partitioning = true) GROUP BY ALL
    spark.read.parquet("DATASET")
"""

from __future__ import annotations

import logging
import os
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

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
    duplicates: int = 0  # ids already in the dataset or in this writer's buffer
    files: int = 0
    bytes: int = 0  # of the files written


class DatasetWriter:
    """Buffers records and writes them as one Parquet file per (device, date) on ``flush``.

    Not thread-safe: one writer per thread. Several writers (processes, machines on a shared folder)
    may write into one dataset at the same time: their file names never collide.

    Args:
        root: the dataset folder (created).
        writer_id: part of every file name (default: a random 8 hex digits).
        known_ids: ids to treat as present (default: every id in the dataset, read at start).
    """

    def __init__(self, root: str | os.PathLike[str], writer_id: str | None = None,
                 known_ids: set[str] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.writer_id = writer_id or uuid.uuid4().hex[:8]
        self.known = set(existing_ids(self.root)) if known_ids is None else set(known_ids)
        self._buffer: list[tuple[UploadRecord, datetime]] = []
        self._buffered_ids: set[str] = set()
        self._buffered_bytes = 0
        self._n = 0
        self.stats = WriteStats()

    @property
    def pending(self) -> int:
        """Records buffered, not yet in a visible file."""
        return len(self._buffer)

    @property
    def pending_bytes(self) -> int:
        return self._buffered_bytes

    def add(self, record: UploadRecord, received: datetime | None = None) -> bool:
        """Buffer ``record``; False (counted in ``duplicates``) when its id is already in the dataset."""
        if record.id in self.known or record.id in self._buffered_ids:
            self.stats.duplicates += 1
            return False
        self._buffer.append((record, received or datetime.now(UTC).replace(tzinfo=None)))
        self._buffered_ids.add(record.id)
        self._buffered_bytes += record.samples.nbytes
        return True

    def flush(self) -> list[Path]:
        """Write the buffered records (one file per device and date, each atomic); return the new files.

        Raises OSError (disk full, permissions): the buffer is kept, nothing partial is visible.
        """
        if not self._buffer:
            return []
        groups: dict[tuple[str, str], list[tuple[UploadRecord, datetime]]] = {}
        for rec, received in self._buffer:
            groups.setdefault((rec.device, rec.time_end_utc().date().isoformat()), []).append((rec, received))
        written: list[Path] = []
        for (device, date), rows in sorted(groups.items()):
            path = self._write_part(partition_dir(self.root, device, date), rows)
            written.append(path)
            self.stats.files += 1
            self.stats.bytes += path.stat().st_size
            self.stats.written += len(rows)
            ids = {r.id for r, _ in rows}
            self.known |= ids
            self._buffer = [x for x in self._buffer if x[0].id not in ids]  # a later failure keeps the rest
            self._buffered_ids -= ids
        self._buffered_bytes = sum(r.samples.nbytes for r, _ in self._buffer)
        return written

    def _write_part(self, folder: Path, rows: list[tuple[UploadRecord, datetime]]) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        self._n += 1
        name = f"part-{self.writer_id}-{self._n:06d}-{uuid.uuid4().hex[:6]}.parquet"
        final, tmp = folder / name, folder / f".{name}.tmp"
        table = to_table([r for r, _ in rows], [t for _, t in rows])
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


def to_table(records: Sequence[UploadRecord], received: Sequence[datetime] | None = None) -> pa.Table:
    """Records as a table of ``FILE_SCHEMA`` (no partition columns)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    received = received or [now] * len(records)
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
    """The matching windows, one row per id (the first one read), in time order (``time_end``, ``id``).

    ``columns``: a subset of ``SCHEMA`` (``id`` and ``time_end`` are always read).
    """
    flt = flt or DataFilter()
    cols = None if columns is None else list(dict.fromkeys(["id", "time_end", *columns]))
    tables = list(_fragments(Path(root), flt.expression(), cols))
    schema = SCHEMA if cols is None else pa.schema([SCHEMA.field(c) for c in cols])
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables)
    table = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    first = table.group_by("id", use_threads=False).aggregate([("_row", "min")]).column("_row_min")
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
