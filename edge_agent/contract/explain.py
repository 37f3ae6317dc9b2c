"""Which channels and features carry a window's reconstruction error (numpy only; trainer and gateway).

The score of a window is the mean of ``|x - x̂|`` over its T steps and F features (``preprocess.reconstruction_error``),
so it splits exactly into per-feature parts::

    feature_errors(scaled (T, F), reconstruction (T, F)) -> e (F,)     e_f = mean_t |x_tf - x̂_tf|,  score = mean_f e_f
    share_f = e_f / sum(e)                      the feature's part of the window's error
    ratio_f = e_f / healthy_f                   against its healthy level (the bundle's ``explain.healthy``:
                                                the median e_f over the healthy validation windows)

Channels add up their features (raw mode: one feature per channel; features mode: the channel's statistics and
bands). The gateway computes this from the served model's own reconstruction of the window that raised the alert:
no second model, no second inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.contract.preprocess import PreprocessSpec

#: Features and channels listed in an explanation (the largest shares).
TOP = 3
#: The manifest key (a table) and its fields.
MANIFEST_KEY = "explain"
_EPS = 1e-12


def feature_errors(scaled: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """Mean absolute error per feature over a window's steps: (T, F) x2 -> (F,) float64; or (W, T, F) -> (W, F)."""
    diff = np.abs(np.asarray(scaled, np.float64) - np.asarray(reconstruction, np.float64))
    return diff.mean(axis=-2)


def healthy_levels(errors: np.ndarray) -> list[float]:
    """The manifest's ``explain.healthy``: median per-feature error of healthy windows, (W, F) -> F floats."""
    e = np.asarray(errors, np.float64)
    if e.ndim != 2 or e.shape[0] == 0 or not np.isfinite(e).all():
        raise ValueError(f"healthy feature errors must be a finite (W, F) array with W >= 1, got shape {e.shape}")
    return [float(v) for v in np.median(e, axis=0)]


def feature_channel(spec: PreprocessSpec) -> np.ndarray:
    """(F,) int: the channel index of each model feature, in ``spec.feature_names`` order."""
    c = len(spec.channels)
    if spec.mode == "raw":
        return np.arange(c)
    per, bands = len(spec.features), len(spec.fft_bands)
    return np.concatenate([np.repeat(np.arange(c), per), np.repeat(np.arange(c), bands)]).astype(int)


@dataclass(frozen=True)
class Part:
    """One channel or feature: its share of the window's error (0..1) and its ratio to its healthy level
    (None when the bundle has no healthy levels)."""

    name: str
    share: float
    ratio: float | None

    def to_dict(self) -> dict:
        return {"name": self.name, "share": round(self.share, 4),
                "ratio": None if self.ratio is None else round(self.ratio, 3)}

    def words(self) -> str:
        return f"{self.name} {self.share:.0%}" + ("" if self.ratio is None else f" ({self.ratio:.1f}x healthy)")


@dataclass(frozen=True)
class Explanation:
    """The channels (all, largest share first) and the top features of one window's error."""

    channels: tuple[Part, ...]
    features: tuple[Part, ...]

    def to_dict(self) -> dict:
        return {"channels": [p.to_dict() for p in self.channels], "features": [p.to_dict() for p in self.features],
                "summary": self.summary()}

    def summary(self) -> str:
        """One line for people: which channel carries the error, and the features that stand out."""
        if not self.channels:
            return "no reconstruction error to explain"
        lead = self.channels[0]
        text = f"{lead.name} carries {lead.share:.0%} of the error"
        if lead.ratio is not None:
            text += f" ({lead.ratio:.1f}x its healthy level)"
        others = [p for p in self.channels[1:TOP] if p.share >= 0.1]
        if others:
            text += "; then " + ", ".join(p.words() for p in others)
        if len(self.features) and self.features[0].name != lead.name:
            text += "; top features: " + ", ".join(p.words() for p in self.features)
        return text


def explain(errors: np.ndarray, spec: PreprocessSpec, healthy: list[float] | np.ndarray | None = None,
            top: int = TOP) -> Explanation:
    """Explanation of one window from its per-feature errors (F,) (``feature_errors``); ``healthy`` (F,) or None."""
    e = np.asarray(errors, np.float64)
    names = spec.feature_names
    if e.shape != (len(names),):
        raise ValueError(f"expected {len(names)} feature errors, got shape {e.shape}")
    e = np.where(np.isfinite(e), e, 0.0)
    total = float(e.sum())
    base = None
    if healthy is not None:
        base = np.asarray(healthy, np.float64)
        if base.shape != e.shape or not np.isfinite(base).all():
            base = None  # a manifest from another representation: shares only
    owner = feature_channel(spec)
    per_channel = np.bincount(owner, weights=e, minlength=len(spec.channels))
    base_channel = None if base is None else np.bincount(owner, weights=base, minlength=len(spec.channels))

    def part(name: str, value: float, healthy_value: float | None) -> Part:
        share = value / total if total > _EPS else 0.0
        ratio = None if healthy_value is None else value / max(healthy_value, _EPS)
        return Part(name, float(share), None if ratio is None else float(ratio))

    channels = tuple(part(spec.channels[i], float(per_channel[i]), None if base_channel is None else float(base_channel[i]))
                     for i in np.argsort(-per_channel, kind="stable"))
    features = tuple(part(names[i], float(e[i]), None if base is None else float(base[i]))
                     for i in np.argsort(-e, kind="stable")[:top])
    return Explanation(channels, features)
