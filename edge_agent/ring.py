"""A preallocated ring buffer of rows (samples or model steps), one column per channel/feature.

Writes are block copies by slice assignment into one ``np.empty((capacity, C), float32)``
array allocated at construction; nothing is allocated per sample. Reads copy the newest rows
into a buffer the caller owns, so nobody ever holds a view that a later write could change.
"""

from __future__ import annotations

import numpy as np


class Ring:
    """Fixed-capacity FIFO of float32 rows of width ``width``.

    Attributes:
        capacity: rows held at most; older rows are overwritten.
        width: columns per row (channels or features).
        count: rows currently held (``<= capacity``).
        total: rows ever written since construction or :meth:`clear`.
    """

    def __init__(self, capacity: int, width: int) -> None:
        if capacity < 1 or width < 1:
            raise ValueError(f"ring capacity and width must be >= 1, got {capacity} x {width}")
        self.capacity = int(capacity)
        self.width = int(width)
        self._buf = np.empty((self.capacity, self.width), dtype=np.float32)
        self._head = 0  # index of the next row to write
        self.count = 0
        self.total = 0

    def clear(self) -> None:
        """Forget every row (the memory stays allocated)."""
        self._head = 0
        self.count = 0
        self.total = 0

    def write(self, rows: np.ndarray) -> None:
        """Append rows: (m, width) array-like of numbers, copied (converted to float32) into the ring.

        If ``m > capacity`` only the last ``capacity`` rows are kept.
        """
        m = rows.shape[0]
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"expected rows of shape (m, {self.width}), got {rows.shape}")
        if m == 0:
            return
        self.total += m
        if m >= self.capacity:
            self._buf[:] = rows[m - self.capacity :]
            self._head = 0
            self.count = self.capacity
            return
        first = min(m, self.capacity - self._head)
        self._buf[self._head : self._head + first] = rows[:first]
        if first < m:
            self._buf[: m - first] = rows[first:]
        self._head = (self._head + m) % self.capacity
        self.count = min(self.capacity, self.count + m)

    def latest(self, n: int, out: np.ndarray) -> np.ndarray:
        """Copy the newest ``n`` rows, oldest first, into ``out`` ((n, width) float32, caller-owned); return ``out``."""
        if not 0 < n <= self.count:
            raise ValueError(f"asked for {n} rows, the ring holds {self.count}")
        if out.shape != (n, self.width):
            raise ValueError(f"out must have shape ({n}, {self.width}), got {out.shape}")
        start = self._head - n
        if start >= 0:
            out[:] = self._buf[start : self._head]
        else:
            tail = -start
            out[:tail] = self._buf[self.capacity - tail :]
            out[tail:] = self._buf[: self._head]
        return out
