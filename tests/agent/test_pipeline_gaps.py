"""A lossy link must not silence alerts: gaps restart window assembly, not the alert debounce."""

from __future__ import annotations

import numpy as np

from edge_agent import wire
from edge_agent.alerts import AlertPolicy
from edge_agent.bundle import Bundle
from edge_agent.runtime import Pipeline
from tests.agent.pipeline_helpers import ONSET_S, RATE

pytest_plugins = ["tests.agent.conftest_pipeline"]  # fixtures: agent_bundle, degrading_samples


def test_alert_is_raised_when_gaps_leave_fewer_than_k_windows_between_them(agent_bundle, degrading_samples):
    bundle = Bundle.load(agent_bundle)
    spec = bundle.spec
    policy = AlertPolicy(k=3, n=5)
    pipeline = Pipeline(bundle, device="dev", threshold=bundle.threshold.value, policy=policy)
    events = []
    # After the fault onset, stretches of one window each (fewer than k) separated by 100 lost samples.
    failing = degrading_samples[int(RATE * (ONSET_S + 3)) :]
    stretch = spec.window_samples
    pos, windows = 0, 0
    while pos + stretch <= len(failing):
        before = pipeline.alert_events
        windows += pipeline.push(wire.Frame(pos, 0, np.ascontiguousarray(failing[pos : pos + stretch])))
        if pipeline.alert_events > before:
            events.append(pipeline.alerts.state)
        pos += stretch + 100
    assert pipeline.windower.counters.gaps >= 5
    assert windows == pipeline.windower.counters.gaps + 1
    assert pipeline.alerts.state in ("warning", "critical"), "the failing machine must be alerted on"
    assert events, "an alert event was emitted"
