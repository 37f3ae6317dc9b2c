"""Scoring windows with a TFLite model through the light runtime, and comparing scores.

No TensorFlow here: only ``edge_agent.interpreter`` and numpy, so this module can move to the
gateway (as ``edge_agent/scorer.py``) unchanged.

:class:`TFLiteScorer` quantizes a scaled window with the input tensor's (scale, zero point),
invokes, dequantizes the output and returns the reconstruction MAE, resetting the
interpreter's variables before every window when the model keeps state between invokes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from edge_agent.errors import BundleError
from edge_agent.interpreter import interpreter_class, load_interpreter

log = logging.getLogger(__name__)

#: Operator names that are not TFLite builtins: Flex (TensorFlow) ops and custom ops.
_NON_BUILTIN_PREFIXES = ("Flex", "CUSTOM")


class TFLiteScorer:
    """Score scaled windows with one ``.tflite`` model (batch 1).

    Buffers are allocated once; :meth:`score_window` allocates nothing but the returned float.
    """

    def __init__(self, model: Path | bytes | None, num_threads: int = 1, stateful: bool | None = None,
                 interpreter=None) -> None:
        """``model``: a ``.tflite`` path or its bytes; or pass an allocated ``interpreter`` (any runtime) instead.

        ``stateful=None`` detects whether the model keeps state between invokes.
        """
        self.interpreter = interpreter if interpreter is not None else load_interpreter(model, num_threads=num_threads)
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(f"expected one input and one output tensor, got {len(inputs)} and {len(outputs)}")
        self._in, self._out = inputs[0], outputs[0]
        shape = tuple(int(d) for d in self._in["shape"])
        if len(shape) != 3 or shape[0] != 1 or tuple(self._out["shape"]) != shape:
            raise BundleError(f"expected (1, T, F) input and output tensors, got {shape} and {tuple(self._out['shape'])}")
        self.window_shape: tuple[int, int] = shape[1:]
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])
        self.input_quant: tuple[float, int] = tuple(self._in["quantization"])  # (scale, zero point); (0, 0) = float
        self.output_quant: tuple[float, int] = tuple(self._out["quantization"])
        self._x = np.zeros(shape, dtype=self.input_dtype)  # (1, T, F) in the model's input dtype
        self._qbuf = np.zeros(shape, dtype=np.float32)
        self._y = np.zeros(shape[1:], dtype=np.float32)  # (T, F) dequantized reconstruction
        self._diff = np.zeros(shape[1:], dtype=np.float64)  # (T, F) |y - x|
        self.stateful = self._detect_state() if stateful is None else stateful

    # ------------------------------------------------------------------ one window
    def reconstruct(self, window: np.ndarray) -> np.ndarray:
        """Scaled window (T, F) float32 -> reconstruction (T, F) float32 (a buffer reused by the next call)."""
        if window.shape != self.window_shape:
            raise ValueError(f"window shape {window.shape} != model input {self.window_shape}")
        if self.input_dtype == np.int8:
            scale, zero = self.input_quant
            np.divide(window, scale, out=self._qbuf[0])
            np.add(self._qbuf, zero, out=self._qbuf)
            np.rint(self._qbuf, out=self._qbuf)
            np.clip(self._qbuf, -128, 127, out=self._qbuf)
            self._x[...] = self._qbuf
        else:
            self._x[0] = window
        if self.stateful:
            self.interpreter.reset_all_variables()
        self.interpreter.set_tensor(self._in["index"], self._x)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._out["index"])[0]
        if self.output_dtype == np.int8:
            scale, zero = self.output_quant
            np.subtract(raw, zero, out=self._y, dtype=np.float32)
            np.multiply(self._y, scale, out=self._y)
        else:
            self._y[...] = raw
        return self._y

    def score_window(self, window: np.ndarray) -> float:
        """Reconstruction MAE of one scaled window (T, F) float32."""
        y = self.reconstruct(window)
        np.subtract(y, window, out=self._diff)
        np.abs(self._diff, out=self._diff)
        return float(self._diff.mean())

    def score(self, windows: np.ndarray) -> np.ndarray:
        """Scaled windows (W, T, F) float32 -> scores (W,) float64."""
        out = np.empty(len(windows), dtype=np.float64)
        for i, w in enumerate(windows):
            out[i] = self.score_window(w)
        return out

    def reconstructions(self, windows: np.ndarray) -> np.ndarray:
        """(W, T, F) -> (W, T, F) float32 reconstructions (new array)."""
        return np.stack([self.reconstruct(w).copy() for w in windows]) if len(windows) else np.empty_like(windows)

    # ------------------------------------------------------------------ facts about the model
    def _detect_state(self) -> bool:
        """True if invoking twice on the same window gives different outputs (variable tensors)."""
        rng = np.random.default_rng(0)
        a = rng.random(self.window_shape, dtype=np.float32)
        b = rng.random(self.window_shape, dtype=np.float32)
        self.stateful = False
        first = self.reconstruct(a).copy()
        self.reconstruct(b)
        again = self.reconstruct(a).copy()
        stateful = not np.array_equal(first, again)
        if stateful:
            log.info("model keeps state between invokes: variables are reset before every window")
        self.interpreter.reset_all_variables()
        return stateful

    def tensor_info(self) -> dict:
        """Input/output shape, dtype and quantization for the manifest."""
        def info(d: dict) -> dict:
            scale, zero = d["quantization"]
            out = {"shape": [int(x) for x in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
            if scale:
                out["quantization"] = {"scale": float(scale), "zero_point": int(zero)}
            return out

        return {"input": info(self._in), "output": info(self._out)}

    def latency(self, windows: np.ndarray, n: int = 1000, warmup: int = 20) -> dict:
        """Per-window wall time of quantize + invoke + dequantize + MAE, in µs: {"p50", "p99", "mean", "n"}."""
        if len(windows) == 0:
            raise ValueError("latency needs at least one window")
        for i in range(warmup):
            self.score_window(windows[i % len(windows)])
        times = np.empty(n, dtype=np.float64)
        for i in range(n):
            w = windows[i % len(windows)]
            t0 = time.perf_counter()
            self.score_window(w)
            times[i] = time.perf_counter() - t0
        us = times * 1e6
        return {"p50_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99)),
                "mean_us": float(us.mean()), "n": n}


def model_ops(model: Path | bytes) -> list[str]:
    """Sorted distinct operator names as stored in the model (no delegate applied).

    ``edge_agent.interpreter.op_names`` lists ops after the default XNNPACK delegate has
    replaced some of them with a ``DELEGATE`` node; here the delegate is kept off so the list
    is what the file contains.
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


def parity(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> dict:
    """Compare two score vectors (W,) on the same windows.

    Returns max/mean abs error, max relative error (|Δ| / reference), Spearman rank correlation,
    and ``agreement``: the fraction of windows on the same side of ``threshold`` in both.
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
    }

