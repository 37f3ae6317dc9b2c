"""`trainer retrain`: trains on the collected windows through trainer.pipeline.run, compares with the current
bundle on held-out normal and alert windows, and refuses a model that misses the fleet's alerts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edge_agent.contract.bundle import Bundle
from edge_agent.contract.upload_record import decode_record, encode_record
from firmware_sim import signals
from tests.agent.pipeline_helpers import RATE
from trainer import dataset
from trainer.retrain import RetrainOptions, RetrainRefused, retrain

pytest_plugins = ["tests.agent.conftest_pipeline"]
WINDOW = 8 * 1024  # the agent bundle's window: 8 blocks of 1024 samples


def collected(root: Path, bundle: Path, *, normal_state: str, n_normal: int, n_alert: int) -> Path:
    """A dataset as the fleet would upload it: ``n_normal`` windows labelled normal (of ``normal_state``
    signal), ``n_alert`` windows of a broken bearing uploaded as alert context."""
    version = Bundle.load(bundle).version
    writer = dataset.DatasetWriter(root)
    for label, state, n, seed in (("normal", normal_state, n_normal, 11), ("alert", "broken", n_alert, 12)):
        x = signals.generate(signals.make_source("bearing", state=state, preset="ims", seed=seed), n * WINDOW)
        for i in range(n):
            writer.add(decode_record(encode_record(
                device="pump-1", model_id="test-conv", model_version=version, seq_end=(i + 1) * WINDOW,
                time_end=f"2026-11-22T{10 + (label == 'alert'):02d}:{i // 60:02d}:{i % 60:02d}", sample_rate=RATE,
                channels=["ch0", "ch1", "ch2", "ch3"], score=0.1 if label == "normal" else 9.0, threshold=1.0,
                state="normal" if label == "normal" else "critical", kind=label,
                samples=x[i * WINDOW:(i + 1) * WINDOW])))
    writer.flush()
    return root


@pytest.mark.slow
def test_retrain_compares_with_the_current_model_and_writes_the_comparison(agent_bundle: Path, tmp_path: Path):
    data = collected(tmp_path / "ds", agent_bundle, normal_state="healthy", n_normal=100, n_alert=12)
    out = tmp_path / "new"
    result = retrain(RetrainOptions(dataset=data, current=agent_bundle, out=out, epochs=12))
    c = result.comparison
    assert not c["worse_on_alerts"] and result.bundle == out.resolve()
    assert c["new"]["normal_windows"] == c["current"]["normal_windows"] == 20  # the latest 20 % held out
    assert c["new"]["alert_windows"] == 12 and c["current"]["alerts_detected"] == 12
    assert c["new"]["alerts_detected"] >= c["current"]["alerts_detected"]
    new = Bundle.load(out)
    current = Bundle.load(agent_bundle)
    assert new.model_id == current.model_id and new.version != current.version
    assert replace(new.spec, sample_rate=None) == current.spec, "same preprocessing: the gateway's windows fit"
    assert new.spec.sample_rate == RATE, "the collected windows state their rate"
    r = new.manifest["retrain"]
    assert r["replaces"] == current.version and r["trained_windows"] == 80 and not r["forced"]
    assert (out / "report" / "comparison.png").stat().st_size > 10_000
    md = (out / "report" / "comparison.md").read_text()
    assert "| false alerts on them |" in md and "not worse" in md
    assert "comparison" in json.loads((out / "report" / "report.json").read_text())


@pytest.mark.slow
def test_retrain_refuses_a_model_that_misses_the_alerts(agent_bundle: Path, tmp_path: Path) -> None:
    # a gateway whose "normal" windows were of a failing machine: the new model learns the fault as normal
    data = collected(tmp_path / "ds", agent_bundle, normal_state="broken", n_normal=60, n_alert=12)
    out = tmp_path / "new"
    with pytest.raises(RetrainRefused, match="alert windows") as info:
        retrain(RetrainOptions(dataset=data, current=agent_bundle, out=out, epochs=12))
    assert "| alert windows above threshold | 12 |" in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".new*")), "nothing written, no leftovers"
    forced = retrain(RetrainOptions(dataset=data, current=agent_bundle, out=out, epochs=12, force=True))
    assert forced.comparison["worse_on_alerts"] and Bundle.load(out).manifest["retrain"]["forced"]
