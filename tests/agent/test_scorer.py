"""Scorer: int8 quantize/invoke/dequantize with the tensors' own parameters, against a by-hand computation."""

from __future__ import annotations

import numpy as np

from edge_agent.contract import preprocess
from edge_agent.contract.bundle import Bundle
from edge_agent.contract.interpreter import load_interpreter
from edge_agent.scorer import Scorer, TFLiteModel
from tests.agent.pipeline_helpers import RATE


def _windows(bundle: Bundle, x: np.ndarray) -> np.ndarray:
    return preprocess.windows(preprocess.steps(x, bundle.spec), bundle.spec.window, bundle.spec.hop)


def test_int8_scores_match_a_by_hand_invoke(agent_bundle, degrading_samples):
    bundle = Bundle.load(agent_bundle)
    windows = _windows(bundle, degrading_samples[: RATE * 3])
    scorer = Scorer(bundle)
    assert scorer.model.input_dtype == np.int8 and not scorer.model.stateful
    interp = load_interpreter(bundle.model_path)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    (si, zi), (so, zo) = inp["quantization"], out["quantization"]
    for w in windows[:10]:
        scaled = bundle.scaler.transform(w)[None]
        q = np.clip(np.rint(scaled / si + zi), -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], q)
        interp.invoke()
        recon = (interp.get_tensor(out["index"]).astype(np.float32) - zo) * so
        expected = preprocess.reconstruction_error(scaled, recon)[0]
        assert abs(scorer.score(w) - expected) < 1e-6
    assert scorer.latency.percentiles()["p99"] is not None


def test_scores_are_repeatable_and_do_not_touch_the_input(agent_bundle, degrading_samples):
    bundle = Bundle.load(agent_bundle)
    w = _windows(bundle, degrading_samples[: RATE * 2])[3]
    before = w.copy()
    scorer = Scorer(bundle)
    assert scorer.score(w) == scorer.score(w)
    np.testing.assert_array_equal(w, before)


def test_float32_and_int8_variants_agree_roughly(agent_bundle, degrading_samples):
    bundle = Bundle.load(agent_bundle)
    windows = _windows(bundle, degrading_samples)
    s8 = Scorer(bundle).score_windows(windows)
    s32 = Scorer(bundle, model_path=agent_bundle / "variants" / "model.float32.tflite").score_windows(windows)
    assert np.corrcoef(s8, s32)[0, 1] > 0.95
    float_model = TFLiteModel(agent_bundle / "variants" / "model.float32.tflite")
    assert float_model.input_dtype == np.float32 and float_model.stateful is False
