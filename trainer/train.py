"""Windows from a recording, and seeded training of the autoencoder.

Windows are framed inside each time-contiguous segment with ``edge_agent.contract.preprocess`` (the
same code the gateway runs), never across a gap. Validation is time-ordered: the last
``validation_fraction`` of the training windows, after dropping the windows that overlap
both parts (so no validation step was seen in training).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.contract.preprocess import (
    MinMaxScaler,
    PreprocessSpec,
    reconstruction_error,
    steps,
    window_ends,
    windows,
)
from edge_agent.contract.recordings import Recording
from trainer import tfenv
from trainer.model import ModelConfig, build

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowSet:
    """Scaled windows and where they end.

    windows: (W, T, F) float32, scaled. ends: (W,) int64 index of the row after each window's
    last row, counted over the whole recording. times: (W,) datetime64[ms] time of each
    window's last row, or None when the recording has no time base.
    """

    windows: np.ndarray
    ends: np.ndarray
    times: np.ndarray | None

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def subset(self, idx: np.ndarray | slice) -> WindowSet:
        return WindowSet(self.windows[idx], self.ends[idx], None if self.times is None else self.times[idx])


def recording_steps(recording: Recording, spec: PreprocessSpec) -> list[np.ndarray]:
    """One (S_i, F) float32 step array per segment."""
    return [steps(seg.data, spec) for seg in recording.segments]


def fit_scaler(recording: Recording, spec: PreprocessSpec) -> MinMaxScaler:
    """Min-max scaler fitted on the steps of ``recording`` (the training part only)."""
    parts = [s for s in recording_steps(recording, spec) if len(s)]
    if not parts:
        raise ValueError("no training data to fit the scaler on")
    return MinMaxScaler.fit(np.concatenate(parts, axis=0))


def make_windows(recording: Recording, spec: PreprocessSpec, scaler: MinMaxScaler, row_offset: int = 0) -> WindowSet:
    """Scaled windows of every segment, in time order.

    ``row_offset`` is added to ``ends`` (use the row count of what precedes ``recording``).
    """
    chunks, ends, times = [], [], []
    has_times = True
    offset = row_offset
    for seg in recording.segments:
        st = steps(seg.data, spec)
        w = windows(st, spec.window, spec.hop)
        e = window_ends(len(st), spec.window, spec.hop)  # step index, exclusive
        last_row = e * spec.block - 1  # row index (in the segment) of each window's last sample
        chunks.append(w)
        ends.append(offset + last_row + 1)
        if seg.row_times is not None:
            times.append(seg.row_times[last_row] if len(last_row) else np.empty(0, "datetime64[ms]"))
        elif seg.start is not None and recording.sample_rate:
            times.append(seg.start + np.round(last_row * 1000.0 / recording.sample_rate).astype("timedelta64[ms]"))
        else:
            has_times = False
        offset += seg.n_rows
    if not chunks:
        return WindowSet(np.empty((0, spec.window, spec.n_features), np.float32), np.empty(0, np.int64), None)
    raw = np.concatenate(chunks, axis=0)
    return WindowSet(
        scaler.transform(raw),
        np.concatenate(ends).astype(np.int64),
        np.concatenate(times).astype("datetime64[ms]") if has_times and times else None,
    )


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 150
    batch_size: int = 32
    learning_rate: float = 2e-3
    validation_fraction: float = 0.2
    patience: int = 15
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def split_validation(n_windows: int, fraction: float, window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Time-ordered (train, validation) window indices.

    The last ``fraction`` of the windows validate; the ``ceil((window - 1) / hop)`` windows
    before them are dropped, because they share steps with the first validation window.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    n_val = max(1, int(round(n_windows * fraction)))
    gap = math.ceil((window - 1) / hop)
    n_train = n_windows - n_val - gap
    if n_train < 1:
        raise ValueError(
            f"{n_windows} training windows are too few to hold out {n_val} for validation "
            f"(plus {gap} overlapping): use more training data, a smaller window or a larger hop"
        )
    return np.arange(n_train), np.arange(n_windows - n_val, n_windows)


def split_validation_rows(ends: np.ndarray, window_rows: int, fraction: float,
                          min_validation: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Time-ordered (train, validation) indices of windows ending at ``ends`` (rows, exclusive, increasing).

    The last ``fraction`` of the windows validate, at least ``min_validation`` of them while that leaves
    as many for training; training keeps only the windows that end before the first validation window
    starts, so no row is in both (windows of different snapshots never overlap, so none is lost there).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    n = len(ends)
    n_val = max(1, int(round(n * fraction)), min(min_validation, n // 2))
    first_val = n - n_val
    train = np.flatnonzero(np.asarray(ends[:first_val]) <= ends[first_val] - window_rows) if first_val > 0 else []
    if len(train) < 1:
        raise ValueError(
            f"{n} training windows are too few to hold out {n_val} for validation: use more training data, a "
            "smaller window or a larger hop"
        )
    return np.asarray(train, np.int64), np.arange(first_val, n)


def _epoch_log(epochs: int) -> keras.callbacks.Callback:
    """A Keras callback that logs one line per epoch."""
    keras = tfenv.keras()

    class EpochLog(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self._t0 = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            log.info("epoch %d/%d  loss %.5f  val_loss %.5f  (%.1f s)", epoch + 1, epochs,
                     logs.get("loss", float("nan")), logs.get("val_loss", float("nan")), time.monotonic() - self._t0)

    return EpochLog()


def set_seed(seed: int) -> None:
    """Seed Python, numpy and TensorFlow, and make TensorFlow ops deterministic."""
    tfenv.keras().utils.set_random_seed(seed)
    tfenv.tensorflow().config.experimental.enable_op_determinism()


def fit(model_config: ModelConfig, train: np.ndarray, val: np.ndarray, config: FitConfig) -> tuple[keras.Model, dict]:
    """Train a fresh autoencoder on scaled windows.

    train, val: (W, T, F) float32. Adam + MAE; early stopping on val_loss restores the best
    weights. Returns the trained model and its history ({"loss": [...], "val_loss": [...],
    "best_epoch": int, "epochs_run": int}).
    """
    keras = tfenv.keras()
    set_seed(config.seed)
    _, steps_, n_features = train.shape
    model = build(model_config, steps_, n_features)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="mae")
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    slow_down = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(2, config.patience // 3),
                                                  min_lr=config.learning_rate / 100, verbose=0)
    log.info("training %s %s on %d windows (%d validation), %d parameters", model_config.architecture,
             list(model_config.units), len(train), len(val), model.count_params())
    result = model.fit(train, train, validation_data=(val, val), epochs=config.epochs, batch_size=config.batch_size,
                       shuffle=True, callbacks=[stop, slow_down, _epoch_log(config.epochs)], verbose=0)
    hist = {k: [float(v) for v in vals] for k, vals in result.history.items()}
    val_loss = hist.get("val_loss", [])
    hist["best_epoch"] = int(np.argmin(val_loss)) + 1 if val_loss else len(hist.get("loss", []))
    hist["epochs_run"] = len(hist.get("loss", []))
    return model, hist


def keras_scores(model: keras.Model, windows_: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Reconstruction MAE of each window under the Keras model: (W, T, F) -> (W,) float64."""
    if len(windows_) == 0:
        return np.empty(0, np.float64)
    out = np.empty(len(windows_), np.float64)
    for lo in range(0, len(windows_), batch_size):
        chunk = windows_[lo:lo + batch_size]
        out[lo:lo + len(chunk)] = reconstruction_error(chunk, model(chunk, training=False).numpy())
    return out
