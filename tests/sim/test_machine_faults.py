"""The bearing model's machine faults that are not the bearing's: imbalance (the once-per-turn vibration grows) and
looseness (one knock per shaft turn), beside the outer/inner/ball defects (firmware_sim.signals.BearingSource)."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_sim import signals


def _broken(preset: str, fault: str, seconds: float = 1.0, **overrides) -> np.ndarray:
    src = signals.BearingSource(preset, "broken", seed=3, fault=fault, **overrides)
    return signals.generate(src, int(seconds * src.sample_rate)).astype(np.float64)


@pytest.mark.parametrize("preset", ["femto", "ims"])
def test_imbalance_adds_a_once_per_turn_sinusoid_and_no_knocks(preset):
    p = signals.PRESETS[preset]
    # the random streams do not depend on the fault: a broken bearing with no defect amplitude is the reference
    ref = _broken(preset, "outer", seconds=3.0, defect_g=0.0)
    imb = _broken(preset, "imbalance", seconds=3.0, imbalance_g=0.8)
    diff = imb - ref  # (n, C): the imbalance alone
    n = len(diff)
    spec = np.abs(np.fft.rfft(diff, axis=0)) * 2 / n
    fr = p.rpm / 60.0
    k = int(round(3.0 * fr))  # 3 s: bins are 1/3 Hz apart, the shaft rate (30 or 33.3 Hz) falls on one
    gains = np.resize(np.asarray(p.channel_gain or (1.0,)), p.n_channels)
    np.testing.assert_allclose(spec[k], 0.8 * gains, rtol=0.02)
    others = np.delete(spec, k, axis=0)
    assert others.max() < 0.02 * spec[k].min()  # nothing else: no knocks, no harmonics


def test_looseness_knocks_once_per_shaft_turn():
    p = signals.PRESETS["femto"]
    ref = _broken("femto", "outer", seconds=2.0, defect_g=0.0)
    loose = _broken("femto", "looseness", seconds=2.0)
    knocks = np.abs(loose - ref)[:, 0]  # the rung knocks alone
    fs = p.sample_rate
    hop = int(fs / (p.rpm / 60.0) / 2)  # half a turn
    peaks = [a + int(np.argmax(knocks[a : a + hop])) for a in range(0, len(knocks) - hop, hop)]
    peaks = [k for k in peaks if knocks[k] > 0.3 * knocks.max()]
    intervals = np.diff(peaks) / fs
    assert len(peaks) >= 50
    assert np.median(intervals) == pytest.approx(60.0 / p.rpm, rel=0.002)  # at a fixed shaft angle: no slip


def test_bearing_defects_do_not_depend_on_the_imbalance_setting():
    a = _broken("ims", "inner")
    b = _broken("ims", "inner", imbalance_g=5.0)
    np.testing.assert_array_equal(a, b)


def test_an_unknown_fault_names_the_known_ones():
    with pytest.raises(ValueError, match="imbalance.*inner.*looseness.*outer"):
        signals.BearingSource("ims", "broken", fault="misalignment")
