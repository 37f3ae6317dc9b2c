"""The record a gateway uploads for retraining: one JSON object per window.

The agent writes these (``encode_record``), the central collector stores them in the columnar dataset
(``trainer.dataset``), and the trainer reads them back (``decode_record``,
``edge_agent.contract.recordings.load(..., format="uploads")`` for JSONL files). Schema 3::

    {"schema": 3,
     "id": str,                   # unique per window, fixed when the gateway spools it: duplicates share it
     "kind": "normal" | "alert" | "calibration" | "drift",   # why the window was kept (see KINDS)
     "gateway": str | null,       # the gateway that sent it
     "device": str,               # the sensor (the <device> of vib/<device>/...)
     "model_id": str, "model_version": str,
     "seq_end": int,              # sequence number of the window's last sample
     "time_end": str,             # ISO-8601 time of the last sample (UTC if no offset)
     "sample_rate": float,        # Hz
     "channels": [str, ...], "units": "g",
     "score": float | null,       # the serving model's score (null: not scored)
     "threshold": float | null,   # the threshold in force (null: none yet, e.g. while calibrating)
     "state": "normal" | "warning" | "critical",   # the alert state when the window was scored
     "alert_ref": str | null,     # kind "alert": id of the alert the window is context of
     "answer": {"kind": str, "by": str, "time": str} | null,   # the technician's answer to that alert, when
                                  # one was given before the window was spooled (``contract.answer``)
     "group": str | null,         # the sensor's kind of machine (config ``group``; an id as ``contract.topics``)
     "dtype": "float32", "shape": [n, C],
     "data_b64": str}             # base64 of the samples, little-endian float32, row-major

Older records still decode: schema 2 (no ``answer``, ``group``: both null), and schema 1 (no ``id``, ``kind``,
``gateway``, ``alert_ref`` either; numbers required): their id is derived from (device, model_version, seq_end),
their kind from the state.

An alert's windows are spooled as they are scored (the context before it at once), so only those spooled after an
answer carry it: the answer of an alert is the latest one among the records that share its ``alert_ref``.

Every field is checked, in both directions, against its type and bounds (``SAMPLE_RATE_HZ``, ``TIME_RANGE``,
``MAX_WINDOW_S``, ``MAX_CHANNELS``, ``MAX_TEXT``; ids as ``contract.topics``): a record with absurd values is an
``UploadError`` naming the field, never something a consumer chokes on later. The collector takes the device
from the topic, not from here (``contract.topics.device_of``); receipts are ``contract.receipt``.

numpy and the standard library only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from .errors import UploadError

SCHEMA_VERSION = 3
SCHEMAS = (1, 2, 3)
STATES = ("normal", "warning", "critical")
#: Why a window was kept: a reservoir sample of healthy operation, context of an alert (before, during,
#: after), a calibration window, or an extra healthy sample taken while the score distribution drifts.
KINDS = ("normal", "alert", "calibration", "drift")
#: Largest payload ``decode_record`` parses (a 3 s window of 16 channels at 25.6 kHz is ~6.6 MB).
MAX_RECORD_BYTES = 32 * 1024 * 1024
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_V1_FIELDS: dict[str, type | tuple[type, ...]] = {
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
_NONE = type(None)
_V2_FIELDS: dict[str, type | tuple[type, ...]] = _V1_FIELDS | {
    "id": str,
    "kind": str,
    "gateway": (str, _NONE),
    "score": (int, float, _NONE),
    "threshold": (int, float, _NONE),
    "alert_ref": (str, _NONE),
}
_V3_FIELDS: dict[str, type | tuple[type, ...]] = _V2_FIELDS | {
    "answer": (dict, _NONE),
    "group": (str, _NONE),
}
FIELDS = {1: _V1_FIELDS, 2: _V2_FIELDS, 3: _V3_FIELDS}


def new_id() -> str:
    """A fresh record id (uuid4, 32 hex digits)."""
    return uuid.uuid4().hex


def legacy_id(device: str, model_version: str, seq_end: int) -> str:
    """The id of a schema-1 record: a digest of what identified it then (device, model version, seq)."""
    key = json.dumps([device, model_version, int(seq_end)], separators=(",", ":")).encode("utf-8")
    return "s1-" + hashlib.sha256(key).hexdigest()[:32]


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
    score: float | None
    threshold: float | None
    state: str
    samples: np.ndarray
    id: str = ""
    kind: str = "normal"
    gateway: str | None = None
    alert_ref: str | None = None
    answer: dict | None = None
    group: str | None = None
    schema: int = SCHEMA_VERSION

    @property
    def n_rows(self) -> int:
        return int(self.samples.shape[0])

    @property
    def healthy(self) -> bool:
        """Healthy-operation data: not kept as alert context, scored below the threshold in state ``normal``
        (calibration windows, scored before any threshold, count as healthy)."""
        if self.kind == "alert" or self.state != "normal" or self.score is None:
            return False
        return self.threshold is None or self.score < self.threshold

    def time_end_utc(self) -> datetime:
        """``time_end`` as a naive UTC ``datetime``."""
        return _parse_time(self.time_end)

    def time_start_utc(self) -> datetime:
        """Time of the first sample, naive UTC: ``time_end`` - (n - 1) / sample_rate."""
        return self.time_end_utc() - timedelta(seconds=(self.n_rows - 1) / self.sample_rate)

    def encode(self) -> bytes:
        """The record as schema-3 UTF-8 JSON (same as ``encode_record`` with these fields)."""
        return encode_record(
            device=self.device, model_id=self.model_id, model_version=self.model_version,
            seq_end=self.seq_end, time_end=self.time_end, sample_rate=self.sample_rate,
            channels=self.channels, units=self.units, score=self.score, threshold=self.threshold,
            state=self.state, samples=self.samples, id=self.id, kind=self.kind, gateway=self.gateway,
            alert_ref=self.alert_ref, answer=self.answer, group=self.group,
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


def _optional(name: str, value: Any) -> float | None:
    return None if value is None else _finite(name, value)


def encode_record(
    *,
    device: str,
    model_id: str,
    model_version: str,
    seq_end: int,
    time_end: str | datetime,
    sample_rate: float,
    channels: list[str] | tuple[str, ...],
    score: float | None,
    threshold: float | None,
    state: str,
    samples: np.ndarray,
    units: str = "g",
    id: str | None = None,  # noqa: A002 (the record's field name)
    kind: str | None = None,
    gateway: str | None = None,
    alert_ref: str | None = None,
    answer: dict | None = None,
    group: str | None = None,
) -> bytes:
    """Encode one window as a schema-3 record (compact UTF-8 JSON, no newline).

    Args:
        samples: (n, C) array, C == len(channels); stored as little-endian float32.
        time_end: ISO-8601 string or ``datetime`` of the last sample.
        id: the record's unique id (default: a new uuid4); a re-sent record must keep its id.
        kind: one of ``KINDS`` (default: ``normal`` in state ``normal``, else ``alert``).
        answer: the technician's answer to the alert ``alert_ref`` names (``contract.answer.record_answer``).
        group: the sensor's kind of machine (an id).

    Raises:
        UploadError: wrong shape, NaN/inf samples or numbers, unknown state or kind, bad id or time.
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
        "id": new_id() if id is None else id,
        "kind": kind or ("normal" if state == "normal" else "alert"),
        "gateway": gateway,
        "device": device,
        "model_id": model_id,
        "model_version": model_version,
        "seq_end": int(seq_end),
        "time_end": time_end,
        "sample_rate": _finite("sample_rate", sample_rate),
        "channels": [str(c) for c in channels],
        "units": units,
        "score": _optional("score", score),
        "threshold": _optional("threshold", threshold),
        "state": state,
        "alert_ref": alert_ref,
        "answer": answer,
        "group": group,
        "dtype": "float32",
        "shape": [int(arr32.shape[0]), int(arr32.shape[1])],
        "data_b64": base64.b64encode(arr32.tobytes()).decode("ascii"),
    }
    _check_fields(fields)  # one validator for both directions
    return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode("utf-8")


