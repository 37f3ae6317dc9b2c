"""The TFLite interpreter, from the light runtime only.

``ai_edge_litert`` first, ``tflite_runtime`` where it is the only one installed. Never TensorFlow:
the gateway does not have it, and a test checks that it is never imported.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge_agent.contract.errors import BundleError

log = logging.getLogger(__name__)


def interpreter_class() -> tuple[type, str]:
    """The Interpreter class of the installed runtime and that runtime's name."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ModuleNotFoundError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ModuleNotFoundError as exc:
        raise BundleError("no TFLite runtime installed: pip install ai-edge-litert (or tflite-runtime)") from exc


def load_interpreter(model: Path | bytes, num_threads: int = 1):
    """An allocated interpreter for a ``.tflite`` file or its bytes; a model that won't load is a BundleError."""
    cls, runtime = interpreter_class()
    try:
        if isinstance(model, bytes | bytearray):
            interpreter = cls(model_content=bytes(model), num_threads=num_threads)
        else:
            interpreter = cls(model_path=str(model), num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"{runtime} cannot load the model: {exc}") from exc
    return interpreter

