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


def test_an_alert_averages_its_own_windows_that_do_not_overlap(agent_bundle, degrading_samples) -> None:
    bundle = Bundle.load(agent_bundle)
    n = bundle.spec.window_samples
    hop = n // 4  # the agent's windows overlap: only every 4th is clear of the last
    cond = SensorCondition("pump-4", SeverityPolicy(units="g"), _ims_geometry())
    cond.serve(bundle, RATE)
    healthy = degrading_samples[: int(ONSET_S * RATE)]
    for pos in range(0, hop * BASELINE_WINDOWS, hop):
        cond.on_window(healthy[pos:pos + n], hop / RATE, healthy=True, seq_end=pos + n)
    assert cond.baseline is not None and cond.baseline.averages[:2] == (7, 6)  # 8 windows clear of each other
    start = len(degrading_samples) - n - 9 * hop
    for i in range(10):  # an alert: every window above the threshold
        pos = start + i * hop
        x = degrading_samples[pos:pos + n].copy()
        cond.on_window(x, hop / RATE, healthy=i < 5, hit=True, seq_end=pos + n)
    report = cond.diagnose(x, pos + n)
    # this window, and of the kept ones (windows 0, 4, 8) those clear of it: 4 and 0
    assert report["windows"] == 3 and cond.last_windows == 3, report["summary"]
    assert report["verdict"] == "likely outer race" and "3 windows averaged" in report["summary"]
    assert cond.counters.diagnosis_windows == 3
    cond.alert_cleared()  # the next alert starts from its own windows
    assert cond.diagnose(x, pos + n)["windows"] == 1
    cond.on_window(x, hop / RATE, healthy=True, hit=True, seq_end=pos + n)
    for i in range(1, 6):  # a hit while normal, then 5 windows below the threshold: it can raise no alert
        later = degrading_samples[pos - 5 * hop + i * hop: pos - 5 * hop + i * hop + n]
        cond.on_window(later, hop / RATE, healthy=True, seq_end=pos + n + 4 * n * i, debounce=5)
    assert cond.diagnose(x.copy(), pos + n + 4 * n * 6)["windows"] == 1
