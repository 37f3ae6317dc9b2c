"""TFLite conversion of a trained autoencoder, and the checks every exported variant must pass.

Variants (both builtin ops only; never SELECT_TF_OPS, so ai-edge-litert runs them without TensorFlow):

* ``float32``: ``TFLITE_BUILTINS``.
* ``int8``: full-integer post-training quantization, ``TFLITE_BUILTINS_INT8``, int8 input and
  output tensors, calibrated on training windows (the representative data set).

For each variant :func:`evaluate` lists the ops (refusing Flex/custom ones), measures size and
per-window latency with the light runtime (1 thread), and compares its scores with the Keras
model's on held-out windows (:func:`trainer.tflite_eval.parity`). :func:`check_parity` fails the
export when the served variant's above/below-threshold decisions agree on too few windows.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from edge_agent.scorer import TFLiteModel
from trainer.tflite_eval import latency, model_ops, non_builtin_ops, parity, tensor_info

log = logging.getLogger(__name__)

VARIANTS = ("float32", "int8")
#: Most windows fed to the int8 calibrator.
REPRESENTATIVE_MAX = 500


class ExportError(RuntimeError):
    """An exported model that must not be served (non-builtin ops, failed parity)."""


def convert(model: keras.Model, quantization: str, representative: np.ndarray | None = None) -> bytes:
    """Convert a batch-1 Keras model to a ``.tflite`` flatbuffer.

    representative: (W, T, F) float32 scaled training windows; required for ``int8``.
    """
    if quantization not in VARIANTS:
        raise ValueError(f"unknown quantization {quantization!r}; choose one of {list(VARIANTS)}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "float32":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    else:
        if representative is None or len(representative) == 0:
            raise ValueError("int8 conversion needs representative training windows")
        pick = np.linspace(0, len(representative) - 1, min(len(representative), REPRESENTATIVE_MAX)).astype(int)
        sample = representative[pick]

        def dataset():
            for w in sample:
                yield [w[None, ...]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
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


def check_parity(name: str, parity_facts: dict, min_agreement: float) -> None:
    """Raise ExportError when the served variant's decisions agree with Keras on too few windows."""
    if not 0 < min_agreement <= 1:
        raise ValueError(f"min_agreement must be in (0, 1], got {min_agreement}")
    agreement = parity_facts["agreement"]
    if agreement < min_agreement:
        raise ExportError(
            f"the {name} model's above/below-threshold decisions agree with the Keras model on only "
            f"{agreement:.2%} of {parity_facts['n_windows']} held-out windows ({parity_facts['disagreements']} differ; "
            f"at least {min_agreement:.2%} required). Serve float32 (--quantize float32), use more representative "
            "training data, or lower --min-agreement if you accept the difference."
        )


def quiet_tensorflow() -> None:
    """Turn TensorFlow's C++ and Python logging down to errors (call before heavy TF work)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
