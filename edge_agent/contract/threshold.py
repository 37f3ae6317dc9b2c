"""Alarm threshold calibration on healthy anomaly scores (numpy only).

Every method takes the reconstruction errors of healthy *validation* windows, ``(n,)`` float,
and returns a :class:`ThresholdResult` whose ``method``, ``value`` and ``params`` go into the
bundle manifest unchanged. The default is ``mean_std`` (docs/central/train.md, "Threshold", says why)::

    quantile    value = empirical q-quantile (default q = 0.995)
    max_margin  value = max(scores) * margin (default margin = 1.1)
    mean_std    value = mean + k * std (default k = 4)
    pot         peaks over threshold (SPOT, Siffer et al., KDD 2017): fit a generalized Pareto
                distribution to the excesses over a high initial quantile (default 0.98) and
                extrapolate to a target risk (default 1e-3 = one false alarm per 1000 windows)

The GPD is fitted by maximum likelihood with Grimshaw's reduction to one parameter
(θ = ξ / σ), maximised over a grid of θ and refined by golden-section search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

METHODS = ("quantile", "max_margin", "mean_std", "pot")
DEFAULT_METHOD = "mean_std"

#: Fewest scores any method accepts.
MIN_SCORES = 10
#: Fewest excesses over the initial threshold POT accepts.
MIN_PEAKS = 10


@dataclass(frozen=True)
class ThresholdResult:
    method: str
    value: float
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "value": float(self.value), "params": dict(self.params)}


def _check(scores: np.ndarray, minimum: int = MIN_SCORES) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size < minimum:
        raise ValueError(f"threshold calibration needs at least {minimum} healthy scores, got {s.size}")
    if not np.isfinite(s).all():
        raise ValueError(f"threshold calibration got {int((~np.isfinite(s)).sum())} non-finite scores")
    return s


#: The smallest threshold: healthy scores that are all (nearly) zero come from a constant signal the model
#: reproduces exactly; any change of it is an anomaly, and the threshold must still be a positive number.
MIN_THRESHOLD = 1e-6


def _positive(value: float, method: str) -> float:
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{method} threshold came out as {value}")
    return float(max(value, MIN_THRESHOLD))


def quantile(scores: np.ndarray, q: float = 0.995) -> ThresholdResult:
    """Empirical q-quantile (linear interpolation). With n < 1/(1-q) scores it is close to the max."""
    if not 0.5 <= q < 1:
        raise ValueError(f"quantile q must be in [0.5, 1), got {q}")
    s = _check(scores)
    value = float(np.quantile(s, q))
    return ThresholdResult("quantile", _positive(value, "quantile"), {"q": q, "n": int(s.size)})


def max_margin(scores: np.ndarray, margin: float = 1.1) -> ThresholdResult:
    """max(scores) * margin."""
    if margin < 1:
        raise ValueError(f"margin must be >= 1, got {margin}")
    s = _check(scores)
    return ThresholdResult("max_margin", _positive(float(s.max() * margin), "max_margin"),
                           {"margin": margin, "max": float(s.max()), "n": int(s.size)})


def mean_std(scores: np.ndarray, k: float = 4.0) -> ThresholdResult:
    """mean + k * std (population std)."""
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    s = _check(scores)
    mean, std = float(s.mean()), float(s.std())
    return ThresholdResult("mean_std", _positive(mean + k * std, "mean_std"),
                           {"k": k, "mean": mean, "std": std, "n": int(s.size)})


def fit_gpd(excesses: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood generalized Pareto fit to positive excesses.

    excesses: (m,) float > 0. Returns (shape ξ, scale σ); ξ = 0 is the exponential tail.
    Uses Grimshaw's reduction: for θ = ξ/σ, ξ(θ) = mean(log1p(θ y)) and σ = ξ/θ, so the
    log-likelihood is a function of θ alone, maximised over θ in (-1/max(y), ∞).
    """
    y = np.asarray(excesses, dtype=np.float64).ravel()
    if y.size < 2 or (y <= 0).any() or not np.isfinite(y).all():
        raise ValueError("GPD fit needs at least two finite positive excesses")
    ymax, ymean = float(y.max()), float(y.mean())

    def loglik(theta: float) -> float:
        if abs(theta) < 1e-12 / ymax:  # the exponential limit
            return -y.size * math.log(ymean) - y.size
        t = np.log1p(theta * y)
        xi = float(t.mean())
        sigma = xi / theta
        if sigma <= 0 or xi == 0:
            return -math.inf
        return -y.size * math.log(sigma) - (1.0 + 1.0 / xi) * float(t.sum())

    lower = -1.0 / ymax * (1 - 1e-6)
    upper = 1e3 / ymean
    # grid: negative side linear towards the pole, positive side log-spaced; plus θ = 0
    grid = np.concatenate([lower * np.linspace(1.0, 1e-4, 60), [0.0], np.geomspace(1e-4 / ymean, upper, 120)])
    values = np.array([loglik(float(t)) for t in grid])
    best = int(np.nanargmax(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    golden = (math.sqrt(5) - 1) / 2
    a, b = float(lo), float(hi)
    for _ in range(80):
        c, d = b - golden * (b - a), a + golden * (b - a)
        if loglik(c) >= loglik(d):
            b = d
        else:
            a = c
    theta = (a + b) / 2
    if loglik(theta) < values[best]:
        theta = float(grid[best])
    if abs(theta) < 1e-12 / ymax:
        return 0.0, ymean
    xi = float(np.log1p(theta * y).mean())
    return xi, xi / theta


def pot(scores: np.ndarray, risk: float = 1e-3, init_quantile: float = 0.98) -> ThresholdResult:
    """Peaks over threshold (SPOT's initial step).

    t = init_quantile of the scores; the excesses over t are fitted with a GPD (ξ, σ); the
    threshold is the score exceeded with probability ``risk``:
    z = t + σ/ξ ((risk n / N_t)^(-ξ) - 1), or t - σ log(risk n / N_t) when ξ = 0.
    """
    if not 0 < risk < 1 - init_quantile:
        raise ValueError(f"risk must be in (0, {1 - init_quantile:g}) for init_quantile {init_quantile}, got {risk}")
    if not 0.5 <= init_quantile < 1:
        raise ValueError(f"init_quantile must be in [0.5, 1), got {init_quantile}")
    s = _check(scores, minimum=max(MIN_SCORES, math.ceil(MIN_PEAKS / (1 - init_quantile))))
    t = float(np.quantile(s, init_quantile))
    excesses = s[s > t] - t
    if excesses.size < MIN_PEAKS:
        raise ValueError(f"POT needs at least {MIN_PEAKS} scores above the initial threshold, got {excesses.size}")
    xi, sigma = fit_gpd(excesses)
    ratio = risk * s.size / excesses.size
    value = t - sigma * math.log(ratio) if xi == 0 else t + sigma / xi * (ratio ** (-xi) - 1.0)
    return ThresholdResult("pot", _positive(value, "pot"), {
        "risk": risk, "init_quantile": init_quantile, "init_threshold": t, "n": int(s.size),
        "n_peaks": int(excesses.size), "gpd_shape": xi, "gpd_scale": sigma,
    })


def with_floor(result: ThresholdResult, floor: float, reason: str) -> ThresholdResult:
    """``result`` raised to ``floor`` when it is lower; the method stays, the params say why and by how much."""
    if not floor > result.value:
        return result
    return ThresholdResult(result.method, float(floor),
                           dict(result.params) | {"method_value": float(result.value), "floor": float(floor),
                                                  "floor_from": reason})


def calibrate(scores: np.ndarray, method: str = DEFAULT_METHOD, **params) -> ThresholdResult:
    """Dispatch by method name; ``params`` are that method's keyword arguments."""
    funcs = {"quantile": quantile, "max_margin": max_margin, "mean_std": mean_std, "pot": pot}
    if method not in funcs:
        raise ValueError(f"unknown threshold method {method!r}; choose one of {list(METHODS)}")
    return funcs[method](scores, **params)


def score_quantiles(scores: np.ndarray, qs: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)) -> dict:
    """{"q0.5": value, ...} of a score distribution, for the manifest."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        return {}
    return {f"q{q:g}": float(np.quantile(s, q)) for q in qs}
