"""Generic inputs: numeric CSV tables and ``.npy`` arrays.

CSV: comma, semicolon or tab separated (guessed from the first line); an optional header
(detected when the first line has a non-numeric cell); an optional leading time column, detected when
the first data cell is a date-time, or when the first header names time (``t``, ``time``, ``timestamp``,
``seconds``, ...) over strictly increasing numbers: Unix epoch seconds or milliseconds become row times,
other numbers are elapsed time (seconds, or the ``ms`` / ``us`` its name gives) whose step gives the sample
rate; every other column must be numeric and becomes a channel (label columns are ground truth), unless
``channels`` names the columns to read (the others may then hold text). ``skip_rows`` skips a data logger's
preamble above the header; an error names the file, line, column and value, and says what to do when it
recognises the cause (a preamble, a date-time format not read, a text column).
``.npy``: (n,) is one channel, (n, C) is C channels, (n, L, C) is n
segments of L rows.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._text import (
    guess_delimiter,
    is_number,
    label_columns,
    looks_like_time,
    parse_numeric,
    parse_times,
    read_text,
    split_row,
    tidy_lines,
)
from .errors import DataFormatError
from .recording import Recording, Segment, split_at_gaps

log = logging.getLogger(__name__)

#: Header names of a numeric leading time column (lower case, units in brackets or after "_" dropped).
TIME_NAMES = frozenset({"t", "time", "timestamp", "ts", "sec", "secs", "second", "seconds", "elapsed", "epoch",
                        "unix", "unixtime", "unix_time", "times"})
_TIME_HEADER = re.compile(r"^(.+?)(?:\s*[_ ]?\s*[(\[]?\s*(ms|us|µs|s)\s*[)\]]?)?$")
#: Most rows of a 2-D array read as channels (channels first) when it has 100x as many columns.
CHANNELS_FIRST_MAX = 64
#: Plausible Unix epoch seconds (1973..2286) and milliseconds.
_EPOCH_S, _EPOCH_MS = (1e8, 1e10), (1e11, 1e13)


def _time_name(cell: str) -> str | None:
    """'s', 'ms' or 'us' when a header cell names a time column in those units (None: not a time name)."""
    m = _TIME_HEADER.match(cell.strip().strip('"').lower())
    if m is None or m.group(1) not in TIME_NAMES:
        return None
    return {"µs": "us", None: "s"}.get(m.group(2), m.group(2))


def _numeric_times(path, column: np.ndarray, unit: str) -> tuple[np.ndarray | None, float | None]:
    """(row times datetime64[ms] or None, sample rate Hz or None) of a strictly increasing numeric time column."""
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6}[unit]
    if unit == "s" and _EPOCH_MS[0] <= column[0] < _EPOCH_MS[1]:
        scale = 1e-3
    seconds = column * scale
    if _EPOCH_S[0] <= seconds[0] < _EPOCH_S[1]:
        log.info("%s: the first column holds Unix times (%s)", path, "ms" if scale == 1e-3 else "s")
        return (seconds * 1000.0).round().astype("datetime64[ms]"), None
    steps = np.diff(seconds)
    step = float(np.median(steps)) if len(steps) else 0.0
    if step > 0 and steps.max() < 1.5 * step:  # no gap: the whole span averages out printed-time rounding
        step = float(seconds[-1] - seconds[0]) / len(steps)
    rate = 1.0 / step if step > 0 else None
    if rate is not None and rate >= 1.0 and abs(rate - round(rate)) < 1e-3 * rate:
        rate = float(round(rate))
    if rate is not None:
        log.info("%s: the first column holds times in %s; rows every %g s: %g Hz", path, unit, step, rate)
    return None, rate


def _names(names: Sequence[str] | None, n: int, path: str | os.PathLike[str]) -> tuple[str, ...]:
    if names is None:
        return tuple(f"ch{j}" for j in range(n))
    if len(names) != n:
        raise DataFormatError(path, message=f"{len(names)} channel names given for {n} columns")
    return tuple(str(x) for x in names)


def load_csv(
    path: str | os.PathLike[str],
    *,
    sample_rate: float | None = None,
    header: bool | None = None,
    time_column: bool | None = None,
    delimiter: str | None = None,
    names: Sequence[str] | None = None,
    units: str = "",
    allow_nan: bool = False,
    skip_rows: int = 0,
    channels: Sequence[str | int] | str | int | None = None,
) -> Recording:
    """Load a generic numeric CSV as one ``Segment``.

    Args:
        sample_rate: Hz of the rows, if evenly sampled.
        header: whether the first line is a header (None: detect).
        time_column: whether the first column holds date-times (None: detect).
        delimiter: field separator (None: guess ``\\t``, ``;`` or ``,``).
        names: channel names (default: from the header, else ``ch0, ch1, ...``).
        allow_nan: accept NaN cells (default: they are an error).
        skip_rows: lines before the table to ignore (a data logger's preamble above the header).
        channels: the columns to load, by header name or 0-based index among the columns after the time column
            (label columns not counted), in this order; the other columns are not read, so they may hold text.
            A first column named as a time (``time``, ``t``, ``seconds``, ...) is the time column when it holds
            strictly increasing numbers, and is ignored otherwise.

    Returns:
        ``data`` (n, C) float32; ``row_times`` (n,) datetime64[ms] when there is a time column.

    Raises:
        DataFormatError: the first bad cell or row (``path:line:column``), with a hint when the cause is
            recognisable: a preamble above the header, a date-time in a format not read, a text column.
    """
    if isinstance(channels, str | int):
        channels = [channels]
    text = read_text(path)
    lines = text.splitlines()
    h = next((i for i, ln in enumerate(lines) if i >= skip_rows and ln.strip()), None)
    if h is None:
        raise DataFormatError(path, message=f"no table after the {skip_rows} skipped lines")
    delim = delimiter or guess_delimiter(lines[h])
    lines = lines[:h] + tidy_lines(lines[h:], delim)
    cells0 = split_row(lines[h], delim)
    if header is None:
        header = any(not is_number(c) for c in cells0[1:]) or (not is_number(cells0[0])
                                                               and not looks_like_time(cells0[0]))
    body_start = h + 1 if header else h
    data_lines = lines[body_start:]
    first = next((ln for ln in data_lines if ln.strip()), None)
    if first is None:
        raise DataFormatError(path, h + 1, None, "header only, no data rows")
    first_cells = split_row(first, delim)
    if time_column is None:
        time_column = not is_number(first_cells[0]) and looks_like_time(first_cells[0])
    n_cols = len(cells0) if header else len(first_cells)
    value_cols = list(range(1 if time_column else 0, n_cols))
    if not value_cols:
        raise DataFormatError(path, body_start + 1, None, "no numeric columns")
    labels = label_columns(cells0) if header else []
    unit = _time_name(cells0[0]) if header and not time_column and len(value_cols) > 1 else None
    table = _Table(path, lines, h, delim, cells0 if header else None, first_cells, value_cols, labels, unit)
    picked = None if channels is None else table.pick(channels)
    try:
        if picked is None:
            cols = value_cols
            values = parse_numeric(path, data_lines, delimiter=delim, first_line=body_start + 1, n_cols=n_cols,
                                   usecols=value_cols if time_column else None, allow_nan=allow_nan)
        else:
            cols = sorted({*picked, *(j for j in labels if j in value_cols), *([0] if unit else [])})
            values = _parse_picked(table, data_lines, body_start, n_cols, cols, allow_nan)
        times = None
        if unit is not None and cols[0] == 0 and len(values) > 1 and np.all(np.diff(values[:, 0]) > 0):
            times, rate = _numeric_times(path, values[:, 0], unit)
            sample_rate = sample_rate or rate
            cols, values = cols[1:], values[:, 1:]
        elif picked is not None and unit is not None and cols[0] == 0:  # named as the time, but not one
            log.warning("%s: column 1 (%r) is ignored: it does not hold increasing times", path, cells0[0])
            cols, values = cols[1:], values[:, 1:]
        if time_column:
            keep = [i for i, ln in enumerate(data_lines) if ln.strip()]
            times = parse_times(path, [data_lines[i].split(delim)[0] for i in keep],
                                line_numbers=[body_start + 1 + i for i in keep], column=1)
    except DataFormatError as exc:
        raise table.explain(exc) from exc.__cause__
    is_label = np.isin(cols, labels)
    label_names = tuple(cells0[j] for j, lab in zip(cols, is_label, strict=True) if lab)
    data_cols = [j for j, lab in zip(cols, is_label, strict=True) if not lab]
    order = data_cols if picked is None else picked
    if names is None:
        names = [table.name(j) for j in order]
    channel_names = _names(names, len(order), path)
    if not channel_names:
        raise DataFormatError(path, h + 1, None, "only label columns, no data")
    if label_names:
        log.info("%s: label columns %s are ground truth, not channels", path, list(label_names))
    data = values[:, [cols.index(j) for j in order]]
    seg = Segment(data.astype(np.float32), None, times,
                  values[:, is_label].astype(np.float32) if label_names else None)
    segments = split_at_gaps(seg) if times is not None and sample_rate is None else [seg]
    log.info("loaded CSV %s: %d rows x %d channels in %d segment(s)", path, seg.n_rows, len(channel_names),
             len(segments))
    return Recording(tuple(segments), channel_names, sample_rate, units, os.fspath(path), "csv", label_names)


def _parse_picked(table: _Table, data_lines: list[str], body_start: int, n_cols: int, cols: list[int],
                  allow_nan: bool) -> np.ndarray:
    """(n, len(cols)) float64 of the picked columns; a first column named as a time that is not numeric is
    left out (the caller sees it missing from ``cols``)."""
    parse = {"path": table.path, "delimiter": table.delimiter, "first_line": body_start + 1, "n_cols": n_cols,
             "allow_nan": allow_nan}
    try:
        return parse_numeric(lines=data_lines, usecols=cols, **parse)
    except DataFormatError as exc:
        if not (table.unit and cols[0] == 0 and exc.column == 1 and exc.message.startswith("not a number")):
            raise
        log.warning("%s: column 1 (%r) is ignored: %s (line %s)", table.path, table.name(0), exc.message, exc.line)
        cols.remove(0)
        return parse_numeric(lines=data_lines, usecols=cols, **parse)


#: A cell that looks like a date or a time of day (12/31/2026, 31.12.2026, 1:05 PM, 13:05:00).
_DATEISH = re.compile(r"\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}|\b\d{1,2}:\d{2}")
#: The time formats the loaders read, for messages.
TIME_FORMATS = ("times are read from the first column: ISO 8601 (2026-12-31 13:05:00, 2026-12-31T13:05:00.250Z), "
                "YYYY.MM.DD.HH.MM.SS, or numbers under a header named time, t or seconds (Unix seconds or "
                "milliseconds, or seconds from the start; time_ms, time_us for other units)")


@dataclass(frozen=True)
class _Table:
    """What ``load_csv`` found out about a table's layout: enough to pick columns and to explain an error.

    ``header``: the header's cells (None: no header); ``first``: the first data row's cells; ``value_cols``:
    the columns after a date-time first column; ``labels``: the label columns; ``unit``: the unit of a first
    column whose header names a time (None: not named so)."""

    path: str | os.PathLike[str]
    lines: list[str]
    top: int
    delimiter: str
    header: list[str] | None
    first: list[str]
    value_cols: list[int]
    labels: list[int]
    unit: str | None

    def name(self, j: int) -> str:
        """Column ``j``'s channel name: its header cell, else ``ch<index among the data columns>``."""
        if self.header is not None and self.header[j]:
            return self.header[j]
        return f"ch{self.data_cols.index(j)}" if j in self.data_cols else f"column {j + 1}"

    @property
    def data_cols(self) -> list[int]:
        """The columns ``channels`` indices count: after the time column, label columns left out."""
        return [j for j in self.value_cols if j not in self.labels and not (self.unit and j == 0)]

    def pick(self, channels: Sequence[str | int]) -> list[int]:
        """The file columns ``channels`` name (header names or indices into ``data_cols``), in that order."""
        data_cols = self.data_cols
        known = [self.name(j) for j in data_cols]
        picked = []
        for c in channels:
            if isinstance(c, int | np.integer):
                if not -len(data_cols) <= int(c) < len(data_cols):
                    raise DataFormatError(self.path, message=f"channel index {c} out of range for "
                                          f"{len(data_cols)} columns ({', '.join(known)})")
                picked.append(data_cols[int(c)])
            elif c in known:
                picked.append(data_cols[known.index(c)])
            else:
                raise DataFormatError(self.path, message=f"no channel {c!r}; the columns are {known}")
        return picked

    def explain(self, exc: DataFormatError) -> DataFormatError:
        """``exc`` with the column's name and a hint about what to do, where the cause is recognisable."""
        start = _table_start(self.lines, self.top)
        if start is not None and start > self.top and (exc.line is None or exc.line <= start + 1):
            hint = (f"; lines {self.top + 1}-{start} look like a preamble above the table, which starts at line "
                    f"{start + 1} ({self.lines[start].strip()[:60]!r}): skip them with skip_rows={start} "
                    f"(trainer train --skip-rows {start})")
            return DataFormatError(exc.path, exc.line, exc.column, exc.message + hint)
        if exc.line is None or exc.column is None:
            return exc
        if exc.message.startswith("not a date-time"):
            return DataFormatError(exc.path, exc.line, exc.column, f"{exc.message}; {TIME_FORMATS}")
        cells = split_row(self.lines[exc.line - 1], self.delimiter)
        j = exc.column - 1
        if not exc.message.startswith("not a number") or j >= len(cells):
            return exc
        named = f" in column {self.header[j]!r}" if self.header is not None and j < len(self.header) else ""
        numeric = [self.name(k) for k in self.data_cols if k < len(self.first) and is_number(self.first[k])]
        select = f"trainer train --channels {','.join(numeric) or 'NAMES'}"
        if _DATEISH.search(cells[j]):
            hint = (f": a date-time in a format not read here; {TIME_FORMATS}. Convert the column, or leave it out: "
                    f"select the value columns ({select}) and give their rate if they are evenly sampled "
                    "(--sample-rate HZ)")
        elif j < len(self.first) and not is_number(self.first[j]):
            hint = f": a text column; select the numeric columns ({select})"
        else:
            hint = ""
        return DataFormatError(exc.path, exc.line, exc.column, exc.message + named + hint)


def _table_start(lines: list[str], top: int, scan: int = 200) -> int | None:
    """Index of the line a table starts at (its header, or its first row): the first non-blank line from
    ``top`` on that is followed by rows with as many cells, most of them numbers. None: none in ``scan`` lines."""
    idx = [i for i in range(top, min(len(lines), top + scan)) if lines[i].strip()]
    for a, i in enumerate(idx):
        delim = guess_delimiter(lines[i])
        width = len(split_row(lines[i], delim))
        rows = [split_row(lines[k], delim) for k in idx[a + 1:a + 4]]
        if len(rows) >= min(2, len(idx) - a - 1) > 0 and all(
                len(r) == width and 2 * sum(is_number(c) for c in r) >= width for r in rows):
            return i
    return None


def load_npy(
    path: str | os.PathLike[str],
    *,
    sample_rate: float | None = None,
    names: Sequence[str] | None = None,
    units: str = "",
    allow_nan: bool = False,
) -> Recording:
    """Load a ``.npy`` array: (n,) -> 1 channel, (n, C) -> C channels, (n, L, C) -> n segments; a (C, n)
    array with at most ``CHANNELS_FIRST_MAX`` rows and 100 times as many columns is C channels of n samples.

    Raises:
        DataFormatError: unreadable file, object/non-numeric dtype, other ranks, or NaN/inf.
    """
    p = Path(path)
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataFormatError(p, message=f"not a readable .npy array ({exc})") from exc
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number) \
            or np.issubdtype(arr.dtype, np.complexfloating):
        dtype = getattr(arr, "dtype", None)
        raise DataFormatError(p, message=f"expected a real numeric array, got dtype {dtype}")
    if arr.ndim == 1:
        blocks = [arr.reshape(-1, 1)]
    elif arr.ndim == 2:
        if arr.shape[0] <= CHANNELS_FIRST_MAX and arr.shape[1] >= 100 * arr.shape[0]:
            log.info("%s: shape %s read as %d channels of %d samples (channels first)", p, arr.shape, *arr.shape)
            arr = arr.T
        blocks = [arr]
    elif arr.ndim == 3:
        blocks = list(arr)
    else:
        raise DataFormatError(p, message=f"expected shape (n,), (n, C) or (n, L, C), got {arr.shape}")
    if arr.size == 0:
        raise DataFormatError(p, message=f"empty array {arr.shape}")
    if not allow_nan:
        bad = ~np.isfinite(arr)
        if bad.any():
            where = ", ".join(str(int(v)) for v in np.argwhere(bad)[0])
            raise DataFormatError(p, message=f"non-finite value at index [{where}]")
    channels = _names(names, blocks[0].shape[1], p)
    segments = tuple(Segment(np.array(b, np.float32), None, None) for b in blocks)
    log.info("loaded %s: shape %s as %d segment(s)", p, arr.shape, len(segments))
    return Recording(segments, channels, sample_rate, units, os.fspath(p), "npy")
