"""The scorer: one window of steps in, one anomaly score out, through the bundle's TFLite model.

Per window (T steps x F features)::

    steps (T, F) ─MinMaxScaler.transform_into─► scaled (1, T, F) float32 (buffer owned here)
        ─quantize with the input tensor's own scale/zero-point (int8 models)─► set_tensor, invoke()
        ─dequantize with the output tensor's parameters─► reconstruction (1, T, F)
        ─preprocess.reconstruction_error(scaled, reconstruction)─► score (float)

Every buffer is allocated once. Models with state (fused LSTMs keep it in variables) get
``reset_all_variables()`` before each window, so a window's score never depends on the one before.
This is the one implementation of quantize/invoke/dequantize; the trainer's TFLite evaluation uses it.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from edge_agent import preprocess
from edge_agent.bundle import Bundle
from edge_agent.errors import BundleError
from edge_agent.interpreter import load_interpreter

log = logging.getLogger(__name__)


class LatencyRing:
    """The last ``size`` latencies in milliseconds, for p50/p99 without unbounded memory."""

    def __init__(self, size: int = 1024) -> None:
        self._ms = np.zeros(size, np.float64)
        self._i = 0
        self.count = 0

    def add(self, ms: float) -> None:
        self._ms[self._i] = ms
        self._i = (self._i + 1) % self._ms.size
        self.count += 1

    def percentiles(self) -> dict[str, float | None]:
        """``{"p50": ms, "p99": ms}`` over the stored latencies (None before the first)."""
        n = min(self.count, self._ms.size)
        if n == 0:
            return {"p50": None, "p99": None}
        p50, p99 = np.percentile(self._ms[:n], [50, 99])
        return {"p50": round(float(p50), 4), "p99": round(float(p99), 4)}


class Scorer:
    """Owns one interpreter for one bundle; not thread-safe (one scoring thread calls it).

    Args:
        bundle: a loaded, validated bundle.
        num_threads: interpreter threads (1 is best for one small window on a small CPU).
        model_path: a different ``.tflite`` with the same tensors (benchmarks score bundle
            variants through the same code); defaults to the bundle's served model.
    """

    def __init__(self, bundle: Bundle, num_threads: int = 1, model_path=None) -> None:
        self.bundle = bundle
        self.model_path = model_path or bundle.model_path
        self.interpreter = load_interpreter(self.model_path, num_threads=num_threads)
        inp = self.interpreter.get_input_details()
        out = self.interpreter.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise BundleError(f"{self.model_path}: expected one input and one output tensor")
        inp, out = inp[0], out[0]
        shape = (1, bundle.spec.window, bundle.spec.n_features)
        if tuple(inp["shape"]) != shape or tuple(out["shape"]) != shape:
            raise BundleError(
                f"{self.model_path}: tensors {list(inp['shape'])} -> {list(out['shape'])}, the bundle needs {list(shape)}"
            )
        self._in_index = inp["index"]
        self._out_index = out["index"]
        self._in_dtype = np.dtype(inp["dtype"])
        self._out_dtype = np.dtype(out["dtype"])
        self._in_scale, self._in_zero = (float(v) for v in inp["quantization"])
        self._out_scale, self._out_zero = (float(v) for v in out["quantization"])
        self._quantized_in = self._in_dtype != np.float32
        self._quantized_out = self._out_dtype != np.float32
        if self._quantized_in and self._in_scale == 0.0 or self._quantized_out and self._out_scale == 0.0:
            raise BundleError(f"{self.model_path}: integer tensor without quantization parameters")
        self.stateful = bundle.stateful
        self._scaled = np.empty(shape, np.float32)
        self._work = np.empty(shape, np.float32)
        self._q = np.empty(shape, self._in_dtype)
        self._recon = np.empty(shape, np.float32)
        if self._quantized_in:
            info = np.iinfo(self._in_dtype)
            self._qmin, self._qmax = float(info.min), float(info.max)
        self.latency = LatencyRing()
        self.windows = 0

    @property
    def version(self) -> str:
        return self.bundle.version

    def score(self, steps: np.ndarray) -> float:
        """Anomaly score of one window: steps (T, F) float32 (not modified) -> float."""
        t0 = time.perf_counter()
        self.bundle.scaler.transform_into(steps, self._scaled[0])
        self._invoke()
        err = float(preprocess.reconstruction_error(self._scaled, self._recon)[0])
        self.latency.add((time.perf_counter() - t0) * 1000.0)
        self.windows += 1
        return err

    def reconstruct(self, scaled: np.ndarray) -> np.ndarray:
        """Model output for already-scaled windows (W, T, F) float32 -> new (W, T, F) float32 (for evaluation)."""
        scaled = np.asarray(scaled, np.float32)
        out = np.empty_like(scaled)
        for i in range(scaled.shape[0]):
            self._scaled[0] = scaled[i]
            self._invoke()
            out[i] = self._recon[0]
        return out

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        """Scores of unscaled windows (W, T, F) -> (W,) float64, one invoke each (for evaluation)."""
        return np.array([self.score(w) for w in np.asarray(windows, np.float32)], dtype=np.float64)

    def self_test(self) -> float:
        """Score one window of the scaler's midpoints; BundleError unless the score is finite."""
        mid = (self.bundle.scaler.minimum + self.bundle.scaler.maximum) / 2
        window = np.broadcast_to(mid, (self.bundle.spec.window, self.bundle.spec.n_features)).astype(np.float32)
        try:
            value = self.score(window)
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{self.model_path}: test inference failed: {exc}") from exc
        if not np.isfinite(value):
            raise BundleError(f"{self.model_path}: test inference gave a non-finite score {value}")
        return value

    def _invoke(self) -> None:
        """Run the model on ``self._scaled``; leaves the float reconstruction in ``self._recon``."""
        interp = self.interpreter
        if self.stateful:
            interp.reset_all_variables()
        if self._quantized_in:
            np.divide(self._scaled, self._in_scale, out=self._work)
            np.add(self._work, self._in_zero, out=self._work)
            np.rint(self._work, out=self._work)
            np.clip(self._work, self._qmin, self._qmax, out=self._work)
            self._q[...] = self._work
            interp.set_tensor(self._in_index, self._q)
        else:
            interp.set_tensor(self._in_index, self._scaled)
        interp.invoke()
        raw = interp.get_tensor(self._out_index)
        if self._quantized_out:
            np.subtract(raw, self._out_zero, out=self._recon, casting="unsafe")
            np.multiply(self._recon, self._out_scale, out=self._recon)
        else:
            self._recon[...] = raw
