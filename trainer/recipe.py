"""Data-aware defaults: the representation ``trainer train`` picks when the options leave it open.

The rule reads properties of the data, never its name or source (numpy only)::

    sample rate >= 1 kHz (raw vibration)                                  -> features mode
        blocks of 0.1 s, or a tenth of a snapshot when snapshots are shorter than 1 s
        per block and channel: rms, kurtosis, peak, crest + 5 octave band energies up to Nyquist
        window: 10 blocks (one snapshot of <= 1 s: exactly one window per snapshot), hop = window
    otherwise (tables of slow values: one row per snapshot, per minute, per second)  -> raw mode
        no clear period: windows of 10 rows, hop = window; in a table of several channels, the channels that
        change slowly (row-to-row changes under half their spread over the training rows: a temperature, a
        level) while others do not are judged against their own recent level (an exponential average over a
        quarter of the training rows): over a short training period such a level drifts, so where it sits says
        little, and a process that settles a little elsewhere after an event must not look anomalous for ever
        a clear period P of 12..MAX_PERIOD rows in the training rows: windows of P/2 rows (shorter when
        the training rows are few: see _periodic_window), hop P/24
    training windows at hop 1 (``train_hop``)
    model: LSTM up to LSTM_MAX_STEPS steps per window, Conv1D beyond (an unrolled LSTM grows with T)

Short served windows do not overlap (``hop == window``): one odd sample or row then lands in one scored
window, not in ``window`` of them, so the alert debounce (k of n windows) counts independent evidence,
and the window count grows in proportion to the data. A periodic table needs context: a window of half a
period sees the shape of the cycle, and training on a short healthy start (NAB's probation: 2 days of a
daily cycle) still covers every phase of such a window several times (a full-period window: about once);
it is scored every 1/24 of a period so that k of n windows stay a short delay.
Every choice can be overridden by an explicit option; :class:`Recipe` records what was chosen and why,
for the log and the manifest.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from edge_agent.contract.recordings import Recording

log = logging.getLogger(__name__)

#: Sample rates at or above this are raw vibration: summarised per block, not modelled sample by sample.
HIGH_RATE_HZ = 1000.0
#: Block length of the features representation, seconds.
BLOCK_S = 0.1
#: Blocks per window (features mode) and rows per window (raw mode, no period found).
STEPS_PER_WINDOW = 10
#: Snapshots at most this long (s) count as snapshots (bursts); longer segments as continuous streams.
SNAPSHOT_MAX_S = 10.0
#: Per-block features of each channel (see ``edge_agent.contract.preprocess.FEATURE_NAMES``).
FEATURES = ("rms", "kurtosis", "peak", "crest")
#: Octave bands per channel, the highest ending at Nyquist; the lowest starts at 0 Hz.
OCTAVE_BANDS = 5
#: Raw windows longer than this many steps use the Conv1D autoencoder.
LSTM_MAX_STEPS = 64
#: Periods considered (rows), and what makes a period clear: an autocorrelation peak of at least
#: PERIOD_MIN_ACF that rises at least PERIOD_MIN_PROMINENCE above the lowest autocorrelation before it
#: (a slowly wandering series has a high but featureless autocorrelation; a cycle dips between repeats).
MIN_PERIOD, MAX_PERIOD, PERIOD_MIN_ACF, PERIOD_MIN_PROMINENCE = 12, 512, 0.5, 0.5
#: The trainer's default validation fraction (trainer.train.FitConfig), for the phase-coverage rule.
VALIDATION_FRACTION = 0.2
#: A table longer than this without a rate or times may be raw vibration (said in the log).
LONG_TABLE_ROWS = 100_000
#: Most training windows (the training hop grows beyond this).
MAX_TRAIN_WINDOWS = 20000
#: A channel is slow when its row-to-row changes are below this share of sqrt(2) x its spread over the training
#: rows (sqrt(1 - lag-1 autocorrelation): white noise reads 1, a drifting level near 0).
SLOW_CHANGE = 0.5
#: The recent level of a slow channel averages over this share of the training rows.
RELATIVE_SHARE = 0.25


@dataclass(frozen=True)
class Recipe:
    """A complete representation: preprocessing, model architecture, hops, and the reasons."""

    mode: str
    window: int
    hop: int
    block: int = 1
    features: tuple[str, ...] = ()
    fft_bands: tuple[tuple[float, float], ...] = ()
    architecture: str = "lstm"
    train_hop: int = 1
    relative: tuple[str, ...] = ()
    relative_rows: float = 0.0
    rule: str = ""
    reasons: tuple[str, ...] = ()
    overridden: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"], d["reasons"], d["overridden"] = list(self.features), list(self.reasons), list(self.overridden)
        d["relative"] = list(self.relative)
        d["fft_bands"] = [list(b) for b in self.fft_bands]
        return d

    def describe(self) -> str:
        what = (f"{self.mode} mode, window {self.window} x hop {self.hop} steps" +
                (f", blocks of {self.block} samples, features {list(self.features)} + {len(self.fft_bands)} bands"
                 if self.mode == "features" else "") + f", {self.architecture}")
        return f"{what} ({self.rule}: {'; '.join(self.reasons)})"


def octave_bands(sample_rate: float, n: int = OCTAVE_BANDS) -> tuple[tuple[float, float], ...]:
    """``n`` octave bands ending at Nyquist, the lowest from 0 Hz: 25.6 kHz -> 0-800, ..., 6400-12800 Hz."""
    nyquist = sample_rate / 2
    edges = [0.0] + [nyquist / 2 ** k for k in range(n - 1, -1, -1)]
    return tuple((float(a), float(b)) for a, b in zip(edges[:-1], edges[1:], strict=True))


def dominant_period(x: np.ndarray, lo: int = MIN_PERIOD, hi: int = MAX_PERIOD) -> tuple[int | None, float, float]:
    """The period (rows) of (n, C) data: the shortest lag in [lo, min(hi, n // 2)] whose autocorrelation
    peak (channels summed) reaches 80 % of the highest, with that autocorrelation and its prominence (peak
    minus the lowest autocorrelation at smaller lags); (None, best, 0) when there is no local peak."""
    x = np.asarray(x, np.float64)
    x = x.reshape(len(x), -1) - x.reshape(len(x), -1).mean(axis=0)
    n = len(x)
    hi = min(hi, n // 2)
    if hi <= lo:
        return None, 0.0, 0.0
    spectrum = np.fft.rfft(x, n=2 * n, axis=0)
    acf = np.fft.irfft(np.abs(spectrum) ** 2, axis=0)[: hi + 2].sum(axis=1)
    if acf[0] <= 0:
        return None, 0.0, 0.0
    acf = acf / acf[0] * n / (n - np.arange(len(acf)))  # unbiased: each lag averaged over its own pairs
    inner = acf[lo:hi + 1]
    peaks = np.flatnonzero((inner >= acf[lo - 1:hi]) & (inner >= acf[lo + 1:hi + 2]))
    if peaks.size == 0:
        return None, float(inner.max()), 0.0
    # the shortest lag whose peak is nearly as high as the highest: the period, not one of its multiples
    top = inner[peaks].max()
    if top <= 0:
        return None, float(top), 0.0
    best = lo + int(peaks[np.flatnonzero(inner[peaks] >= 0.8 * top)[0]])
    return best, float(acf[best]), float(acf[best] - acf[:best].min())


def is_high_rate(rec: Recording) -> bool:
    return bool(rec.sample_rate and rec.sample_rate >= HIGH_RATE_HZ)


def choose(rec: Recording, training: Recording | None = None) -> Recipe:
    """The default representation for ``rec`` (``training``: its training part, for the period test)."""
    training = training or rec
    if is_high_rate(rec):
        return _vibration(rec)
    return _table(training)


def _vibration(rec: Recording) -> Recipe:
    sr = float(rec.sample_rate)
    lengths = np.array([seg.n_rows for seg in rec.segments])
    typical = int(np.median(lengths))
    snapshots = len(lengths) > 1 and typical / sr <= SNAPSHOT_MAX_S
    block = int(round(BLOCK_S * sr))
    reasons = [f"{sr:g} Hz is raw vibration (>= {HIGH_RATE_HZ:g} Hz): one step per block"]
    if snapshots:
        reasons.append(f"{len(lengths)} snapshots of {typical} samples ({typical / sr:g} s)")
        if typical < STEPS_PER_WINDOW * block:
            block = max(2, typical // STEPS_PER_WINDOW)
            reasons.append(f"blocks of a tenth of a snapshot ({block} samples): one window per snapshot")
        else:
            reasons.append(f"blocks of {BLOCK_S:g} s ({block} samples)")
    else:
        reasons.append(f"a continuous stream: blocks of {BLOCK_S:g} s ({block} samples)")
    window = STEPS_PER_WINDOW
    bands = octave_bands(sr)
    reasons.append(f"features {list(FEATURES)} and {len(bands)} octave bands up to {sr / 2:g} Hz per channel")
    total_blocks = int((lengths // block).sum())
    train_hop = max(1, int(np.ceil(total_blocks / MAX_TRAIN_WINDOWS)))
    return Recipe(mode="features", window=window, hop=window, block=block, features=FEATURES, fft_bands=bands,
                  architecture="lstm", train_hop=min(train_hop, window), rule="vibration", reasons=tuple(reasons))


def _periodic_window(period: int, rows: int) -> int:
    """Half a period, or less when the training rows are few: the windows the model is fitted on (the first
    80 % of the training windows, less the ones overlapping validation) must start at every phase of the
    cycle, i.e. ``(1 - VALIDATION) * (rows - w) - w >= period``; never below a quarter period or 10 rows."""
    fit = 1.0 - VALIDATION_FRACTION
    fits = int((fit * rows - period) / (1.0 + fit))
    return max(STEPS_PER_WINDOW, period // 4, min(period // 2, fits))


def _table(training: Recording) -> Recipe:
    rate = (f"{training.sample_rate:g} Hz" if training.sample_rate else
            "rows with their own times" if any(s.row_times is not None for s in training.segments) else "no sample rate")
    reasons = [f"{rate}: a table of slow values, one step per row"]
    if not training.sample_rate and all(s.row_times is None for s in training.segments) \
            and training.n_rows > LONG_TABLE_ROWS:
        log.warning("%d rows without a sample rate or times are modelled row by row; if this is raw vibration, "
                    "give its rate (--sample-rate HZ) for the features representation", training.n_rows)
    longest = max((seg for seg in training.segments), key=lambda s: s.n_rows, default=None)
    period, acf, prominence = (None, 0.0, 0.0) if longest is None else dominant_period(longest.data)
    window = hop = STEPS_PER_WINDOW
    relative: tuple[str, ...] = ()
    relative_rows = 0.0
    if (period is not None and acf >= PERIOD_MIN_ACF and prominence >= PERIOD_MIN_PROMINENCE
            and longest.n_rows >= 2 * period):
        window, hop = _periodic_window(period, longest.n_rows), max(1, period // 24)
        reasons.append(f"the training rows repeat every {period} rows (autocorrelation {acf:.2f}, prominence "
                       f"{prominence:.2f}): windows of half a period, scored every {hop} rows")
    else:
        reasons.append(f"no clear period in the training rows (autocorrelation {acf:.2f}, prominence {prominence:.2f}):"
                       f" windows of {window} rows")
        relative, relative_rows, why = _relative_channels(training, longest)
        if why:
            reasons.append(why)
    architecture = "lstm" if window <= LSTM_MAX_STEPS else "conv1d"
    if architecture == "conv1d":
        reasons.append(f"{window} steps > {LSTM_MAX_STEPS}: Conv1D autoencoder (an unrolled LSTM grows with T)")
    n_windows = sum(max(0, seg.n_rows - window + 1) for seg in training.segments)
    train_hop = max(1, int(np.ceil(n_windows / MAX_TRAIN_WINDOWS)))
    return Recipe(mode="raw", window=window, hop=hop, architecture=architecture, train_hop=min(train_hop, hop),
                  rule="table", reasons=tuple(reasons), relative=relative, relative_rows=relative_rows)


def slowness(x: np.ndarray) -> np.ndarray:
    """(C,) row-to-row change of (n, C) rows against sqrt(2) x their spread (NaN rows ignored): about 1 for
    noise, near 0 for a level that drifts; inf for a constant channel (nothing to judge)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    spread = np.nanstd(x, axis=0)
    change = np.nanstd(np.diff(x, axis=0), axis=0) if len(x) > 2 else np.full(x.shape[1], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = change / (np.sqrt(2.0) * spread)
    return np.where(spread > 0, np.nan_to_num(out, nan=np.inf), np.inf)


def _relative_channels(training: Recording, longest) -> tuple[tuple[str, ...], float, str]:
    """The slow channels of a table of several channels of which some are not slow (module docstring)."""
    if longest is None or len(training.channels) < 2 or longest.n_rows < 4 * STEPS_PER_WINDOW:
        return (), 0.0, ""
    s = slowness(longest.data)
    slow = [c for c, v in zip(training.channels, s, strict=True) if v < SLOW_CHANGE]
    if not slow or len(slow) == len(training.channels):
        return (), 0.0, ""
    rows = max(float(STEPS_PER_WINDOW), round(RELATIVE_SHARE * training.n_rows))
    values = ", ".join(f"{c} {v:.2f}" for c, v in zip(training.channels, s, strict=True) if v < SLOW_CHANGE)
    return tuple(slow), rows, (f"{', '.join(slow)} change slowly (row-to-row change / spread: {values}; < "
                               f"{SLOW_CHANGE:g}): judged against their own recent level, an average over {rows:g} "
                               f"rows ({RELATIVE_SHARE:.0%} of the training rows)")


def resolve(rec: Recording, training: Recording | None = None, **explicit) -> Recipe:
    """:func:`choose`, with every option given explicitly (not None) taking precedence.

    explicit: any of ``mode``, ``window``, ``hop``, ``block``, ``features``, ``fft_bands`` (``()``: none),
    ``architecture``. An explicit ``mode`` that differs from the rule's gets that mode's own defaults
    (features: blocks of 0.1 s or 10 rows without a sample rate; raw: windows of 10 rows).
    A window given without a hop keeps ``hop == window``.
    """
    given = {k: v for k, v in explicit.items() if v is not None}  # () is explicit: none (e.g. no FFT bands)
    base = choose(rec, training)
    if given.get("mode") and given["mode"] != base.mode:
        if given["mode"] == "features":
            block = int(round(BLOCK_S * rec.sample_rate)) if rec.sample_rate else STEPS_PER_WINDOW
            bands = octave_bands(rec.sample_rate) if is_high_rate(rec) else ()
            base = Recipe(mode="features", window=STEPS_PER_WINDOW, hop=STEPS_PER_WINDOW, block=max(2, block),
                          features=FEATURES, fft_bands=bands, rule="features (explicit)",
                          reasons=(f"--mode features: blocks of {max(2, block)} samples",))
        else:
            base = Recipe(mode="raw", window=STEPS_PER_WINDOW, hop=STEPS_PER_WINDOW, rule="raw (explicit)",
                          reasons=(f"--mode raw: windows of {STEPS_PER_WINDOW} samples",))
    fields = base.to_dict()
    fields.update({k: v for k, v in given.items() if k != "mode"})
    if "window" in given and "hop" not in given:
        fields["hop"] = given["window"]
    if "architecture" not in given and "window" in given:
        fields["architecture"] = "lstm" if fields["window"] <= LSTM_MAX_STEPS else "conv1d"
    if fields["mode"] == "raw":
        fields["block"], fields["features"], fields["fft_bands"] = 1, (), ()
    fields["train_hop"] = min(fields["train_hop"], fields["hop"])
    fields["features"] = tuple(fields["features"])
    fields["relative"] = tuple(fields.get("relative", ()))
    fields["fft_bands"] = tuple(tuple(b) for b in fields["fft_bands"])
    fields["reasons"] = tuple(fields["reasons"])
    fields["overridden"] = tuple(sorted(given))
    return Recipe(**fields)
