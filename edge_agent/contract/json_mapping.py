"""A sensor's own JSON, read through a declared ``JsonMapping``, and ``PayloadDecoder``, one MQTT source's decoder.

A mapping names the channels (``fields``: one path per channel, or ``values``: the path of a list of
values), optional sequence and time fields, and accepts one sample or a batch per message in the layouts
listed in ``JsonMapping``. ``PayloadDecoder`` decodes either the wire payloads (``mqtt_payload``) or, with a
mapping, the sensor's own JSON, refusing any payload longer than the largest valid one before parsing it.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from edge_agent.contract.binary import MAX_FRAME_SIZE
from edge_agent.contract.errors import ConfigError, FrameError
from edge_agent.contract.frames import MAX_CHANNELS, MAX_SAMPLES, SEQ_MOD, Frame, as_samples
from edge_agent.contract.mqtt_payload import (
    WIRE_JSON_LIMIT,
    PayloadTooLarge,
    check_json_shape,
    decode_payload,
    json_numbers,
    json_payload_limit,
    parse_json,
)

#: ``JsonMapping.time_unit`` values: a number of seconds, milliseconds, microseconds, nanoseconds, or an ISO 8601 string.
TIME_UNITS = ("s", "ms", "us", "ns", "iso")
_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: ``JsonMapping.encode`` layouts.
LAYOUTS = ("sample", "columns", "records", "rows")


def _path(text: object, key: str) -> tuple[str, ...]:
    """``"data.acc.x"`` -> ("data", "acc", "x"); ConfigError naming ``key`` if it is not a path."""
    if not isinstance(text, str) or not text or not all(text.split(".")):
        raise ConfigError(f"{key}: {text!r} is not a field path (names joined by '.', e.g. \"data.acc.x\")")
    return tuple(text.split("."))


def _lookup(obj: object, parts: tuple[str, ...]) -> object:
    """Follow a path: object keys, or list indices where a part is digits. KeyError/IndexError/TypeError if absent."""
    for p in parts:
        if isinstance(obj, dict):
            obj = obj[p]
        elif isinstance(obj, list) and p.isascii() and p.isdigit():
            obj = obj[int(p)]
        else:
            raise KeyError(p)
    return obj


def _put(obj: dict, parts: tuple[str, ...], value: object) -> None:
    for p in parts[:-1]:
        obj = obj.setdefault(p, {})
    obj[parts[-1]] = value


@dataclass(frozen=True)
class JsonMapping:
    """How a sensor's own JSON payload maps onto a frame: an MQTT source's declared payload mapping.

    The channels are either ``fields`` (one path per channel: ``"x"``, ``"data.acc.x"``; a path's parts are
    object keys, or list indices where they are digits) or ``values`` (the path of a list of the channels'
    values, ``channels`` of them when given). The layout is recognised per message::

        {"x": 0.1, "y": 0.2, "z": 9.8}                 fields: one sample (the IBM Watson IoT tutorial's shape)
        {"x": [..], "y": [..], "z": [..]}              fields: a batch, one array per channel
        [{"x": .., "y": .., "z": ..}, ...]             fields: a batch, an array of sample objects
        {"<records>": [{"x": ..}, ...], ...}           fields + ``records``: the same array under a path
        {"v": [0.1, 0.2, 9.8]} / {"v": [[..], ..]}     values = "v": one sample / a batch of rows

    ``seq_field`` names the first sample's index (a non-negative integer, taken modulo 2**32), ``time_field``
    its time in ``time_unit`` (s, ms, us, ns: a number; iso: an ISO 8601 string, UTC unless it says
    otherwise). Both are looked up in the message, and, where the samples are objects and the message has no
    such field, in the first sample; a list there gives its first element. Without ``seq_field`` the receiver
    numbers the samples as they arrive (``PayloadDecoder``). Values are multiplied by ``scale``; ``null`` or
    NaN is a missing reading. At most ``MAX_SAMPLES`` samples per message.

    Raises ConfigError naming the attribute at fault (``"fields: ..."``).
    """

    fields: tuple[str, ...] = ()
    values: str | None = None
    records: str | None = None
    channels: int | None = None
    seq_field: str | None = None
    time_field: str | None = None
    time_unit: str = "s"
    scale: float = 1.0
    _paths: tuple = field(init=False, repr=False, compare=False, default=())
    _row: object = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        fields = tuple(self.fields)
        if bool(fields) == (self.values is not None):
            raise ConfigError('fields: give the channels\' field names (fields = ["x", "y", "z"]) or the path of '
                              'a list of values (values = "samples"), one of the two')
        if len(fields) > MAX_CHANNELS:
            raise ConfigError(f"fields: at most {MAX_CHANNELS} channels, got {len(fields)}")
        paths = tuple(_path(f, "fields") for f in fields)
        dup = sorted({f for f in fields if fields.count(f) > 1})
        if dup:
            raise ConfigError(f"fields: {dup[0]!r} is given twice")
        if self.values is not None:
            _path(self.values, "values")
        if self.channels is not None and (self.values is None or not 1 <= self.channels <= MAX_CHANNELS):
            raise ConfigError(f"channels: 1..{MAX_CHANNELS}, and only with values (fields give the channel count)")
        if self.records is not None:
            if self.values is not None:
                raise ConfigError("records: only with fields (it is the path of an array of sample objects)")
            _path(self.records, "records")
        for key in ("seq_field", "time_field"):
            name = getattr(self, key)
            if name is not None:
                _path(name, key)
                if name in fields or name == self.values:
                    raise ConfigError(f"{key}: {name!r} is also a channel")
        if self.seq_field is not None and self.seq_field == self.time_field:
            raise ConfigError("time_field: the same field as seq_field")
        if self.time_unit not in TIME_UNITS:
            raise ConfigError(f"time_unit: one of {', '.join(TIME_UNITS)}, got {self.time_unit!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | float) or not (
            math.isfinite(self.scale) and self.scale != 0
        ):
            raise ConfigError(f"scale: must be a finite non-zero number, got {self.scale!r}")
        if all(len(p) == 1 for p in paths):  # flat keys: rows of sample objects in C (operator.itemgetter)
            row = operator.itemgetter(*(p[0] for p in paths)) if paths else None
        else:
            def row(rec: object, paths: tuple = paths) -> tuple:
                return tuple(_lookup(rec, p) for p in paths)
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "_paths", paths)
        object.__setattr__(self, "_row", row)

    # ------------------------------------------------------------------ facts
    @property
    def n_channels(self) -> int | None:
        """Channels per sample (None: whatever the values list holds)."""
        return len(self.fields) or self.channels

    @property
    def max_payload_bytes(self) -> int:
        """The largest valid payload in this mapping (``json_payload_limit``; keys count where repeated per value)."""
        key = max((sum(len(part) + 6 for part in p) for p in self._paths), default=0)
        return json_payload_limit(self.n_channels or MAX_CHANNELS, key)

    # ------------------------------------------------------------------ decode
    def decode(self, data: bytes) -> tuple[int | None, int, np.ndarray]:
        """One payload -> (seq, or None without ``seq_field``; t0_us; samples float32 (n, C), scaled).

        Raises FrameError naming what does not fit the mapping.
        """
        obj = parse_json(data)
        first = None  # the first sample object, where samples are objects
        if self.values is not None:
            samples = json_numbers(self._get(obj, self.values), repr(self.values), data)
            if samples.ndim == 1:
                samples = samples[None, :]
        else:
            records = obj if isinstance(obj, list) else None
            if records is None and self.records is not None:
                with contextlib.suppress(KeyError, IndexError, TypeError):  # else: fields at the top, as below
                    records = _lookup(obj, tuple(self.records.split(".")))
            if records is None:  # one sample, or one array per channel
                cols = [self._get(obj, f) for f in self.fields]
                samples = json_numbers(cols, "fields", data)
                samples = samples[None, :] if samples.ndim == 1 else np.ascontiguousarray(samples.T)
            else:
                if not isinstance(records, list) or not records or len(records) > MAX_SAMPLES:
                    raise FrameError(f"JSON samples must be an array of 1..{MAX_SAMPLES} sample objects")
                first = records[0]
                try:
                    rows = list(map(self._row, records))
                except (KeyError, IndexError, TypeError) as exc:
                    raise FrameError(f"JSON sample objects must all hold {list(self.fields)} (missing {exc})") from None
                samples = json_numbers(rows, "fields", data)
                if samples.ndim == 1:
                    samples = samples[:, None]
        check_json_shape(samples, "samples")
        if self.channels is not None and samples.shape[1] != self.channels:
            raise FrameError(f"JSON {self.values!r} holds {samples.shape[1]} values per sample, the mapping says {self.channels}")
        if self.scale != 1.0:
            samples *= np.float32(self.scale)
        return self._seq(obj, first), self._t0_us(obj, first), samples

    def _get(self, obj: object, path: str) -> object:
        try:
            return _lookup(obj, tuple(path.split(".")))
        except (KeyError, IndexError, TypeError):
            raise FrameError(f"JSON field {path!r} is missing") from None

    def _meta(self, obj: object, first: object, path: str) -> object:
        parts = tuple(path.split("."))
        for holder in (obj, first):
            if holder is None:
                continue
            try:
                v = _lookup(holder, parts)
            except (KeyError, IndexError, TypeError):
                continue
            return v[0] if isinstance(v, list) and v else v
        raise FrameError(f"JSON field {path!r} is missing")

    def _seq(self, obj: object, first: object) -> int | None:
        if self.seq_field is None:
            return None
        v = self._meta(obj, first, self.seq_field)
        if type(v) is not int or v < 0:
            raise FrameError(f"JSON {self.seq_field!r} must be a non-negative integer (the sample index), got {v!r:.40}")
        return v % SEQ_MOD

    def _t0_us(self, obj: object, first: object) -> int:
        if self.time_field is None:
            return 0
        v = self._meta(obj, first, self.time_field)
        what = f"JSON {self.time_field!r}"
        if self.time_unit == "iso":
            if not isinstance(v, str):
                raise FrameError(f"{what} must be an ISO 8601 time, got {v!r:.40}")
            try:
                t = datetime.fromisoformat(v)
            except ValueError:
                raise FrameError(f"{what} is not an ISO 8601 time: {v!r:.40}") from None
            us = (t if t.tzinfo else t.replace(tzinfo=UTC)) - _EPOCH
            us = us.days * 86_400_000_000 + us.seconds * 1_000_000 + us.microseconds
        elif isinstance(v, bool) or not isinstance(v, int | float):
            raise FrameError(f"{what} must be a number of {self.time_unit}, got {v!r:.40}")
        elif self.time_unit == "ns":
            us = v // 1000 if isinstance(v, int) else v / 1000
        else:
            us = v * _US_PER_UNIT[self.time_unit]
        if isinstance(us, float):
            if not math.isfinite(us):
                raise FrameError(f"{what} is not finite: {v!r:.40}")
            us = round(us)
        if not 0 <= us < 2**64:
            raise FrameError(f"{what} is before 1970 or beyond range: {v!r:.40}")
        return us

    # ------------------------------------------------------------------ encode (the sensor's side)
    def encode(
        self, seq: int, samples: np.ndarray, *, t0_us: int = 0, sample_rate: float | None = None,
        layout: str = "sample",
    ) -> list[bytes]:
        """Payloads carrying ``samples`` (n, C) in this mapping's shape (values divided by ``scale``).

        layout: ``sample`` (one message per sample), ``columns`` (fields: one array per channel), ``records``
        (fields: an array of sample objects, under ``records`` when set), ``rows`` (values: a list of rows).
        Sample ``i`` is at ``seq + i`` and ``t0_us + i * 1e6 / sample_rate`` (``t0_us`` without a rate).
        """
        arr = as_samples(np.asarray(samples, dtype=np.float32)).astype(np.float64)
        n, c = arr.shape
        allowed = ("sample", "columns", "records") if self.fields else ("sample", "rows")
        if layout not in allowed:
            raise ValueError(f"layout {layout!r} does not fit this mapping: one of {', '.join(allowed)}")
        if self.n_channels is not None and c != self.n_channels:
            raise ValueError(f"the mapping has {self.n_channels} channels, samples have {c}")
        if self.scale != 1.0:
            arr /= self.scale
        rows = arr.tolist()
        if np.isnan(arr).any():  # standard JSON: a missing reading is null
            rows = [[None if v != v else v for v in r] for r in rows]
        step = 1e6 / sample_rate if sample_rate else 0.0

        def meta(msg: dict, i: int) -> dict:
            if self.seq_field is not None:
                _put(msg, _path(self.seq_field, "seq_field"), (seq + i) % SEQ_MOD)
            if self.time_field is not None:
                _put(msg, _path(self.time_field, "time_field"), self._time_value(t0_us + round(i * step)))
            return msg

        def sample(row: list, i: int | None) -> dict:
            msg: dict = {}
            if self.values is not None:
                _put(msg, _path(self.values, "values"), row)
            else:
                for p, v in zip(self._paths, row, strict=True):
                    _put(msg, p, v)
            return msg if i is None else meta(msg, i)

        if layout == "sample":
            out: list[object] = [sample(r, i) for i, r in enumerate(rows)]
        elif layout == "columns":
            msg: dict = {}
            for p, col in zip(self._paths, map(list, zip(*rows, strict=True)), strict=True):
                _put(msg, p, col)
            out = [meta(msg, 0)]
        elif layout == "rows":
            msg = {}
            _put(msg, _path(self.values, "values"), rows)
            out = [meta(msg, 0)]
        elif self.records is None:  # a bare array of sample objects, each with its own seq and time
            out = [[sample(r, i) for i, r in enumerate(rows)]]
        else:
            msg = {}
            _put(msg, _path(self.records, "records"), [sample(r, None) for r in rows])
            out = [meta(msg, 0)]
        return [json.dumps(m, separators=(",", ":")).encode("ascii") for m in out]

    def _time_value(self, us: int) -> object:
        if self.time_unit == "iso":
            return (_EPOCH + timedelta(microseconds=us)).isoformat()
        if self.time_unit == "ns":
            return us * 1000
        per = _US_PER_UNIT[self.time_unit]
        return us if per == 1 else us / per


class PayloadDecoder:
    """One MQTT source's payloads to frames: the wire payloads (``decode_payload``: a binary frame or the wire
    JSON object), or, with a ``JsonMapping``, the sensor's own JSON.

    ``decode`` refuses a payload longer than ``max_bytes`` before looking at it (``PayloadTooLarge``; default:
    the largest valid payload, ``MAX_FRAME_SIZE`` / ``WIRE_JSON_LIMIT`` / ``JsonMapping.max_payload_bytes``)
    and raises FrameError for anything else malformed; nothing else escapes. Without a ``seq_field`` the
    decoder numbers the samples itself, consecutively (``counted``): windows are count-based, and a lost or
    refused message cannot be seen as a gap. Not thread-safe: one thread (paho's) decodes.
    """

    def __init__(self, mapping: JsonMapping | None = None, max_bytes: int | None = None) -> None:
        self.mapping = mapping
        default = mapping.max_payload_bytes if mapping is not None else max(MAX_FRAME_SIZE, WIRE_JSON_LIMIT)
        self.max_bytes = int(max_bytes or default)
        self.counted = mapping is not None and mapping.seq_field is None
        self._next_seq = 0

    def decode(self, payload: bytes | bytearray | memoryview) -> Frame:
        size = len(payload)
        if size > self.max_bytes:
            raise PayloadTooLarge(f"payload of {size} bytes refused unparsed: the largest valid one is {self.max_bytes}")
        if self.mapping is None:
            return decode_payload(payload)
        seq, t0_us, samples = self.mapping.decode(payload if isinstance(payload, bytes) else bytes(payload))
        if seq is None:
            seq = self._next_seq
            self._next_seq = (seq + samples.shape[0]) % SEQ_MOD
        return Frame(seq, t0_us, samples)
