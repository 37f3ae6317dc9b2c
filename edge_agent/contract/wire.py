"""The wire format between a sensor node and the gateway, defined once.

``firmware_sim`` encodes with this module and the agent decodes with it; nothing else
re-implements it. Only numpy and the standard library are used.

Sequence numbers
----------------
In every format ``seq`` is the *sample index* of a frame's first sample, modulo 2**32.
The next frame is expected at ``expected_next(seq, n_samples)``; ``seq_gap`` says how many
samples were lost in between (see its docstring for wrap-around and resync).

Binary frame (serial links and MQTT binary payloads), little-endian::

    offset size  field
    0      2     sync         b"\\xA5\\x5A"
    2      1     version      u8, = 1
    3      1     sample_type  u8, 0 = int16 with scale, 1 = float32
    4      4     seq          u32, sample index of the first sample mod 2**32
    8      8     t0_us        u64, sensor clock of the first sample, microseconds
    16     2     n_samples    u16, 1..4096
    18     1     n_channels   u8, 1..16
    19     1     reserved     u8, = 0
    20     4     scale        f32, physical units per LSB for int16 (> 0); 1.0 for float32
    24     P     payload      n_samples x n_channels values, sample-major (s0c0, s0c1, .., s1c0, ..)
    24+P   4     crc32        u32, zlib.crc32 of bytes [2, 24+P): header after the sync, and payload

int16 codes +32767 and -32767 mean the sensor was SATURATED (at or beyond full scale): they decode
to +-full-scale numbers and are counted in ``Frame.saturated``. The code -32768 means NO READING
(the firmware's NaN) and decodes to NaN, like a float32 NaN (the agent counts and skips both; a
missing reading is a sensor fault, not evidence of vibration).

CSV line format (humans, slow links): one sample per line, ``seq,t_us,v0,v1,...`` in decimal
(values with 9 significant digits, so float32 round-trips exactly; ``nan`` allowed). Lines
starting with ``#`` and empty lines are ignored. ``\\r\\n`` line ends are accepted.

MQTT: topic ``vib/<device>/samples``; a payload is either exactly one binary frame or a JSON
object ``{"seq": int, "t0_us": int, "samples": [[v0, v1, ...], ...], "channels": ...}``
(``channels`` optional: a channel count or a list of channel names; ``NaN`` or ``null`` for
a missing value). ``decode_payload`` tells them apart by the first byte. Sensors that publish
their own JSON are read through a declared :class:`JsonMapping` (field names or a list layout,
one sample or a batch per message, optional sequence and time fields), see ``PayloadDecoder``.

Size limits, checked before anything is parsed (``PayloadTooLarge``): a binary payload is at most
``MAX_FRAME_SIZE`` bytes; a JSON payload at most ``json_payload_limit(channels, key_chars)``,
i.e. ``MAX_SAMPLES`` samples of ``channels`` values of at most ``JSON_VALUE_CHARS`` characters
each (plus the key, in layouts that repeat it per value), ``JSON_SAMPLE_CHARS`` per sample and
``JSON_MESSAGE_CHARS`` per message (``WIRE_JSON_LIMIT`` for the wire JSON object: 16 channels).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import operator
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from edge_agent.contract.errors import ConfigError, FrameError

log = logging.getLogger(__name__)

SYNC = b"\xa5\x5a"
VERSION = 1
SAMPLE_INT16 = 0
SAMPLE_FLOAT32 = 1
SAMPLE_TYPES = {"int16": SAMPLE_INT16, "float32": SAMPLE_FLOAT32}
HEADER = struct.Struct("<2sBBIQHBBf")
HEADER_SIZE = HEADER.size  # 24
CRC = struct.Struct("<I")
CRC_SIZE = CRC.size  # 4
MAX_SAMPLES = 4096
MAX_CHANNELS = 16
SEQ_MOD = 2**32
INT16_FULL_SCALE = 32767
#: int16 code for a missing reading (NaN at the sensor); decodes to NaN.
INT16_NO_READING = -32768
#: Largest possible binary frame in bytes (float32, 4096 samples x 16 channels).
MAX_FRAME_SIZE = HEADER_SIZE + MAX_SAMPLES * MAX_CHANNELS * 4 + CRC_SIZE
#: Headroom used when ``encode_frame`` picks the int16 scale itself: the frame's peak maps here.
AUTO_SCALE_CODE = 30000
#: JSON size bound, per value: the longest float repr (24 characters, "-2.2250738585072014e-308"),
#: its separator and some whitespace.
JSON_VALUE_CHARS = 32
#: JSON size bound, per sample: a row's brackets or a sample object's braces, and a per-sample seq or time.
JSON_SAMPLE_CHARS = 64
#: JSON size bound, per message: the seq and time fields and whatever else a sensor puts into its messages.
JSON_MESSAGE_CHARS = 64 * 1024

_ITEMSIZE = {SAMPLE_INT16: 2, SAMPLE_FLOAT32: 4}
_DTYPE = {SAMPLE_INT16: np.dtype("<i2"), SAMPLE_FLOAT32: np.dtype("<f4")}


# --------------------------------------------------------------------------- sequence numbers
def expected_next(seq: int, n_samples: int) -> int:
    """Sequence number of the frame that follows a frame at ``seq`` of ``n_samples`` samples."""
    return (seq + n_samples) % SEQ_MOD


def seq_gap(expected: int, got: int) -> int:
    """Samples missing between the expected sequence number and the one received.

    Wrap-aware modulo 2**32: ``0`` means contiguous; a positive value ``k`` (below 2**31)
    means ``k`` samples were lost; a negative value means the stream went *backwards*
    (duplicate, reordering or a restarted device), i.e. the receiver must resync. A jump of
    2**31 or more forward is indistinguishable from going backwards and also reads negative.
    Receivers may treat implausibly large positive gaps as a resync too.
    """
    d = (got - expected) % SEQ_MOD
    return d if d < SEQ_MOD // 2 else d - SEQ_MOD


# --------------------------------------------------------------------------- frames
@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded block of samples.

    Attributes:
        seq: sample index of ``samples[0]`` modulo 2**32.
        t0_us: sensor clock of ``samples[0]`` in microseconds.
        samples: float32 array of shape (n_samples, n_channels), owned by the frame.
        saturated: number of values in ``samples`` that were saturated int16 codes
            (always 0 for float32, CSV and JSON sources).
        crc: the binary frame's CRC-32 as it came over the wire, or None (see ``checksum``).
    """

    seq: int
    t0_us: int
    samples: np.ndarray
    saturated: int = 0
    crc: int | None = None

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def next_seq(self) -> int:
        """Sequence number the next contiguous frame will carry."""
        return expected_next(self.seq, self.n_samples)

    @property
    def checksum(self) -> int:
        """CRC-32 identifying the frame's content (recognises a redelivered frame): the wire CRC of a binary
        frame, else ``zlib.crc32`` over the samples' memory, read in place (no copy when C-contiguous)."""
        if self.crc is not None:
            return self.crc
        return zlib.crc32(np.ascontiguousarray(self.samples))


