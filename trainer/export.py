"""TFLite conversion of a trained autoencoder, and the checks every exported variant must pass.

Variants (all builtin ops only; never SELECT_TF_OPS, so ai-edge-litert runs them without TensorFlow):

* ``float32``: ``TFLITE_BUILTINS``.
* ``int8``: full-integer post-training quantization, ``TFLITE_BUILTINS_INT8``, int8 input and
  output tensors, calibrated on training windows (the representative data set).
* ``16x8``: int16 activations with int8 weights
  (``EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8``), int16 input and output tensors,
  calibrated like int8: 256 times finer activations and output than int8.

For each variant :func:`evaluate` lists the ops (refusing Flex/custom ones), measures size and
per-window latency with the light runtime (1 thread), and compares its scores with the Keras
model's on the parity windows (:func:`trainer.tflite_eval.parity`). :func:`check_parity` fails the
export when the served variant's above/below-threshold decisions agree on too few windows;
:func:`choose_variant` is ``--quantize auto``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.contract.errors import AgentError
from edge_agent.scorer import TFLiteModel
from trainer import tfenv
from trainer.tflite_eval import CLEAR_MARGIN, latency, model_ops, non_builtin_ops, parity, tensor_info

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

VARIANTS = ("float32", "int8", "16x8")
#: What ``--quantize`` accepts: a variant, or ``auto`` (:func:`choose_variant`).
QUANTIZE_CHOICES = ("auto", *VARIANTS)
#: ``auto`` serves int8 only when the threshold spans at least this many int8 output steps. Measured
#: (research notes; docs/central/train.md, "Served variant"): the int8 LSTM's score differs from Keras by 0.5-2.3 output
#: steps on average and up to ~6-10 in the worst window, so below ~32 steps the int8 score cannot resolve
#: the decisions near the threshold even when the parity windows happen to agree.
MIN_INT8_THRESHOLD_STEPS = 32.0
#: ``auto`` serves 16x8 only when its median per-window latency (quantize + invoke + dequantize + error,
#: 1 thread) stays within the gateway's budget per window (docs/design/benchmarks.md: <= 1 ms). The median, not the
#: p99: on a shared workstation the p99 measures the neighbours, and the choice must not flip with them.
MAX_16X8_P50_US = 1000.0
#: Most windows fed to the int8 calibrator.
REPRESENTATIVE_MAX = 500


class ExportError(AgentError, RuntimeError):
    """An exported model that must not be served (non-builtin ops, failed parity)."""


def convert(model: keras.Model, quantization: str, representative: np.ndarray | None = None) -> bytes:
    """Convert a batch-1 Keras model to a ``.tflite`` flatbuffer.

    representative: (W, T, F) float32 scaled training windows; required for ``int8`` and ``16x8``.
    """
    if quantization not in VARIANTS:
        raise ValueError(f"unknown quantization {quantization!r}; choose one of {list(VARIANTS)}")
    tf = tfenv.tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "float32":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    else:
        if representative is None or len(representative) == 0:
            raise ValueError(f"{quantization} conversion needs representative training windows")
        pick = np.linspace(0, len(representative) - 1, min(len(representative), REPRESENTATIVE_MAX)).astype(int)
        sample = representative[pick]

        def dataset():
            for w in sample:
                yield [w[None, ...]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        if quantization == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            io_type = tf.int8
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
            io_type = tf.int16
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    t0 = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()) as chatter, warnings.catch_warnings():
        # the converter prints its SavedModel signature, and warns that int8 input statistics are
        # not given: they are not needed, the input scale comes from the representative data
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs", category=UserWarning)
        blob = converter.convert()
    log.debug("converter output: %s", chatter.getvalue())
    log.info("converted %s model: %d bytes in %.1f s", quantization, len(blob), time.monotonic() - t0)
    return blob


def evaluate(name: str, blob: bytes, held_out: np.ndarray, reference: np.ndarray, threshold: float,
             latency_windows: int = 1000) -> tuple[dict, np.ndarray]:
    """Check one variant.

    held_out: (W, T, F) float32 scaled windows not used for fitting; reference: (W,) their Keras
    scores. Returns (facts for the manifest, the variant's scores (W,) float64).
    Raises ExportError if the model contains non-builtin ops.
    """
    ops = model_ops(blob)
    bad = non_builtin_ops(ops)
    if bad:
        raise ExportError(f"{name} model contains non-builtin ops {bad}; the gateway runtime cannot run them")
    scorer = TFLiteModel(blob, num_threads=1)
    scores = scorer.score(held_out)
    facts = {
        "quantization": name,
        "size_bytes": len(blob),
        "ops": ops,
        "stateful": scorer.stateful,
        **tensor_info(scorer),
        "latency": latency(scorer, held_out, n=latency_windows),
        "parity": parity(reference, scores, threshold),
    }
    p, lat = facts["parity"], facts["latency"]
    log.info("%s: %.1f KB, %d ops kinds, latency p50 %.0f µs p99 %.0f µs, max rel err %.2e, spearman %.4f, "
             "agreement %.4f", name, len(blob) / 1024, len(ops), lat["p50_us"], lat["p99_us"], p["max_rel_error"],
             p["spearman"], p["agreement"])
    return facts, scores


def gate_failures(facts: dict, min_agreement: float) -> list[str]:
    """Why a variant's decisions do not match Keras's closely enough (empty: they do).

    facts: the variant's facts from :func:`evaluate`, with ``parity_groups`` (``held_out``, ``synthetic``) when
    the parity windows had groups. On real held-out windows (healthy, and failing ones when the recording has
    them) at least ``min_agreement`` of the decisions must agree; of the synthetic anomalies that Keras scores
    clearly above the threshold (``CLEAR_MARGIN``), the variant may miss at most ``1 - min_agreement``. Synthetic
    windows near the threshold, and ones the variant flags while Keras does not (more sensitive, not blind), are
    reported in the parity figures, not refused.
    """
    if not 0 < min_agreement <= 1:
        raise ValueError(f"min_agreement must be in (0, 1], got {min_agreement}")
    groups = facts.get("parity_groups") or {}
    held = groups.get("held_out", facts["parity"])
    why = []
    if held["agreement"] < min_agreement:
        why.append(f"decisions agree with Keras on {held['agreement']:.2%} of {held['n_windows']} held-out windows "
                   f"({held['disagreements']} differ; < {min_agreement:.2%})")
    synthetic = groups.get("synthetic")
    if synthetic and synthetic.get("clear_above"):
        missed = synthetic["missed_clear"] / synthetic["clear_above"]
        if missed > 1 - min_agreement:
            why.append(f"misses {synthetic['missed_clear']} of the {synthetic['clear_above']} synthetic anomalies Keras "
                       f"scores above {CLEAR_MARGIN:g}x the threshold ({missed:.2%} > {1 - min_agreement:.2%})")
    return why


def check_parity(name: str, facts: dict, min_agreement: float) -> None:
    """Raise ExportError when the served variant's decisions do not match Keras's (:func:`gate_failures`).

    facts: the variant's facts (``parity`` and ``parity_groups``), or a bare parity dict (one group).
    """
    why = gate_failures(facts if "parity" in facts else {"parity": facts}, min_agreement)
    if why:
        raise ExportError(
            f"the {name} model's above/below-threshold decisions do not match the Keras model's: {'; '.join(why)}. "
            "Serve --quantize auto or float32, use more representative training data, or lower --min-agreement if "
            "you accept the difference."
        )


def threshold_steps(facts: dict, threshold: float) -> float | None:
    """The threshold in steps of the variant's output quantization (None for a float output)."""
    q = facts.get("output", {}).get("quantization")
    return float(threshold) / q["scale"] if q and q.get("scale") else None


def choose_variant(variants: dict[str, dict], threshold: float, min_agreement: float) -> dict:
    """``--quantize auto``: which exported variant to serve, and why.

    variants: name -> the facts :func:`evaluate` returned (parity, latency, output quantization).
    In order: ``int8`` when its decisions agree with Keras on at least ``min_agreement`` of the parity
    windows *and* the threshold spans at least ``MIN_INT8_THRESHOLD_STEPS`` output steps; else ``16x8``
    when it agrees and its median latency is within ``MAX_16X8_P50_US``; else ``float32``.
    Returns {"served", "reason", "checks": {name: {"ok", "why", "agreement", "threshold_steps", "p50_us"}}}.
    """
    checks: dict[str, dict] = {}
    for name in ("int8", "16x8"):
        if name not in variants:
            continue
        facts = variants[name]
        agreement = facts["parity"]["agreement"]
        steps = threshold_steps(facts, threshold)
        p50 = facts["latency"]["p50_us"]
        why = gate_failures(facts, min_agreement)
        if name == "int8" and steps is not None and steps < MIN_INT8_THRESHOLD_STEPS:
            why.append(f"the threshold is only {steps:.1f} output quantization steps (< {MIN_INT8_THRESHOLD_STEPS:g}): "
                       "int8 scores cannot resolve it")
        if name == "16x8" and p50 > MAX_16X8_P50_US:
            why.append(f"median latency {p50:.0f} µs > {MAX_16X8_P50_US:g} µs per window")
        checks[name] = {"ok": not why, "why": "; ".join(why) or "passes", "agreement": agreement,
                        "threshold_steps": steps, "p50_us": p50}
    if checks.get("int8", {}).get("ok"):
        served = "int8"
        reason = (f"int8 matches Keras's decisions ({checks['int8']['agreement']:.2%} of the parity windows agree) and "
                  f"the threshold spans {checks['int8']['threshold_steps']:.0f} output steps")
    elif checks.get("16x8", {}).get("ok"):
        served = "16x8"
        reason = f"int8 not served ({checks['int8']['why']}); 16x8 passes" if "int8" in checks else "16x8 passes"
    else:
        served = "float32"
        reason = "; ".join(f"{n} not served ({c['why']})" for n, c in checks.items()) or "float32 only"
    return {"served": served, "reason": reason, "checks": checks}
