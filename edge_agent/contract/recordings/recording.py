"""The common result of every loader: a ``Recording`` made of time-contiguous ``Segment``s.

A segment is a block of rows that follow each other without a gap (one IMS snapshot file,
one FEMTO ``acc_NNNNN.csv``, one uploaded window, a whole table). Windows for the model are
framed inside a segment, never across two of them.

Arrays held here are made read-only: callers copy before they modify.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TIME_UNIT = "datetime64[ms]"


def as_time(value: object) -> np.datetime64:
    """Convert a ``np.datetime64``, ``datetime`` or ISO-8601 string to ``datetime64[ms]``."""
    if isinstance(value, str):
        value = value.strip().replace(" ", "T", 1)
    return np.datetime64(value, "ms")


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class Segment:
    """Rows that are contiguous in time.

    Attributes:
        data: (n, C) float32, C-contiguous, read-only.
        start: time of the first row (``datetime64[ms]``), or None when unknown.
        row_times: (n,) ``datetime64[ms]`` when each row has its own timestamp (tables),
            else None (rows are evenly spaced at the recording's sample rate).
        labels: (n, L) float32 ground-truth columns of a labelled table (``Recording.label_names``),
            or None. Labels are never data: no channel, no digest, no model input.

    A segment takes ownership of the arrays it is given: they are made read-only (float32
    C-contiguous data is kept as is, anything else is converted into a new array).
    """

    data: np.ndarray
    start: np.datetime64 | None = None
    row_times: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        data = self.data
        if data.ndim != 2:
            raise ValueError(f"segment data must be 2-D (n, C), got shape {data.shape}")
        if data.dtype != np.float32 or not data.flags.c_contiguous:
            data = np.ascontiguousarray(data, dtype=np.float32)
        object.__setattr__(self, "data", _readonly(data))
        if self.labels is not None:
            labels = np.ascontiguousarray(self.labels, dtype=np.float32)
            if labels.ndim != 2 or labels.shape[0] != data.shape[0]:
                raise ValueError(f"labels shape {labels.shape} does not match {data.shape[0]} rows")
            object.__setattr__(self, "labels", _readonly(labels))
        row_times = self.row_times
        if row_times is not None:
            row_times = np.asarray(row_times, dtype=TIME_UNIT)
            if row_times.shape != (data.shape[0],):
                raise ValueError(f"row_times shape {row_times.shape} does not match {data.shape[0]} rows")
            object.__setattr__(self, "row_times", _readonly(row_times))
            if self.start is None and len(row_times):
                object.__setattr__(self, "start", row_times[0])
        if self.start is not None:
            object.__setattr__(self, "start", as_time(self.start))

    @property
    def n_rows(self) -> int:
        return int(self.data.shape[0])

    def _slice(self, lo: int, hi: int, sample_rate: float | None) -> Segment:
        """Rows [lo, hi) as a new segment with its start shifted accordingly."""
        start = self.start
        labels = None if self.labels is None else self.labels[lo:hi].copy()
        if self.row_times is not None:
            times = self.row_times[lo:hi]
            return Segment(self.data[lo:hi].copy(), times[0] if len(times) else start, times.copy(), labels)
        if start is not None and lo:
            offset_ms = round(lo * 1000.0 / sample_rate) if sample_rate else None
            start = None if offset_ms is None else start + np.timedelta64(offset_ms, "ms")
        return Segment(self.data[lo:hi].copy(), start, None, labels)

    def _rows(self, mask: np.ndarray) -> Segment:
        """The rows where ``mask`` (n,) bool is true, as a new segment (row times required)."""
        labels = None if self.labels is None else self.labels[mask].copy()
        return Segment(self.data[mask].copy(), None, self.row_times[mask].copy(), labels)


#: A table's rows further apart than this many times their median spacing are a pause of the
#: recording (a stopped rig, a dead link): the table is cut into segments there, so that no window
#: mixes the two sides of a pause.
GAP_FACTOR = 10.0


def split_at_gaps(seg: Segment, factor: float = GAP_FACTOR) -> list[Segment]:
    """A segment with ``row_times`` cut where consecutive rows are more than ``factor`` times the
    median row spacing apart; segments without row times (or with fewer than 3 rows) come back whole."""
    if seg.row_times is None or seg.n_rows < 3:
        return [seg]
    step = np.diff(seg.row_times.astype(np.int64))
    positive = step[step > 0]
    if positive.size == 0:
        return [seg]
    cuts = np.flatnonzero(step > factor * float(np.median(positive))) + 1
    bounds = [0, *cuts.tolist(), seg.n_rows]
    return [seg._slice(a, b, None) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@dataclass(frozen=True, eq=False)
class Recording:
    """A loaded data set.

    Attributes:
        segments: the time-contiguous blocks, in time order.
        channels: one name per column of every segment's data.
        sample_rate: Hz of the rows within a segment; None when rows are not evenly sampled
            (tables with one row per snapshot, whose ``row_times`` give the times).
        units: ``"g"`` for accelerometers, ``""`` when unknown.
        source: the path it was loaded from.
        format: the loader's format name (``ims``, ``ims-avg``, ``femto``, ...).
        label_names: names of the ground-truth columns every segment's ``labels`` hold (a labelled
            table, e.g. ``anomaly``, ``changepoint``); empty when the recording has none.
    """

    segments: tuple[Segment, ...]
    channels: tuple[str, ...]
    sample_rate: float | None
    units: str
    source: str
    format: str
    label_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.segments))
        object.__setattr__(self, "channels", tuple(str(c) for c in self.channels))
        for i, seg in enumerate(self.segments):
            if seg.data.shape[1] != len(self.channels):
                raise ValueError(
                    f"segment {i} has {seg.data.shape[1]} columns but there are {len(self.channels)} channels"
                )
        if self.sample_rate is not None:
            object.__setattr__(self, "sample_rate", float(self.sample_rate))
        object.__setattr__(self, "label_names", tuple(str(n) for n in self.label_names))
        for i, seg in enumerate(self.segments):
            width = 0 if seg.labels is None else seg.labels.shape[1]
            if width != len(self.label_names):
                raise ValueError(f"segment {i} has {width} label columns but there are {len(self.label_names)} labels")

    # ------------------------------------------------------------------ queries
    @property
    def n_rows(self) -> int:
        """Total rows over all segments."""
        return sum(seg.n_rows for seg in self.segments)

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def labels(self) -> np.ndarray | None:
        """All label rows stacked, (N, L) float32, or None when the recording has no labels."""
        if not self.label_names:
            return None
        if not self.segments:
            return np.empty((0, len(self.label_names)), np.float32)
        return np.concatenate([seg.labels for seg in self.segments], axis=0)

    def concatenated(self) -> np.ndarray:
        """All rows stacked, (N, C) float32. For plotting only: it joins across gaps."""
        if not self.segments:
            return np.empty((0, len(self.channels)), np.float32)
        return np.concatenate([seg.data for seg in self.segments], axis=0)

    def times(self) -> np.ndarray | None:
        """(N,) ``datetime64[us]`` of every row (µs, as kHz rates need), or None when some
        segment has neither row times nor a start and a sample rate."""
        parts = []
        for seg in self.segments:
            if seg.row_times is not None:
                parts.append(seg.row_times.astype("datetime64[us]"))
            elif seg.start is not None and self.sample_rate:
                offs = np.round(np.arange(seg.n_rows) * (1e6 / self.sample_rate)).astype("timedelta64[us]")
                parts.append(seg.start.astype("datetime64[us]") + offs)
            else:
                return None
        return np.concatenate(parts) if parts else np.empty(0, "datetime64[us]")

    def digest(self) -> str:
        """sha256 hex over channels, sample rate, segment lengths and the float32 data.

        Stable across runs and machines (data hashed as little-endian float32, row-major);
        independent of times, units, source path and format name.
        """
        h = hashlib.sha256()
        h.update(b"recording-v1\0")
        h.update("\x1f".join(self.channels).encode("utf-8") + b"\0")
        h.update(repr(self.sample_rate).encode("ascii") + b"\0")
        h.update(np.asarray([seg.n_rows for seg in self.segments], "<i8").tobytes())
        for seg in self.segments:
            h.update(np.ascontiguousarray(seg.data, "<f4").tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ derived recordings
    def _replace(self, segments: Sequence[Segment], channels: Sequence[str] | None = None) -> Recording:
        return Recording(
            segments=tuple(segments),
            channels=tuple(self.channels if channels is None else channels),
            sample_rate=self.sample_rate,
            units=self.units,
            source=self.source,
            format=self.format,
            label_names=self.label_names,
        )

    def select_channels(self, channels: Sequence[str | int] | str | int) -> Recording:
        """Keep the given channels, by name or 0-based index, in the given order."""
        if isinstance(channels, (str, int, np.integer)):
            channels = [channels]
        idx: list[int] = []
        for c in channels:
            if isinstance(c, (int, np.integer)):
                if not -len(self.channels) <= int(c) < len(self.channels):
                    raise KeyError(f"channel index {c} out of range for {len(self.channels)} channels")
                idx.append(int(c) % len(self.channels))
            elif c in self.channels:
                idx.append(self.channels.index(c))
            else:
                raise KeyError(f"no channel {c!r}; channels are {list(self.channels)}")
        segs = [Segment(np.ascontiguousarray(s.data[:, idx]), s.start, s.row_times, s.labels) for s in self.segments]
        return self._replace(segs, [self.channels[i] for i in idx])

    def head(self, n_rows: int) -> Recording:
        """The first ``n_rows`` rows (the last kept segment is cut short if needed)."""
        out: list[Segment] = []
        left = int(n_rows)
        for seg in self.segments:
            if left <= 0:
                break
            out.append(seg if seg.n_rows <= left else seg._slice(0, left, self.sample_rate))
            left -= seg.n_rows
        return self._replace(out)

    def split_at(self, time: object) -> tuple[Recording, Recording]:
        """Split into (rows before ``time``, rows at or after ``time``).

        Segments with ``row_times`` are split row by row. Other segments (snapshots) move
        whole, by their ``start``. Note: pandas label slicing ``df[a:b]``, as in the IMS
        LSTM-autoencoder tutorial, includes ``b`` in both halves; this split is half-open.

        Raises:
            ValueError: a segment has neither row times nor a start time.
        """
        t = as_time(time)
        before: list[Segment] = []
        after: list[Segment] = []
        for i, seg in enumerate(self.segments):
            if seg.row_times is not None:
                k = int(np.searchsorted(seg.row_times, t, side="left"))
                if not np.all(seg.row_times[1:] >= seg.row_times[:-1]):
                    mask = seg.row_times < t
                    parts = [(mask, before), (~mask, after)]
                    for m, dest in parts:
                        if m.any():
                            dest.append(seg._rows(m))
                    continue
                if k > 0:
                    before.append(seg if k == seg.n_rows else seg._slice(0, k, None))
                if k < seg.n_rows:
                    after.append(seg if k == 0 else seg._slice(k, seg.n_rows, None))
            elif seg.start is not None:
                (before if seg.start < t else after).append(seg)
            else:
                raise ValueError(f"segment {i} of {self.source} has no time; cannot split by time")
        return self._replace(before), self._replace(after)

    def __repr__(self) -> str:
        return (
            f"Recording(format={self.format!r}, source={self.source!r}, segments={len(self.segments)}, "
            f"rows={self.n_rows}, channels={list(self.channels)}, sample_rate={self.sample_rate}, "
            f"units={self.units!r})"
        )