def _as_samples(samples: np.ndarray) -> np.ndarray:
    """Validate and view ``samples`` as a float (n, C) array (1-D input becomes one channel)."""
    arr = np.asarray(samples)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"samples must have shape (n, channels), got {arr.shape}")
    n, c = arr.shape
    if not 1 <= n <= MAX_SAMPLES:
        raise ValueError(f"a frame holds 1..{MAX_SAMPLES} samples, got {n}")
    if not 1 <= c <= MAX_CHANNELS:
        raise ValueError(f"a frame holds 1..{MAX_CHANNELS} channels, got {c}")
    return arr


def int16_scale(full_scale: float) -> float:
    """Scale (physical units per LSB) that maps ``full_scale`` to the int16 code 32767."""
    if not (full_scale > 0 and math.isfinite(full_scale)):
        raise ValueError(f"full scale must be a positive finite number, got {full_scale!r}")
    return float(np.float32(full_scale / INT16_FULL_SCALE))


def encode_frame(
    seq: int,
    samples: np.ndarray,
    *,
    t0_us: int = 0,
    sample_type: str = "int16",
    scale: float | None = None,
) -> bytes:
    """Encode one binary frame.

    Args:
        seq: sample index of the first sample (reduced modulo 2**32).
        samples: array-like of shape (n, C) (or (n,) for one channel), 1 <= n <= 4096,
            1 <= C <= 16; converted to float32 or int16.
        t0_us: sensor clock of the first sample in microseconds, 0 <= t0_us < 2**64.
        sample_type: "int16" (quantised with ``scale``) or "float32" (bit-exact).
        scale: int16 only: physical units per LSB (see ``int16_scale``). When None, the frame's
            peak finite magnitude is mapped to code 30000 (headroom below saturation), or 1.0
            for an all-zero frame. Values beyond +-32767 codes clip to +-32767 (a saturated
            reading) and NaN encodes as -32768 (no reading).

    Returns:
        The frame bytes, ``24 + n*C*itemsize + 4`` long.
    """
    arr = _as_samples(samples)
    n, c = arr.shape
    if sample_type not in SAMPLE_TYPES:
        raise ValueError(f"sample_type must be one of {sorted(SAMPLE_TYPES)}, got {sample_type!r}")
    if not 0 <= t0_us < 2**64:
        raise ValueError(f"t0_us out of range: {t0_us}")
    stype = SAMPLE_TYPES[sample_type]
    if stype == SAMPLE_FLOAT32:
        scale_f = 1.0
        payload = np.ascontiguousarray(arr, dtype="<f4").tobytes()
    else:
        values = arr.astype(np.float64)
        if scale is None:
            finite = np.abs(values[np.isfinite(values)])
            peak = float(finite.max()) if finite.size else 0.0
            scale = peak / AUTO_SCALE_CODE if peak > 0 else 1.0
        scale_f = float(np.float32(scale))
        if not (scale_f > 0 and math.isfinite(scale_f)):
            raise ValueError(f"int16 scale must be a positive finite number, got {scale!r}")
        with np.errstate(invalid="ignore"):
            codes = np.rint(values / scale_f)
        codes = np.clip(codes, -INT16_FULL_SCALE, INT16_FULL_SCALE)
        codes[np.isnan(codes)] = INT16_NO_READING
        payload = codes.astype("<i2").tobytes()
    head = HEADER.pack(SYNC, VERSION, stype, seq % SEQ_MOD, t0_us, n, c, 0, scale_f)
    crc = zlib.crc32(payload, zlib.crc32(head[2:]))
    return b"".join((head, payload, CRC.pack(crc)))


