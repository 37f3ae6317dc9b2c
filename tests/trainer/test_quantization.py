"""--quantize auto: int8 only when it agrees and resolves the threshold, else 16x8, else float32; parity
windows on both sides of the threshold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.contract.bundle import Bundle

pytest.importorskip("tensorflow")

from trainer.export import MIN_INT8_THRESHOLD_STEPS, choose_variant  # noqa: E402
from trainer.model import ModelConfig  # noqa: E402
from trainer.pipeline import TrainOptions, run  # noqa: E402
from trainer.train import FitConfig  # noqa: E402


def _facts(agreement: float, scale: float | None, p50: float = 100.0, missed: int = 0) -> dict:
    out = {"quantization": {"scale": scale, "zero_point": 0}} if scale else {}
    held = {"agreement": agreement, "n_windows": 100, "disagreements": round(100 * (1 - agreement))}
    synthetic = {"agreement": 1.0, "n_windows": 500, "reference_above": 300, "missed": missed, "clear_above": 300,
                 "missed_clear": missed}
    return {"parity": held, "parity_groups": {"held_out": held, "synthetic": synthetic},
            "latency": {"p50_us": p50, "p99_us": p50 * 2}, "output": out}


def test_auto_prefers_int8_when_it_agrees_and_resolves_the_threshold():
    choice = choose_variant({"int8": _facts(1.0, 0.004), "16x8": _facts(1.0, 1e-5)}, threshold=0.5, min_agreement=0.99)
    assert choice["served"] == "int8" and choice["checks"]["int8"]["threshold_steps"] == pytest.approx(125)


def test_auto_refuses_int8_whose_output_steps_cannot_resolve_the_threshold():
    threshold = 0.004 * (MIN_INT8_THRESHOLD_STEPS - 1)
    choice = choose_variant({"int8": _facts(1.0, 0.004), "16x8": _facts(1.0, 1e-5)}, threshold, 0.99)
    assert choice["served"] == "16x8" and "output quantization steps" in choice["reason"]


def test_a_variant_that_misses_anomalies_keras_flags_is_refused_but_extra_sensitivity_is_not():
    choice = choose_variant({"int8": _facts(1.0, 0.004, missed=10), "16x8": _facts(1.0, 1e-5, missed=1)}, 0.5, 0.99)
    assert choice["served"] == "16x8" and "misses 10 of the 300 synthetic anomalies" in choice["reason"]
    near = _facts(1.0, 0.004)
    near["parity_groups"]["synthetic"].update(missed=30, missed_clear=0)  # only near the threshold: not blind
    assert choose_variant({"int8": near}, 0.5, 0.99)["served"] == "int8"
    extra = _facts(1.0, 0.004)
    extra["parity"] = dict(extra["parity"], agreement=0.95)  # all windows: 5 % more flagged, none missed
    assert choose_variant({"int8": extra}, 0.5, 0.99)["served"] == "int8"


def test_auto_falls_back_to_float32_when_16x8_is_too_slow_or_disagrees():
    variants = {"int8": _facts(0.5, 0.004), "16x8": _facts(1.0, 1e-5, p50=5000)}
    choice = choose_variant(variants, 0.5, 0.99)
    assert choice["served"] == "float32" and "latency" in choice["reason"] and "agree" in choice["reason"]
    assert choose_variant({"int8": _facts(0.5, 0.004), "16x8": _facts(0.9, 1e-5)}, 0.5, 0.99)["served"] == "float32"


@pytest.fixture(scope="module")
def spiky(tmp_path_factory) -> Path:
    """A slow series whose training range is stretched by one burst: healthy scores a few int8 steps."""
    rng = np.random.default_rng(2)
    e = np.zeros(2400)
    for i in range(1, e.size):
        e[i] = 0.9 * e[i - 1] + rng.standard_normal()
    v = 20 + 0.3 * e
    v[150:153] += 400.0  # the burst stretches the min-max range: healthy windows in ~0.3 % of it
    v[1800:1900] += 4.0
    t = np.datetime64("2014-04-01T00:00") + np.arange(v.size) * np.timedelta64(5, "m")
    path = tmp_path_factory.mktemp("data") / "spiky.csv"
    path.write_text("timestamp,value\n" + "".join(f"{str(a).replace('T', ' ')}:00,{b:.6f}\n" for a, b in zip(t, v, strict=True)))
    return path


TINY = dict(model=ModelConfig(architecture="lstm", units=(8, 4)), fit=FitConfig(epochs=6, patience=3, seed=1),
            latency_windows=50, train_until="2014-04-03T12:00:00")


@pytest.mark.slow
def test_auto_falls_back_to_16x8_end_to_end_and_says_why(spiky, tmp_path, monkeypatch):
    """int8 made unable to resolve any threshold: the real 16x8 conversion is served, loads, and is explained."""
    import trainer.export

    monkeypatch.setattr(trainer.export, "MIN_INT8_THRESHOLD_STEPS", 1e12)
    result = run(TrainOptions(data=spiky, out=tmp_path / "auto", **TINY))
    m = result.manifest
    choice = m["quantization"]
    assert choice["requested"] == "auto" and set(choice["checks"]) == {"int8", "16x8"}
    assert "output quantization steps" in choice["checks"]["int8"]["why"]
    assert m["tflite"]["quantization"] in ("16x8", "float32") and "int8 not served" in choice["reason"]
    bundle = Bundle.load(result.bundle)  # the served model's tensors agree with the manifest, 16x8 included
    assert bundle.quantization == m["tflite"]["quantization"]
    if bundle.quantization == "16x8":
        assert m["tflite"]["input"]["dtype"] == "int16" and m["tflite"]["output"]["quantization"]["scale"] > 0
    assert (result.bundle / "variants" / "model.16x8.tflite").is_file()
    assert not [op for op in m["variants"]["16x8"]["ops"] if op.startswith("Flex") or not op.isupper()]
    groups = m["parity"]["groups"]  # parity covers both sides of the threshold
    assert groups["synthetic"]["reference_above"] > 0 and groups["synthetic"]["n_windows"] > 100
    assert groups["held_out"]["n_windows"] + groups["synthetic"]["n_windows"] == m["parity"]["n_windows"]
    assert m["threshold"]["params"]["method_value"] <= m["threshold"]["value"] or "floor" not in m["threshold"]["params"]
    shown = subprocess.run([sys.executable, "-m", "trainer.cli", "inspect", str(result.bundle)], capture_output=True,
                           text=True, check=True).stdout
    assert "quantize   auto -> " in shown and "recipe     table" in shown
    json.dumps(m)  # the manifest stays JSON


def test_isolated_events_in_the_training_data_do_not_set_the_threshold_floor():
    from trainer.pipeline import training_floor_quantile

    assert training_floor_quantile(10_000, 10, 1) == 0.99  # plenty of windows: the 0.99 quantile
    assert training_floor_quantile(690, 10, 1) == pytest.approx(1 - 20 / 690)  # two spikes, ten windows each
    assert training_floor_quantile(50, 10, 10) == pytest.approx(0.96)  # non-overlapping windows: one each
