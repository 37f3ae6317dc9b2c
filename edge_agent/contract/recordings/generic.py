"""Generic inputs: numeric CSV tables and ``.npy`` arrays.

CSV: comma, semicolon or tab separated (guessed from the first line); an optional header
(detected when the first line has a non-numeric cell); an optional leading time column, detected when
the first data cell is a date-time, or when the first header names time (``t``, ``time``, ``timestamp``,
``seconds``, ...) over strictly increasing numbers: Unix epoch seconds or milliseconds become row times,
other numbers are elapsed time (seconds, or the ``ms`` / ``us`` its name gives) whose step gives the sample
rate; every other column must be numeric and becomes a channel (label columns are ground truth).
``.npy``: (n,) is one channel, (n, C) is C channels, (n, L, C) is n
segments of L rows.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
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
) -> Recording:
    """Load a generic numeric CSV as one ``Segment``.

    Args:
        sample_rate: Hz of the rows, if evenly sampled.
        header: whether the first line is a header (None: detect).
        time_column: whether the first column holds date-times (None: detect).
        delimiter: field separator (None: guess ``\\t``, ``;`` or ``,``).
        names: channel names (default: from the header, else ``ch0, ch1, ...``).
        allow_nan: accept NaN cells (default: they are an error).

    Returns:
        ``data`` (n, C) float32; ``row_times`` (n,) datetime64[ms] when there is a time column.
    """
    text = read_text(path)
    lines = text.splitlines()
    h = next(i for i, ln in enumerate(lines) if ln.strip())
    delim = delimiter or guess_delimiter(lines[h])
    lines = tidy_lines(lines, delim)
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
    values = parse_numeric(path, data_lines, delimiter=delim, first_line=body_start + 1, n_cols=n_cols,
                           usecols=value_cols if time_column else None, allow_nan=allow_nan)
    times = None
    unit = _time_name(cells0[0]) if header and not time_column and len(value_cols) > 1 else None
    if unit is not None and len(values) > 1 and np.all(np.diff(values[:, 0]) > 0):
        times, rate = _numeric_times(path, values[:, 0], unit)
        sample_rate = sample_rate or rate
        value_cols, values = value_cols[1:], values[:, 1:]
    if time_column:
        keep = [i for i, ln in enumerate(data_lines) if ln.strip()]
        times = parse_times(path, [data_lines[i].split(delim)[0] for i in keep],
                            line_numbers=[body_start + 1 + i for i in keep], column=1)
    is_label = np.isin(value_cols, label_columns(cells0) if header else [])
    label_names = tuple(cells0[j] for j, lab in zip(value_cols, is_label, strict=True) if lab)
    if names is None and header:
        names = [cells0[j] or f"ch{k}" for k, j in enumerate(value_cols) if not is_label[k]]
    channels = _names(names, int((~is_label).sum()), path)
    if not channels:
        raise DataFormatError(path, h + 1, None, "only label columns, no data")
    if label_names:
        log.info("%s: label columns %s are ground truth, not channels", path, list(label_names))
    seg = Segment(values[:, ~is_label].astype(np.float32), None, times,
                  values[:, is_label].astype(np.float32) if label_names else None)
    segments = split_at_gaps(seg) if times is not None and sample_rate is None else [seg]
    log.info("loaded CSV %s: %d rows x %d channels in %d segment(s)", path, seg.n_rows, len(channels), len(segments))
    return Recording(tuple(segments), channels, sample_rate, units, os.fspath(path), "csv", label_names)


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
