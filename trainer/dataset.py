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
    group (the sensor's kind of machine)  answer (struct kind, by, time: a technician's answer to the alert)
    (group and answer: upload schema 3; null for earlier records and in files of earlier releases)

Writes are atomic per file: a part is written to a hidden temp file in its partition folder
(``.part-….parquet.tmp``, which every reader ignores), fsynced, renamed into place and the folder
fsynced, so a crash mid-write leaves no partial file visible (a writer removes its own temp files left by
a crash when it opens). Ids are unique per device and window: a writer looks up the ids of a partition when
a record for it arrives (a bounded cache of partitions), skips a record it already holds (same digest: a
duplicate) and refuses one whose id it holds with other content (``IdConflict``: a forgery or a bug, never
a silent drop); every read keeps the first row of each (device, id), so a window collected twice (QoS 1, two
collectors, a crash between write and acknowledgement) is read once.

Where it lives (``location``): a local folder, or ``s3://bucket/prefix`` on AWS S3 or any S3-compatible store
(MinIO, Ceph RGW, Garage, SeaweedFS), reached through pyarrow's filesystem layer (``pyarrow.fs.FileSystem.from_uri``)
with the endpoint, region and credentials S3 tools take (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``) or an explicit
``endpoint``. One code path for both: a ``Location`` is a pyarrow FileSystem and a base path, and everything above
(layout, ids, reading, the quarantine) goes through it. The one difference is how a file becomes visible whole
(``put``): on a disk by the fsynced rename above; on an object store a PUT (a multipart upload is completed by
its last request) makes the object visible whole or not at all, so there is no temp object and no rename: every
file has a unique name (``part-<writer>-<n>-<random>``), so writers never overwrite each other and a retried
write adds a file, never changes one. A collector killed mid-upload leaves an incomplete multipart upload, which
no reader sees (a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` reclaims its space).

Reading costs per file, not per window (``summarize``: listing once, then each file's small columns), and
collectors write one file per device, day and flush: ``compact`` merges a device's files of a day into one.

Read it elsewhere::

    pyarrow.dataset.dataset("DATASET", format="parquet", partitioning="hive")
    duckdb: SELECT device, kind, count(*) FROM read_parquet('DATASET/**/*.parquet', hive_partitioning = true) GROUP BY ALL
    spark.read.parquet("DATASET")
"""

from __future__ import annotations

import errno
import logging
import os
import re
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
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from edge_agent.contract.answer import RECORD_KINDS
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
    ("group", pa.string()),
    ("answer", pa.struct([("kind", pa.string()), ("by", pa.string()), ("time", pa.string())])),
])
PARTITION_SCHEMA = pa.schema([("device", pa.string()), ("date", pa.string())])
#: Every column a reader sees: the file's plus the partition folders'.
SCHEMA = pa.schema(list(PARTITION_SCHEMA) + list(FILE_SCHEMA))
#: Low-cardinality columns worth dictionary encoding (a dictionary over the samples costs 4x the write time).
_DICTIONARY = ("gateway", "model_id", "model_version", "kind", "state", "units", "group")
#: Kinds that are healthy operation (what ``healthy_only`` keeps, if scored below the threshold).
HEALTHY_KINDS = ("normal", "calibration", "drift")


def partitioning() -> ds.Partitioning:
    return ds.partitioning(PARTITION_SCHEMA, flavor="hive")


def partition_name(device: str, date: str) -> str:
    """``device=<device, percent-encoded>/date=<YYYY-MM-DD>``: a partition's folder, relative to the dataset."""
    return f"device={urllib.parse.quote(device, safe='')}/date={date}"


def partition_dir(root: Path, device: str, date: str) -> Path:
    """``root/device=<device, percent-encoded>/date=<YYYY-MM-DD>`` (a local dataset's partition folder)."""
    return root / partition_name(device, date)


def _fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- where it lives
#: What an S3 URI may be followed by: ``s3://bucket`` or ``s3://bucket/prefix`` (no query: options are arguments).
_S3_URI = re.compile(r"s3://([^/?#]+)(/[^?#]*)?")


@dataclass(frozen=True)
class Location:
    """Where a dataset lives: a pyarrow FileSystem and the dataset's base path in it (no trailing slash).

    ``uri`` names it in messages (the folder, or ``s3://bucket/prefix``; never a credential); ``endpoint`` is the
    S3 endpoint in use (given, or from ``AWS_ENDPOINT_URL``; None: AWS S3 itself). Made by ``location``.
    """

    fs: pafs.FileSystem
    path: str
    uri: str
    endpoint: str | None = None

    def __str__(self) -> str:
        return self.uri

    @property
    def local(self) -> bool:
        """A disk (a file becomes visible by an fsynced rename), not an object store (a PUT is atomic)."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def bucket(self) -> str | None:
        return None if self.local else self.path.split("/", 1)[0]

    @property
    def where(self) -> str:
        """The store, for messages: ``the object store at <endpoint>``, ``AWS S3`` or nothing (a local folder)."""
        if self.local:
            return ""
        return f"the object store at {self.endpoint}" if self.endpoint else "AWS S3"

    def join(self, *parts: str) -> str:
        """A path inside the dataset (``parts`` relative to it, '/'-separated)."""
        return "/".join([self.path.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def name_of(self, path: str) -> Path | str:
        """How to name a file of the dataset to a user: a Path on a disk, an ``s3://`` URI in a bucket."""
        return Path(path) if self.local else f"s3://{path}"

    def error(self, exc: BaseException, doing: str) -> DataFormatError:
        """``exc`` (an OSError of the filesystem layer) as an error that names the dataset, the store and the fix."""
        return DataFormatError(self.uri, message=f"{doing}: {describe_error(self, exc)}")


def location(where: str | os.PathLike[str] | Location, endpoint: str | None = None) -> Location:
    """The ``Location`` of a dataset: a local folder, or ``s3://bucket/prefix``.

    An S3 URI goes through ``pyarrow.fs.FileSystem.from_uri``, which takes the credentials and region the way S3
    tools do (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` with
    ``~/.aws/credentials`` and ``~/.aws/config``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, else the bucket's own
    region) and the endpoint from ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``; ``endpoint``
    (``http(s)://host:port``) overrides that, for S3-compatible stores. Nothing is read here.

    Raises:
        ValueError: a URI of another scheme, an S3 URI without a bucket, an endpoint that is not http(s)://.
    """
    if isinstance(where, Location):
        return where
    text = os.fspath(where)
    if "://" not in text:
        path = Path(text).expanduser().absolute()
        return Location(pafs.LocalFileSystem(), path.as_posix(), os.fspath(path))
    if text.startswith("file://"):
        return location(urllib.parse.urlsplit(text).path)
    m = _S3_URI.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r}: a dataset is a folder or s3://bucket/prefix (no other scheme, no ?query)")
    bucket, prefix = m.group(1), (m.group(2) or "").strip("/")
    if endpoint is not None and not re.fullmatch(r"https?://[^/?#\s]+/?", endpoint):
        raise ValueError(f"--endpoint {endpoint!r}: give http(s)://host:port of the S3-compatible store")
    uri = f"s3://{bucket}" + (f"/{prefix}" if prefix else "")
    query = f"?endpoint_override={urllib.parse.quote(endpoint.rstrip('/'), safe='')}" if endpoint else ""
    used = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    probe = Location(None, f"{bucket}/{prefix}".rstrip("/"), uri, used)  # type: ignore[arg-type]  # messages only
    try:
        fs, path = pafs.FileSystem.from_uri(uri + query)
    except (OSError, pa.ArrowException) as exc:  # resolving the bucket's region asks the store
        raise probe.error(exc, "cannot open it") from exc
    return Location(fs, path.rstrip("/"), uri, used)


def describe_error(loc: Location, exc: BaseException) -> str:
    """What a filesystem error means for ``loc``, in one line that says what to do."""
    text = " ".join(str(exc).split())
    short = text if len(text) <= 300 else text[:297] + "..."
    at = loc.where or "this computer"
    if loc.local:
        return short
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return f"bucket {loc.bucket!r} does not exist on {at}: create it, or correct the URI"
    if any(k in text for k in ("ACCESS_DENIED", "AccessDenied", "SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY_ID",
                               "InvalidAccessKeyId", "HTTP status 403", "MISSING_AUTHENTICATION_TOKEN")) \
            and "NETWORK_CONNECTION" not in text:
        return (f"{at} refused these credentials for bucket {loc.bucket!r} ({short}): check AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and that the bucket's policy lets them list, read and write")
    if "NETWORK_CONNECTION" in text or "curlCode" in text or "Could not connect" in text:
        return (f"cannot reach {at} ({short}): check the endpoint (--endpoint or AWS_ENDPOINT_URL) and that the "
                f"store is up")
    return f"{at}: {short}"


def _info(loc: Location, path: str) -> pafs.FileInfo:
    return loc.fs.get_file_info(path)


def _listing(loc: Location, path: str, recursive: bool) -> list[pafs.FileInfo]:
    """What is under ``path`` ([] when nothing is). OSError: the store refused or cannot be reached."""
    return loc.fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))


def is_dataset(where: str | os.PathLike[str] | Location, endpoint: str | None = None) -> bool:
    """Whether ``where`` is laid out as this dataset (``device=…`` folders in it). OSError when the store refuses."""
    loc = location(where, endpoint)
    if _info(loc, loc.path).type != pafs.FileType.Directory:
        return False
    return any(i.type == pafs.FileType.Directory and i.base_name.startswith("device=")
               for i in _listing(loc, loc.path, recursive=False))


def _check_readable(loc: Location) -> None:
    """DataFormatError (naming the path, the store and the fix) when ``loc`` cannot hold a dataset: a local folder
    that does not exist, a file, a bucket that does not exist, refused credentials, a store out of reach. An empty
    folder or prefix passes: a dataset no collector has written to yet."""
    try:
        info = _info(loc, loc.path)
        if info.type == pafs.FileType.NotFound:
            if loc.local:
                raise DataFormatError(loc.uri, message="no such dataset folder")
            _listing(loc, loc.path, recursive=False)  # proves the credentials (a missing key reads as not found)
            if _info(loc, loc.bucket).type == pafs.FileType.NotFound:
                raise DataFormatError(loc.uri, message=f"bucket {loc.bucket!r} does not exist on {loc.where}: "
                                      "create it, or correct the URI")
        elif info.type != pafs.FileType.Directory:
            raise DataFormatError(loc.uri, message="is a file, not a dataset folder")
    except OSError as exc:
        raise loc.error(exc, "cannot read it") from exc


def require_dataset(where: str | os.PathLike[str] | Location, endpoint: str | None = None) -> Location:
    """``where``'s Location, checked to be a dataset: DataFormatError naming the path and what is wrong (nothing
    there, a file, a folder without ``device=…`` folders, a bucket that does not exist, refused credentials, a
    store out of reach)."""
    loc = location(where, endpoint)
    _check_readable(loc)
    try:
        if not is_dataset(loc):
            empty = not _listing(loc, loc.path, recursive=False)
            what = ("it is empty" if loc.local else "nothing is stored under it") if empty else \
                "no device=… folders in it"
            raise DataFormatError(loc.uri, message=f"is not a dataset: {what}{' on ' + loc.where if loc.where else ''}"
                                  " (trainer collect --out writes one)")
    except OSError as exc:
        raise loc.error(exc, "cannot read it") from exc
    return loc


@dataclass(frozen=True)
class Part:
    """One data file of the dataset: its path in the filesystem, its partition and its size in bytes."""

    path: str
    device: str
    date: str
    size: int


def list_parts(loc: Location, devices: Sequence[str] = ()) -> list[Part]:
    """Every data file (``device=…/date=…/*.parquet``; a name starting with ``.`` or ``_`` is not data: temp files,
    the quarantine), of ``devices`` only when given (their folders alone are listed), sorted by path."""
    roots = [loc.join(f"device={urllib.parse.quote(d, safe='')}") for d in devices] or [loc.path]
    base = loc.path.rstrip("/") + "/"
    out: list[Part] = []
    for root in roots:
        for info in _listing(loc, root, recursive=True):
            if info.type != pafs.FileType.File or not info.path.startswith(base):
                continue
            rel = info.path[len(base):].split("/")
            if (len(rel) != 3 or not rel[0].startswith("device=") or not rel[1].startswith("date=")
                    or not rel[2].endswith(".parquet") or any(c[:1] in "._" for c in rel)):
                continue
            out.append(Part(info.path, urllib.parse.unquote(rel[0][7:]), rel[1][5:], int(info.size or 0)))
    return sorted(out, key=lambda p: p.path)


def put(loc: Location, path: str, data: bytes | pa.Buffer) -> None:
    """Write ``data`` to ``path`` of ``loc`` so that it becomes visible whole or not at all, and is durable once
    this returns: on a disk through a hidden temp file in the same folder (``.<name>.tmp``), fsynced, renamed and
    the folder fsynced; on an object store by one upload (nothing is visible until it completes). OSError when
    that fails (nothing partial is visible; a disk's temp file is removed)."""
    if not loc.local:
        out = loc.fs.open_output_stream(path)
        out.write(data)
        out.close()  # completes the upload: the object appears whole, or this raises and it does not
        return
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(memoryview(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

    Not thread-safe: one writer per thread. Several writers (processes, machines on a shared folder or bucket)
    may write into one dataset at the same time: their file names never collide. ``open`` before use.

    Args:
        root: the dataset: a folder, ``s3://bucket/prefix`` or a ``Location`` (see ``location``).
        writer_id: part of every file name (default: a random 8 hex digits); stable per collector, so that
            ``open`` can remove the temp files a crash of this writer left on a disk.
    """

    def __init__(self, root: str | os.PathLike[str] | Location, writer_id: str | None = None) -> None:
        self.root = root
        self.loc: Location | None = root if isinstance(root, Location) else None
        self.writer_id = writer_id or uuid.uuid4().hex[:8]
        self._known: OrderedDict[tuple[str, str], dict[str, str | None]] = OrderedDict()
        self._buffer: list[tuple[UploadRecord, datetime, str | None]] = []
        self._buffered: dict[tuple[str, str], str | None] = {}
        self._buffered_bytes = 0
        self._n = 0
        self.stats = WriteStats()
        self.removed_temp = 0  # temp files of this writer left by a crash, removed by ``open``

    def open(self) -> DatasetWriter:
        """Check the dataset can be written (a folder is created; a bucket must exist and take these credentials);
        on a disk, remove this writer's temp files left by a crash (``.part-<writer_id>-…tmp``).

        Raises:
            DataFormatError: the bucket does not exist, the store refuses the credentials or cannot be reached,
                the path is a file; each names the dataset and the store.
        """
        loc = self.loc = location(self.root)
        try:
            info = _info(loc, loc.path)
            if info.type == pafs.FileType.File:
                raise DataFormatError(loc.uri, message="is a file, not a dataset folder")
            if loc.local:
                os.makedirs(loc.path, exist_ok=True)
                prefix = f".part-{self.writer_id}-"
                for tmp in _listing(loc, loc.path, recursive=True):
                    if tmp.base_name.startswith(prefix) and tmp.base_name.endswith(".parquet.tmp"):
                        Path(tmp.path).unlink(missing_ok=True)
                        self.removed_temp += 1
            else:  # listing the prefix proves the bucket, the credentials and the endpoint
                _listing(loc, loc.path, recursive=False)
                if _info(loc, loc.bucket).type == pafs.FileType.NotFound:
                    raise DataFormatError(loc.uri, message=f"bucket {loc.bucket!r} does not exist on {loc.where}: "
                                          "create it, or correct the URI")
        except OSError as exc:
            raise loc.error(exc, "cannot write the dataset") from exc
        if self.removed_temp:
            log.warning("%s: removed %d temp file(s) of writer %s left by a crash", loc.uri, self.removed_temp,
                        self.writer_id)
        return self

    @property
    def pending(self) -> int:
        """Records buffered, not yet in a visible file."""
        return len(self._buffer)

    @property
    def pending_bytes(self) -> int:
        return self._buffered_bytes

    def _location(self) -> Location:
        """Where it writes (``open`` checks it; a writer used without ``open`` finds it here, unchecked)."""
        if self.loc is None:
            self.loc = location(self.root)
        return self.loc

    def _ids(self, device: str, date: str) -> dict[str, str | None]:
        """``{id: digest}`` of a partition (read once, then kept up to date; least recently used evicted)."""
        key = (device, date)
        known = self._known.get(key)
        if known is None:
            known = partition_ids(self._location(), device, date)
            self._known[key] = known
            while len(self._known) > KNOWN_PARTITIONS:
                self._known.popitem(last=False)
        else:
            self._known.move_to_end(key)
        return known

    def add(self, record: UploadRecord, received: datetime | None = None, digest: str | None = None) -> bool:
        """Buffer ``record``; False (counted in ``duplicates``) when its (device, id) is already there with the same
        content (or a digest is not known on one side). IdConflict when it is there with other content.
        OSError when the partition's ids cannot be read (the store is away): nothing buffered, try again."""
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

    def flush(self) -> tuple[list[Path | str], list[tuple[UploadRecord, Exception]]]:
        """Write the buffered records (one file per device and date, each atomic).

        Returns (new files: a Path on a disk, an ``s3://`` URI in a bucket; records that cannot be stored, with the
        error: a partition whose write failed in a way retrying cannot fix). Raises OSError for a transient
        failure (disk full, I/O error, permissions, an object store that refuses or cannot be reached): those
        records stay buffered, nothing partial is visible.
        """
        groups: dict[tuple[str, str], list[tuple[UploadRecord, datetime, str | None]]] = {}
        for row in self._buffer:
            rec = row[0]
            groups.setdefault((rec.device, rec.time_end_utc().date().isoformat()), []).append(row)
        written: list[Path | str] = []
        failed: list[tuple[UploadRecord, Exception]] = []
        for (device, date), rows in sorted(groups.items()):
            try:
                table = to_table([r for r, _, _ in rows], [t for _, t, _ in rows], [d for _, _, d in rows])
                path, size = write_part(self._location(), device, date, table, self.writer_id, self._n + 1)
                self._n += 1
            except OSError as exc:
                if exc.errno in TRANSIENT_ERRNOS or exc.errno is None:  # no errno: the store (refused, away)
                    raise
                failed += [(r, exc) for r, _, _ in rows]
            except (pa.ArrowException, ValueError, OverflowError, TypeError) as exc:
                failed += [(r, exc) for r, _, _ in rows]
            else:
                written.append(self.loc.name_of(path))
                self.stats.files += 1
                self.stats.bytes += size
                self.stats.written += len(rows)
                if (device, date) in self._known:
                    self._known[(device, date)].update({r.id: d for r, _, d in rows})
            done = {(r.device, r.id) for r, _, _ in rows}
            self._buffer = [x for x in self._buffer if (x[0].device, x[0].id) not in done]  # the rest stays
            for k in done:
                self._buffered.pop(k, None)
            self._buffered_bytes = sum(r.samples.nbytes for r, _, _ in self._buffer)
        return written, failed


def write_part(loc: Location, device: str, date: str, table: pa.Table, writer_id: str, n: int) -> tuple[str, int]:
    """Write ``table`` (``FILE_SCHEMA``) as a new file of partition (device, date), atomically (``put``):
    ``part-<writer_id>-<n>-<random>.parquet``. Returns (its path, its size in bytes)."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd", use_dictionary=list(_DICTIONARY),
                   column_encoding={"samples": "BYTE_STREAM_SPLIT"})
    data = buf.getvalue()
    path = loc.join(partition_name(device, date), f"part-{writer_id}-{n:06d}-{uuid.uuid4().hex[:6]}.parquet")
    put(loc, path, data)
    log.debug("wrote %s (%d windows)", path, table.num_rows)
    return path, data.size


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
        # schema 3 fields, read with getattr: records of an UploadRecord without them store nulls
        "group": [getattr(r, "group", None) for r in records],
        "answer": [_answer(getattr(r, "answer", None)) for r in records],
    }
    arrays = [c if isinstance(c, pa.Array) else pa.array(c, FILE_SCHEMA.field(name).type)
              for name, c in cols.items()]
    return pa.Table.from_arrays(arrays, schema=FILE_SCHEMA)


def _answer(value: object) -> dict | None:
    """A record's ``answer`` as the ``answer`` column's struct (kind, by, time), or None."""
    if not isinstance(value, dict):
        return None
    return {k: None if value.get(k) is None else str(value.get(k)) for k in ("kind", "by", "time")}


def existing_ids(root: str | os.PathLike[str] | Location) -> set[str]:
    """Every id in the dataset (reads the ``id`` column only; unreadable files are skipped and logged)."""
    out: set[str] = set()
    for table in _fragments(location(root), None, ["id"]):
        out.update(table.column("id").to_pylist())
    return out


def unreadable(exc: BaseException) -> bool:
    """Whether ``exc`` (raised reading one file) says the file is not Parquet or is cut short (readers skip it,
    logged), not that the disk or the store failed (an errno, an AWS error: the caller retries or fails)."""
    if not isinstance(exc, pa.ArrowException):
        return False
    return not (isinstance(exc, OSError) and (exc.errno is not None or "AWS Error" in str(exc)))


def partition_ids(root: Path | Location, device: str, date: str) -> dict[str, str | None]:
    """``{id: digest}`` of one partition (its files only; unreadable files are skipped and logged).

    OSError when the partition cannot be listed or a file read (the store refused or cannot be reached).
    """
    loc = location(root)
    out: dict[str, str | None] = {}
    for part in list_parts_of(loc, device, date):
        try:
            pf = _parquet_file(loc, part)
            t = pf.read(columns=[c for c in ("id", "digest") if c in pf.schema_arrow.names])
        except (pa.ArrowException, OSError) as exc:
            if not unreadable(exc):
                raise
            log.error("%s: unreadable part skipped: %s", loc.name_of(part.path), exc)
            continue
        digests = t.column("digest").to_pylist() if "digest" in t.column_names else [None] * t.num_rows
        for i, d in zip(t.column("id").to_pylist(), digests, strict=True):
            out.setdefault(i, d)
    return out


def list_parts_of(loc: Location, device: str, date: str) -> list[Part]:
    """The data files of one partition (its folder alone is listed)."""
    folder = loc.join(partition_name(device, date))
    return [Part(i.path, device, date, int(i.size or 0)) for i in _listing(loc, folder, recursive=False)
            if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and i.base_name[:1] not in "._"]


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
        groups: keep windows of sensors of these groups (their kind of machine; empty: all, with or without one).
    """

    devices: tuple[str, ...] = ()
    start: str | None = None
    end: str | None = None
    kinds: tuple[str, ...] = ()
    healthy_only: bool = False
    model_version: str | None = None
    gateways: tuple[str, ...] = field(default=())
    groups: tuple[str, ...] = field(default=())

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
        if self.groups:
            parts.append(ds.field("group").isin(list(self.groups)))
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


def _parts_dataset(loc: Location, parts: Sequence[Part], schema: pa.Schema = SCHEMA) -> ds.FileSystemDataset:
    """``parts`` as one pyarrow dataset of ``schema`` (no listing, no stat: the partition columns come from each
    part's folder; a column a file lacks reads as nulls)."""
    return ds.FileSystemDataset.from_paths(
        [p.path for p in parts], schema=schema, format=ds.ParquetFileFormat(), filesystem=loc.fs,
        partitions=[(ds.field("device") == p.device) & (ds.field("date") == p.date) for p in parts])


def _fragments(loc: Location, expr: ds.Expression | None, columns: list[str] | None,
               devices: Sequence[str] = ()) -> Iterable[pa.Table]:
    """Each data file's matching rows (with the partition columns); a file that cannot be read is
    skipped with an error in the log, never a failed read of the whole dataset.

    Raises:
        DataFormatError: no such folder or bucket, or the store refused or cannot be reached (naming it).
    """
    _check_readable(loc)
    try:
        dataset = _parts_dataset(loc, list_parts(loc, devices))
        for frag in dataset.get_fragments(filter=expr):
            try:
                table = frag.to_table(schema=SCHEMA, columns=columns, filter=expr)
            except (pa.ArrowException, OSError) as exc:
                if not unreadable(exc):
                    raise
                log.error("%s: unreadable part skipped: %s", loc.name_of(frag.path), exc)
                continue
            if table.num_rows:
                yield table
    except OSError as exc:
        raise loc.error(exc, "cannot read it") from exc


def read_table(root: str | os.PathLike[str] | Location, flt: DataFilter | None = None,
               columns: Sequence[str] | None = None) -> pa.Table:
    """The matching windows, one row per (device, id) (the first one read), in time order (``time_end``, ``id``).

    ``root``: a folder, ``s3://bucket/prefix`` or a ``Location``. ``columns``: a subset of ``SCHEMA`` (``device``,
    ``id`` and ``time_end`` are always read).
    """
    flt = flt or DataFilter()
    cols = None if columns is None else list(dict.fromkeys(["device", "id", "time_end", *columns]))
    tables = list(_fragments(location(root), flt.expression(), cols, flt.devices))
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


def read_windows(root: str | os.PathLike[str] | Location, flt: DataFilter | None = None) -> Windows:
    """The matching windows with their samples as (n_rows, C) float32 arrays (deduplicated, time order)."""
    table = read_table(root, flt)
    samples = []
    lists = table.column("samples")
    n_rows, channels = table.column("n_rows").to_pylist(), table.column("channels").to_pylist()
    for i in range(table.num_rows):
        flat = lists[i].values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        samples.append(flat.reshape(n_rows[i], len(channels[i])))
    return Windows(table.drop_columns(["samples"]), samples)


def load(root: str | os.PathLike[str] | Location, flt: DataFilter | None = None,
         channels: Sequence[str | int] | None = None) -> Recording:
    """The matching windows as a ``Recording``: one ``Segment`` per window, in time order.

    Raises:
        DataFormatError: no window matches, or the windows disagree on channels, sample rate or units.
    """
    flt = flt or DataFilter()
    root = location(root)
    w = read_windows(root, flt)
    if not len(w):
        raise DataFormatError(root.uri, message=f"no windows match {flt}")
    chans, rates, units = (w.table.column(c).to_pylist() for c in ("channels", "sample_rate", "units"))
    for i in range(len(w)):
        for what, a, b in (("channels", chans[i], chans[0]), ("sample_rate", rates[i], rates[0]),
                           ("units", units[i], units[0])):
            if a != b:
                raise DataFormatError(root.uri, message=f"window {w.table.column('id')[i]} has {what} {a!r}, earlier "
                                      f"windows {b!r}: filter by device or model version")
    starts = w.column("time_start").astype("datetime64[ms]")
    segments = [Segment(s, starts[i]) for i, s in enumerate(w.samples)]
    rec = Recording(tuple(segments), tuple(chans[0]), float(rates[0]), units[0], root.uri, "dataset")
    log.info("%s: %d windows (%s)", root, len(segments), flt)
    return rec.select_channels(list(channels)) if channels else rec


def parse_select(items: Sequence[str], *, start: str | None = None, end: str | None = None) -> DataFilter:
    """``("device=pump-1", "kind=normal", ...)`` -> DataFilter (``trainer train --select``).

    Keys: ``device``, ``gateway``, ``group``, ``kind`` (repeatable or comma-separated), ``model_version``, ``start``,
    ``end``, ``healthy`` (true/false; default true: training takes healthy windows only). ``start``/``end``
    default to ``trainer train --start/--end``.
    """
    multi: dict[str, list[str]] = {"device": [], "gateway": [], "group": [], "kind": []}
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
    return DataFilter(devices=tuple(multi["device"]), gateways=tuple(multi["gateway"]), groups=tuple(multi["group"]),
                      kinds=tuple(multi["kind"]),
                      model_version=single["model_version"], start=single["start"], end=single["end"],
                      healthy_only=healthy == "true")


# ------------------------------------------------------------------------------------------- quarantine
QUARANTINE_DIR = "_quarantine"  # readers skip folders that start with "_" (pyarrow, DuckDB globs of *.parquet)


class Quarantine:
    """Uploads a collector could not store, kept for the operator instead of being redelivered forever.

    ``DATASET/_quarantine/date=<UTC date>/<writer_id>-<n>-<random>.jsonl``, one file per flush (objects cannot be
    appended to), one JSON object per upload::

        {"received": ISO-8601, "topic": str, "code": str, "reason": str, "id": str | null, "bytes": int,
         "sha256": hex, "payload_b64": str | null}

    ``code`` says why (``invalid``, ``foreign_device``, ``bad_topic``, ``clock_ahead``, ``id_conflict``,
    ``unstorable``); the payload is kept while the quarantine holds less than ``max_bytes`` (all writers
    together), else only its size and digest. Written atomically (``put``) on ``flush``, before the uploads are
    acknowledged. Not thread-safe: one per collecting thread.
    """

    def __init__(self, root: str | os.PathLike[str] | Location, writer_id: str, max_bytes: int = 1 << 30) -> None:
        self.root = root
        self.writer_id = writer_id
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.by_code: dict[str, int] = {}
        self._lines: list[tuple[str, bytes]] = []  # (date, line)
        self._n = 0
        self.loc: Location | None = None

    def open(self) -> Quarantine:
        """Measure what the quarantine holds already (the payload budget is shared by every writer).
        DataFormatError (naming the store) when it cannot be listed."""
        self.loc = location(self.root)
        try:
            listing = _listing(self.loc, self.loc.join(QUARANTINE_DIR), recursive=True)
        except OSError as exc:
            raise self.loc.error(exc, "cannot read its quarantine") from exc
        self.bytes = sum(int(i.size or 0) for i in listing if i.type == pafs.FileType.File
                         and i.base_name.endswith(".jsonl"))
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
        """Write the buffered uploads, one new file per date, atomically. OSError (kept buffered) when that fails."""
        by_date: dict[str, list[bytes]] = {}
        for date, line in self._lines:
            by_date.setdefault(date, []).append(line)
        for date, lines in sorted(by_date.items()):
            self._n += 1
            name = f"{self.writer_id}-{self._n:06d}-{uuid.uuid4().hex[:6]}.jsonl"
            put(self.loc, self.loc.join(QUARANTINE_DIR, f"date={date}", name), b"".join(lines))
            self._lines = [x for x in self._lines if x[0] != date]


# ------------------------------------------------------------------------------------------- fleet queries
#: What the summary reads of each file: small columns only, never the samples.
_SUMMARY_COLUMNS = ("id", "kind", "alert_ref", "time_end", "answer")
#: Files read at once: the store's latency hidden behind parallel requests (pyarrow releases the GIL).
SUMMARY_THREADS = 8


@dataclass
class SummaryRow:
    """What the dataset holds for one device on one day (UTC, by each window's last sample).

    ``windows``: distinct windows (a window stored twice counts once); ``kinds``: of them, by kind (normal,
    alert, calibration, drift: a drift window is a drift notice, kept while the gateway reports drift);
    ``alerts``: distinct alerts among the alert windows (by ``alert_ref``; a window without one is an alert of its
    own); ``answers``: the answered alerts among them by the technician's answer (``ack``, ``confirmed``,
    ``false_alarm``, ``silence``: an alert's answer is the latest its windows carry, upload schema 3); ``files``,
    ``bytes``: the partition's data files and their size on the store.
    """

    device: str
    date: str
    windows: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    alerts: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0

    def as_dict(self) -> dict:
        return {"device": self.device, "date": self.date, "windows": self.windows,
                "kinds": {k: self.kinds.get(k, 0) for k in KINDS}, "alerts": self.alerts,
                "drift_notices": self.kinds.get("drift", 0), "answers": dict(self.answers), "files": self.files,
                "bytes": self.bytes}


@dataclass
class Summary:
    """``summarize``'s result: one row per (device, date) in that order, and what reading it cost."""

    rows: list[SummaryRow]
    files: int  # data files read
    unreadable: int  # of them, skipped (logged)
    seconds: float  # listing and reading

    @property
    def windows(self) -> int:
        return sum(r.windows for r in self.rows)

    @property
    def has_answers(self) -> bool:
        return any(r.answers for r in self.rows)


def summarize(where: str | os.PathLike[str] | Location, devices: Sequence[str] = (), start: str | None = None,
              end: str | None = None, threads: int = SUMMARY_THREADS) -> Summary:
    """Per device and day: windows by kind, alerts, technicians' answers, drift notices, files and bytes.

    One listing of the dataset (the files' sizes come with it); then each partition (device, day) is counted on
    one of ``threads`` threads: its files' small columns read (``id``, ``kind``, ``alert_ref``, ``time_end``,
    ``answer``; never the samples; a column a file of an earlier release lacks reads as nulls), copies of a window
    counted once, kinds, alerts and answers counted. A file that is not Parquet is skipped (logged, counted).
    ``devices`` (only their folders are listed) and ``start``/``end`` (times, like ``DataFilter``) narrow it.

    Raises:
        DataFormatError: not a dataset, or the store refused or cannot be reached (naming it).
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    loc = require_dataset(where)
    t_start = None if start is None else pa.scalar(_ts(start), TIME)
    t_end = None if end is None else pa.scalar(_ts(end), TIME)
    first_day = None if start is None else _ts(start).date().isoformat()
    last_day = None if end is None else _ts(end).date().isoformat()
    try:
        by_partition: dict[tuple[str, str], list[Part]] = {}
        for p in list_parts(loc, devices):
            if (first_day is None or p.date >= first_day) and (last_day is None or p.date <= last_day):
                by_partition.setdefault((p.device, p.date), []).append(p)
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="summary") as pool:
            counted = list(pool.map(lambda item: _count_partition(loc, *item[0], item[1], t_start, t_end),
                                    sorted(by_partition.items())))
    except OSError as exc:
        raise loc.error(exc, "cannot read it") from exc
    rows = [row for row, _ in counted]
    return Summary(rows, sum(len(v) for v in by_partition.values()), sum(n for _, n in counted),
                   time.perf_counter() - t0)


#: A data file up to this size is read whole, in one request (its footer and small columns are most of it); a
#: larger one by ranges (footer, then the columns asked for). On SeaweedFS here, files of 21 kB: 575 files/s read
#: whole against 283 by ranges (a HEAD and two ranged GETs), 8 threads.
READ_WHOLE_BYTES = 2 << 20


def _parquet_file(loc: Location, part: Part) -> pq.ParquetFile:
    if part.size <= READ_WHOLE_BYTES:
        with loc.fs.open_input_stream(part.path) as f:
            return pq.ParquetFile(pa.BufferReader(f.read_buffer()))
    return pq.ParquetFile(loc.fs.open_input_file(part.path))


def _count_partition(loc: Location, device: str, date: str, parts: list[Part], t_start: pa.Scalar | None,
                     t_end: pa.Scalar | None) -> tuple[SummaryRow, int]:
    """One partition's ``SummaryRow`` and how many of its files could not be read. OSError: the store failed."""
    row = SummaryRow(device, date, files=len(parts), bytes=sum(p.size for p in parts))
    wanted = [c for c in _SUMMARY_COLUMNS if c != "time_end" or t_start is not None or t_end is not None]
    tables, bad = [], 0
    for part in parts:
        try:
            pf = _parquet_file(loc, part)
            have = pf.schema_arrow.names
            t = pf.read(columns=[c for c in wanted if c in have], use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            if not unreadable(exc):
                raise
            log.error("%s: unreadable part skipped: %s", loc.name_of(part.path), exc)
            bad += 1
            continue
        for c in wanted:  # a file of an earlier release: the column is null
            if c not in t.column_names:
                t = t.append_column(FILE_SCHEMA.field(c), pa.nulls(t.num_rows, FILE_SCHEMA.field(c).type))
        if t_start is not None:
            t = t.filter(pc.greater_equal(t.column("time_end"), t_start))
        if t_end is not None:
            t = t.filter(pc.less(t.column("time_end"), t_end))
        tables.append(t.select(wanted))
    if not tables:
        return row, bad
    t = pa.concat_tables(tables)
    if pc.count_distinct(t.column("id")).as_py() < t.num_rows:  # copies of a window (a crash, two collectors)
        t = t.take(t.append_column("_row", pa.array(np.arange(t.num_rows))).group_by(
            "id", use_threads=False).aggregate([("_row", "min")]).column("_row_min"))
    kinds = pc.value_counts(t.column("kind"))
    row.kinds = {k.as_py(): n.as_py() for k, n in zip(kinds.field("values"), kinds.field("counts"), strict=True)}
    row.windows = t.num_rows
    alert = t.filter(pc.equal(t.column("kind"), "alert"))
    if alert.num_rows:
        row.alerts = pc.count_distinct(pc.coalesce(alert.column("alert_ref"), alert.column("id"))).as_py()
    answer = t.column("answer")
    if answer.null_count < t.num_rows:  # an alert's answer: the latest its windows carry
        answered = t.filter(pc.is_valid(answer))
        latest: dict[str, tuple[str, str]] = {}
        for ref, rid, a in zip(answered.column("alert_ref").to_pylist(), answered.column("id").to_pylist(),
                               answered.column("answer").to_pylist(), strict=True):
            key, when = ref or rid, a.get("time") or ""
            if key not in latest or when > latest[key][0]:
                latest[key] = (when, a.get("kind"))
        for _, kind in latest.values():
            kind = kind if kind in RECORD_KINDS else "invalid"  # forged (the collector refuses such records)
            row.answers[kind] = row.answers.get(kind, 0) + 1
    return row, bad


# ------------------------------------------------------------------------------------------- compaction
#: Most bytes of data files merged into one compacted file (a larger partition gets several).
COMPACT_MAX_BYTES = 256 << 20


@dataclass
class CompactStats:
    """What ``compact`` did."""

    partitions: int = 0  # partitions whose files were merged
    files_before: int = 0  # data files merged (deleted once their merge was durable)
    files_after: int = 0  # files written
    windows: int = 0  # rows written
    copies: int = 0  # copies of a window dropped
    unreadable: int = 0  # files that are not Parquet: left where they are (logged)
    seconds: float = 0.0


def compact(where: str | os.PathLike[str] | Location, devices: Sequence[str] = (), before: str | None = None,
            min_files: int = 2, writer_id: str = "compact", threads: int = 4) -> CompactStats:
    """Merge each partition's data files into one (a larger partition into files of at most
    ``COMPACT_MAX_BYTES``), copies of a window kept once, rows in time order; then delete the files merged.

    The cost of reading the dataset is per file (``trainer dataset summary``: about a millisecond per local
    file, a few per object on S3), and collectors write one file per device, day and flush: compaction keeps a
    day to one file per device. Safe while collectors write: a merged file has a new name, only files that were
    read are deleted, and a reader that comes between the write and the deletes sees each window twice and keeps
    one (as after a crash there; the next run merges again). Files that are not Parquet are left (logged).

    Args:
        devices: only these devices (default: all).
        before: only days before this date (``YYYY-MM-DD``; default: today, UTC: today's files are still growing).
        min_files: leave a partition with fewer files than this.
        threads: partitions merged at once.

    Raises:
        DataFormatError: not a dataset, or the store refused or cannot be reached (naming it); files merged
            before that are complete (nothing is deleted before its merge is durable).
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    loc = require_dataset(where)
    before = before or datetime.now(UTC).date().isoformat()
    stats = CompactStats()
    try:
        by_partition: dict[tuple[str, str], list[Part]] = {}
        for p in list_parts(loc, devices):
            if p.date < before:
                by_partition.setdefault((p.device, p.date), []).append(p)
        todo = [(k, v) for k, v in sorted(by_partition.items()) if len(v) >= min_files]
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="compact") as pool:
            for done in pool.map(lambda item: _compact_partition(loc, *item[0], item[1], writer_id), todo):
                stats.partitions += done.partitions
                stats.files_before += done.files_before
                stats.files_after += done.files_after
                stats.windows += done.windows
                stats.copies += done.copies
                stats.unreadable += done.unreadable
    except OSError as exc:
        raise loc.error(exc, "cannot compact it") from exc
    stats.seconds = time.perf_counter() - t0
    log.info("%s: %d partitions compacted, %d files -> %d, %d windows (%d copies dropped) in %.1f s", loc.uri,
             stats.partitions, stats.files_before, stats.files_after, stats.windows, stats.copies, stats.seconds)
    return stats


def _compact_partition(loc: Location, device: str, date: str, parts: list[Part], writer_id: str) -> CompactStats:
    """Merge one partition's files (in groups of at most ``COMPACT_MAX_BYTES``); what it did."""
    stats = CompactStats()
    groups: list[list[Part]] = [[]]
    for part in parts:
        if groups[-1] and sum(p.size for p in groups[-1]) + part.size > COMPACT_MAX_BYTES:
            groups.append([])
        groups[-1].append(part)
    for n, group in enumerate(groups, 1):
        if len(group) < 2:
            continue
        tables, read = [], []
        for part in group:
            try:
                tables.append(_parquet_file(loc, part).read())
            except (pa.ArrowException, OSError) as exc:
                if not unreadable(exc):
                    raise
                log.error("%s: unreadable part left as it is: %s", loc.name_of(part.path), exc)
                stats.unreadable += 1
                continue
            read.append(part)
        if len(read) < 2:
            continue
        table = _with_file_schema(pa.concat_tables(tables, promote_options="permissive"))
        rows = table.num_rows
        table = table.take(table.append_column("_row", pa.array(np.arange(rows))).group_by(
            "id", use_threads=False).aggregate([("_row", "min")]).column("_row_min"))
        table = table.take(pc.sort_indices(table, [("time_end", "ascending"), ("id", "ascending")]))
        write_part(loc, device, date, table, writer_id, n)
        for part in read:  # the merge is durable: the files it holds can go
            loc.fs.delete_file(part.path)
        stats.files_before += len(read)
        stats.files_after += 1
        stats.windows += table.num_rows
        stats.copies += rows - table.num_rows
        stats.partitions = 1
    return stats


def _with_file_schema(table: pa.Table) -> pa.Table:
    """``table`` with every column of ``FILE_SCHEMA`` first, in its order and types (those a file of an earlier
    release lacks as nulls), then any column a later release added, kept."""
    cols = {f.name: (table.column(f.name).cast(f.type) if f.name in table.column_names
                     else pa.chunked_array([pa.nulls(table.num_rows, f.type)], f.type)) for f in FILE_SCHEMA}
    extra = [name for name in table.column_names if name not in cols]
    return pa.table(cols | {name: table.column(name) for name in extra})