#: Bounds every record is checked against (both directions): a record outside them is refused, never stored.
SAMPLE_RATE_HZ = (1e-3, 1e7)
TIME_RANGE = (datetime(2000, 1, 1), datetime(2100, 1, 1))  # time_end, naive UTC
MAX_WINDOW_S = 7 * 86_400.0  # (n - 1) / sample_rate
MAX_CHANNELS = 256
MAX_TEXT = {"model_id": 128, "model_version": 128, "units": 32, "channel": 64}
MAX_SEQ = 2**63 - 1


def _text(key: str, value: str, limit: int, empty: bool = False) -> None:
    if (not empty and not value.strip()) or len(value) > limit or not value.isprintable():
        raise UploadError(f"upload record: {key!r} must be {0 if empty else 1}..{limit} printable characters, got "
                          f"{value[:40]!r}")


def _check_fields(obj: dict[str, Any]) -> None:
    """Every field present, of its type and within its bounds (module constants); UploadError naming the field."""
    from .answer import check_record_answer
    from .errors import ConfigError
    from .topics import check_id

    schema = obj.get("schema")
    if isinstance(schema, bool) or schema not in SCHEMAS:
        raise UploadError(f"upload record: schema {schema!r} is not supported (this version reads {list(SCHEMAS)})")
    spec = FIELDS[schema]
    missing = [k for k in spec if k not in obj]
    if missing:
        raise UploadError(f"upload record: missing keys {missing}")
    unknown = sorted(set(obj) - set(spec))
    if unknown:
        raise UploadError(f"upload record: unknown keys {unknown[:10]}")
    for key, typ in spec.items():
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, typ):
            raise UploadError(f"upload record: {key!r} has type {type(v).__name__}")
    try:
        check_id(obj["device"], "device id")
        if schema >= 2 and obj["gateway"] is not None:
            check_id(obj["gateway"], "gateway id")
        if schema >= 3 and obj["group"] is not None:
            check_id(obj["group"], "group id")
    except ConfigError as exc:
        raise UploadError(f"upload record: {exc}") from None
    if schema >= 3 and (why := check_record_answer(obj["answer"])) is not None:
        raise UploadError(f"upload record: answer {why}")
    for key in ("model_id", "model_version", "units"):
        _text(key, obj[key], MAX_TEXT[key], empty=key == "units")  # units "": not known
    if obj["state"] not in STATES:
        raise UploadError(f"upload record: state {obj['state']!r} is not one of {list(STATES)}")
    if schema >= 2:
        for key in ("id", "alert_ref"):
            if (key == "id" or obj[key] is not None) and not _ID.fullmatch(obj[key]):
                raise UploadError(f"upload record: {key} {obj[key][:40]!r} is not 1..128 characters of "
                                  f"[A-Za-z0-9._:-]")
        if obj["kind"] not in KINDS:
            raise UploadError(f"upload record: kind {obj['kind']!r} is not one of {list(KINDS)}")
    if obj["dtype"] != "float32":
        raise UploadError(f"upload record: dtype {obj['dtype']!r} is not 'float32'")
    if not 0 <= obj["seq_end"] <= MAX_SEQ:
        raise UploadError(f"upload record: seq_end {obj['seq_end']} is outside 0..2^63-1")
    for key in ("sample_rate", "score", "threshold"):
        if obj[key] is not None:
            _finite(key, obj[key])
    lo, hi = SAMPLE_RATE_HZ
    if not lo <= obj["sample_rate"] <= hi:
        raise UploadError(f"upload record: sample_rate {obj['sample_rate']:g} Hz is outside {lo:g}..{hi:g} Hz")
    chans = obj["channels"]
    if not 1 <= len(chans) <= MAX_CHANNELS or not all(isinstance(c, str) for c in chans):
        raise UploadError(f"upload record: 'channels' must be a list of 1..{MAX_CHANNELS} names")
    for c in chans:
        _text("channels", c, MAX_TEXT["channel"])
    shape = obj["shape"]
    if len(shape) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape) \
            or shape[0] <= 0 or shape[1] != len(chans) or shape[0] * shape[1] * 4 > MAX_RECORD_BYTES:
        raise UploadError(f"upload record: shape {shape[:3]} does not fit {len(chans)} channels in "
                          f"{MAX_RECORD_BYTES} bytes")
    if (shape[0] - 1) / obj["sample_rate"] > MAX_WINDOW_S:
        raise UploadError(f"upload record: {shape[0]} rows at {obj['sample_rate']:g} Hz span more than "
                          f"{MAX_WINDOW_S / 86_400:g} days")
    try:
        if len(obj["time_end"]) > 64:
            raise ValueError("too long")
        t = _parse_time(obj["time_end"])
    except (ValueError, OverflowError) as exc:
        raise UploadError(f"upload record: time_end {obj['time_end'][:40]!r} is not ISO-8601") from exc
    if not TIME_RANGE[0] <= t < TIME_RANGE[1]:
        raise UploadError(f"upload record: time_end {obj['time_end'][:40]!r} is outside {TIME_RANGE[0]:%Y}.."
                          f"{TIME_RANGE[1]:%Y} (the sender's clock is wrong)")


