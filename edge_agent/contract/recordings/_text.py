"""Text-table helpers shared by the loaders: read (gzip-aware), bulk-parse, locate errors.

The fast path hands the whole table to ``np.loadtxt`` (C parser). Only when that fails, or
the result holds a NaN, the lines are re-scanned in Python to find the first bad line and
column, so the error message can say exactly where the problem is.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import re
import warnings
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .errors import DataFormatError

_DECIMAL_COMMA = re.compile(r"(\d),(\d)")
_DECIMAL_POINT = re.compile(r"\d\.\d")
_DOTTED_TIME = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})\.(\d{2})\.(\d{2})\.(\d{2})$")


def read_text(path: str | os.PathLike[str]) -> str:
    """The file's text (``.gz`` decompressed), ASCII/UTF-8; a BOM is dropped.

    Raises:
        DataFormatError: empty file, corrupt or truncated gzip, or undecodable bytes.
    """
    p = Path(path)
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as fh:
                raw = fh.read()
        else:
            raw = p.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataFormatError(p, message=f"corrupt or truncated gzip file ({exc})") from exc
    except OSError as exc:
        raise DataFormatError(p, message=f"cannot read file ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        msg = f"not a text file (undecodable byte at offset {exc.start})"
        raise DataFormatError(p, line, None, msg) from exc
    if not text.strip():
        raise DataFormatError(p, message="empty file")
    return text


#: Header names (any case) of ground-truth columns: a labelled table's labels are loaded into
#: ``Segment.labels``, never as a channel a model could be trained on.
LABEL_COLUMN_NAMES = frozenset({
    "anomaly", "anomalies", "is_anomaly", "anomaly_label", "label", "labels", "changepoint", "change_point",
    "outlier", "fault", "attack", "target",
})


def label_columns(header: Sequence[str]) -> list[int]:
    """Indices of the columns of ``header`` whose name marks them as ground truth (``LABEL_COLUMN_NAMES``)."""
    return [j for j, name in enumerate(header) if name.strip().lower() in LABEL_COLUMN_NAMES]


def guess_delimiter(line: str) -> str:
    """Tab, semicolon or comma, whichever the line uses (comma by default)."""
    if "\t" in line:
        return "\t"
    if ";" in line and "," not in line:
        return ";"
    return ","


def tidy_lines(lines: list[str], delimiter: str) -> list[str]:
    """Spreadsheet exports as plain tables: a delimiter ending every line (Excel's trailing ``;``) is dropped,
    and with ``;`` or tab between fields, decimal commas (``0,25``) become points when no field uses a point."""
    body = [ln for ln in lines if ln.strip()]
    if body and all(ln.rstrip().endswith(delimiter) for ln in body) and delimiter != " ":
        lines = [ln.rstrip()[:-1] if ln.strip() else ln for ln in lines]
    if delimiter in (";", "\t") and any(_DECIMAL_COMMA.search(ln) for ln in lines) \
            and not any(_DECIMAL_POINT.search(ln) for ln in lines):
        lines = [_DECIMAL_COMMA.sub(r"\1.\2", ln) for ln in lines]
    return lines


def split_row(line: str, delimiter: str) -> list[str]:
    """Fields of one line, stripped of blanks and of surrounding double quotes (a quoted field may hold the
    delimiter: ``"Temperature, °C"``)."""
    if '"' not in line:
        return [c.strip() for c in line.split(delimiter)]
    return [c.strip().strip('"').strip() for c in next(csv.reader([line], delimiter=delimiter, skipinitialspace=True))]


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def locate_problem(
    path: str | os.PathLike[str],
    lines: Sequence[str],
    *,
    delimiter: str,
    first_line: int,
    n_cols: int | None,
    numeric_cols: Sequence[int] | None = None,
    allow_nan: bool = False,
) -> DataFormatError | None:
    """Re-scan ``lines`` (data lines only, the first being file line ``first_line``).

    Returns the first problem as a ``DataFormatError`` (not raised), or None if none found.
    """
    expected = n_cols
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        lineno = first_line + i
        cells = split_row(line, delimiter)
        if expected is None:
            expected = len(cells)
        if len(cells) != expected:
            col = min(len(cells), expected) + 1
            return DataFormatError(
                path, lineno, col, f"expected {expected} columns, found {len(cells)} (ragged row)"
            )
        cols = range(len(cells)) if numeric_cols is None else numeric_cols
        for j in cols:
            cell = cells[j]
            if cell == "":
                return DataFormatError(path, lineno, j + 1, "empty cell where a number is required")
            try:
                v = float(cell)
            except ValueError:
                return DataFormatError(path, lineno, j + 1, f"not a number: {cell[:40]!r}")
            if math.isnan(v) and not allow_nan:
                return DataFormatError(path, lineno, j + 1, "NaN is not allowed here")
            if math.isinf(v) and not allow_nan:
                return DataFormatError(path, lineno, j + 1, "infinite value is not allowed here")
    return None


def parse_numeric(
    path: str | os.PathLike[str],
    lines: Sequence[str],
    *,
    delimiter: str,
    first_line: int,
    n_cols: int | None = None,
    usecols: Sequence[int] | None = None,
    allow_nan: bool = False,
) -> np.ndarray:
    """Parse data lines into a (n, C) float64 array.

    Args:
        lines: the data lines (no header); blank lines are skipped.
        first_line: 1-based file line number of ``lines[0]`` (for messages).
        n_cols: the number of fields every line must have (None: as many as the first line).
        usecols: columns to convert (the others are checked for count only), None for all.
        allow_nan: accept NaN/inf cells; otherwise they are an error.

    Raises:
        DataFormatError: naming the first bad line and column.
    """
    if n_cols is None:
        first = next((ln for ln in lines if ln.strip()), None)
        if first is None:
            raise DataFormatError(path, message="no data rows")
        n_cols = len(split_row(first, delimiter))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            arr = np.loadtxt(
                lines, delimiter=delimiter, dtype=np.float64, comments=None, quotechar='"',
                usecols=usecols, ndmin=2,
            )
    except (ValueError, UserWarning) as exc:
        err = locate_problem(path, lines, delimiter=delimiter, first_line=first_line, n_cols=n_cols,
                             numeric_cols=usecols, allow_nan=allow_nan)
        raise (err or DataFormatError(path, message=f"cannot parse numbers: {exc}")) from exc
    if arr.shape[0] == 0:
        raise DataFormatError(path, message="no data rows")
    bad = not allow_nan and not np.isfinite(arr).all()
    if usecols is not None or bad:
        # loadtxt does not check the count of unused columns; NaN needs its line number.
        if bad or _field_counts_differ(lines, delimiter, n_cols):
            err = locate_problem(path, lines, delimiter=delimiter, first_line=first_line, n_cols=n_cols,
                                 numeric_cols=usecols, allow_nan=allow_nan)
            if err is not None:
                raise err
    elif arr.shape[1] != n_cols:
        raise DataFormatError(path, first_line, None, f"expected {n_cols} columns, found {arr.shape[1]}")
    return arr


def _field_counts_differ(lines: Sequence[str], delimiter: str, n_cols: int) -> bool:
    want = n_cols - 1
    return any(ln.count(delimiter) != want for ln in lines if ln.strip())


def normalize_time_string(s: str) -> str:
    """``YYYY.MM.DD.HH.MM.SS`` or ``YYYY-MM-DD HH:MM:SS[.fff]`` to ISO ``YYYY-MM-DDTHH:MM:SS``."""
    s = s.strip().strip('"').strip()
    m = _DOTTED_TIME.match(s)
    if m:
        y, mo, d, h, mi, se = m.groups()
        return f"{y}-{mo}-{d}T{h}:{mi}:{se}"
    return s.replace(" ", "T", 1)


def parse_time(s: str) -> np.datetime64:
    """One timestamp as ``datetime64[ms]`` (UTC if it carries an offset).

    Raises:
        ValueError: not a recognised date-time.
    """
    iso = normalize_time_string(s)
    if not re.match(r"^\d{4}-\d{2}-\d{2}", iso):
        raise ValueError(f"not a date-time: {s!r}")
    if iso.endswith("Z") or re.search(r"[+-]\d{2}:?\d{2}$", iso[10:]):
        dt = datetime.fromisoformat(iso)
        if dt.tzinfo is not None:
            dt = dt.astimezone(UTC).replace(tzinfo=None)
        return np.datetime64(dt, "ms")
    return np.datetime64(iso, "ms")


def looks_like_time(s: str) -> bool:
    try:
        parse_time(s)
    except ValueError:
        return False
    return True


def parse_times(
    path: str | os.PathLike[str],
    cells: Sequence[str],
    *,
    line_numbers: Sequence[int],
    column: int,
) -> np.ndarray:
    """Parse a column of timestamps to (n,) ``datetime64[ms]``.

    Raises:
        DataFormatError: the first cell that is not a date-time, with its line and column.
    """
    norm = [normalize_time_string(c) for c in cells]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if all(len(n) >= 10 and n[4] == "-" and not n.endswith("Z") and "+" not in n[10:] for n in norm):
                return np.array(norm, dtype="datetime64[ms]")
    except (ValueError, DeprecationWarning, UserWarning):
        pass
    out = np.empty(len(norm), "datetime64[ms]")
    for i, c in enumerate(cells):
        try:
            out[i] = parse_time(c)
        except ValueError as exc:
            msg = f"not a date-time: {c.strip()[:40]!r}"
            raise DataFormatError(path, line_numbers[i], column, msg) from exc
    return out