def _header_ok(version: int, stype: int, n: int, c: int, reserved: int, scale: float) -> bool:
    return (
        version == VERSION
        and stype in _ITEMSIZE
        and 1 <= n <= MAX_SAMPLES
        and 1 <= c <= MAX_CHANNELS
        and reserved == 0
        and (scale > 0 and math.isfinite(scale) if stype == SAMPLE_INT16 else True)
    )


def _payload_to_frame(
    buf: bytes | bytearray | memoryview,
    start: int,
    stype: int,
    seq: int,
    t0: int,
    n: int,
    c: int,
    scale: float,
    crc: int,
) -> Frame:
    """Build a Frame from the payload at ``buf[start:]`` (copies; never keeps ``buf``)."""
    raw = np.frombuffer(buf, dtype=_DTYPE[stype], count=n * c, offset=start).reshape(n, c)
    if stype == SAMPLE_FLOAT32:
        return Frame(seq, t0, raw.astype(np.float32), 0, crc)
    saturated = int(np.count_nonzero((raw == INT16_FULL_SCALE) | (raw == -INT16_FULL_SCALE)))
    samples = raw.astype(np.float32)
    samples *= np.float32(scale)
    missing = raw == INT16_NO_READING
    if missing.any():
        samples[missing] = np.nan
    return Frame(seq, t0, samples, saturated, crc)


