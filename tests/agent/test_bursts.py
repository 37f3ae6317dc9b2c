"""Burst sensors (a snapshot every few minutes, sequence numbers restarting per snapshot) and the pipeline's clock."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.alerts import AlertPolicy
from edge_agent.config import load_config
from edge_agent.contract.bundle import Bundle
from edge_agent.contract.frames import Frame
from edge_agent.pipeline import Pipeline
from firmware_sim.link import PtyLink
from tests.agent.pipeline_helpers import ONSET_S, RATE, agent_config, frames_of
from tests.waiting import wait_for


def _snapshots(samples: np.ndarray, length: int, healthy: int, failing: int) -> list[np.ndarray]:
    """``healthy`` snapshots from the healthy start, then ``failing`` ones from well after the fault onset."""
    late = int(RATE * (ONSET_S + 4))
    return ([samples[i * length : (i + 1) * length] for i in range(healthy)]
            + [samples[late + i * length : late + (i + 1) * length] for i in range(failing)])


def _push_bursts(pipeline: Pipeline, snaps: list[np.ndarray], period_s: float = 600.0) -> list:
    events = []
    pipeline.on_window = lambda w, r, e: e is not None and events.append(e)
    for i, snap in enumerate(snaps):  # every burst restarts at sequence 0, as most wireless nodes do
        for a in range(0, len(snap), 1024):
            pipeline.push(Frame(a, 0, np.ascontiguousarray(snap[a : a + 1024])), t=1e9 + i * period_s + a / RATE)
    return events


@pytest.mark.parametrize("declared", [True, None])
def test_a_burst_sensor_with_one_window_per_snapshot_raises_an_alert(agent_bundle, degrading_samples, declared):
    bundle = Bundle.load(agent_bundle)
    length = bundle.spec.window_samples  # one window per snapshot
    pipeline = Pipeline(bundle, device="dev", threshold=bundle.threshold.value, policy=AlertPolicy(k=3, n=5),
                        burst=declared)
    events = _push_bursts(pipeline, _snapshots(degrading_samples, length, healthy=6, failing=5))
    assert pipeline.counters.windows_scored == 11 and pipeline.burst
    assert pipeline.counters.bursts == 10 and pipeline.counters.restarts == 0
    assert [e.kind for e in events][:1] == ["raised"], "k of n accumulated across snapshots"
    assert events[0].time >= 1e9 + 6 * 600.0  # raised during a failing snapshot, on the recording's clock


def test_a_sender_declared_continuous_resets_the_debounce_at_each_restart(agent_bundle, degrading_samples):
    bundle = Bundle.load(agent_bundle)
    length = bundle.spec.window_samples
    pipeline = Pipeline(bundle, device="dev", threshold=bundle.threshold.value, policy=AlertPolicy(k=3, n=5),
                        burst=False)
    events = _push_bursts(pipeline, _snapshots(degrading_samples, length, healthy=6, failing=5))
    assert pipeline.counters.restarts == 10 and pipeline.counters.bursts == 0 and not pipeline.burst
    assert events == [], "each restart is a new sender: fewer than k windows never raise"


def test_window_times_follow_the_sample_clock_and_re_anchor_at_breaks(agent_bundle, degrading_samples):
    bundle = Bundle.load(agent_bundle)
    spec = bundle.spec
    times = []
    pipeline = Pipeline(bundle, device="dev", threshold=bundle.threshold.value, policy=AlertPolicy(), sample_rate=RATE,
                        on_window=lambda w, r, e: times.append((r.seq_end, r.time)))
    x = degrading_samples[: RATE * 2]
    t0 = 1_700_000_000.0
    for a in range(0, len(x), 1024):  # frames stamped with a jittery arrival time: the sample clock wins
        pipeline.push(Frame(a, 0, x[a : a + 1024]), t=t0 + a / RATE + 0.3 * np.sin(a))
    assert times and all(abs(t - (t0 + seq / RATE)) < 1e-6 for seq, t in times)
    n = len(times)
    gap_seq = len(x) + 10 * RATE  # 10 s of samples lost, then the stream goes on at its real time
    for a in range(0, spec.window_samples, 1024):
        pipeline.push(Frame(gap_seq + a, 0, x[a : a + 1024]), t=t0 + (gap_seq + a) / RATE + 5.0)
    assert len(times) == n + 1
    seq, t = times[-1]
    assert abs(t - (t0 + seq / RATE + 5.0)) < 1e-6  # re-anchored on the given time after the gap


def test_a_live_burst_sensor_over_a_pty_alerts(tmp_path, agent_bundle, degrading_samples):
    bundle = Bundle.load(agent_bundle)
    link = PtyLink(tmp_path / "ttyB", write_timeout=10)
    cfg = agent_config(tmp_path, agent_bundle, source={"kind": "serial", "serial": {"port": link.path}})
    events = []
    agent = Agent(load_config(cfg), on_event=events.append)
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: agent.sensor().source.connected.is_set(), 10)
        snaps = _snapshots(degrading_samples, bundle.spec.window_samples, healthy=4, failing=4)
        for i, snap in enumerate(snaps):
            for f in frames_of(snap, 1024):  # seq restarts at 0 with every snapshot
                link.send(f)
            assert wait_for(lambda i=i: agent.pipeline.counters.windows_scored >= i + 1, 10)
        assert wait_for(lambda: any(e.kind == "raised" for e in events), 10)
        status = agent.status()["sensors"]["pump-7"]
    finally:
        stop.set()
        thread.join(20)
        link.close()
    assert status["burst_mode"] == "recognised" and status["bursts"] == 7 and status["restarts"] == 0
    assert status["windows_scored"] == 8
