"""Baselines scored on the same windows as the autoencoder, so every figure is a ratio.

* ``rms``: per window and channel, RMS of the window's samples; z-score against the mean and standard
  deviation of the first 10 % of the windows; alarm after ``RUN`` windows in a row above ``K_SIGMA``.
* ``kurtosis``: the same with the excess kurtosis of the window's samples.
* ``tutorial``: the IMS LSTM-autoencoder tutorial's recipe: mean |x| per window and channel (one row per
  snapshot), an LSTM autoencoder over one step (units 16, 4), trained on the training part's windows,
  threshold = the largest training error; alarm after ``RUN`` windows in a row.

All three go through the gateway's own ``AlertStateMachine`` with ``k = n = RUN`` ("k in a row").
"""

from __future__ import annotations

import numpy as np

from edge_agent.alerts import AlertPolicy, AlertStateMachine, WindowResult
from edge_agent.contract.recordings import Recording

#: Baseline threshold: mean + K_SIGMA standard deviations of the first CALIBRATION_FRACTION of the windows.
K_SIGMA = 3.0
CALIBRATION_FRACTION = 0.1
#: Windows in a row above the threshold that raise a baseline alarm.
RUN = 3
_EPS = 1e-12


def window_stats(rec: Recording, ends: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """Per window (rows ``[end - length, end)`` of the concatenated recording) and channel: ``rms``,
    ``kurtosis`` (excess), ``mean_abs``; each (W, C) float64."""
    x = rec.concatenated()
    out = {k: np.empty((len(ends), rec.n_channels)) for k in ("rms", "kurtosis", "mean_abs")}
    for i, e in enumerate(np.asarray(ends, np.int64)):
        w = x[max(0, e - length): e].astype(np.float64)
        c = w - w.mean(axis=0)
        m2 = (c ** 2).mean(axis=0)
        out["rms"][i] = np.sqrt((w ** 2).mean(axis=0))
        out["kurtosis"][i] = np.where(m2 > _EPS, (c ** 4).mean(axis=0) / np.maximum(m2, _EPS) ** 2 - 3.0, 0.0)
        out["mean_abs"][i] = np.abs(w).mean(axis=0)
    return out


def alert_states(scores: np.ndarray, threshold: float, times: np.ndarray | None, first: int = 0,
                 policy: AlertPolicy | None = None) -> np.ndarray:
    """(W,) alert states of scores (W,) against a threshold, ``calibrating`` before window ``first``. The
    baselines are plain threshold detectors: RUN windows in a row raise; no settling, no trend."""
    policy = policy or AlertPolicy(k=RUN, n=RUN, settle_windows=0, trend_windows=0)
    now = [0.0]
    machine = AlertStateMachine(policy, clock=lambda: now[0])
    states = np.empty(len(scores), dtype=object)
    for i, s in enumerate(np.asarray(scores, np.float64)):
        if i < first:
            states[i] = "calibrating"
            continue
        now[0] = float(times[i]) if times is not None else float(i)
        machine.update(WindowResult("baseline", "baseline", max(float(s), 0.0), float(threshold), now[0], i))
        states[i] = machine.state
    return states.astype(str)


def zscore_baseline(stat: np.ndarray, times: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(score (W,), states (W,)): the largest channel z-score against the first 10 % of the windows."""
    n0 = max(RUN, int(np.ceil(CALIBRATION_FRACTION * len(stat))))
    mu, sd = stat[:n0].mean(axis=0), stat[:n0].std(axis=0)
    z = ((stat - mu) / np.maximum(sd, _EPS)).max(axis=1)
    return z, alert_states(z, K_SIGMA, times, first=n0)


def tutorial_baseline(train_features: np.ndarray, features: np.ndarray, times: np.ndarray | None,
                      seed: int = 0, epochs: int = 100) -> tuple[np.ndarray, np.ndarray, float]:
    """(score (W,), states (W,), threshold): LSTM autoencoder on mean |x| rows (one step per window).

    train_features: (N, C) mean |x| of the training part's windows; features: (W, C) of the evaluated ones.
    """
    from edge_agent.contract.preprocess import MinMaxScaler, reconstruction_error
    from trainer.model import ModelConfig
    from trainer.train import FitConfig, fit, split_validation

    scaler = MinMaxScaler.fit(train_features)
    x = scaler.transform(train_features)[:, None, :]
    fit_idx, val_idx = split_validation(len(x), 0.1, 1, 1)
    model, _ = fit(ModelConfig(architecture="lstm", units=(16, 4)), x[fit_idx], x[val_idx],
                   FitConfig(epochs=epochs, batch_size=10, patience=10, seed=seed, validation_fraction=0.1))
    train_err = reconstruction_error(x, model(x, training=False).numpy())
    y = scaler.transform(features)[:, None, :]
    scores = reconstruction_error(y, model(y, training=False).numpy())
    threshold = float(train_err.max())
    return scores, alert_states(scores, threshold, times), threshold