def decode_record(payload: bytes | str) -> UploadRecord:
    """Decode and validate one record (schema 1, 2 or 3; what an older schema lacks is None).

    Raises:
        UploadError: larger than ``MAX_RECORD_BYTES``, not JSON, missing/unknown keys, wrong types, bad
            base64, a data length that does not match ``shape``, NaN/inf samples or numbers, unknown
            state, kind or schema.
    """
    if len(payload) > MAX_RECORD_BYTES:
        raise UploadError(f"upload record: {len(payload)} bytes is more than the {MAX_RECORD_BYTES} a record may hold")
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
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
    if obj["schema"] == 1:
        extra = {"id": legacy_id(obj["device"], obj["model_version"], obj["seq_end"]),
                 "kind": "normal" if obj["state"] == "normal" else "alert", "gateway": None, "alert_ref": None}
    else:
        extra = {k: obj[k] for k in ("id", "kind", "gateway", "alert_ref")}
    extra |= {k: obj.get(k) for k in ("answer", "group")}  # absent before schema 3: None
    return UploadRecord(
        device=obj["device"], model_id=obj["model_id"], model_version=obj["model_version"],
        seq_end=obj["seq_end"], time_end=obj["time_end"], sample_rate=float(obj["sample_rate"]),
        channels=tuple(obj["channels"]), units=obj["units"],
        score=None if obj["score"] is None else float(obj["score"]),
        threshold=None if obj["threshold"] is None else float(obj["threshold"]), state=obj["state"],
        samples=samples, schema=obj["schema"], **extra,
    )
