"""The windows the parity gate scores: both sides of the threshold, not only healthy ones.

A gate measured on healthy held-out windows alone says nothing about the decisions that raise alerts
(a bundle can agree on 238 of 238 windows, none of them above the threshold). So the parity set is:

* ``held_out``: validation windows and everything after ``--train-until`` (failing data when the
  recording has it, labelled anomalies included);
* ``synthetic``: anomalous windows made from held-out healthy ones, in the scaled step domain the
  model sees (1.0 = the training range of a feature), each kind on a ladder of amplitudes so that
  some land below, some near and some far above the threshold:

  ============  ==============================================================================
  impulses      every 3rd step of one feature raised by the amplitude (an impact train)
  level_shift   one feature raised by the amplitude over the whole window
  noise_burst   Gaussian noise of that standard deviation on every feature, middle half of the window
  dropped       one channel's features replaced by what a silent sensor gives (the scaled value of
                0); no amplitude
  ============  ==============================================================================

Everything is seeded; nothing here modifies its inputs.
"""

from __future__ import annotations

import numpy as np

from edge_agent.contract.preprocess import MinMaxScaler, PreprocessSpec

#: Amplitudes (scaled units) of the synthetic anomalies: from inside the healthy spread to far beyond it.
AMPLITUDES = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
KINDS = ("impulses", "level_shift", "noise_burst", "dropped")
#: Healthy windows the synthetic set is made from (evenly spaced over the held-out ones).
BASE_WINDOWS = 40


def channel_features(spec: PreprocessSpec) -> dict[str, np.ndarray]:
    """Feature indices (into F) of each channel: raw mode one per channel, features mode ``<channel>.*``."""
    names = spec.feature_names
    return {ch: np.array([j for j, n in enumerate(names) if n == ch or n.startswith(f"{ch}.")], np.int64)
            for ch in spec.channels}


def synthetic_anomalies(healthy: np.ndarray, spec: PreprocessSpec, scaler: MinMaxScaler,
                        seed: int = 0, base_windows: int = BASE_WINDOWS) -> tuple[np.ndarray, list[str]]:
    """Anomalous versions of scaled healthy windows.

    healthy: (W, T, F) float32 scaled windows. Returns (S, T, F) float32 windows and S labels
    ``"<kind>:<amplitude>"`` (``"dropped:<channel>"``).
    """
    if len(healthy) == 0:
        return np.empty((0, spec.window, spec.n_features), np.float32), []
    rng = np.random.default_rng(seed)
    pick = np.unique(np.linspace(0, len(healthy) - 1, min(len(healthy), base_windows)).round().astype(np.int64))
    base = healthy[pick]
    _, steps, n_features = base.shape
    silent = scaler.transform(np.zeros((1, n_features), np.float32))[0]  # (F,) what a zero signal scales to
    out, labels = [], []
    for amp in AMPLITUDES:
        for kind in ("impulses", "level_shift", "noise_burst"):
            w = base.copy()
            feature = rng.integers(0, n_features, size=len(w))
            rows = np.arange(len(w))
            if kind == "impulses":
                w[rows[:, None], np.arange(0, steps, 3)[None, :], feature[:, None]] += amp
            elif kind == "level_shift":
                w[rows, :, feature] += amp
            else:
                lo, hi = steps // 4, max(steps // 4 + 1, 3 * steps // 4)
                w[:, lo:hi, :] += rng.normal(0.0, amp, size=w[:, lo:hi, :].shape).astype(np.float32)
            out.append(w)
            labels += [f"{kind}:{amp:g}"] * len(w)
    for ch, idx in channel_features(spec).items():
        if idx.size == 0:
            continue
        w = base.copy()
        w[:, :, idx] = silent[idx]
        out.append(w)
        labels += [f"dropped:{ch}"] * len(w)
    return np.concatenate(out).astype(np.float32), labels
