"""Alert explanation: which channels and features carry a window's reconstruction error."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.contract import explain, preprocess
from edge_agent.contract.preprocess import PreprocessSpec


def test_feature_errors_add_up_to_the_score() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 10, 3)), rng.random((4, 10, 3))
    e = explain.feature_errors(x, y)
    assert e.shape == (4, 3)
    np.testing.assert_allclose(e.mean(axis=1), preprocess.reconstruction_error(x, y))


def test_raw_mode_names_the_channel_that_carries_the_error_and_its_ratio_to_healthy() -> None:
    spec = PreprocessSpec(mode="raw", channels=("flow", "temp", "pressure"), window=10, hop=10)
    got = explain.explain(np.array([0.6, 0.1, 0.1]), spec, healthy=[0.05, 0.1, 0.1])
    assert [p.name for p in got.channels] == ["flow", "temp", "pressure"]
    assert got.channels[0].share == pytest.approx(0.75) and got.channels[0].ratio == pytest.approx(12.0)
    assert got.summary().startswith("flow carries 75% of the error (12.0x its healthy level)")
    d = got.to_dict()
    assert d["channels"][0] == {"name": "flow", "share": 0.75, "ratio": 12.0}


def test_features_mode_adds_up_each_channels_statistics_and_bands() -> None:
    spec = PreprocessSpec(mode="features", channels=("x", "y"), window=10, hop=10, block=100, features=("rms", "peak"),
                          fft_bands=((0.0, 100.0), (100.0, 500.0)), sample_rate=1000.0)
    assert spec.feature_names == ("x.rms", "x.peak", "y.rms", "y.peak", "x.band_0_100Hz", "x.band_100_500Hz",
                                  "y.band_0_100Hz", "y.band_100_500Hz")
    np.testing.assert_array_equal(explain.feature_channel(spec), [0, 0, 1, 1, 0, 0, 1, 1])
    e = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 1.3])  # y's upper band
    got = explain.explain(e, spec)
    assert got.channels[0].name == "y" and got.channels[0].share == pytest.approx(1.6 / 2.0)
    assert got.features[0].name == "y.band_100_500Hz" and got.features[0].ratio is None
    assert "top features: y.band_100_500Hz 65%" in got.summary()


def test_bad_input_is_refused_or_degrades_to_shares() -> None:
    spec = PreprocessSpec(mode="raw", channels=("a", "b"), window=4, hop=4)
    with pytest.raises(ValueError, match="expected 2 feature errors"):
        explain.explain(np.ones(3), spec)
    got = explain.explain(np.array([np.nan, 1.0]), spec, healthy=[1.0])  # healthy of another shape: no ratios
    assert got.channels[0].name == "b" and got.channels[0].share == 1.0 and got.channels[0].ratio is None
    assert explain.explain(np.zeros(2), spec).channels[0].share == 0.0
    with pytest.raises(ValueError, match="finite"):
        explain.healthy_levels(np.array([[np.inf, 1.0]]))
    assert explain.healthy_levels(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])) == [3.0, 4.0]


def test_the_pipeline_explains_a_raised_alert_with_the_faulty_channel(agent_bundle, degrading_samples) -> None:
    """The simulator's outer-race fault is on channel 0: the raised alert's explanation must lead with it, from
    the served model's own reconstruction (shares add up to 1)."""
    from edge_agent.alerts import AlertPolicy
    from edge_agent.contract.bundle import Bundle
    from edge_agent.contract.frames import Frame
    from edge_agent.pipeline import Pipeline

    bundle = Bundle.load(agent_bundle)
    events = []
    pipeline = Pipeline(bundle, device="dev", threshold=bundle.threshold.value, policy=AlertPolicy(),
                        on_window=lambda w, r, e: events.append(e) if e is not None else None)
    assert pipeline.explain_last() is None
    for pos in range(0, len(degrading_samples) - 2048 + 1, 2048):
        pipeline.push(Frame(pos, 0, np.ascontiguousarray(degrading_samples[pos:pos + 2048])))
    raised = [e for e in events if e.kind == "raised"]
    assert raised, "the degrading bearing must raise an alert"
    ex = raised[0].explanation
    assert ex is not None and raised[0].to_dict()["explanation"] == ex
    assert ex["channels"][0]["name"] == bundle.spec.channels[0], ex["summary"]
    assert sum(p["share"] for p in ex["channels"]) == pytest.approx(1.0, abs=1e-3)
    assert ex["summary"].startswith(f"{bundle.spec.channels[0]} carries")
    assert len(bundle.manifest["explain"]["healthy"]) == bundle.spec.n_features  # written by the trainer
    assert ex["channels"][0]["ratio"] > 2.0  # the faulty channel's error, against its healthy level
