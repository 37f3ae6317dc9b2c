"""From raw samples to model input: the one preprocessing both trainer and agent run.

The data flow, with shapes (C channels, F features per step, T steps per window)::

    samples (n, C) ──steps()──► steps (n // block, F) ──windows()──► (W, T, F) ──scaler──► model input

* ``raw`` mode: a step is one sample (``block == 1``, ``F == C``); channels named in ``relative`` are taken
  against their own recent level: ``x_t - m_{t-1}``, ``m_t = m_{t-1} + (x_t - m_{t-1}) / relative_rows``, ``m``
  starting at the first sample of each contiguous run (:class:`RelativeLevel`; a slow process value whose level
  drifts over a short training period, e.g. a temperature, is judged by how it moves, not where it sits).
* ``features`` mode: a step summarises ``block`` consecutive samples per channel with the
  features named in the spec (and optional FFT band energies), ``F == C * per_channel``.

The whole pipeline is described by a :class:`PreprocessSpec` and a :class:`MinMaxScaler`, both
stored in the bundle manifest, so the gateway reproduces exactly what the trainer did.
Nothing here modifies an array it was given.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

#: Per-channel block features, in the order they are written. Kurtosis is *excess* kurtosis
#: (Gaussian noise reads 0); crest is peak / RMS.
FEATURE_NAMES = ("mean_abs", "rms", "std", "peak", "kurtosis", "crest")

_EPS = 1e-12


@dataclass(frozen=True)
class PreprocessSpec:
    """How samples become model steps and windows.

    ``window`` and ``hop`` count steps: samples in raw mode, blocks in features mode.
    ``fft_bands`` are ``(low_hz, high_hz)`` pairs; their mean spectral power per block is
    appended after the per-channel features (features mode only, needs ``sample_rate``).
    """

    mode: Literal["raw", "features"]
    channels: tuple[str, ...]
    window: int
    hop: int = 1
    block: int = 1
    features: tuple[str, ...] = ()
    fft_bands: tuple[tuple[float, float], ...] = ()
    sample_rate: float | None = None
    relative: tuple[str, ...] = ()
    relative_rows: float = 0.0
    feature_names: tuple[str, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        errors = []
        if self.mode not in ("raw", "features"):
            errors.append(f"mode must be 'raw' or 'features', not {self.mode!r}")
        if not self.channels:
            errors.append("at least one channel is needed")
        if self.window < 1 or self.hop < 1 or self.block < 1:
            errors.append(f"window, hop and block must be >= 1 (got {self.window}, {self.hop}, {self.block})")
        if self.mode == "raw" and (self.block != 1 or self.features or self.fft_bands):
            errors.append("raw mode takes no block, features or fft_bands")
        if self.relative:
            if self.mode != "raw":
                errors.append("relative channels are for raw mode only")
            unknown_rel = [c for c in self.relative if c not in self.channels]
            if unknown_rel:
                errors.append(f"relative channels {unknown_rel} are not among the channels")
            if not (self.relative_rows >= 1.0 and np.isfinite(self.relative_rows)):
                errors.append(f"relative_rows must be >= 1, got {self.relative_rows}")
        if self.mode == "features":
            if not self.features and not self.fft_bands:
                errors.append("features mode needs at least one feature or FFT band")
            unknown = [f for f in self.features if f not in FEATURE_NAMES]
            if unknown:
                errors.append(f"unknown features {unknown}; known: {list(FEATURE_NAMES)}")
            if self.block < 2:
                errors.append("features mode needs block >= 2 samples")
            if self.fft_bands:
                if not self.sample_rate:
                    errors.append("fft_bands need a sample_rate")
                else:
                    nyquist = self.sample_rate / 2
                    for low, high in self.fft_bands:
                        if not 0 <= low < high <= nyquist:
                            errors.append(f"FFT band ({low}, {high}) Hz must satisfy 0 <= low < high <= {nyquist}")
        if errors:
            raise ValueError("invalid preprocessing spec: " + "; ".join(errors))
        names = list(self.channels) if self.mode == "raw" else [
            f"{ch}.{name}" for ch in self.channels for name in self.features
        ] + [f"{ch}.band_{low:g}_{high:g}Hz" for ch in self.channels for low, high in self.fft_bands]
        object.__setattr__(self, "feature_names", tuple(names))

    @property
    def n_features(self) -> int:
        """F, the width of one step."""
        return len(self.feature_names)

    @property
    def window_samples(self) -> int:
        """Raw samples covered by one window."""
        return self.window * self.block

    @property
    def hop_samples(self) -> int:
        """Raw samples between the ends of consecutive windows."""
        return self.hop * self.block

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("feature_names")
        d["channels"] = list(self.channels)
        d["features"] = list(self.features)
        d["fft_bands"] = [list(b) for b in self.fft_bands]
        d["feature_names"] = list(self.feature_names)
        d["relative"] = list(self.relative)
        if not self.relative:  # a spec without relative channels is written as before (older gateways read it)
            del d["relative"], d["relative_rows"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        d = dict(d)
        d.pop("feature_names", None)
        known = {"mode", "channels", "window", "hop", "block", "features", "fft_bands", "sample_rate", "relative",
                 "relative_rows"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        return cls(
            mode=d["mode"],
            channels=tuple(d["channels"]),
            window=int(d["window"]),
            hop=int(d.get("hop", 1)),
            block=int(d.get("block", 1)),
            features=tuple(d.get("features", ())),
            fft_bands=tuple((float(lo), float(hi)) for lo, hi in d.get("fft_bands", ())),
            sample_rate=None if d.get("sample_rate") is None else float(d["sample_rate"]),
            relative=tuple(d.get("relative", ())),
            relative_rows=float(d.get("relative_rows", 0.0)),
        )


def steps(samples: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Turn contiguous samples into model steps.

    samples: (n, C) float; returns a new (n // block, F) float32 array. Trailing samples that
    do not fill a block are ignored. Callers must not pass samples that span a gap.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != len(spec.channels):
        raise ValueError(f"expected samples of shape (n, {len(spec.channels)}), got {x.shape}")
    if spec.mode == "raw":
        return RelativeLevel(spec).apply(x) if spec.relative else x.copy()
    n_blocks = x.shape[0] // spec.block
    # (n_blocks, C, block) float64, a channel-major copy: every reduction runs along contiguous memory (numpy
    # reduces a (block, C) array along its first axis C values at a time, ~20x slower at C = 2..4)
    blocks = x[: n_blocks * spec.block].reshape(n_blocks, spec.block, x.shape[1]).transpose(0, 2, 1)
    blocks = blocks.astype(np.float64, order="C")
    columns = [_block_feature(name, blocks) for name in spec.features]  # each (n_blocks, C)
    per_channel = np.stack(columns, axis=2) if columns else np.empty((n_blocks, x.shape[1], 0))
    out = per_channel.reshape(n_blocks, -1)  # channel-major: ch0.f0, ch0.f1, ..., ch1.f0, ...
    if spec.fft_bands:
        out = np.concatenate([out, _band_power(blocks, spec).reshape(n_blocks, -1)], axis=1)
    return out.astype(np.float32)


class RelativeLevel:
    """Raw-mode steps of the ``relative`` channels: each sample against the channel's recent level, an exponential
    average over ``relative_rows`` rows; the other channels pass unchanged. Keeps its level between calls (the
    gateway feeds it frame by frame); ``reset`` at a gap or restart, as window assembly restarts there: so for
    contiguous samples ``apply`` in pieces equals ``apply`` at once, and equals ``steps`` of the whole run.
    """

    def __init__(self, spec: PreprocessSpec) -> None:
        self.columns = np.array([spec.channels.index(c) for c in spec.relative], dtype=np.int64)
        self.alpha = 1.0 / float(spec.relative_rows) if spec.relative else 0.0
        self.level: np.ndarray | None = None  # (len(relative),) float64, None before the first sample

    def reset(self) -> None:
        self.level = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Samples (n, C) -> new (n, C) float32 steps."""
        out = np.array(x, dtype=np.float32)
        if not len(self.columns) or not len(out):
            return out
        cols = np.asarray(x, np.float64)[:, self.columns]
        level = cols[0].copy() if self.level is None else self.level
        rel = np.empty_like(cols)
        a = self.alpha
        for t in range(len(cols)):  # a slow table's rows: n is small; no per-sample allocation
            rel[t] = cols[t] - level
            level += a * rel[t]
        self.level = level
        out[:, self.columns] = rel
        return out


