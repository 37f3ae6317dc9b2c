"""Synthetic anomalous parity windows: every kind, a ladder of amplitudes, a silent channel."""

from __future__ import annotations

import numpy as np

from edge_agent.contract.preprocess import MinMaxScaler, PreprocessSpec
from trainer.parity_sets import AMPLITUDES, channel_features, synthetic_anomalies


def test_synthetic_anomalies_cover_every_kind_and_leave_the_input_alone():
    spec = PreprocessSpec(mode="features", channels=("h", "v"), window=10, hop=10, block=256,
                          features=("rms", "kurtosis"), fft_bands=((0.0, 800.0),), sample_rate=25600.0)
    assert {k: v.tolist() for k, v in channel_features(spec).items()} == {"h": [0, 1, 4], "v": [2, 3, 5]}
    scaler = MinMaxScaler(np.full(6, 1.0, np.float32), np.full(6, 3.0, np.float32))
    healthy = np.random.default_rng(0).uniform(0.2, 0.8, size=(100, 10, 6)).astype(np.float32)
    before = healthy.copy()
    windows, kinds = synthetic_anomalies(healthy, spec, scaler)
    np.testing.assert_array_equal(healthy, before)
    assert windows.shape == (len(kinds), 10, 6) and windows.dtype == np.float32
    assert {k.split(":")[0] for k in kinds} == {"impulses", "level_shift", "noise_burst", "dropped"}
    assert len(kinds) == 40 * (3 * len(AMPLITUDES) + 2)
    dropped = windows[[k == "dropped:v" for k in kinds]]
    np.testing.assert_allclose(dropped[:, :, [2, 3, 5]], -0.5)  # a zero signal, scaled: (0 - 1) / 2
    big = windows[[k == "level_shift:2" for k in kinds]]
    assert (np.abs(big - before[np.unique(np.linspace(0, 99, 40).round().astype(int))]).max(axis=(1, 2)) == 2.0).all()


def test_raw_mode_channels_are_their_own_features():
    spec = PreprocessSpec(mode="raw", channels=("a", "b", "c"), window=5)
    assert [v.tolist() for v in channel_features(spec).values()] == [[0], [1], [2]]
