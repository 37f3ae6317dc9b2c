"""The TFLite interpreter, from the light runtime only: how the bundle check, the gateway's scorer and the
trainer's parity evaluation load a model, so all three run the same kernels.

``ai_edge_litert`` first, ``tflite_runtime`` where it is the only one installed, imported when a model is
loaded (importing this module needs neither). Never TensorFlow: the gateway does not have it, and
tests/test_architecture.py checks that it is never imported. The runtime's announcement of its XNNPACK delegate,
printed from C++ on a process's first load, is filtered out (``contract.native_notices``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from edge_agent.contract.errors import BundleError
from edge_agent.contract.native_notices import RUNTIME_NOTICES, NativeNoticeFilter

log = logging.getLogger(__name__)

#: One model load at a time, so that two threads' notice filters never interleave on descriptor 2.
_LOADING = threading.Lock()


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
    """An allocated interpreter for a model's bytes (or a ``.tflite`` file, read into memory first); a model
    that won't load is a BundleError.

    Always from bytes: ``model_path=`` would map the file, and a file truncated in place under a mapped model
    (``cp`` does that) kills the process with SIGBUS at the next invoke.
    """
    cls, runtime = interpreter_class()
    if not isinstance(model, bytes | bytearray):
        try:
            model = Path(model).read_bytes()
        except OSError as exc:
            raise BundleError(f"{model}: cannot read the model: {exc.strerror or exc}") from exc
    try:
        with _LOADING, NativeNoticeFilter(RUNTIME_NOTICES):
            interpreter = cls(model_content=bytes(model), num_threads=num_threads)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"{runtime} cannot load the model: {exc}") from exc
    return interpreter

