"""The wire formats: round trips, corruption, resync, fuzzing (edge_agent.contract: frames, binary, csv_lines,
mqtt_payload)."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.contract import topics
from edge_agent.contract.binary import (
    AUTO_SCALE_CODE,
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    FrameDecoder,
    encode_frame,
    int16_scale,
)
from edge_agent.contract.csv_lines import CsvLineDecoder, encode_csv_lines
from edge_agent.contract.errors import ConfigError, FrameError
from edge_agent.contract.frames import expected_next, seq_gap
from edge_agent.contract.mqtt_payload import decode_payload, encode_json_payload


def _samples(n: int = 256, c: int = 2, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, c)) * 3).astype(np.float32)


def test_header_layout_is_24_bytes_little_endian():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = encode_frame(0x01020304, x, t0_us=0x1122334455, sample_type="float32")
    assert HEADER_SIZE == 24
    assert len(b) == 24 + 3 * 2 * 4 + 4
    assert b[:2] == b"\xa5\x5a" and b[2] == 1 and b[3] == 1
    assert b[4:8] == bytes([4, 3, 2, 1])
    assert int.from_bytes(b[8:16], "little") == 0x1122334455
    assert int.from_bytes(b[16:18], "little") == 3 and b[18] == 2 and b[19] == 0
    assert np.frombuffer(b[20:24], "<f4")[0] == 1.0
    assert np.array_equal(np.frombuffer(b[24:48], "<f4"), np.arange(6, dtype=np.float32))
    assert int.from_bytes(b[-4:], "little") == zlib.crc32(b[2:-4])


def test_float32_round_trip_is_bit_exact_including_nan():
    x = _samples(4096, 16)
    x[5, 3] = np.nan
    x[7, 0] = np.float32(1e-40)  # subnormal
    f = decode_payload(encode_frame(2**32 + 7, x, t0_us=123, sample_type="float32"))
    assert f.seq == 7 and f.t0_us == 123 and f.saturated == 0
    assert f.samples.dtype == np.float32 and f.samples.shape == (4096, 16)
    assert f.samples.tobytes() == x.tobytes()


def test_int16_round_trip_within_half_lsb_and_auto_scale_keeps_headroom():
    x = _samples(1000, 4)
    b = encode_frame(10, x)
    scale = float(np.frombuffer(b[20:24], "<f4")[0])
    assert scale == pytest.approx(np.abs(x).max() / AUTO_SCALE_CODE, rel=1e-6)
    f = decode_payload(b)
    assert np.max(np.abs(f.samples - x)) <= scale * 0.5 + 1e-6
    assert f.saturated == 0
    z = decode_payload(encode_frame(0, np.zeros((3, 1))))
    assert np.array_equal(z.samples, np.zeros((3, 1), np.float32))


def test_int16_saturation_and_nan_are_flagged():
    scale = int16_scale(50.0)
    x = np.array([[0.0, 60.0], [-70.0, 50.0], [np.nan, 1.0]], dtype=np.float32)
    f = decode_payload(encode_frame(0, x, scale=scale))
    # 60 and 50 clip to +32767, -70 to -32767: three saturated codes; NaN travels as -32768, "no reading"
    assert f.saturated == 3
    assert np.isnan(f.samples[2, 0]) and np.isfinite(np.delete(f.samples.ravel(), 4)).all()
    assert f.samples[0, 1] == pytest.approx(50.0, rel=1e-6)
    assert f.samples[1, 0] == pytest.approx(-50.0, rel=1e-6)
    assert f.samples[2, 1] == pytest.approx(1.0, abs=scale)


def test_seq_arithmetic_wraps():
    assert expected_next(2**32 - 10, 16) == 6
    assert seq_gap(2**32 - 10, 6) == 16
    assert seq_gap(100, 100) == 0
    assert seq_gap(100, 356) == 256
    assert seq_gap(100, 50) == -50  # went backwards: resync
    assert seq_gap(5, 2**32 - 5) == -10


def test_decoder_counts_crc_errors_and_keeps_following_frames():
    x = _samples(64, 3)
    frames = [encode_frame(i * 64, x, sample_type="float32") for i in range(10)]
    bad = bytearray(frames[4])
    bad[40] ^= 0xFF
    stream = b"".join(frames[:4]) + bytes(bad) + b"".join(frames[5:])
    dec = FrameDecoder()
    got = dec.feed(stream)
    assert [f.seq for f in got] == [i * 64 for i in range(10) if i != 4]
    assert dec.crc_errors == 1 and dec.frames == 9
    assert dec.bytes_discarded == len(bad)


def test_decoder_resyncs_after_garbage_and_bad_headers():
    x = _samples(32, 1)
    f1, f2 = encode_frame(0, x), encode_frame(32, x)
    bad_version = bytearray(f1)
    bad_version[2] = 9
    garbage = b"\x00\x01hello\xa5"  # ends with a lone first sync byte
    dec = FrameDecoder()
    got = dec.feed(garbage + f1 + bytes(bad_version) + f2 + b"\xa5")
    assert [f.seq for f in got] == [0, 32]
    assert dec.bad_headers == 1
    assert dec.bytes_discarded == len(garbage) + len(bad_version)
    # the trailing 0xA5 may be the start of the next frame: kept, not discarded
    got = dec.feed(f1[1:])
    assert [f.seq for f in got] == [0]


def test_decoder_waits_for_split_frames():
    x = _samples(100, 2)
    b = encode_frame(7, x, sample_type="float32")
    dec = FrameDecoder()
    out = []
    for i in range(len(b)):
        out += dec.feed(b[i : i + 1])
    assert len(out) == 1 and out[0].samples.tobytes() == x.tobytes()
    assert dec.bytes_discarded == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.lists(st.integers(0, 300), max_size=12))
def test_fuzz_feed_never_raises_on_arbitrary_bytes(data, cuts):
    dec = FrameDecoder()
    pos = 0
    frames = []
    for k in cuts:
        frames += dec.feed(data[pos : pos + k])
        pos += k
    frames += dec.feed(data[pos:])
    assert dec.frames == len(frames) and len(dec._buf) < MAX_FRAME_SIZE
    assert dec.bytes_discarded + len(dec._buf) + sum(HEADER_SIZE for _ in frames) <= len(data)
    csv = CsvLineDecoder()
    rows = csv.feed(data) + csv.feed(b"\n")
    assert csv.lines == sum(f.n_samples for f in rows)
    assert csv.bad_lines <= data.count(b"\n") + 2 and csv.bytes_discarded <= len(data) + 1


@st.composite
def _streams(draw):
    n_frames = draw(st.integers(1, 6))
    c = draw(st.integers(1, 16))
    parts, expected = [], []
    seq = draw(st.integers(0, 2**32 - 1))
    for i in range(n_frames):
        n = draw(st.integers(1, 40))
        x = np.random.default_rng(i).standard_normal((n, c)).astype(np.float32)
        stype = draw(st.sampled_from(["int16", "float32"]))
        b = encode_frame(seq, x, t0_us=i * 1000, sample_type=stype)
        parts.append(draw(st.binary(max_size=20).map(lambda g: g.replace(b"\xa5", b"\x00"))))
        parts.append(b)
        expected.append(decode_payload(b))
        seq = expected_next(seq, n)
    return b"".join(parts), expected


@settings(max_examples=200, deadline=None)
@given(_streams(), st.lists(st.integers(1, 500), max_size=20))
def test_fuzz_any_chunking_of_a_valid_stream_gives_identical_frames(stream_expected, cuts):
    stream, expected = stream_expected
    dec = FrameDecoder()
    got, pos = [], 0
    for k in cuts:
        got += dec.feed(stream[pos : pos + k])
        pos += k
    got += dec.feed(stream[pos:])
    assert [(f.seq, f.t0_us) for f in got] == [(f.seq, f.t0_us) for f in expected]
    assert all(a.samples.tobytes() == b.samples.tobytes() for a, b in zip(got, expected, strict=True))
    assert dec.crc_errors == 0 and dec.bad_headers == 0


def test_csv_round_trip_exact_and_batches_consecutive_lines():
    x = _samples(500, 3)
    x[10, 1] = np.nan
    text = encode_csv_lines(2**32 - 100, x, t0_us=5_000_000, sample_rate=1000.0)
    assert text.splitlines()[1].startswith(b"4294967197,5001000,")
    dec = CsvLineDecoder()
    got = []
    for i in range(0, len(text), 777):  # chunks cut lines in half
        got += dec.feed(text[i : i + 777])
    assert dec.lines == 500 and dec.bad_lines == 0
    y = np.concatenate([f.samples for f in got])
    assert y.tobytes() == x.tobytes()
    assert got[0].seq == 2**32 - 100 and got[0].t0_us == 5_000_000
    for a, b in zip(got, got[1:], strict=False):
        assert b.seq == a.next_seq


def test_csv_malformed_lines_are_counted_and_break_batches():
    good = encode_csv_lines(0, _samples(6, 2), 0, 100.0).splitlines(keepends=True)
    text = b"".join(
        [
            b"# header comment\n",
            *good[:2],
            b"2,20000,abc,1.0\n",  # not a number
            b"3,30000,1.0\n",  # wrong channel count
            b"-4,40000,1.0,2.0\r\n",  # negative seq
            good[4].replace(b"\n", b"\r\n"),
            b"\n",
            good[5],
            b"9,90000,1.0,2.0",  # partial line, kept
        ]
    )
    dec = CsvLineDecoder()
    got = dec.feed(text)
    assert [(f.seq, f.n_samples) for f in got] == [(0, 2), (4, 2)]
    assert dec.bad_lines == 3 and dec.lines == 4
    got = dec.feed(b"\n")
    assert [(f.seq, f.n_samples) for f in got] == [(9, 1)]
    assert CsvLineDecoder(n_channels=3).feed(b"".join(good)) == []


def test_csv_channel_count_from_constructor():
    dec = CsvLineDecoder(n_channels=1)
    got = dec.feed(b"0,0,1.5\n1,10,2.5,3\n2,20,3.5\n")
    assert [f.samples[:, 0].tolist() for f in got] == [[1.5], [3.5]]
    assert dec.bad_lines == 1


def test_json_payload_round_trip_and_binary_payload():
    x = _samples(20, 3)
    x[3, 2] = np.nan
    p = encode_json_payload(99, x, t0_us=7, channels=["x", "y", "z"])
    f = decode_payload(p)
    assert (f.seq, f.t0_us) == (99, 7) and f.samples.tobytes() == x.tobytes()
    obj = {"seq": 1, "samples": [[1, None], [2.5, 3]]}
    f = decode_payload(json.dumps(obj).encode())
    assert f.t0_us == 0 and np.isnan(f.samples[0, 1]) and f.samples[1, 0] == 2.5


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "neither"),
        (b"hello", "neither"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "neither"),
        (b'{"seq": -1, "samples": [[1]]}', "'seq'"),
        (b'{"seq": 1.5, "samples": [[1]]}', "'seq'"),
        (b'{"seq": 1, "t0_us": "x", "samples": [[1]]}', "'t0_us'"),
        (b'{"seq": 1, "samples": []}', "'samples'"),
        (b'{"seq": 1, "samples": [[1, 2], [3]]}', "same"),
        (b'{"seq": 1, "samples": [["a"]]}', "numbers"),
        (b'{"seq": 1, "samples": [[1, 2]], "channels": 3}', "'channels'"),
        (b"\xa5\x5a\x01", "too short"),
    ],
)
def test_decode_payload_rejects_malformed_with_clear_message(payload, message):
    with pytest.raises(FrameError, match=message):
        decode_payload(payload)


def test_decode_payload_rejects_binary_corruption():
    b = encode_frame(0, _samples(10, 2))
    with pytest.raises(FrameError, match="CRC"):
        decode_payload(b[:30] + bytes([b[30] ^ 1]) + b[31:])
    with pytest.raises(FrameError, match="header says"):
        decode_payload(b + b"\x00")
    bad = bytearray(b)
    bad[18] = 0  # zero channels
    with pytest.raises(FrameError, match="bad frame header"):
        decode_payload(bytes(bad))


def test_encode_rejects_bad_arguments():
    with pytest.raises(ValueError, match="1..4096"):
        encode_frame(0, np.zeros((4097, 1)))
    with pytest.raises(ValueError, match="1..16"):
        encode_frame(0, np.zeros((4, 17)))
    with pytest.raises(ValueError, match="sample_type"):
        encode_frame(0, np.zeros((4, 1)), sample_type="int8")


def test_topics_and_device_validation():
    assert topics.samples_topic("pump-7") == "vib/pump-7/samples"
    assert topics.alert_topic("a") == "vib/a/alert"
    assert topics.status_topic("a") == "vib/a/status"
    assert topics.upload_topic("a") == "vib/a/upload"
    for bad in ["", "a/b", "a+", "#", "x" * 65]:
        with pytest.raises(ConfigError):
            topics.samples_topic(bad)


@settings(max_examples=200, deadline=None)
@given(_streams(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8))
def test_fuzz_corrupted_streams_never_raise_and_never_yield_corrupted_frames(stream_expected, flips):
    stream, expected = stream_expected
    buf = bytearray(stream)
    for pos, val in flips:
        buf[pos % len(buf)] = val
    dec = FrameDecoder()
    got = dec.feed(bytes(buf))
    # a corrupted length field makes the decoder wait for that many bytes before rejecting the
    # frame and recovering the ones behind it: later bytes push them out
    got += dec.feed(bytes(MAX_FRAME_SIZE))
    originals = {(f.seq, f.t0_us, f.samples.tobytes()) for f in expected}
    assert all((f.seq, f.t0_us, f.samples.tobytes()) in originals for f in got)
    assert len(got) + dec.crc_errors + dec.bad_headers >= len(expected) - len(flips)
