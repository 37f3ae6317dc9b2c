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
a missing value). ``decode_payload`` tells them apart by the first byte.
"""

from __future__ import annotations

import io
import json
import logging
import math
import struct
import warnings
import zlib
from dataclasses import dataclass

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
    """

    seq: int
    t0_us: int
    samples: np.ndarray
    saturated: int = 0

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
) -> Frame:
    """Build a Frame from the payload at ``buf[start:]`` (copies; never keeps ``buf``)."""
    raw = np.frombuffer(buf, dtype=_DTYPE[stype], count=n * c, offset=start).reshape(n, c)
    if stype == SAMPLE_FLOAT32:
        return Frame(seq, t0, raw.astype(np.float32))
    saturated = int(np.count_nonzero((raw == INT16_FULL_SCALE) | (raw == -INT16_FULL_SCALE)))
    samples = raw.astype(np.float32)
    samples *= np.float32(scale)
    missing = raw == INT16_NO_READING
    if missing.any():
        samples[missing] = np.nan
    return Frame(seq, t0, samples, saturated)


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
                crc_ok = (
                    zlib.crc32(mv[pos + 2 : pos + size - CRC_SIZE]) == CRC.unpack_from(buf, pos + size - CRC_SIZE)[0]
                )
                if crc_ok:
                    out.append(_payload_to_frame(mv, pos + HEADER_SIZE, stype, seq, t0, n, c, scale))
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
def decode_payload(payload: bytes | bytearray | memoryview) -> Frame:
    """Decode one MQTT payload: exactly one binary frame, or a JSON object.

    Raises:
        FrameError: anything malformed (bad header, CRC, trailing bytes, bad JSON or fields);
            the message says what.
    """
    data = bytes(payload)
    if data[:2] == SYNC:
        return _decode_binary_payload(data)
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
    return _payload_to_frame(data, HEADER_SIZE, stype, seq, t0, n, c, scale)


def _decode_json_payload(data: bytes) -> Frame:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError("JSON payload must be an object")
    seq, t0 = obj.get("seq"), obj.get("t0_us", 0)
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < SEQ_MOD:
        raise FrameError(f"JSON 'seq' must be an integer in [0, 2**32), got {seq!r}")
    if not isinstance(t0, int) or isinstance(t0, bool) or not 0 <= t0 < 2**64:
        raise FrameError(f"JSON 't0_us' must be a non-negative integer, got {t0!r}")
    rows = obj.get("samples")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise FrameError("JSON 'samples' must be a non-empty list of lists (one per sample)")
    width = len(rows[0])
    if len(rows) > MAX_SAMPLES or not 1 <= width <= MAX_CHANNELS or any(len(r) != width for r in rows):
        raise FrameError(f"JSON 'samples' must be 1..{MAX_SAMPLES} rows of the same 1..{MAX_CHANNELS} values")
    flat = [v for r in rows for v in r]
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in flat):
        raise FrameError("JSON 'samples' values must be numbers (or null / NaN for missing)")
    channels = obj.get("channels")
    if channels is not None:
        count = (
            channels
            if isinstance(channels, int) and not isinstance(channels, bool)
            else (len(channels) if isinstance(channels, list) else None)
        )
        if count != width:
            raise FrameError(f"JSON 'channels' ({channels!r}) does not match {width} values per sample")
    values = np.array([np.nan if v is None else v for v in flat], dtype=np.float64)
    with np.errstate(over="ignore"):
        samples = values.astype(np.float32).reshape(len(rows), width)
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


# --------------------------------------------------------------------------- topics
def check_device_id(device: str) -> str:
    """Return ``device`` if usable in a topic (1..64 chars, no ``+ # /``, no NUL); else ConfigError."""
    if not isinstance(device, str) or not 1 <= len(device) <= 64 or any(ch in device for ch in "+#/\0"):
        raise ConfigError(f"invalid device id {device!r}: 1..64 characters, none of '+', '#', '/', NUL")
    return device


def samples_topic(device: str) -> str:
    return f"vib/{check_device_id(device)}/samples"


def alert_topic(device: str) -> str:
    return f"vib/{check_device_id(device)}/alert"


def status_topic(device: str) -> str:
    return f"vib/{check_device_id(device)}/status"


def upload_topic(device: str) -> str:
    return f"vib/{check_device_id(device)}/upload"
