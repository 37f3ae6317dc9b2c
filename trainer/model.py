"""Autoencoder architectures (Keras 3, TensorFlow backend).

Both models map a scaled window (batch, T, F) float32 to its reconstruction (batch, T, F);
the anomaly score is the reconstruction MAE (``edge_agent.contract.preprocess.reconstruction_error``).

* ``lstm``: LSTM(u0, seq) … LSTM(u_last) → RepeatVector(T) → LSTM(u_last, seq) … LSTM(u0, seq)
  → TimeDistributed(Dense(F)). Units default to (32, 16), the IMS-tutorial shape.
* ``conv1d``: Conv1D(f, stride 2) per entry of ``units`` → Dense(latent) bottleneck → UpSampling1D
  + Conv1D back → Cropping1D to T → Conv1D(F).

Two builds of the same weights exist. :func:`build` with ``batch_size=None`` is trained;
:func:`export_clone` rebuilds it with batch 1 and ``unroll=True`` LSTMs and copies the weights.
Why: Keras 3 never emits TFLite's fused LSTM op; a rolled LSTM at batch 1 becomes WHILE loops
(float only: full-int8 conversion segfaults the TF 2.21 calibrator), while an unrolled one becomes
plain builtin ops in every variant, int8 included (docs/central/train.md, "Model form", has the measurements).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from trainer import tfenv

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

ARCHITECTURES = ("lstm", "conv1d")
#: Beyond this many steps the unrolled LSTM graph gets large (T=256: int8 12.5 MB, ~100 s to convert).
UNROLL_WARN_STEPS = 128


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and size. ``units``: LSTM units per encoder layer, or Conv1D filters per stage.

    ``architecture="auto"`` is a placeholder the trainer resolves from the data (``trainer.recipe``);
    :func:`build` needs a concrete one.
    """

    architecture: str = "lstm"
    units: tuple[int, ...] = (32, 16)
    latent: int = 8  # conv1d only: width of the dense bottleneck
    kernel: int = 3  # conv1d only

    def __post_init__(self) -> None:
        if self.architecture not in (*ARCHITECTURES, "auto"):
            raise ValueError(f"unknown model {self.architecture!r}; choose one of {list(ARCHITECTURES)}")
        if not self.units or any(u < 1 for u in self.units):
            raise ValueError(f"units must be positive integers, got {self.units}")
        if self.latent < 1 or self.kernel < 1:
            raise ValueError("latent and kernel must be >= 1")
        object.__setattr__(self, "units", tuple(int(u) for u in self.units))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["units"] = list(self.units)
        return d


def build(config: ModelConfig, steps: int, n_features: int, batch_size: int | None = None,
          unroll: bool = False) -> keras.Model:
    """A fresh model for windows of ``steps`` × ``n_features``."""
    if config.architecture == "lstm":
        return _lstm(config, steps, n_features, batch_size, unroll)
    if config.architecture == "conv1d":
        return _conv1d(config, steps, n_features, batch_size)
    raise ValueError(f"cannot build architecture {config.architecture!r}; choose one of {list(ARCHITECTURES)}")


def _lstm(config: ModelConfig, steps: int, n_features: int, batch_size: int | None, unroll: bool) -> keras.Model:
    keras = tfenv.keras()
    layers = keras.layers
    inp = keras.Input((steps, n_features), batch_size=batch_size, name="window")
    x = inp
    for i, units in enumerate(config.units):
        last = i == len(config.units) - 1
        x = layers.LSTM(units, return_sequences=not last, unroll=unroll, name=f"enc_lstm{i}")(x)
    x = layers.RepeatVector(steps, name="repeat")(x)
    for i, units in enumerate(reversed(config.units)):
        x = layers.LSTM(units, return_sequences=True, unroll=unroll, name=f"dec_lstm{i}")(x)
    out = layers.TimeDistributed(layers.Dense(n_features), name="reconstruction")(x)
    return keras.Model(inp, out, name="lstm_autoencoder")


def _conv1d(config: ModelConfig, steps: int, n_features: int, batch_size: int | None) -> keras.Model:
    keras = tfenv.keras()
    layers = keras.layers
    inp = keras.Input((steps, n_features), batch_size=batch_size, name="window")
    x = inp
    length = steps
    for i, filters in enumerate(config.units):
        x = layers.Conv1D(filters, config.kernel, strides=2, padding="same", activation="relu", name=f"enc_conv{i}")(x)
        length = math.ceil(length / 2)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(config.latent, activation="relu", name="latent")(x)
    x = layers.Dense(length * config.units[-1], activation="relu", name="expand")(x)
    x = layers.Reshape((length, config.units[-1]), name="unflatten")(x)
    for i, filters in enumerate(reversed(config.units)):
        x = layers.UpSampling1D(2, name=f"up{i}")(x)
        x = layers.Conv1D(filters, config.kernel, padding="same", activation="relu", name=f"dec_conv{i}")(x)
        length *= 2
    if length > steps:
        x = layers.Cropping1D((0, length - steps), name="crop")(x)
    out = layers.Conv1D(n_features, config.kernel, padding="same", name="reconstruction")(x)
    return keras.Model(inp, out, name="conv1d_autoencoder")


def export_clone(model: keras.Model, config: ModelConfig) -> keras.Model:
    """The same weights in the export form: batch 1 and unrolled LSTMs."""
    _, steps, n_features = model.input_shape
    if config.architecture == "lstm" and steps > UNROLL_WARN_STEPS:
        log.warning("unrolling an LSTM over %d steps makes a large, slow-to-convert model; "
                    "consider a shorter window, features mode or --model conv1d", steps)
    clone = build(config, steps, n_features, batch_size=1, unroll=True)
    clone.set_weights(model.get_weights())
    return clone
