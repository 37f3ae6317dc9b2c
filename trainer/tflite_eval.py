"""Facts about a TFLite model and comparisons of score vectors (no TensorFlow).

Scoring itself is the gateway's own :class:`edge_agent.scorer.TFLiteModel` (quantize with the
input tensor's scale/zero point, invoke, dequantize, MAE against the float window, variables
reset per window when the model is stateful), so the trainer's parity figures measure exactly
what the agent will compute. Here: tensor facts, latency, the op list, and parity metrics.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from edge_agent.contract.errors import BundleError
from edge_agent.contract.interpreter import interpreter_class
from edge_agent.scorer import TFLiteModel

log = logging.getLogger(__name__)

#: Operator names that are not TFLite builtins: Flex (TensorFlow) ops and custom ops.
_NON_BUILTIN_PREFIXES = ("Flex", "CUSTOM")


def tensor_info(model: TFLiteModel) -> dict:
    """Input/output shape, dtype and (for integer tensors) quantization, for the manifest."""
    def info(d: dict) -> dict:
        scale, zero = d["quantization"]
        out = {"shape": [int(x) for x in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
        if scale:
            out["quantization"] = {"scale": float(scale), "zero_point": int(zero)}
        return out

    interpreter = model.interpreter
    return {"input": info(interpreter.get_input_details()[0]), "output": info(interpreter.get_output_details()[0])}


def latency(model: TFLiteModel, windows: np.ndarray, n: int = 1000, warmup: int = 20) -> dict:
    """Per-window wall time of quantize + invoke + dequantize + MAE, in µs: {"p50_us", "p99_us", "mean_us", "n"}.

    windows: (W, T, F) float32 scaled, cycled through.
    """
    if len(windows) == 0:
        raise ValueError("latency needs at least one window")
    for i in range(warmup):
        model.score_window(windows[i % len(windows)])
    times = np.empty(n, dtype=np.float64)
    for i in range(n):
        w = windows[i % len(windows)]
        t0 = time.perf_counter()
        model.score_window(w)
        times[i] = time.perf_counter() - t0
    us = times * 1e6
    return {"p50_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99)), "mean_us": float(us.mean()),
            "n": n}


def model_ops(model: Path | bytes) -> list[str]:
    """Sorted distinct operator names as stored in the model (no delegate applied).

    An interpreter with the default XNNPACK delegate lists a ``DELEGATE`` node in place of the ops
    it took over; here the delegate is kept off so the list is what the file contains.
    """
    cls, _runtime = interpreter_class()
    kwargs = {"model_content": bytes(model)} if isinstance(model, bytes | bytearray) else {"model_path": str(model)}
    try:
        from ai_edge_litert.interpreter import OpResolverType
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    except ImportError:
        pass
    try:
        interpreter = cls(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"cannot load the model to list its ops: {exc}") from exc
    return sorted({op["op_name"] for op in interpreter._get_ops_details()} - {"DELEGATE"})


def non_builtin_ops(ops: list[str]) -> list[str]:
    """The Flex / custom ops in an op list (empty when every op is a TFLite builtin)."""
    return [op for op in ops if op.startswith(_NON_BUILTIN_PREFIXES) or not op.isupper()]


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks (1..n, ties get their average rank) of a 1-D array, float64."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(1, x.size + 1)
    sorted_x = x[order]
    # average the ranks of tied runs
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [x.size]])
    for s, e in zip(starts, ends, strict=True):
        if e - s > 1:
            ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equal-length score vectors (nan if either is constant)."""
    ra, rb = rank(a), rank(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


#: A window the reference scores above this multiple of the threshold is a *clear* anomaly: a candidate that puts
#: it below the threshold is blind to it. Closer to the threshold, a decision is within the score error of any
#: quantized model (int8: up to ~6 output steps on a threshold of >= 32 steps, i.e. ~20 %).
CLEAR_MARGIN = 1.2


def parity(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> dict:
    """Compare two score vectors (W,) on the same windows.

    Returns max/mean abs error, max relative error (|Δ| / reference), Spearman rank correlation,
    ``agreement``: the fraction of windows on the same side of ``threshold`` in both; ``missed``: the windows
    above it for the reference only; ``clear_above`` / ``missed_clear``: the windows the reference scores above
    ``CLEAR_MARGIN`` times the threshold, and those of them the candidate puts below it (blind where it matters).
    """
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if ref.shape != cand.shape or ref.ndim != 1 or ref.size == 0:
        raise ValueError(f"parity needs two equal, non-empty 1-D score vectors, got {ref.shape} and {cand.shape}")
    diff = np.abs(cand - ref)
    rel = diff / np.maximum(np.abs(ref), 1e-12)
    agree = (ref > threshold) == (cand > threshold)
    return {
        "n_windows": int(ref.size),
        "max_abs_error": float(diff.max()),
        "mean_abs_error": float(diff.mean()),
        "max_rel_error": float(rel.max()),
        "mean_rel_error": float(rel.mean()),
        "spearman": spearman(ref, cand),
        "agreement": float(agree.mean()),
        "disagreements": int((~agree).sum()),
        "reference_above": int((ref > threshold).sum()),
        "candidate_above": int((cand > threshold).sum()),
        "missed": int(((ref > threshold) & ~(cand > threshold)).sum()),  # Keras flags it, the candidate does not
        "clear_above": int((ref > CLEAR_MARGIN * threshold).sum()),
        "missed_clear": int(((ref > CLEAR_MARGIN * threshold) & ~(cand > threshold)).sum()),
    }

