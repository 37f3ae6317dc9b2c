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
from pathlib import Path

import numpy as np

from edge_agent.contract import explain, preprocess
from edge_agent.contract.bundle import Bundle
from edge_agent.contract.errors import BundleError
from edge_agent.contract.interpreter import load_interpreter

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


class TFLiteModel:
    """One ``.tflite`` model with a (1, T, F) input and output: quantize, invoke, dequantize.

    Works on windows that are already scaled. Buffers are allocated once; ``reconstruct``
    allocates nothing. ``stateful=None`` detects whether invokes keep state (fused LSTMs do):
    then the interpreter's variables are reset before every window.

    Args:
        model: a model's bytes, or the path of a ``.tflite`` file (read into memory: never mapped).
        num_threads: interpreter threads.
        stateful: reset variables before each window; None = find out by invoking twice.
    """

    def __init__(self, model: Path | str | bytes, num_threads: int = 1, stateful: bool | None = None) -> None:
        self.interpreter = load_interpreter(model if isinstance(model, bytes | bytearray) else Path(model), num_threads)
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(f"expected one input and one output tensor, got {len(inputs)} and {len(outputs)}")
        inp, out = inputs[0], outputs[0]
        shape = tuple(int(d) for d in inp["shape"])
        if len(shape) != 3 or shape[0] != 1 or tuple(int(d) for d in out["shape"]) != shape:
            raise BundleError(f"expected (1, T, F) input and output tensors, got {shape} and {tuple(out['shape'])}")
        self.window_shape: tuple[int, int] = shape[1:]
        self._in_index, self._out_index = inp["index"], out["index"]
        self.input_dtype = np.dtype(inp["dtype"])
        self.output_dtype = np.dtype(out["dtype"])
        self.input_quant = (float(inp["quantization"][0]), int(inp["quantization"][1]))  # (scale, zero point)
        self.output_quant = (float(out["quantization"][0]), int(out["quantization"][1]))
        self._quantized_in = self.input_dtype != np.float32
        self._quantized_out = self.output_dtype != np.float32
        if (self._quantized_in and self.input_quant[0] == 0.0) or (self._quantized_out and self.output_quant[0] == 0.0):
            raise BundleError("integer tensor without quantization parameters")
        self._work = np.empty(shape, np.float32)  # (1, T, F)
        self._x = np.empty(shape, self.input_dtype)  # (1, T, F) what set_tensor gets
        self._y = np.empty(shape[1:], np.float32)  # (T, F) dequantized reconstruction
        if self._quantized_in:
            info = np.iinfo(self.input_dtype)
            self._qmin, self._qmax = float(info.min), float(info.max)
        self.stateful = False
        self.stateful = self._detect_state() if stateful is None else bool(stateful)

    def reconstruct(self, window: np.ndarray) -> np.ndarray:
        """Scaled window (T, F) float32 -> reconstruction (T, F) float32, a buffer the next call overwrites."""
        if window.shape != self.window_shape:
            raise ValueError(f"window shape {window.shape} != model input {self.window_shape}")
        interp = self.interpreter
        if self.stateful:
            interp.reset_all_variables()
        if self._quantized_in:
            scale, zero = self.input_quant
            np.divide(window, scale, out=self._work[0])
            np.add(self._work, zero, out=self._work)
            np.rint(self._work, out=self._work)
            np.clip(self._work, self._qmin, self._qmax, out=self._work)
            self._x[...] = self._work
        else:
            self._x[0] = window
        interp.set_tensor(self._in_index, self._x)
        interp.invoke()
        raw = interp.get_tensor(self._out_index)[0]
        if self._quantized_out:
            scale, zero = self.output_quant
            np.subtract(raw, zero, out=self._y, dtype=np.float32)
            np.multiply(self._y, scale, out=self._y)
        else:
            self._y[...] = raw
        return self._y

    @property
    def reconstruction(self) -> np.ndarray:
        """(T, F) the last window's reconstruction (overwritten by the next ``reconstruct``)."""
        return self._y

    def score_window(self, window: np.ndarray) -> float:
        """Reconstruction error (``preprocess.reconstruction_error``) of one scaled window (T, F)."""
        y = self.reconstruct(window)
        return float(preprocess.reconstruction_error(window[None], y[None])[0])

    def score(self, windows: np.ndarray) -> np.ndarray:
        """Scaled windows (W, T, F) float32 -> scores (W,) float64."""
        out = np.empty(len(windows), dtype=np.float64)
        for i, w in enumerate(windows):
            out[i] = self.score_window(w)
        return out

    def _detect_state(self) -> bool:
        """True if invoking twice on the same window gives different outputs (variable tensors)."""
        rng = np.random.default_rng(0)
        a = rng.random(self.window_shape, dtype=np.float32)
        b = rng.random(self.window_shape, dtype=np.float32)
        first = self.reconstruct(a).copy()
        self.reconstruct(b)
        stateful = not np.array_equal(first, self.reconstruct(a))
        self.interpreter.reset_all_variables()
        if stateful:
            log.info("model keeps state between invokes: variables are reset before every window")
        return stateful


class Scorer:
    """The agent's scorer for one bundle: scale, :class:`TFLiteModel`, error; not thread-safe.

    Args:
        bundle: a loaded, validated bundle.
        num_threads: interpreter threads (1 is best for one small window on a small CPU).
        model_path: a different ``.tflite`` with the same tensors (benchmarks score bundle
            variants through the same code); defaults to the bundle's served model, from the bytes
            ``Bundle.load`` verified.
    """

    def __init__(self, bundle: Bundle, num_threads: int = 1, model_path: Path | str | None = None) -> None:
        self.bundle = bundle
        self.model_path = Path(model_path or bundle.model_path)
        model = bundle.model_bytes if model_path is None and bundle.model_bytes else self.model_path
        self.model = TFLiteModel(model, num_threads=num_threads, stateful=bundle.stateful)
        shape = (bundle.spec.window, bundle.spec.n_features)
        if self.model.window_shape != shape:
            raise BundleError(f"{self.model_path}: model windows are {self.model.window_shape}, the bundle needs {shape}")
        self._scaled = np.empty(shape, np.float32)
        self.latency = LatencyRing()
        self.windows = 0

    @property
    def version(self) -> str:
        return self.bundle.version

    def score(self, steps: np.ndarray) -> float:
        """Anomaly score of one window: steps (T, F) float32 (not modified) -> float."""
        t0 = time.perf_counter()
        self.bundle.scaler.transform_into(steps, self._scaled)
        err = self.model.score_window(self._scaled)
        self.latency.add((time.perf_counter() - t0) * 1000.0)
        self.windows += 1
        return err

    def feature_errors(self) -> np.ndarray:
        """(F,) per-feature error of the window scored last (``contract.explain.feature_errors``), from the
        buffers that scoring left: no second inference."""
        return explain.feature_errors(self._scaled, self.model.reconstruction)

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        """Scores of unscaled windows (W, T, F) -> (W,) float64, one invoke each."""
        return np.array([self.score(w) for w in np.asarray(windows, np.float32)], dtype=np.float64)

    def self_test(self) -> float:
        """Score one window of the scaler's midpoints; BundleError unless the score is finite."""
        mid = (self.bundle.scaler.minimum + self.bundle.scaler.maximum) / 2
        window = np.broadcast_to(mid, self._scaled.shape).astype(np.float32)
        try:
            value = self.score(window)
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{self.model_path}: test inference failed: {exc}") from exc
        if not np.isfinite(value):
            raise BundleError(f"{self.model_path}: test inference gave a non-finite score {value}")
        return value
