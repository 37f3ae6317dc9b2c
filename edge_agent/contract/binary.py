"""The binary frame: serial links and MQTT binary payloads, little-endian::

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

``encode_frame`` writes one frame, ``FrameDecoder`` reads a byte stream in any chunking (resyncing after
garbage), ``decode_frame`` reads exactly one frame (an MQTT payload). A frame is at most ``MAX_FRAME_SIZE``
bytes (float32, 4096 samples x 16 channels). Sequence numbers: ``frames``.
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

from edge_agent.contract.errors import FrameError
from edge_agent.contract.frames import MAX_CHANNELS, MAX_SAMPLES, SEQ_MOD, Frame, as_samples

SYNC = b"\xa5\x5a"
VERSION = 1
SAMPLE_INT16 = 0
SAMPLE_FLOAT32 = 1
SAMPLE_TYPES = {"int16": SAMPLE_INT16, "float32": SAMPLE_FLOAT32}
HEADER = struct.Struct("<2sBBIQHBBf")
HEADER_SIZE = HEADER.size  # 24
CRC = struct.Struct("<I")
CRC_SIZE = CRC.size  # 4
INT16_FULL_SCALE = 32767
#: int16 code for a missing reading (NaN at the sensor); decodes to NaN.
INT16_NO_READING = -32768
#: Largest possible binary frame in bytes (float32, 4096 samples x 16 channels).
MAX_FRAME_SIZE = HEADER_SIZE + MAX_SAMPLES * MAX_CHANNELS * 4 + CRC_SIZE
#: Headroom used when ``encode_frame`` picks the int16 scale itself: the frame's peak maps here.
AUTO_SCALE_CODE = 30000

_ITEMSIZE = {SAMPLE_INT16: 2, SAMPLE_FLOAT32: 4}
_DTYPE = {SAMPLE_INT16: np.dtype("<i2"), SAMPLE_FLOAT32: np.dtype("<f4")}


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
    arr = as_samples(samples)
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



def decode_frame(data: bytes) -> Frame:
    """Decode exactly one binary frame (an MQTT payload); FrameError says what is wrong (length, header, CRC)."""
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
