"""Hostile inputs to today's features on the gateway: the bearing diagnosis's averaged alert windows (a stuck or
replaying stream, absurd amplitudes) and the group in signed rollout metadata (real bundle, real scoring parts)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent import diagnosis as D
from edge_agent.condition import BASELINE_WINDOWS, SensorCondition
from edge_agent.contract.bundle import Bundle
from edge_agent.severity import SeverityPolicy
from firmware_sim.signals import PRESETS
from tests.agent.pipeline_helpers import RATE


def _ims_geometry() -> D.BearingGeometry:
    p = PRESETS["ims"]
    g = p.geometry
    return D.BearingGeometry(shaft_rpm=p.rpm, rolling_elements=g.n_balls, ball_diameter=g.ball_d,
                             pitch_diameter=g.pitch_d, contact_angle_deg=g.contact_deg)


def _noise(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def test_a_stuck_stream_repeating_one_window_is_averaged_once(agent_bundle) -> None:
    """A sensor whose buffer repeats the same samples under fresh sequence numbers: its alert windows are one
    window, not K independent ones (averaging copies does not lower the noise; the K-window law then reads noise
    peaks as a bearing fault)."""
    bundle = Bundle.load(agent_bundle)
    n = bundle.spec.window_samples
    cond = SensorCondition("pump-h1", SeverityPolicy(units="g"), _ims_geometry())
    cond.serve(bundle, RATE)
    stuck = _noise(n, 7)
    for i in range(8):  # an alert of one repeated buffer, each window clear of the last by its sequence numbers
        cond.on_window(stuck.copy(), n / RATE, healthy=i < 3, hit=True, seq_end=(i + 1) * n)
    report = cond.diagnose(stuck.copy(), 9 * n)
    assert report["windows"] == 1 and cond.last_windows == 1, report["summary"]
    assert report["verdict"] == D.diagnose(stuck, RATE, _ims_geometry()).verdict
    fresh = _noise(n, 8)  # a distinct window still averages with one copy of the stuck one
    assert cond.diagnose(fresh, 10 * n)["windows"] == 2


def test_diagnose_refuses_repeated_windows_naming_them() -> None:
    x = _noise(20_480, 1)
    with pytest.raises(ValueError, match="window 2 repeats window 0"):
        D.diagnose([x, _noise(20_480, 2), x.copy()], 20_480.0, _ims_geometry())


@pytest.mark.parametrize("absurd", [1e30, 3e38])
def test_an_absurd_healthy_window_is_left_out_of_the_baseline(agent_bundle, absurd) -> None:
    """A forged or glitched window whose envelope spectrum does not fit the baseline's float32 pool is refused
    (the condition logs it and goes on) instead of making the bound for averages infinite: a baseline that no
    averaged diagnosis could exceed, and that no longer reads back."""
    bundle = Bundle.load(agent_bundle)
    n = bundle.spec.window_samples
    cond = SensorCondition("pump-h2", SeverityPolicy(units="g"), _ims_geometry())
    cond.serve(bundle, RATE)
    spike = _noise(n, 3)
    spike[n // 2, 0] = absurd
    for i in range(BASELINE_WINDOWS + 1):
        cond.on_window(spike if i == 4 else _noise(n, 100 + i), n / RATE, healthy=True, seq_end=(i + 1) * n)
    base = cond.baseline
    assert base is not None and base.windows == BASELINE_WINDOWS
    assert all(np.isfinite(a).all() for a in (base.levels, base.family_max, base.averaged_max))
    assert D.EnvelopeBaseline.from_dict(base.to_dict()).windows == BASELINE_WINDOWS
    learner = D.BaselineLearner(RATE, _ims_geometry())
    learner.add(_noise(n, 5), n)
    with pytest.raises(ValueError, match="healthy window 1"):
        learner.add(spike, 2 * n)
    assert learner.count == 1 and learner.separate == 1
