"""The one place the trainer imports TensorFlow and Keras from, and quiets them first.

:func:`tensorflow` and :func:`keras` set ``ENVIRONMENT`` (each variable only when the user has not set it) before
the first import, and turn TensorFlow's and absl's Python loggers down to errors. Modules that train or export
call them inside the functions that need TensorFlow, so loading and checking data never imports it.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: Set before TensorFlow is imported, unless already set: TensorFlow's own C++ logging at errors only (2 hides
#: info and warnings), no gRPC chatter.
ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR"}


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