class FrameDecoder:
    """Incremental decoder of a binary frame stream (serial link).

    ``feed`` accepts any bytes, in any chunking, and never raises. It finds the sync marker,
    checks the header (version, sample type, 1..4096 samples, 1..16 channels, reserved byte,
    scale) and the CRC, and returns the frames completed by the new bytes. After a bad header
    or CRC it resumes the search one byte after the rejected sync marker, so a corrupted frame
    never swallows the good frame that follows it.

    The internal buffer holds at most one incomplete frame (< ``MAX_FRAME_SIZE`` bytes) between
    calls. A corrupted length field delays (never loses) the frames behind it: they come out
    once the claimed length has arrived and the CRC has rejected the corrupted frame.

    Counters (ints, read them as attributes):
        frames: valid frames returned.
        crc_errors: frames with a plausible header whose CRC did not match.
        bad_headers: sync markers followed by an impossible header.
        bytes_discarded: bytes that were not part of a returned frame (garbage, rejected frames).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames = 0
        self.crc_errors = 0
        self.bad_headers = 0
        self.bytes_discarded = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add bytes; return the frames they completed, in stream order."""
        buf = self._buf
        buf += data
        out: list[Frame] = []
        pos = 0
        end = len(buf)
        while True:
            i = buf.find(SYNC, pos)
            if i < 0:
                # keep a trailing first sync byte: the marker may be split across feeds
                keep = 1 if end > pos and buf[end - 1] == SYNC[0] else 0
                self.bytes_discarded += end - keep - pos
                pos = end - keep
                break
            self.bytes_discarded += i - pos
            pos = i
            if end - pos < HEADER_SIZE:
                break
            _, version, stype, seq, t0, n, c, reserved, scale = HEADER.unpack_from(buf, pos)
            if not _header_ok(version, stype, n, c, reserved, scale):
                self.bad_headers += 1
                self.bytes_discarded += 1
                pos += 1
                continue
            size = HEADER_SIZE + n * c * _ITEMSIZE[stype] + CRC_SIZE
            if end - pos < size:
                break
            mv = memoryview(buf)
            try:
                crc = CRC.unpack_from(buf, pos + size - CRC_SIZE)[0]
                crc_ok = zlib.crc32(mv[pos + 2 : pos + size - CRC_SIZE]) == crc
                if crc_ok:
                    out.append(_payload_to_frame(mv, pos + HEADER_SIZE, stype, seq, t0, n, c, scale, crc))
            finally:
                mv.release()
            if not crc_ok:
                self.crc_errors += 1
                self.bytes_discarded += 1
                pos += 1
                continue
            self.frames += 1
            pos += size
        del buf[:pos]
        return out


# --------------------------------------------------------------------------- CSV lines
_CSV_FLOAT = "%.9g"


def encode_csv_lines(seq: int, samples: np.ndarray, t0_us: int, sample_rate: float) -> bytes:
    """Encode samples as CSV lines ``seq,t_us,v0,...``, one line per sample.

    Args:
        seq: sample index of the first sample; line ``i`` carries ``(seq + i) % 2**32``.
        samples: array-like (n, C) (or (n,)); values written with 9 significant digits, so
            float32 values round-trip exactly.
        t0_us: sensor clock of the first sample in microseconds.
        sample_rate: Hz; line ``i`` carries ``t0_us + round(i * 1e6 / sample_rate)``.
    """
    arr = np.asarray(samples, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"samples must have shape (n, channels), got {arr.shape}")
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
    n, c = arr.shape
    idx = np.arange(n, dtype=np.int64)
    seqs = ((seq + idx) % SEQ_MOD).tolist()
    ts = (t0_us + np.rint(idx * (1e6 / sample_rate)).astype(np.int64)).tolist()
    line = "%d,%d" + ("," + _CSV_FLOAT) * c + "\n"
    rows = arr.astype(np.float64).tolist()
    return "".join([line % (s, t, *r) for s, t, r in zip(seqs, ts, rows, strict=True)]).encode("ascii")


