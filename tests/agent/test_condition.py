"""A sensor's condition beside its score: velocity and zone per window, the bearing report at an alert (real
bundle, the simulator's outer-race fault on channel 0)."""

from __future__ import annotations

import numpy as np

from edge_agent.condition import BASELINE_WINDOWS, SensorCondition
from edge_agent.contract.bundle import Bundle
from edge_agent.diagnosis import BearingGeometry
from edge_agent.severity import SeverityPolicy
from firmware_sim.signals import PRESETS
from tests.agent.pipeline_helpers import ONSET_S, RATE


def _ims_geometry() -> BearingGeometry:
    p = PRESETS["ims"]
    g = p.geometry
    return BearingGeometry(shaft_rpm=p.rpm, rolling_elements=g.n_balls, ball_diameter=g.ball_d,
                           pitch_diameter=g.pitch_d, contact_angle_deg=g.contact_deg)


def test_velocity_every_window_and_an_outer_race_report_at_the_fault(agent_bundle, degrading_samples) -> None:
    bundle = Bundle.load(agent_bundle)
    n = bundle.spec.window_samples
    cond = SensorCondition("pump-1", SeverityPolicy(units="g"), _ims_geometry())
    cond.serve(bundle, RATE)
    healthy = degrading_samples[: int(ONSET_S * RATE)]
    starts = range(0, len(healthy) - n + 1, n // 4)  # overlapping healthy windows for the baseline
    for pos in list(starts)[:BASELINE_WINDOWS]:
        sev = cond.on_window(healthy[pos:pos + n], n / RATE, healthy=True)
    assert cond.baseline is not None and cond.status()["bearing"]["baseline_learned"]
    assert sev.max_mm_s is not None and sev.max_mm_s > 0 and sev.zone in "ABCD"
    assert cond.counters.velocity_windows == BASELINE_WINDOWS and cond.counters.velocity_refused == 0
    late = degrading_samples[-n:]
    report = cond.diagnose(late)
    assert report["verdict"] == "likely outer race", report["summary"]
    assert report["channel"] == 0 and report["baseline"] is True
    assert cond.counters.diagnoses == 1
    assert cond.status()["severity"]["zone"] in "ABCD"


def test_what_cannot_be_measured_says_why_and_never_raises(agent_bundle, degrading_samples) -> None:
    bundle = Bundle.load(agent_bundle)
    n = bundle.spec.window_samples
    cond = SensorCondition("pump-2", SeverityPolicy(units="unknown"), None)
    cond.serve(bundle, RATE)
    sev = cond.on_window(degrading_samples[:n], None, healthy=True)
    assert sev.max_mm_s is None and "unknown" in sev.notes[0] and cond.counters.velocity_refused == 1
    assert cond.diagnose(degrading_samples[:n]) is None  # no bearing configured
    slow = SensorCondition("pump-3", SeverityPolicy(units="g"), _ims_geometry())
    slow.serve(bundle, 200.0)  # a rate far too low for the band and the defect lines
    sev = slow.on_window(degrading_samples[:n], None, healthy=True)
    assert sev.max_mm_s is None and slow.counters.velocity_refused == 1
    report = slow.diagnose(degrading_samples[:n])
    assert report["verdict"] == "not analysed" and "not possible" in report["summary"]
    assert slow.counters.diagnosis_refused == 1
    bad = np.full((n, 4), np.nan, np.float32)
    assert cond.on_window(bad, None, healthy=True).max_mm_s is None
