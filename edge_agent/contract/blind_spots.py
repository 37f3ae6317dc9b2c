"""The facts of the training data the gateway's blind-spot checks need, computed the same way on both sides (numpy only).

``edge_agent.blind_spots`` explains the checks; the trainer writes these facts into the manifest
(``contract.bundle.FLAT_RUNS_KEY``, ``SPAN_MAX_KEY``), the gateway follows the same quantities live:

* :class:`FlatRuns`, :func:`longest_flat_runs`: runs of identical consecutive raw values per channel;
* :func:`span_floors`: per span of M consecutive windows, the lowest of their highest score;
* :func:`window_means`: per channel, how far the mean of a window's rows strayed from its training mean.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: Spans of windows judged: 1, 2, 4, ... windows, up to half the training windows (each floor then rests on at least
#: two disjoint healthy stretches) and at most this many.
MAX_SPAN = 1024
#: A spread of window means below this share of max(1, |mean|) is no spread (a constant channel): not judged.
MIN_RELATIVE_SPREAD = 1e-12


class FlatRuns:
    """Per channel, the current run of identical consecutive raw values, across frames (scoring thread).

    ``run``: (C,) int64 samples in the current run of each channel; ``last``: (C,) float32 the last value seen.
    A NaN never equals anything, so it ends a run and starts none.
    """

    def __init__(self, n_channels: int) -> None:
        self.run = np.zeros(n_channels, np.int64)
        self.last = np.full(n_channels, np.nan, np.float32)

    def reset(self) -> None:
        """Forget the runs (a break in the stream: what came in between is unknown)."""
        self.run[:] = 0
        self.last[:] = np.nan

    def push(self, x: np.ndarray) -> np.ndarray:
        """Account for the rows ``x`` (n, C) that follow the last ones; returns (C,) int64: the longest run of
        each channel that ended in them or goes on at their end (the runs carried in included)."""
        n = x.shape[0]
        if n == 0:
            return self.run.copy()
        carry = np.where(x[0] == self.last, self.run, 0)
        changes = np.ascontiguousarray((x[1:] != x[:-1]).T)  # (C, n-1): True where row i+1 differs from row i
        longest = np.empty_like(self.run)
        for c in range(x.shape[1]):
            row = changes[c]
            if n > 1 and row.all():  # the common case for a live signal: every sample differs from the one before
                longest[c] = max(carry[c] + 1, 1)
                self.run[c] = 1
                continue
            idx = np.flatnonzero(row)
            if idx.size == 0:
                self.run[c] = longest[c] = carry[c] + n
                continue
            inner = int(np.diff(idx).max()) if idx.size > 1 else 0
            self.run[c] = n - 1 - int(idx[-1])
            longest[c] = max(int(carry[c]) + int(idx[0]) + 1, inner, int(self.run[c]))
        self.last[:] = x[-1]
        return longest


def longest_flat_runs(segments: Iterable[np.ndarray], n_channels: int) -> tuple[list[int], list[bool]]:
    """(per channel the longest run of identical consecutive values in any segment (samples), per channel whether
    its value ever changed) over ``segments`` ((n, C) arrays, each contiguous in time; runs never span two)."""
    runs = FlatRuns(n_channels)
    longest = np.zeros(n_channels, np.int64)
    changed = np.zeros(n_channels, bool)
    for x in segments:
        runs.reset()
        longest = np.maximum(longest, runs.push(x))
        if len(x) > 1:
            changed |= (x != x[0]).any(axis=0)
    return [int(v) for v in longest], [bool(v) for v in changed]


def span_floors(scores: np.ndarray) -> dict:
    """``{"windows": [M, ...], "lowest": [...]}``: for M = 1, 2, 4, ... (at most half the windows, ``MAX_SPAN``), the
    lowest of the highest score among M consecutive windows of ``scores`` (W,) (the served model's, in time order)."""
    s = np.asarray(scores, np.float64)
    spans, lowest = [], []
    m = 1
    while m <= min(len(s) // 2, MAX_SPAN):
        spans.append(m)
        lowest.append(float(np.lib.stride_tricks.sliding_window_view(s, m).max(axis=1).min()))
        m *= 2
    return {"windows": spans, "lowest": lowest}


def window_means(segments: Iterable[np.ndarray], window: int, channels: Iterable[int]) -> dict | None:
    """``{"window": W, "channels": [c, ...], "mean": [...], "sd": [...], "max_z": [...]}``: for each channel c of
    ``channels``, the mean and spread of the means of W consecutive rows over ``segments`` ((n, C) raw rows, each
    contiguous; windows never span two; the spread at least the channel's smallest step between distinct values),
    and the largest |mean - its mean| / spread any training window reached.
    Channels whose window means do not vary are left out; None when no channel is left or no segment holds a window."""
    chans = list(channels)
    if not chans:
        return None
    kept = [x for x in (np.asarray(s, np.float64)[:, chans] for s in segments) if len(x) >= window]
    if sum(len(x) - window + 1 for x in kept) < 2:
        return None
    sums = [np.cumsum(np.vstack([np.zeros((1, len(chans))), x]), axis=0) for x in kept]
    means = np.vstack([(c[window:] - c[:-window]) / window for c in sums])  # (N, len(chans))
    if not np.isfinite(means).all():
        return None
    mu, sd = means.mean(axis=0), means.std(axis=0)
    # a window mean is not known better than the channel's resolution: a coarse or rarely moving channel (a setpoint,
    # a converter's steps) one step off for a whole window must not read as many spreads away
    rows = np.vstack(kept)
    sd = np.maximum(sd, [_smallest_step(rows[:, i]) for i in range(len(chans))])
    keep = [i for i in range(len(chans)) if spread_judged(sd[i], mu[i])]
    if not keep:
        return None
    z = np.abs(means[:, keep] - mu[keep]) / sd[keep]
    return {"window": int(window), "channels": [int(chans[i]) for i in keep], "mean": [float(mu[i]) for i in keep],
            "sd": [float(sd[i]) for i in keep], "max_z": [float(v) for v in z.max(axis=0)]}


def spread_judged(sd: float, mean: float) -> bool:
    """Whether a spread of window means ``sd`` around ``mean`` is one the level check can judge by."""
    return sd > MIN_RELATIVE_SPREAD * max(1.0, abs(mean))


def _smallest_step(x: np.ndarray) -> float:
    """The smallest difference between distinct values of ``x`` (n,) (0 for fewer than two)."""
    u = np.unique(x[np.isfinite(x)])
    return float(np.diff(u).min()) if len(u) > 1 else 0.0
