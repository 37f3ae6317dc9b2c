"""MQTT sample payloads: what a sensor publishes on ``vib/<device>/samples``.

A payload is either exactly one binary frame (``binary``) or a JSON object::

    {"seq": int, "t0_us": int, "samples": [[v0, v1, ...], ...], "channels": ...}

(``channels`` optional: a channel count or a list of channel names; ``NaN`` or ``null`` for a missing
value). ``decode_payload`` tells them apart by the first byte. Sensors that publish their own JSON are read
through a declared ``json_mapping.JsonMapping`` instead (``json_mapping.PayloadDecoder`` picks).

Size limits, checked before anything is parsed (``PayloadTooLarge``): a binary payload is at most
``MAX_FRAME_SIZE`` bytes; a JSON payload at most ``json_payload_limit(channels, key_chars)``,
i.e. ``MAX_SAMPLES`` samples of ``channels`` values of at most ``JSON_VALUE_CHARS`` characters
each (plus the key, in layouts that repeat it per value), ``JSON_SAMPLE_CHARS`` per sample and
``JSON_MESSAGE_CHARS`` per message (``WIRE_JSON_LIMIT`` for the wire JSON object: 16 channels).
The JSON number helpers here (``parse_json``, ``json_numbers``, ``check_json_shape``) are shared with
``json_mapping``.
"""

from __future__ import annotations

import json

import numpy as np

from edge_agent.contract.binary import MAX_FRAME_SIZE, SYNC, decode_frame
from edge_agent.contract.errors import FrameError
from edge_agent.contract.frames import MAX_CHANNELS, MAX_SAMPLES, SEQ_MOD, Frame, as_samples

#: JSON size bound, per value: the longest float repr (24 characters, "-2.2250738585072014e-308"),
#: its separator and some whitespace.
JSON_VALUE_CHARS = 32
#: JSON size bound, per sample: a row's brackets or a sample object's braces, and a per-sample seq or time.
JSON_SAMPLE_CHARS = 64
#: JSON size bound, per message: the seq and time fields and whatever else a sensor puts into its messages.
JSON_MESSAGE_CHARS = 64 * 1024


class PayloadTooLarge(FrameError):
    """A payload longer than the largest valid one: refused before it is parsed."""


def json_payload_limit(channels: int, key_chars: int = 0) -> int:
    """Largest JSON payload, in bytes, that can hold a valid frame of ``channels`` channels.

    ``MAX_SAMPLES`` samples x ``channels`` values x (``JSON_VALUE_CHARS`` + ``key_chars``, the key written
    before every value in layouts that repeat it) + ``JSON_SAMPLE_CHARS`` per sample + ``JSON_MESSAGE_CHARS``.
    Parsing JSON costs ~20x its size in memory; this bound is what keeps a sensor's 80 MB message from
    costing the gateway gigabytes.
    """
    return JSON_MESSAGE_CHARS + MAX_SAMPLES * (channels * (JSON_VALUE_CHARS + key_chars) + JSON_SAMPLE_CHARS)


#: Largest wire JSON payload (``{"seq", "t0_us", "samples", "channels"}``, up to 16 channels): ~2.4 MB.
WIRE_JSON_LIMIT = json_payload_limit(MAX_CHANNELS)


def decode_payload(payload: bytes | bytearray | memoryview) -> Frame:
    """Decode one MQTT payload: exactly one binary frame, or a JSON object.

    Raises:
        PayloadTooLarge: longer than ``MAX_FRAME_SIZE`` (binary) or ``WIRE_JSON_LIMIT`` (otherwise), checked
            before anything is copied or parsed.
        FrameError: anything malformed (bad header, CRC, trailing bytes, bad JSON or fields);
            the message says what.
    """
    size = len(payload)
    if bytes(payload[:2]) == SYNC:
        if size > MAX_FRAME_SIZE:
            raise PayloadTooLarge(f"binary payload of {size} bytes refused unparsed: a frame is at most {MAX_FRAME_SIZE}")
        return decode_frame(payload if isinstance(payload, bytes) else bytes(payload))
    if size > WIRE_JSON_LIMIT:
        raise PayloadTooLarge(f"payload of {size} bytes refused unparsed: a JSON frame is at most {WIRE_JSON_LIMIT}")
    data = payload if isinstance(payload, bytes) else bytes(payload)
    if data.lstrip()[:1] == b"{":
        return _decode_json_payload(data)
    raise FrameError(f"payload is neither a binary frame nor JSON (starts with {data[:8]!r}, {len(data)} bytes)")



