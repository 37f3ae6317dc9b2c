"""What the reconstruction score cannot show: a channel that freezes, a window that matches too well (numpy only).

An autoencoder flags a window it reconstructs *badly*. Two kinds of trouble make a window easier to reconstruct,
so the score falls instead of rising, and no threshold on it can see them:

* **a frozen channel** (a stuck sensor, a dead converter, a node repeating its last reading): its raw values stop
  changing. The trainer writes, per channel, the longest run of identical consecutive raw values of the training
  rows (manifest ``signal.flat_runs``, ``contract.blind_spots.longest_flat_runs``). The pipeline follows each channel's current run
  (:class:`FlatRuns`); a run longer than :func:`stuck_limits` allows makes the sensor's health ``stuck``
  (``edge_agent.health``), naming the channel and for how long, until its values change again. A channel that never
  changed in training (a constant one) is never judged stuck;
* **too-good windows**: an expected pattern does not happen (a daily cycle that skips its jump, a stroke that
  stops, a noise that goes quiet). A single window then need not score below the healthy ones: on NAB
  ``art_daily_nojump`` the windows of the day without its jump score like the quiet hours of every day; what no
  healthy day shows is a whole day of them. So the check is on spans: for M = 1, 2, 4, ... consecutive windows the
  trainer writes the lowest, over the training rows, of the highest score among M consecutive windows
  (``score_quantiles.healthy_served_span_max``, ``contract.blind_spots.span_floors``): every healthy stretch of M windows had a
  window scoring at least that. When the highest score of the latest M windows stays below ``TOO_GOOD_MARGIN`` x
  that (:class:`TooGoodWatch`), the window is a hit for the alert debounce like a window above the threshold
  (``pipeline.Pipeline``; the alert's reason says "too good"), counted in ``too_good_windows``.

* **a level shift too small for the reconstruction** (raw mode): the autoencoder scores a window's shape against a
  min-max scale of the whole training range, so one channel among several that sits a few of its own noise widths
  off its usual level adds little error (SKAB's valve-1 files 2, 4, 6: the flow drops 1-2 training spreads per row
  for 400 rows and the score does not move). The trainer writes, per channel not judged against its recent level,
  the mean and spread of the means of W consecutive training rows and the largest excursion any training window
  reached (manifest ``signal.window_means``, ``contract.blind_spots.window_means``); :class:`LevelWatch` gives each
  scored window the ratio of its channels' excursions to ``LEVEL_MARGIN`` x that largest one. The alert state
  machine takes the larger of it and score / threshold (``alerts.WindowResult.level``), so a shift raises, and
  clears, like a score; the alert's reason names the channel.

A bundle without these keys (trained before them) loads and serves as before, without the checks; the
pipeline says so once in the log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edge_agent.contract.blind_spots import FlatRuns, span_floors
from edge_agent.contract.bundle import WindowMeanFacts

#: A channel is stuck once its run of identical values is longer than this many times the longest one in training
#: ... (the longest run grows with the time watched: measured on the shared data, later runs reach 2.2x the training
#: one, NAB art_load_balancer_spikes' idle zeros, 155 samples against 69; docs/maintenance/alerts.md)
STUCK_FACTOR = 3.0
#: ... and than this many windows of samples (a slow, coarse channel repeats a value for a while: SKAB's flow rate
#: held one value 15 s after training held 5 s at most).
STUCK_MIN_WINDOWS = 2.0

#: Too good: the highest score of the latest M windows is below this share of the lowest one healthy data showed ...
#: (NAB artificial series, docs/maintenance/alerts.md: healthy windows came down to 0.57 x, one window of
#: art_noisy; the day without its jump of art_daily_nojump went to 0.31 x over 16 windows)
TOO_GOOD_MARGIN = 0.5
#: ... for spans whose healthy floor is at least this share of the threshold (below it the model reconstructs the
#: span almost perfectly anyway: a quiet stretch is not an absent pattern, e.g. art_load_balancer_spikes' idle hours)
TOO_GOOD_MIN_FLOOR = 0.1

#: Level: a window's mean strays this many times farther from the training mean (in spreads of the training windows'
#: means) than the farthest training window did, before it counts like a score at the threshold. Longer watching
#: finds larger excursions than the training rows held (the stuck check's 2.2x, above); 2 leaves that room.
LEVEL_MARGIN = 2.0


def stuck_limits(longest: tuple[int, ...], changed: tuple[bool, ...], window_samples: int) -> np.ndarray:
    """(C,) int64: the shortest run of identical values (samples) that makes each channel stuck: longer than
    ``STUCK_FACTOR`` x its longest run in training and than ``STUCK_MIN_WINDOWS`` windows; 0 = never judged (the
    channel never changed in training: flat is its normal)."""
    floor = math.ceil(STUCK_MIN_WINDOWS * window_samples)
    return np.array([max(math.floor(STUCK_FACTOR * m), floor, 1) + 1 if ch else 0
                     for m, ch in zip(longest, changed, strict=True)], np.int64)


@dataclass(frozen=True)
class Stuck:
    """One channel that is stuck now: ``samples`` identical values of ``value`` in a row (``seconds`` of them when the
    sample rate is known), where training never held one value longer than ``trained`` samples; the sensor has
    ``of_channels`` channels."""

    channel: str
    samples: int
    value: float
    trained: int
    seconds: float | None
    of_channels: int

    def describe(self) -> str:
        """In words, for a maintenance person."""
        span = f"{self.samples} samples" + ("" if self.seconds is None else f" ({_duration(self.seconds)})")
        return (f"channel {self.channel} has read {self.value:.6g} for {span}; the training data never held one value "
                f"longer than {self.trained} sample{'' if self.trained == 1 else 's'}")


class StuckWatch:
    """The stuck-channel check of one sensor: its :class:`FlatRuns` against :func:`stuck_limits` (scoring thread).

    Args:
        channels: the channel names, in frame column order.
        limits: (C,) int64 from :func:`stuck_limits` (0: never judged), or None: no check (an old bundle).
        trained: per channel the longest run of the training rows (for the reason).
        sample_rate: Hz, to say how long (None: in samples only).
    """

    def __init__(self, channels: tuple[str, ...], limits: np.ndarray | None, trained: tuple[int, ...],
                 sample_rate: float | None) -> None:
        self.channels = channels
        self.limits = limits
        self.trained = trained
        self.sample_rate = sample_rate
        self.runs = FlatRuns(len(channels))
        self._stuck = np.zeros(len(channels), bool)

    def reset(self) -> None:
        """A break in the stream: the runs start over (a channel stuck across it is found again one limit later)."""
        self.runs.reset()
        self._stuck[:] = False

    def push(self, x: np.ndarray) -> int:
        """Account for the rows ``x`` (n, C) that follow the last ones; returns the channels that froze in them (a
        run that reached its limit and was not stuck before)."""
        if self.limits is None:
            return 0
        longest = self.runs.push(x)
        judged = self.limits > 0
        froze = judged & (longest >= self.limits) & ~self._stuck  # also those that moved again inside these rows
        self._stuck = judged & (self.runs.run >= self.limits)
        return int(froze.sum())

    def stuck(self) -> list[Stuck]:
        """The channels stuck now."""
        out = []
        for c in np.flatnonzero(self._stuck):
            n = int(self.runs.run[c])
            out.append(Stuck(self.channels[c], n, float(self.runs.last[c]), int(self.trained[c]),
                             n / self.sample_rate if self.sample_rate else None, len(self.channels)))
        return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class TooGood(NamedTuple):
    """Why a window is too good: the highest score of the latest ``span`` windows, ``highest``, is below ``limit``."""

    span: int
    highest: float
    limit: float

    def describe(self) -> str:
        which = "the window" if self.span == 1 else f"the last {self.span} windows"
        return (f"too good: {which} score at most {self.highest:.4g}, below {self.limit:.4g}, lower than any healthy "
                "stretch as long: an expected pattern did not happen")


class TooGoodWatch:
    """The too-good check of one sensor (scoring thread).

    Args:
        floors: ((M, lowest max over M healthy windows), ...) from the bundle (empty: no check, an old bundle).
        threshold: the bundle's threshold; the limits follow the threshold in force (a device's calibration
            scales them), see :meth:`calibrated`.
    """

    def __init__(self, floors: tuple[tuple[int, float], ...], threshold: float) -> None:
        self.spans = np.array([m for m, f in floors if f >= TOO_GOOD_MIN_FLOOR * threshold], np.int64)
        # (S,) the limits as shares of the threshold: a device threshold scales them
        self.ratios = np.array([TOO_GOOD_MARGIN * f / threshold for m, f in floors
                                if f >= TOO_GOOD_MIN_FLOOR * threshold], np.float64)
        self.device: np.ndarray | None = None  # (S,) limits from a device calibration's own windows, or None
        size = int(self.spans.max()) if self.spans.size else 1
        self._recent = np.zeros(size, np.float64)
        self._n = 0  # windows seen since the last reset (the ring holds the latest min(n, size))

    @property
    def active(self) -> bool:
        return self.spans.size > 0

    def reset(self) -> None:
        """Forget the latest windows (a restarted sender, a model swap)."""
        self._n = 0

    def calibrated(self, scores: np.ndarray) -> None:
        """A device calibration scored ``scores`` (N,) healthy windows (and set the threshold in force from them): where
        a span fits twice in them, its limit is also at most ``TOO_GOOD_MARGIN`` x their own floor (the device's
        healthy pattern)."""
        s = np.asarray(scores, np.float64)
        own = span_floors(s)
        floors = dict(zip(own["windows"], own["lowest"], strict=True))
        self.device = np.array([TOO_GOOD_MARGIN * floors[m] if m in floors else math.inf for m in self.spans])

    def update(self, score: float, threshold: float) -> TooGood | None:
        """Add a scored window (``threshold`` in force); the evidence when it is too good, else None."""
        if not self.active:
            return None
        size = self._recent.size
        self._recent[self._n % size] = score if math.isfinite(score) else math.inf
        self._n += 1
        for i, m in enumerate(self.spans):
            if self._n < m:
                break
            idx = (self._n - 1 - np.arange(m)) % size
            highest = float(self._recent[idx].max())
            limit = self.ratios[i] * threshold
            if self.device is not None:
                limit = min(limit, float(self.device[i]))
            if highest < limit:
                return TooGood(int(m), highest, limit)
        return None


@dataclass(frozen=True)
class Level:
    """A scored window's level check: ``ratio`` (the largest channel excursion over its limit: > 1 is a hit, like a
    score over the threshold), on ``channel``: the mean of the last ``rows`` rows ``value`` against the training mean
    ``mean``, ``z`` spreads away (``trained``: the farthest a training window went)."""

    ratio: float
    channel: str
    value: float
    mean: float
    z: float
    trained: float
    rows: int

    def describe(self) -> str:
        """In words, for a maintenance person."""
        side = "above" if self.value > self.mean else "below"
        return (f"channel {self.channel}: the mean of the last {self.rows} rows, {self.value:.6g}, is {self.z:.3g} "
                f"training spreads {side} its training mean {self.mean:.6g} (no training window went past "
                f"{self.trained:.3g}): a level shift; check the process or the sensor")


class LevelWatch:
    """Judges each scored window's channel means against the training windows' (``signal.window_means``; raw mode)."""

    def __init__(self, facts: WindowMeanFacts | None, channels: tuple[str, ...]) -> None:
        self.facts = facts
        self.channels = channels

    def check(self, samples: np.ndarray) -> Level | None:
        """The level of a window's raw rows (n, C) (its last ``window`` rows); None without facts, or when the window
        is shorter or holds a non-finite value in a judged channel."""
        f = self.facts
        if f is None or samples.ndim != 2 or samples.shape[0] < f.window or samples.shape[1] <= max(f.channels):
            return None
        m = samples[-f.window:, list(f.channels)].astype(np.float64).mean(axis=0)
        if not np.isfinite(m).all():
            return None
        with np.errstate(over="ignore"):
            z = np.abs(m - f.mean) / f.sd
            r = z / (LEVEL_MARGIN * np.maximum(f.max_z, 1.0))
        if not np.isfinite(r).all():
            return None
        i = int(np.argmax(r))
        c = f.channels[i]
        return Level(float(r[i]), self.channels[c], float(m[i]), float(f.mean[i]), float(z[i]), float(f.max_z[i]),
                     f.window)
