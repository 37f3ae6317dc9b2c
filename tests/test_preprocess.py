"""The shared preprocessing: features against first-principles values, windows, scaling, the spec round trip."""

import json

import numpy as np
import pytest

from edge_agent.contract.preprocess import (
    FEATURE_NAMES,
    MinMaxScaler,
    PreprocessSpec,
    model_inputs,
    reconstruction_error,
    steps,
    window_ends,
    windows,
)


def features_spec(**overrides) -> PreprocessSpec:
    base = dict(mode="features", channels=("x", "y"), window=4, hop=2, block=512, features=FEATURE_NAMES)
    base.update(overrides)
    return PreprocessSpec(**base)


def test_block_features_match_definitions():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 0.5, size=(512 * 3, 2)).astype(np.float32)
    out = steps(x, features_spec())
    assert out.shape == (3, 2 * len(FEATURE_NAMES)) and out.dtype == np.float32
    block = x[512:1024, 1].astype(np.float64)
    centred = block - block.mean()
    expected = {
        "mean_abs": np.mean(np.abs(block)),
        "rms": np.sqrt(np.mean(block**2)),
        "std": np.std(block),
        "peak": np.max(np.abs(block)),
        "kurtosis": np.mean(centred**4) / np.mean(centred**2) ** 2 - 3.0,
        "crest": np.max(np.abs(block)) / np.sqrt(np.mean(block**2)),
    }
    names = features_spec().feature_names
    for name, value in expected.items():
        assert out[1, names.index(f"y.{name}")] == pytest.approx(value, rel=1e-5), name


def test_kurtosis_is_excess_and_detects_impulses():
    rng = np.random.default_rng(2)
    gaussian = rng.normal(size=(200_000, 1))
    impulsive = gaussian.copy()
    impulsive[::1000] *= 30
    spec = PreprocessSpec(mode="features", channels=("x",), window=1, block=200_000, features=("kurtosis",))
    assert abs(steps(gaussian, spec)[0, 0]) < 0.1
    assert steps(impulsive, spec)[0, 0] > 10


def test_fft_band_power_finds_the_tone():
    rate, block = 20480.0, 2048
    t = np.arange(block) / rate
    tone = np.sin(2 * np.pi * 1000 * t)[:, None]
    spec = PreprocessSpec(
        mode="features", channels=("x",), window=1, block=block, sample_rate=rate, fft_bands=((900, 1100), (3000, 5000))
    )
    in_band, out_band = steps(tone, spec)[0]
    assert in_band > 1000 * out_band


def test_raw_mode_is_identity_copy():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    out = steps(x, PreprocessSpec(mode="raw", channels=("a", "b"), window=3))
    assert np.array_equal(out, x) and out is not x and not np.shares_memory(out, x)


def test_windows_and_their_ends():
    s = np.arange(20, dtype=np.float32).reshape(10, 2)
    w = windows(s, window=4, hop=3)
    assert w.shape == (3, 4, 2)
    ends = window_ends(10, 4, 3)
    assert list(ends) == [4, 7, 10]
    for i, end in enumerate(ends):
        assert np.array_equal(w[i], s[end - 4 : end])
    assert windows(s[:3], 4, 1).shape == (0, 4, 2)


def test_scaler_fits_training_only_and_never_writes_inputs():
    train = np.array([[0.0, 5.0], [2.0, 5.0]], dtype=np.float32)
    scaler = MinMaxScaler.fit(train)
    later = np.array([[4.0, 6.0]], dtype=np.float32)
    before = later.copy()
    assert np.allclose(scaler.transform(later), [[2.0, 1.0]])  # constant feature gets unit span
    assert np.array_equal(later, before)
    out = np.empty_like(later)
    scaler.transform_into(later, out)
    assert np.allclose(out, [[2.0, 1.0]]) and np.array_equal(later, before)
    assert MinMaxScaler.from_dict(json.loads(json.dumps(scaler.to_dict()))).to_dict() == scaler.to_dict()
    with pytest.raises(ValueError, match="finite"):
        MinMaxScaler.fit(np.array([[np.nan]]))


def test_spec_round_trip_and_validation():
    spec = features_spec(fft_bands=((100.0, 200.0),), sample_rate=20480.0)
    assert PreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.window_samples == 4 * 512 and spec.hop_samples == 2 * 512
    with pytest.raises(ValueError, match="unknown features"):
        features_spec(features=("rms", "loudness"))
    with pytest.raises(ValueError, match="sample_rate"):
        features_spec(fft_bands=((1.0, 2.0),))
    with pytest.raises(ValueError, match="raw mode"):
        PreprocessSpec(mode="raw", channels=("a",), window=4, block=8)
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        PreprocessSpec.from_dict({**spec.to_dict(), "colour": "red"})


def test_model_inputs_are_deterministic_and_error_is_mae():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(512 * 12, 2)).astype(np.float32)
    spec = features_spec()
    scaler = MinMaxScaler.fit(steps(x, spec))
    a, b = model_inputs(x, spec, scaler), model_inputs(x.copy(), spec, scaler)
    assert a.shape == (5, 4, spec.n_features) and np.array_equal(a, b)
    err = reconstruction_error(a, np.zeros_like(a))
    assert np.allclose(err, np.abs(a).reshape(5, -1).mean(axis=1))


def test_relative_channels_are_judged_against_their_recent_level_and_framing_does_not_matter():
    """A slow channel's drift leaves its steps near 0, a step change shows and fades with the level; the other
    channels pass unchanged; the gateway's windower, frame by frame, gives exactly the trainer's windows."""
    from edge_agent.contract.frames import Frame
    from edge_agent.windows import Windower

    spec = PreprocessSpec(mode="raw", channels=("flow", "temp"), window=10, hop=10, relative=("temp",),
                          relative_rows=20.0)
    n = 400
    temp = 20.0 + 0.01 * np.arange(n)  # a slow warm-up
    temp[200:] -= 3.0  # and a step down
    flow = np.random.default_rng(0).normal(32.0, 0.5, n)
    x = np.column_stack([flow, temp]).astype(np.float32)
    st = steps(x, spec)
    np.testing.assert_array_equal(st[:, 0], x[:, 0])
    assert abs(st[100:200, 1]).max() < 0.25  # drift: about slope x relative_rows, small
    assert st[200, 1] < -2.5 and abs(st[399, 1]) < 0.3  # the step shows, then the level follows it
    expected = windows(st, spec.window, spec.hop)
    got = []
    w = Windower(spec, sample_rate=1.0)
    pos = 0
    for size in [7, 13, 1, 50, 29] * 20:
        if pos >= n:
            break
        w.push(Frame(pos, 0, x[pos:pos + size]), lambda win: got.append(win.steps.copy()))
        pos += size
    np.testing.assert_allclose(np.stack(got), expected[:len(got)], rtol=0, atol=1e-5)
    assert len(got) == len(expected)
    np.testing.assert_array_equal(w.window_samples(), x[390:400])  # uploads carry the raw samples
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert "relative" not in PreprocessSpec(mode="raw", channels=("a",), window=4).to_dict()
    with pytest.raises(ValueError, match="not among the channels"):
        PreprocessSpec(mode="raw", channels=("a",), window=4, relative=("b",), relative_rows=5.0)
    with pytest.raises(ValueError, match="relative_rows must be >= 1"):
        PreprocessSpec(mode="raw", channels=("a", "b"), window=4, relative=("b",))
