"""NASA IMS bearing data: raw snapshot folders (``ims``) and per-snapshot tables (``ims-avg``).

Raw snapshots: one ASCII file per acquisition, named ``YYYY.MM.DD.HH.MM.SS`` (optionally
gzipped as ``<name>.gz``), tab-separated, no header, 20480 rows of 4 channels (tests 2 and 3,
one per bearing: ``B1..B4``) or 8 channels (test 1, x and y per bearing: ``B1x, B1y, ..., B4y``),
in g. The data set's readme calls the rate 20 kHz; 20480 samples span about one second, so the
effective rate is about 20.48 kHz, which is what ``sample_rate`` reports (20480.0).

Aggregated tables: one row per snapshot, one value per bearing (e.g. mean |x|). Two layouts
are read: (a) the date-time in the first, unnamed column (``2004-02-12 10:52:39``) then the
bearing columns; (b) a row index, then a ``Datetime`` column (``YYYY.MM.DD.HH.MM.SS``), then the
bearing columns.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from ._text import (
    label_columns,
    looks_like_time,
    parse_numeric,
    parse_times,
    read_text,
    split_row,
    tidy_lines,
)
from .errors import DataFormatError
from .recording import GAP_FACTOR, Recording, Segment, split_at_gaps

log = logging.getLogger(__name__)

IMS_SAMPLE_RATE = 20480.0
"""Effective rate in Hz (nominal 20 kHz in the IMS readme; 20480 samples per ~1 s snapshot)."""
IMS_ROWS = 20480
IMS_NAME = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})\.(\d{2})\.(\d{2})\.(\d{2})(\.gz)?$")
TIME_COLUMN_NAMES = ("datetime", "date_time", "timestamp", "time", "date")


def ims_name_time(path: str | os.PathLike[str]) -> np.datetime64:
    """Acquisition time encoded in an IMS file name.

    Raises:
        DataFormatError: the name is not ``YYYY.MM.DD.HH.MM.SS[.gz]`` or not a valid date.
    """
    name = Path(path).name
    m = IMS_NAME.match(name)
    if not m:
        raise DataFormatError(path, message=f"bad file name {name!r}: expected YYYY.MM.DD.HH.MM.SS[.gz]")
    y, mo, d, h, mi, s = m.groups()[:6]
    try:
        if not (int(h) < 24 and int(mi) < 60 and int(s) < 60):
            raise ValueError("time of day out of range")
        return np.datetime64(f"{y}-{mo}-{d}T{h}:{mi}:{s}", "ms")
    except ValueError as exc:
        raise DataFormatError(path, message=f"bad file name {name!r}: not a valid date-time") from exc


def ims_channel_names(n: int) -> tuple[str, ...]:
    """``B1..B4`` for 4 channels, ``B1x, B1y, ..., B4y`` for 8."""
    if n == 4:
        return ("B1", "B2", "B3", "B4")
    if n == 8:
        return tuple(f"B{k}{a}" for k in range(1, 5) for a in "xy")
    raise ValueError(f"IMS files have 4 or 8 channels, not {n}")


def ims_files(path: str | os.PathLike[str]) -> list[Path]:
    """Snapshot files of a folder in time order (hidden files ignored).

    Raises:
        DataFormatError: a file whose name is not an IMS time stamp, or two files with one time.
    """
    p = Path(path)
    if p.is_file():
        ims_name_time(p)
        return [p]
    entries = sorted(e for e in p.iterdir() if not e.name.startswith(".") and e.is_file())
    timed = [(ims_name_time(e), e) for e in entries]
    if not timed:
        raise DataFormatError(p, message="no IMS snapshot files (YYYY.MM.DD.HH.MM.SS[.gz]) in folder")
    timed.sort(key=lambda te: te[0])
    for (t0, a), (t1, b) in zip(timed[:-1], timed[1:], strict=True):
        if t0 == t1:
            raise DataFormatError(b, message=f"same acquisition time as {a.name}")
    return [e for _, e in timed]


def read_ims_file(path: str | os.PathLike[str]) -> np.ndarray:
    """One raw snapshot as (n, 4|8) float32 (n is 20480 in the published data).

    Raises:
        DataFormatError: unreadable, empty, non-numeric, ragged, NaN, or not 4/8 columns.
    """
    text = read_text(path)
    lines = text.splitlines()
    arr = parse_numeric(path, lines, delimiter="\t", first_line=1)
    if arr.shape[1] not in (4, 8):
        raise DataFormatError(path, 1, None, f"expected 4 or 8 tab-separated columns, found {arr.shape[1]}")
    return arr.astype(np.float32)


def load_ims(path: str | os.PathLike[str], *, limit: int | None = None, start: int = 0) -> Recording:
    """Load a folder of IMS raw snapshots (or one snapshot file).

    Args:
        path: folder of ``YYYY.MM.DD.HH.MM.SS[.gz]`` files, or one such file.
        limit: load at most this many files (after ``start``), in time order.
        start: skip this many files first.

    Returns:
        One ``Segment`` per file, ``data`` (n, 4|8) float32 in g, ``start`` from the file name;
        ``sample_rate`` 20480.0.

    Raises:
        DataFormatError: a bad file name, or a file that is malformed or has a channel count
            different from the first file's.
    """
    files = ims_files(path)[start:]
    if limit is not None:
        files = files[: int(limit)]
    if not files:
        raise DataFormatError(path, message="no snapshot files selected")
    segments: list[Segment] = []
    n_ch: int | None = None
    for f in files:
        data = read_ims_file(f)
        if n_ch is None:
            n_ch = data.shape[1]
        elif data.shape[1] != n_ch:
            raise DataFormatError(f, 1, None, f"{data.shape[1]} columns, but earlier files have {n_ch}")
        if data.shape[0] != IMS_ROWS:
            log.warning("%s: %d rows, the published snapshots have %d", f, data.shape[0], IMS_ROWS)
        segments.append(Segment(data, ims_name_time(f), None))
    log.info("loaded %d IMS snapshots (%d channels) from %s", len(segments), n_ch, path)
    return Recording(tuple(segments), ims_channel_names(n_ch), IMS_SAMPLE_RATE, "g", os.fspath(path), "ims")


def load_time_table(
    path: str | os.PathLike[str],
    *,
    format_name: str,
    units: str = "",
    time_column: int | str | None = None,
    allow_nan: bool = False,
) -> Recording:
    """A CSV table with one time column and numeric columns, as ``Segment``s with row times.

    Columns before the time column must be an unnamed row index (dropped); columns after it
    become the channels, named from the header, except ground-truth columns (``anomaly``,
    ``changepoint``, ... see ``LABEL_COLUMN_NAMES``), which become ``Segment.labels``. Rows are
    sorted by time if they are not; the table is cut into segments at pauses (``split_at_gaps``).

    Args:
        time_column: index or header name of the time column; None to find it: a column
            named ``Datetime``/``timestamp``/``time``/``date`` (any case), else the first column
            when its first cell is a date-time.

    Raises:
        DataFormatError: no header or time column, a bad time or number, ragged rows.
    """
    text = read_text(path)
    lines = text.splitlines()
    header_idx = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    header_line = lines[header_idx]
    delim = "\t" if "\t" in header_line else ("," if "," in header_line else ";")
    lines = tidy_lines(lines, delim)
    header = split_row(lines[header_idx], delim)
    data_lines = lines[header_idx + 1:]
    first_data = next((ln for ln in data_lines if ln.strip()), None)
    if first_data is None:
        raise DataFormatError(path, header_idx + 1, None, "header only, no data rows")
    first_cells = split_row(first_data, delim)
    tcol = _find_time_column(path, header, first_cells, time_column, header_idx + 1)
    for j in range(tcol):
        if header[j] != "" and header[j].lower() not in ("index", "unnamed: 0"):
            raise DataFormatError(path, header_idx + 1, j + 1,
                                  f"column {header[j]!r} before the time column is not a row index")
    value_cols = list(range(tcol + 1, len(header)))
    if not value_cols:
        raise DataFormatError(path, header_idx + 1, None, "no value columns after the time column")
    first_line = header_idx + 2
    values = parse_numeric(path, data_lines, delimiter=delim, first_line=first_line, n_cols=len(header),
                           usecols=value_cols, allow_nan=allow_nan)
    keep = [i for i, ln in enumerate(data_lines) if ln.strip()]
    cells = [data_lines[i].split(delim)[tcol] for i in keep]
    times = parse_times(path, cells, line_numbers=[first_line + i for i in keep], column=tcol + 1)
    if np.any(times[1:] < times[:-1]):
        order = np.argsort(times, kind="stable")
        times, values = times[order], values[order]
        log.warning("%s: rows were not in time order; sorted", path)
    dup = np.flatnonzero(times[1:] == times[:-1])
    if dup.size:
        log.warning("%s: %d rows repeat the previous row's time", path, dup.size)
    is_label = np.isin(value_cols, label_columns(header))
    channels = tuple(header[j] or f"ch{j - tcol - 1}" for j, lab in zip(value_cols, is_label, strict=True) if not lab)
    if not channels:
        raise DataFormatError(path, header_idx + 1, None, "only label columns after the time column")
    label_names = tuple(header[j] for j, lab in zip(value_cols, is_label, strict=True) if lab)
    labels = values[:, is_label].astype(np.float32) if label_names else None
    if label_names:
        log.info("%s: label columns %s are ground truth, not channels", path, list(label_names))
    seg = Segment(values[:, ~is_label].astype(np.float32), None, times, labels)
    segments = split_at_gaps(seg)
    if len(segments) > 1:
        log.info("%s: %d pauses longer than %g row spacings: %d segments", path, len(segments) - 1, GAP_FACTOR,
                 len(segments))
    return Recording(tuple(segments), channels, None, units, os.fspath(path), format_name, label_names)


def _find_time_column(
    path: str | os.PathLike[str], header: list[str], first_cells: list[str], time_column: int | str | None,
    header_line: int,
) -> int:
    if isinstance(time_column, int):
        return time_column
    lowered = [h.lower() for h in header]
    if isinstance(time_column, str):
        if time_column.lower() not in lowered:
            raise DataFormatError(path, header_line, None, f"no column named {time_column!r}")
        return lowered.index(time_column.lower())
    for name in TIME_COLUMN_NAMES:
        if name in lowered:
            return lowered.index(name)
    if first_cells and looks_like_time(first_cells[0]):
        return 0
    raise DataFormatError(path, header_line, None, "no date-time column (expected e.g. 'Datetime' or a "
                          "date-time in the first column)")


def load_ims_avg(path: str | os.PathLike[str], *, time_column: int | str | None = None) -> Recording:
    """Load an aggregated IMS table (either layout) as one ``Segment`` with ``row_times``.

    Returns:
        ``data`` (n_snapshots, n_bearings) float32 (units g, e.g. mean |x| per snapshot),
        channels from the header (e.g. ``Bearing 1``), ``sample_rate`` None.
    """
    rec = load_time_table(path, format_name="ims-avg", units="g", time_column=time_column)
    log.info("loaded IMS table %s: %d rows x %d channels", path, rec.n_rows, rec.n_channels)
    return rec
