"""Replay of a snapshot recording: one window per snapshot, and the alert debounce carries across snapshots
(the time between snapshots is a sampling gap, not a restarted sender)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.alerts import AlertPolicy
from edge_agent.contract.bundle import Bundle
from edge_agent.contract.recordings import Recording, Segment
from edge_agent.replay import replay

pytest.importorskip("tensorflow")

RATE, LENGTH = 25600.0, 2560  # 0.1 s snapshots, one every 10 s (a FEMTO-like burst sensor)


def _snapshots(n_healthy: int, n_failing: int, seed: int) -> Recording:
    rng = np.random.default_rng(seed)
    t0 = np.datetime64("2012-01-01T09:00:00", "ms")
    segs = []
    for i in range(n_healthy + n_failing):
        x = rng.normal(scale=0.4, size=(LENGTH, 2))
        if i >= n_healthy:  # impacts ringing every 5 ms and a louder machine
            x *= 3.0
            x[::128] += 8.0
        segs.append(Segment(x.astype(np.float32), t0 + np.timedelta64(10 * i, "s")))
    return Recording(tuple(segs), ("horizontal", "vertical"), RATE, "g", "mem", "snapshots")


@pytest.fixture(scope="module")
def snapshot_bundle(tmp_path_factory) -> Path:
    from trainer.model import ModelConfig
    from trainer.pipeline import TrainOptions, run
    from trainer.train import FitConfig

    root = tmp_path_factory.mktemp("snap")
    healthy = _snapshots(80, 0, seed=1)
    np.savez(root / "healthy.npz", acc=np.stack([s.data for s in healthy.segments]))
    out = root / "bundle"
    run(TrainOptions(data=root / "healthy.npz", out=out, model=ModelConfig(architecture="auto", units=(8, 4)),
                     fit=FitConfig(epochs=8, patience=3, seed=0), latency_windows=50, quantize="float32"))
    return out


@pytest.mark.slow
def test_later_anomalous_snapshots_raise_an_alert_in_replay_with_one_window_per_snapshot(snapshot_bundle):
    bundle = Bundle.load(snapshot_bundle)
    assert (bundle.spec.mode, bundle.spec.block, bundle.spec.window) == ("features", 256, 10)  # the default recipe
    rec = _snapshots(30, 12, seed=2)
    result = replay(bundle, rec, policy=AlertPolicy())
    assert len(result.rows) == len(rec.segments)  # one window per snapshot
    raised = [i for i, r in enumerate(result.rows) if r.event == "raised"]
    assert raised and 30 <= raised[0] < 30 + AlertPolicy().n, [r.state for r in result.rows]
    assert all(r.state == "normal" for r in result.rows[:30])
    assert result.rows[-1].state in ("warning", "critical")


@pytest.mark.slow
def test_per_device_calibration_in_replay_uses_the_first_snapshots(snapshot_bundle):
    bundle = Bundle.load(snapshot_bundle)
    result = replay(bundle, _snapshots(30, 12, seed=3), policy=AlertPolicy(), calibrate=20)
    assert [r.state for r in result.rows[:20]] == ["calibrating"] * 20
    assert result.threshold_source == "replay-calibration" and result.threshold > 0
    assert any(r.event == "raised" for r in result.rows[30:])