class CsvLineDecoder:
    """Incremental decoder of the CSV line format, with the same ``feed`` interface as FrameDecoder.

    Consecutive valid lines whose ``seq`` increase by one are batched into one Frame (its
    ``t0_us`` is the first line's ``t_us``); a sequence gap or a malformed line ends a batch.
    The partial last line is kept for the next feed. The channel count is ``n_channels`` when
    given, otherwise it is fixed by the first good line. Never raises.

    Counters: ``frames``, ``lines`` (valid sample lines), ``bad_lines`` (malformed, wrong
    channel count, seq/t_us not a non-negative integer in range, or a line longer than
    ``max_line`` bytes), ``bytes_discarded`` (bytes of bad lines).
    """

    def __init__(self, n_channels: int | None = None, *, max_line: int = 4096) -> None:
        if n_channels is not None and not 1 <= n_channels <= MAX_CHANNELS:
            raise ValueError(f"n_channels must be 1..{MAX_CHANNELS}, got {n_channels}")
        self.n_channels = n_channels
        self.max_line = max_line
        self._partial = b""
        self.frames = 0
        self.lines = 0
        self.bad_lines = 0
        self.bytes_discarded = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add bytes; return the frames made of the complete lines they finished."""
        chunk = self._partial + bytes(data)
        cut = chunk.rfind(b"\n") + 1
        self._partial = chunk[cut:]
        if len(self._partial) > self.max_line:  # no newline in sight: drop it as one bad line
            self.bad_lines += 1
            self.bytes_discarded += len(self._partial)
            self._partial = b""
        if cut == 0:
            return []
        rows = self._parse(chunk[:cut])
        if rows is None:
            return []
        seqs, ts, values = rows
        return self._batch(seqs, ts, values)

    def _bad(self, line: bytes) -> None:
        self.bad_lines += 1
        self.bytes_discarded += len(line) + 1

    def _parse(self, text: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Parse complete lines into (seq int64 (m,), t_us int64 (m,), values float32 (m, C)).

        A batch break is encoded as seq = -1 (a bad line sits between two good ones).
        Clean text takes numpy's C parser; anything else is parsed line by line.
        """
        fast = self._parse_clean(text)
        if fast is not None:
            return fast
        parsed: list[list[float]] = []
        for raw in text.split(b"\n"):
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            if len(line) > self.max_line:
                self._bad(raw)
                parsed.append([])
                continue
            try:
                fields = [float(f) for f in line.split(b",")]
            except ValueError:
                self._bad(raw)
                parsed.append([])
                continue
            c = len(fields) - 2
            if self.n_channels is None and 1 <= c <= MAX_CHANNELS and self._int_ok(fields):
                self.n_channels = c
            if c != self.n_channels or not self._int_ok(fields):
                self._bad(raw)
                parsed.append([])
                continue
            parsed.append(fields)
        if self.n_channels is None:
            return None
        width = self.n_channels + 2
        m = len(parsed)
        table = np.full((m, width), -1.0)
        ok = np.fromiter((len(p) == width for p in parsed), dtype=bool, count=m)
        if ok.any():
            table[ok] = np.array([p for p in parsed if p], dtype=np.float64).reshape(-1, width)
        return table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2:].astype(np.float32)

    def _parse_clean(self, text: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Whole-chunk parse; None unless every line is good (then the caller parses per line)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "empty input" when a chunk holds only comments
                table = np.loadtxt(io.BytesIO(text), delimiter=",", comments="#", ndmin=2, dtype=np.float64)
        except ValueError:
            return None
        width = table.shape[1] - 2
        if table.shape[0] == 0 or not 1 <= width <= MAX_CHANNELS:
            return None
        if self.n_channels is not None and width != self.n_channels:
            return None
        s, t = table[:, 0], table[:, 1]
        if not (
            np.all((s >= 0) & (s < SEQ_MOD) & (s == np.floor(s)))
            and np.all((t >= 0) & (t < 2**53) & (t == np.floor(t)))
        ):
            return None
        self.n_channels = width
        return s.astype(np.int64), t.astype(np.int64), table[:, 2:].astype(np.float32)

    @staticmethod
    def _int_ok(fields: list[float]) -> bool:
        s, t = fields[0], fields[1]
        return 0 <= s < SEQ_MOD and s == int(s) and 0 <= t < 2**53 and t == int(t)

    def _batch(self, seqs: np.ndarray, ts: np.ndarray, values: np.ndarray) -> list[Frame]:
        good = seqs >= 0
        self.lines += int(good.sum())
        if len(seqs) == 0:
            return []
        # a new batch starts at a good line whose predecessor is bad or not seq-1 (mod 2**32),
        # or after MAX_SAMPLES lines
        prev = np.roll(seqs, 1)
        cont = good & np.roll(good, 1) & (seqs == (prev + 1) % SEQ_MOD)
        cont[0] = False
        out: list[Frame] = []
        breaks = np.flatnonzero(~cont)  # a run starting at s ends at the next break after s
        ends = np.append(breaks, len(seqs))
        for s in np.flatnonzero(good & ~cont):
            run_end = int(ends[np.searchsorted(breaks, s, side="right")])
            for a in range(s, run_end, MAX_SAMPLES):
                b = min(a + MAX_SAMPLES, run_end)
                out.append(Frame(int(seqs[a]), int(ts[a]), values[a:b].copy()))
        self.frames += len(out)
        return out


# --------------------------------------------------------------------------- MQTT payloads
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
        return _decode_binary_payload(payload if isinstance(payload, bytes) else bytes(payload))
    if size > WIRE_JSON_LIMIT:
        raise PayloadTooLarge(f"payload of {size} bytes refused unparsed: a JSON frame is at most {WIRE_JSON_LIMIT}")
    data = payload if isinstance(payload, bytes) else bytes(payload)
    if data.lstrip()[:1] == b"{":
        return _decode_json_payload(data)
    raise FrameError(f"payload is neither a binary frame nor JSON (starts with {data[:8]!r}, {len(data)} bytes)")


def _decode_binary_payload(data: bytes) -> Frame:
    if len(data) < HEADER_SIZE + CRC_SIZE:
        raise FrameError(f"binary payload too short: {len(data)} bytes")
    _, version, stype, seq, t0, n, c, reserved, scale = HEADER.unpack_from(data, 0)
    if not _header_ok(version, stype, n, c, reserved, scale):
        raise FrameError(
            f"bad frame header: version={version} sample_type={stype} n_samples={n} "
            f"n_channels={c} reserved={reserved} scale={scale}"
        )
    size = HEADER_SIZE + n * c * _ITEMSIZE[stype] + CRC_SIZE
    if len(data) != size:
        raise FrameError(f"binary payload is {len(data)} bytes, header says {size}")
    want = CRC.unpack_from(data, size - CRC_SIZE)[0]
    got = zlib.crc32(memoryview(data)[2 : size - CRC_SIZE])
    if got != want:
        raise FrameError(f"CRC mismatch: computed {got:#010x}, frame says {want:#010x} (seq {seq})")
    return _payload_to_frame(data, HEADER_SIZE, stype, seq, t0, n, c, scale, want)


def _loads(data: bytes) -> object:
    """Parse JSON once (the json module's C parser); FrameError for anything it refuses."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise FrameError(f"payload is not valid JSON: {exc}") from None


def _as_float32(values: object, what: str, data: bytes) -> np.ndarray:
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
    """The slow path of ``_as_float32``: float64 array, every value checked (null -> NaN)."""
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


def _check_shape(samples: np.ndarray, what: str) -> None:
    if samples.ndim != 2 or not 1 <= samples.shape[0] <= MAX_SAMPLES or not 1 <= samples.shape[1] <= MAX_CHANNELS:
        raise FrameError(
            f"JSON {what} must be 1..{MAX_SAMPLES} samples of the same 1..{MAX_CHANNELS} values, got shape {samples.shape}"
        )


def _decode_json_payload(data: bytes) -> Frame:
    obj = _loads(data)
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
    samples = _as_float32(rows, "'samples'", data)
    _check_shape(samples, "'samples'")
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
    arr = _as_samples(np.asarray(samples, dtype=np.float32))
    obj: dict[str, object] = {
        "seq": seq % SEQ_MOD,
        "t0_us": int(t0_us),
        "samples": arr.astype(np.float64).tolist(),
    }
    if channels is not None:
        obj["channels"] = channels
    return json.dumps(obj, separators=(",", ":")).encode("ascii")


# --------------------------------------------------------------------------- a sensor's own JSON
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
        obj = _loads(data)
        first = None  # the first sample object, where samples are objects
        if self.values is not None:
            samples = _as_float32(self._get(obj, self.values), repr(self.values), data)
            if samples.ndim == 1:
                samples = samples[None, :]
        else:
            records = obj if isinstance(obj, list) else None
            if records is None and self.records is not None:
                with contextlib.suppress(KeyError, IndexError, TypeError):  # else: fields at the top, as below
                    records = _lookup(obj, tuple(self.records.split(".")))
            if records is None:  # one sample, or one array per channel
                cols = [self._get(obj, f) for f in self.fields]
                samples = _as_float32(cols, "fields", data)
                samples = samples[None, :] if samples.ndim == 1 else np.ascontiguousarray(samples.T)
            else:
                if not isinstance(records, list) or not records or len(records) > MAX_SAMPLES:
                    raise FrameError(f"JSON samples must be an array of 1..{MAX_SAMPLES} sample objects")
                first = records[0]
                try:
                    rows = list(map(self._row, records))
                except (KeyError, IndexError, TypeError) as exc:
                    raise FrameError(f"JSON sample objects must all hold {list(self.fields)} (missing {exc})") from None
                samples = _as_float32(rows, "fields", data)
                if samples.ndim == 1:
                    samples = samples[:, None]
        _check_shape(samples, "samples")
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
        arr = _as_samples(np.asarray(samples, dtype=np.float32)).astype(np.float64)
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