def _block_feature(name: str, blocks: np.ndarray) -> np.ndarray:
    """One feature per block and channel. blocks: (n_blocks, C, block) float64 -> (n_blocks, C)."""
    if name == "mean_abs":
        return np.abs(blocks).mean(axis=2)
    if name == "rms":
        return np.sqrt(np.square(blocks).mean(axis=2))
    if name == "std":
        return blocks.std(axis=2)
    if name == "peak":
        return np.abs(blocks).max(axis=2)
    if name == "kurtosis":
        centred = blocks - blocks.mean(axis=2, keepdims=True)
        squared = np.square(centred)  # x**4 is a pow() per value: ~80x slower than squaring twice
        m2 = squared.mean(axis=2)
        m4 = np.square(squared).mean(axis=2)
        return np.where(m2 > _EPS, m4 / np.maximum(m2, _EPS) ** 2 - 3.0, 0.0)
    if name == "crest":
        rms = np.sqrt(np.square(blocks).mean(axis=2))
        return np.where(rms > _EPS, np.abs(blocks).max(axis=2) / np.maximum(rms, _EPS), 0.0)
    raise ValueError(f"unknown feature {name!r}")


def _band_power(blocks: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Mean Hann-windowed spectral power per band. blocks (n_blocks, C, block) -> (n_blocks, C, bands)."""
    taper = np.hanning(spec.block)
    spectrum = np.abs(np.fft.rfft(blocks * taper, axis=2)) ** 2 / (spec.block * (taper**2).sum())
    freqs = np.fft.rfftfreq(spec.block, d=1.0 / spec.sample_rate)
    bands = []
    for low, high in spec.fft_bands:
        in_band = (freqs >= low) & (freqs < high)
        bands.append(spectrum[:, :, in_band].mean(axis=2) if in_band.any() else np.zeros(spectrum.shape[:2]))
    return np.stack(bands, axis=2)


def windows(step_array: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Sliding windows over steps: (S, F) -> new (W, window, F) float32 array, W = 1 + (S - window) // hop."""
    s = np.asarray(step_array, dtype=np.float32)
    if s.shape[0] < window:
        return np.empty((0, window, s.shape[1]), dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(s, window, axis=0)[::hop]  # (W, F, window)
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def window_ends(n_steps: int, window: int, hop: int) -> np.ndarray:
    """Index (exclusive) of the last step of each window produced by :func:`windows`."""
    if n_steps < window:
        return np.empty(0, dtype=np.int64)
    return np.arange(window, n_steps + 1, hop, dtype=np.int64)


@dataclass(frozen=True)
class MinMaxScaler:
    """Per-feature min-max scaling to [0, 1], fitted on training steps only.

    A feature that is constant in training gets a unit range so it maps to 0 instead of dividing by 0.
    """

    minimum: np.ndarray  # (F,) float32
    maximum: np.ndarray  # (F,) float32

    @classmethod
    def fit(cls, step_array: np.ndarray) -> MinMaxScaler:
        """Fit on (..., F) training data."""
        flat = np.asarray(step_array, dtype=np.float64).reshape(-1, np.shape(step_array)[-1])
        if flat.shape[0] == 0 or not np.isfinite(flat).all():
            raise ValueError("scaler needs finite training data")
        return cls(flat.min(axis=0).astype(np.float32), flat.max(axis=0).astype(np.float32))

    @property
    def span(self) -> np.ndarray:
        span = self.maximum - self.minimum
        return np.where(span > 0, span, np.float32(1.0)).astype(np.float32)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale (..., F) data; returns a new float32 array."""
        return ((np.asarray(x, dtype=np.float32) - self.minimum) / self.span).astype(np.float32)

    def transform_into(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Scale ``x`` into the preallocated ``out`` (same shape); ``x`` is left untouched."""
        np.subtract(x, self.minimum, out=out)
        np.divide(out, self.span, out=out)
        return out

    def to_dict(self) -> dict:
        return {"kind": "minmax", "min": self.minimum.tolist(), "max": self.maximum.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> MinMaxScaler:
        if d.get("kind") != "minmax":
            raise ValueError(f"unsupported scaler kind {d.get('kind')!r}")
        lo, hi = np.asarray(d["min"], np.float32), np.asarray(d["max"], np.float32)
        if lo.shape != hi.shape or lo.ndim != 1:
            raise ValueError("scaler min and max must be 1-D and the same length")
        return cls(lo, hi)


def reconstruction_error(inputs: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Anomaly score: mean absolute error per window. (W, T, F) x2 -> (W,) float64."""
    diff = np.abs(np.asarray(inputs, np.float64) - np.asarray(outputs, np.float64))
    return diff.reshape(diff.shape[0], -1).mean(axis=1)


def model_inputs(samples: np.ndarray, spec: PreprocessSpec, scaler: MinMaxScaler) -> np.ndarray:
    """Convenience: contiguous samples (n, C) -> scaled windows (W, T, F) float32."""
    return scaler.transform(windows(steps(samples, spec), spec.window, spec.hop))
