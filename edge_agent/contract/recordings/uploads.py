"""Gateway upload records (``edge_agent.contract.upload_record``) as a ``Recording``.

Input: one ``.jsonl`` file (one record per line, as the collector writes them), one ``.json``
file (one record), or a folder of such files. Each record is one scored window and becomes one
``Segment``; segments are ordered by ``time_end`` then ``seq_end``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.contract.errors import UploadError
from edge_agent.contract.upload_record import UploadRecord, decode_record

from .errors import DataFormatError
from .recording import Recording, Segment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Located:
    record: UploadRecord
    path: Path
    line: int | None


def upload_files(path: str | os.PathLike[str]) -> list[Path]:
    """``.jsonl``/``.json`` files of a folder (sorted), or the one file given."""
    p = Path(path)
    if p.is_file():
        return [p]
    files = sorted(e for e in p.iterdir() if e.suffix in (".jsonl", ".json") and not e.name.startswith("."))
    if not files:
        raise DataFormatError(p, message="no .jsonl or .json upload files in folder")
    return files


def read_records(path: str | os.PathLike[str], *, skip_invalid: bool = False) -> tuple[list[_Located], int]:
    """Decode every record under ``path``.

    Returns:
        (records with their file and line, number of invalid records skipped).

    Raises:
        DataFormatError: an invalid record (``path:line: reason``) unless ``skip_invalid``.
    """
    out: list[_Located] = []
    invalid = 0
    for f in upload_files(path):
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataFormatError(f, message=f"cannot read upload file ({exc})") from exc
        if f.suffix == ".json":
            items = [(None, text)] if text.strip() else []
        else:
            items = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]
        if not items:
            raise DataFormatError(f, message="empty file")
        for line, payload in items:
            try:
                out.append(_Located(decode_record(payload), f, line))
            except UploadError as exc:
                if not skip_invalid:
                    raise DataFormatError(f, line, None, str(exc)) from exc
                invalid += 1
                log.warning("%s:%s: skipped invalid record: %s", f, line, exc)
    return out, invalid


def load_uploads(
    path: str | os.PathLike[str],
    *,
    healthy_only: bool = False,
    device: str | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
) -> Recording:
    """Load upload records, one ``Segment`` per record.

    Args:
        healthy_only: keep only records with ``score < threshold`` and ``state == "normal"``.
        device: keep only this device's records.
        skip_invalid: count, log and skip invalid records instead of raising.
        limit: keep at most this many records (after filtering, in time order).

    Returns:
        Segments of (n, C) float32 with ``start`` = ``time_end`` - (n-1)/sample_rate.

    Raises:
        DataFormatError: an invalid record, no records at all, or records that disagree on
            channels, sample rate or units.
    """
    located, invalid = read_records(path, skip_invalid=skip_invalid)
    if not located:
        raise DataFormatError(path, message=f"no valid upload records ({invalid} invalid)")
    unique: dict[str, _Located] = {}
    for x in located:  # QoS 1 is at-least-once: a record can be collected twice (same id)
        unique.setdefault(x.record.id, x)
    duplicates = len(located) - len(unique)
    kept = [x for x in unique.values() if device is None or x.record.device == device]
    n_dev = len(kept)
    if healthy_only:
        kept = [x for x in kept if x.record.healthy]
    log.info("%s: %d records, %d invalid skipped, %d duplicates dropped, %d of another device, %d not healthy dropped",
             path, len(located), invalid, duplicates, len(unique) - n_dev, n_dev - len(kept))
    ref = kept[0].record if kept else located[0].record
    for x in kept:
        r = x.record
        for what, a, b in (("channels", r.channels, ref.channels),
                           ("sample_rate", r.sample_rate, ref.sample_rate),
                           ("units", r.units, ref.units)):
            if a != b:
                msg = f"record {what} {a!r} differ from earlier records' {b!r}"
                raise DataFormatError(x.path, x.line, None, msg)
    kept.sort(key=lambda x: (x.record.time_end_utc(), x.record.seq_end))
    if limit is not None:
        kept = kept[: int(limit)]
    segments = []
    for x in kept:
        r = x.record
        end = np.datetime64(r.time_end_utc(), "ms")
        start = end - np.timedelta64(int(round((r.n_rows - 1) * 1000.0 / r.sample_rate)), "ms")
        segments.append(Segment(r.samples, start, None))
    return Recording(tuple(segments), ref.channels, ref.sample_rate, ref.units, os.fspath(path), "uploads")
