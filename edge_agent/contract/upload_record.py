"""The record a gateway uploads for retraining: one JSON object per scored window.

The agent writes these (``encode_record``), the central collector stores them one per line
in ``<device>.jsonl``, and the trainer reads them back (``decode_record``,
``edge_agent.contract.recordings.load(..., format="uploads")``). Schema 1::

    {"schema": 1, "device": str, "model_id": str, "model_version": str,
     "seq_end": int,              # sequence number of the window's last sample
     "time_end": str,             # ISO-8601 time of the last sample (UTC if no offset)
     "sample_rate": float,        # Hz
     "channels": [str, ...], "units": "g",
     "score": float, "threshold": float,
     "state": "normal" | "warning" | "critical",
     "dtype": "float32", "shape": [n, C],
     "data_b64": str}             # base64 of the samples, little-endian float32, row-major

numpy and the standard library only.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .errors import UploadError

SCHEMA_VERSION = 1
STATES = ("normal", "warning", "critical")
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema": int,
    "device": str,
    "model_id": str,
    "model_version": str,
    "seq_end": int,
    "time_end": str,
    "sample_rate": (int, float),
    "channels": list,
    "units": str,
    "score": (int, float),
    "threshold": (int, float),
    "state": str,
    "dtype": str,
    "shape": list,
    "data_b64": str,
}


@dataclass(frozen=True, eq=False)
class UploadRecord:
    """One decoded upload.

    ``samples`` is (n, C) float32, read-only; ``time_end`` is the ISO-8601 string as sent.
    """

    device: str
    model_id: str
    model_version: str
    seq_end: int
    time_end: str
    sample_rate: float
    channels: tuple[str, ...]
    units: str
    score: float
    threshold: float
    state: str
    samples: np.ndarray
    schema: int = SCHEMA_VERSION

    @property
    def n_rows(self) -> int:
        return int(self.samples.shape[0])

    @property
    def healthy(self) -> bool:
        """Scored below threshold and in state ``normal``."""
        return self.score < self.threshold and self.state == "normal"

    def time_end_utc(self) -> datetime:
        """``time_end`` as a naive UTC ``datetime``."""
        return _parse_time(self.time_end)

    def encode(self) -> bytes:
        """The record as UTF-8 JSON (same as ``encode_record`` with these fields)."""
        return encode_record(
            device=self.device, model_id=self.model_id, model_version=self.model_version,
            seq_end=self.seq_end, time_end=self.time_end, sample_rate=self.sample_rate,
            channels=self.channels, units=self.units, score=self.score, threshold=self.threshold,
            state=self.state, samples=self.samples,
        )


def _parse_time(s: str) -> datetime:
    """ISO-8601 (``Z`` or offset allowed) to naive UTC ``datetime``; raises ValueError."""
    dt = datetime.fromisoformat(s.strip())
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UploadError(f"upload record: {name!r} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise UploadError(f"upload record: {name!r} must be finite, got {v}")
    return v


def encode_record(
    *,
    device: str,
    model_id: str,
    model_version: str,
    seq_end: int,
    time_end: str | datetime,
    sample_rate: float,
    channels: list[str] | tuple[str, ...],
    score: float,
    threshold: float,
    state: str,
    samples: np.ndarray,
    units: str = "g",
) -> bytes:
    """Encode one window as a schema-1 record (compact UTF-8 JSON, no newline).

    Args:
        samples: (n, C) array, C == len(channels); stored as little-endian float32.
        time_end: ISO-8601 string or ``datetime`` of the last sample.

    Raises:
        UploadError: wrong shape, NaN/inf samples or numbers, unknown state, bad time.
    """
    arr = np.asarray(samples)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != len(channels):
        raise UploadError(f"upload record: samples must be (n>0, {len(channels)}), got {arr.shape}")
    arr32 = np.ascontiguousarray(arr, dtype="<f4")
    if not np.isfinite(arr32).all():
        raise UploadError("upload record: samples contain NaN or inf")
    if isinstance(time_end, datetime):
        time_end = time_end.isoformat()
    fields = {
        "schema": SCHEMA_VERSION,
        "device": device,
        "model_id": model_id,
        "model_version": model_version,
        "seq_end": int(seq_end),
        "time_end": time_end,
        "sample_rate": _finite("sample_rate", sample_rate),
        "channels": [str(c) for c in channels],
        "units": units,
        "score": _finite("score", score),
        "threshold": _finite("threshold", threshold),
        "state": state,
        "dtype": "float32",
        "shape": [int(arr32.shape[0]), int(arr32.shape[1])],
        "data_b64": base64.b64encode(arr32.tobytes()).decode("ascii"),
    }
    _check_fields(fields)  # one validator for both directions
    return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _check_fields(obj: dict[str, Any]) -> None:
    missing = [k for k in _FIELDS if k not in obj]
    if missing:
        raise UploadError(f"upload record: missing keys {missing}")
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        raise UploadError(f"upload record: unknown keys {unknown}")
    for key, typ in _FIELDS.items():
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, typ):
            raise UploadError(f"upload record: {key!r} has type {type(v).__name__}")
    if obj["schema"] != SCHEMA_VERSION:
        raise UploadError(
            f"upload record: schema {obj['schema']} is not supported (expected {SCHEMA_VERSION})")
    for key in ("device", "model_id"):
        if not obj[key].strip():
            raise UploadError(f"upload record: {key!r} is empty")
    if obj["state"] not in STATES:
        raise UploadError(f"upload record: state {obj['state']!r} is not one of {list(STATES)}")
    if obj["dtype"] != "float32":
        raise UploadError(f"upload record: dtype {obj['dtype']!r} is not 'float32'")
    for key in ("sample_rate", "score", "threshold"):
        _finite(key, obj[key])
    if obj["sample_rate"] <= 0:
        raise UploadError(f"upload record: sample_rate must be > 0, got {obj['sample_rate']}")
    chans = obj["channels"]
    if not chans or not all(isinstance(c, str) and c for c in chans):
        raise UploadError("upload record: 'channels' must be a non-empty list of names")
    shape = obj["shape"]
    if len(shape) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape) \
            or shape[0] <= 0 or shape[1] != len(chans):
        raise UploadError(f"upload record: shape {shape} does not fit {len(chans)} channels")
    try:
        _parse_time(obj["time_end"])
    except ValueError as exc:
        raise UploadError(f"upload record: time_end {obj['time_end']!r} is not ISO-8601") from exc


def decode_record(payload: bytes | str) -> UploadRecord:
    """Decode and validate one record.

    Raises:
        UploadError: not JSON, missing/unknown keys, wrong types, bad base64, a data length that
            does not match ``shape``, NaN/inf samples or numbers, unknown state or schema.
    """
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UploadError(f"upload record: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise UploadError(f"upload record: expected a JSON object, got {type(obj).__name__}")
    _check_fields(obj)
    try:
        raw = base64.b64decode(obj["data_b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UploadError(f"upload record: data_b64 is not valid base64 ({exc})") from exc
    n, c = obj["shape"]
    if len(raw) != n * c * 4:
        raise UploadError(
            f"upload record: data holds {len(raw)} bytes, shape {[n, c]} float32 needs {n * c * 4}")
    samples = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(n, c)
    if not np.isfinite(samples).all():
        raise UploadError("upload record: samples contain NaN or inf")
    samples.flags.writeable = False
    return UploadRecord(
        device=obj["device"], model_id=obj["model_id"], model_version=obj["model_version"],
        seq_end=obj["seq_end"], time_end=obj["time_end"], sample_rate=float(obj["sample_rate"]),
        channels=tuple(obj["channels"]), units=obj["units"], score=float(obj["score"]),
        threshold=float(obj["threshold"]), state=obj["state"], samples=samples, schema=obj["schema"],
    )
