"""The one place the trainer imports TensorFlow and Keras from, and quiets them first.

:func:`tensorflow` and :func:`keras` set ``ENVIRONMENT`` (each variable only when the user has not set it) before
the first import, and turn TensorFlow's and absl's Python loggers down to errors. Modules that train or export
call them inside the functions that need TensorFlow, so loading and checking data never imports it.

TensorFlow 2.21's C++ code also writes notices straight to file descriptor 2 that no setting turns off: absl
prints everything logged before its logging is initialised (the oneDNN notice at import, ``E0000`` lines from
tf.data and the converter), the TFLite runtime announces its XNNPACK delegate, the MLIR quantizer prints its
settings. :func:`notice_filter` passes descriptor 2 through a pipe and drops the lines of ``NOTICES`` (each one
known and harmless; the filter is the gateway's, ``edge_agent.contract.native_notices``); every other line goes
through unchanged, in order. ``trainer`` runs its commands under it unless ``-v`` is given.
"""

from __future__ import annotations

import logging
import os
import re

from edge_agent.contract.native_notices import RUNTIME_NOTICES, NativeNoticeFilter

log = logging.getLogger(__name__)

#: Set before TensorFlow is imported, unless already set: TensorFlow's own C++ logging at errors only (2 hides
#: info and warnings), no gRPC chatter.
ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR"}

_ABSL = r"[IWE]\d{4} [\d:.]+ +\d+ "  # absl's prefix: level, MMDD (0000 before its logging is initialised), time, tid
#: The native lines :class:`NativeNoticeFilter` drops (matched from the start of the line).
NOTICES = re.compile("|".join((
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    _ABSL + r"port\.cc:\d+\] oneDNN custom operations are on\.",
    _ABSL + r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$",
    _ABSL + r"node_def_util\.cc:\d+\] NodeDef mentions attribute \w+ which is not in the op definition",
    _ABSL + r"util\.cc:\d+\] oneDNN supports DT_\w+ only on platforms with",
    _ABSL + r"\w+\.cc:\d+\] Unable to register cu(DNN|FFT|BLAS) factory",
    _ABSL + r"\w+\.cc:\d+\] computation placer already registered",
    _ABSL + r"\w+\.cc:\d+\] failed call to cuInit",
    _ABSL + r"tf_tfl_flatbuffer_helpers\.cc:\d+\] Ignored (output_format|drop_control_dependency)\.$",
    RUNTIME_NOTICES.pattern.decode(),
    r"fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+$",
)).encode())


def tensorflow():
    """The ``tensorflow`` module, imported with ``ENVIRONMENT`` set and its Python loggers at errors."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tf


def keras():
    """The ``keras`` module (TensorFlow backend), imported after :func:`tensorflow`."""
    tensorflow()
    import keras as keras_module

    return keras_module


def notice_filter() -> NativeNoticeFilter:
    """A filter (not started) that drops TensorFlow's and the TFLite runtime's known notices (``NOTICES``)."""
    return NativeNoticeFilter(NOTICES)