def parse_json(data: bytes) -> object:
    """Parse JSON once (the json module's C parser); FrameError for anything it refuses."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise FrameError(f"payload is not valid JSON: {exc}") from None


def json_numbers(values: object, what: str, data: bytes) -> np.ndarray:
    """JSON numbers (nested lists as ``json.loads`` made them) as a float32 array, converted by one numpy call.

    ``null`` and NaN are a missing reading (NaN); a number beyond float32 range becomes +-inf (an invalid
    sample, as on the wire). Strings, booleans, objects, integers beyond float range and rows of unequal length
    are a FrameError naming ``what``. Plain numbers take no Python loop; only a payload holding ``null``,
    ``true`` or ``false`` somewhere is checked value by value.
    """
    try:
        arr = np.array(values)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise FrameError(f"JSON {what} must be numbers, in rows of the same length ({str(exc)[:80]})") from None
    kind = arr.dtype.kind
    if kind == "O" or (kind in "iuf" and (b"true" in data or b"false" in data)):
        arr = _checked_numbers(values, what)
    elif kind not in "iuf":
        got = {"U": "strings", "S": "strings", "b": "booleans"}.get(kind, arr.dtype.name)
        raise FrameError(f"JSON {what} values must be numbers (or null / NaN for missing), got {got}")
    with np.errstate(over="ignore", invalid="ignore"):
        return arr.astype(np.float32)


def _checked_numbers(values: object, what: str) -> np.ndarray:
    """The slow path of ``json_numbers``: float64 array, every value checked (null -> NaN)."""
    try:
        obj = np.array(values, dtype=object)
    except (ValueError, TypeError, RecursionError) as exc:
        raise FrameError(f"JSON {what} must be numbers, in rows of the same length ({str(exc)[:80]})") from None
    flat = obj.ravel()
    out = np.empty(flat.size, np.float64)
    for i, v in enumerate(flat):
        if v is None:
            out[i] = np.nan
        elif isinstance(v, int | float) and not isinstance(v, bool):
            try:
                out[i] = v
            except OverflowError:
                raise FrameError(f"JSON {what}: {str(v)[:20]}... is beyond float range") from None
        else:
            raise FrameError(f"JSON {what} values must be numbers (or null / NaN for missing), got {v!r:.40}")
    return out.reshape(obj.shape)


def check_json_shape(samples: np.ndarray, what: str) -> None:
    if samples.ndim != 2 or not 1 <= samples.shape[0] <= MAX_SAMPLES or not 1 <= samples.shape[1] <= MAX_CHANNELS:
        raise FrameError(
            f"JSON {what} must be 1..{MAX_SAMPLES} samples of the same 1..{MAX_CHANNELS} values, got shape {samples.shape}"
        )


def _decode_json_payload(data: bytes) -> Frame:
    obj = parse_json(data)
    if not isinstance(obj, dict):
        raise FrameError("JSON payload must be an object")
    seq, t0 = obj.get("seq"), obj.get("t0_us", 0)
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < SEQ_MOD:
        raise FrameError(f"JSON 'seq' must be an integer in [0, 2**32), got {seq!r:.40}")
    if not isinstance(t0, int) or isinstance(t0, bool) or not 0 <= t0 < 2**64:
        raise FrameError(f"JSON 't0_us' must be a non-negative integer, got {t0!r:.40}")
    rows = obj.get("samples")
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], list):
        raise FrameError("JSON 'samples' must be a non-empty list of lists (one per sample)")
    samples = json_numbers(rows, "'samples'", data)
    check_json_shape(samples, "'samples'")
    channels = obj.get("channels")
    if channels is not None:
        count = (
            channels
            if isinstance(channels, int) and not isinstance(channels, bool)
            else (len(channels) if isinstance(channels, list) else None)
        )
        if count != samples.shape[1]:
            raise FrameError(f"JSON 'channels' ({channels!r:.40}) does not match {samples.shape[1]} values per sample")
    return Frame(seq, t0, samples)


def encode_json_payload(
    seq: int, samples: np.ndarray, *, t0_us: int = 0, channels: list[str] | int | None = None
) -> bytes:
    """Encode samples (n, C) as a JSON MQTT payload; float32 values round-trip exactly, NaN as NaN."""
    arr = as_samples(np.asarray(samples, dtype=np.float32))
    obj: dict[str, object] = {
        "seq": seq % SEQ_MOD,
        "t0_us": int(t0_us),
        "samples": arr.astype(np.float64).tolist(),
    }
    if channels is not None:
        obj["channels"] = channels
    return json.dumps(obj, separators=(",", ":")).encode("ascii")
