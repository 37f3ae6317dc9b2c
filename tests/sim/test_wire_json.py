"""A sensor's own JSON through a declared mapping, payload size limits, and fuzzing of every JSON path
(edge_agent.contract.json_mapping: JsonMapping, PayloadDecoder; mqtt_payload.decode_payload)."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.contract.binary import MAX_FRAME_SIZE, encode_frame
from edge_agent.contract.errors import ConfigError, FrameError
from edge_agent.contract.frames import MAX_CHANNELS, MAX_SAMPLES, SEQ_MOD, Frame
from edge_agent.contract.json_mapping import TIME_UNITS, JsonMapping, PayloadDecoder
from edge_agent.contract.mqtt_payload import WIRE_JSON_LIMIT, PayloadTooLarge, decode_payload, encode_json_payload


def _samples(n: int = 40, c: int = 3, seed: int = 0) -> np.ndarray:
    x = (np.random.default_rng(seed).standard_normal((n, c)) * 3).astype(np.float32)
    x[min(5, n - 1), c - 1] = np.nan
    return x


MAPPINGS = {
    "ibm": (JsonMapping(fields=("x", "y", "z")), ("sample", "columns", "records")),
    "nested": (JsonMapping(fields=("d.acc.x", "d.acc.y", "d.acc.z"), seq_field="seq", time_field="ts",
                                time_unit="ms"), ("sample", "columns", "records")),
    "records": (JsonMapping(fields=("x", "y", "z"), records="data", seq_field="n", time_field="t",
                                 time_unit="iso"), ("sample", "columns", "records")),
    "rows": (JsonMapping(values="v", channels=3, seq_field="s", time_field="t", time_unit="ns", scale=0.5),
             ("sample", "rows")),
    "us": (JsonMapping(fields=("a", "b", "c"), seq_field="i", time_field="t", time_unit="us"),
           ("sample", "columns", "records")),
}


@pytest.mark.parametrize(("mapping", "layout"), [(m, lay) for m, lays in MAPPINGS.values() for lay in lays],
                         ids=[f"{k}-{lay}" for k, (_, lays) in MAPPINGS.items() for lay in lays])
def test_every_layout_round_trips_exactly(mapping, layout):
    x = _samples()
    t0 = 1_700_000_000_123_000
    payloads = mapping.encode(2**32 + 100, x, t0_us=t0, sample_rate=1000.0, layout=layout)
    assert len(payloads) == (len(x) if layout == "sample" else 1)
    dec = PayloadDecoder(mapping)
    frames = [dec.decode(p) for p in payloads]
    got = np.concatenate([f.samples for f in frames])
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, x)  # NaN travels as null
    if mapping.seq_field:
        assert [f.seq for f in frames] == [100 + i * (layout == "sample") for i in range(len(frames))]
        assert [f.t0_us for f in frames] == [t0 + 1000 * i * (layout == "sample") for i in range(len(frames))]
        assert not dec.counted
    else:  # no sequence field: the decoder numbers the samples itself, consecutively
        assert dec.counted and [f.seq for f in frames] == list(range(0, len(x), len(x) // len(frames)))


def test_ibm_watson_per_sample_messages_are_numbered_by_count():
    dec = PayloadDecoder(JsonMapping(fields=("x", "y", "z")))
    msgs = [b'{"x": 1.5, "y": -2, "z": 9.81}', b'{"z": 3, "y": 2, "x": 1, "extra": "ignored"}',
            b'{"x": null, "y": NaN, "z": 0}']
    frames = [dec.decode(m) for m in msgs]
    assert [f.seq for f in frames] == [0, 1, 2] and all(f.t0_us == 0 for f in frames)
    assert frames[0].samples.tolist() == [[1.5, -2.0, 9.8100004196167]]
    assert frames[1].samples.tolist() == [[1.0, 2.0, 3.0]] and np.isnan(frames[2].samples[0, :2]).all()
    with pytest.raises(FrameError):
        dec.decode(b'{"x": 1, "y": 2}')
    assert dec.decode(msgs[0]).seq == 3  # a refused message cannot be seen as a gap: that is what counted means


def test_seq_and_time_fields_in_the_message_or_the_first_record():
    m = JsonMapping(fields=("x",), records="r", seq_field="seq", time_field="ts", time_unit="s")
    f = PayloadDecoder(m).decode(b'{"seq": 7, "ts": 1.5, "r": [{"x": 1}, {"x": 2}]}')
    assert (f.seq, f.t0_us, f.samples.tolist()) == (7, 1_500_000, [[1.0], [2.0]])
    f = PayloadDecoder(m).decode(b'{"r": [{"x": 1, "seq": 9, "ts": 2}, {"x": 2, "seq": 10, "ts": 2.001}]}')
    assert (f.seq, f.t0_us) == (9, 2_000_000)
    f = PayloadDecoder(m).decode(b'{"seq": [2, 3], "ts": [1, 1.1], "x": [5, 6]}')  # columns with seq/time columns
    assert (f.seq, f.t0_us, f.samples.ravel().tolist()) == (2, 1_000_000, [5.0, 6.0])
    m = JsonMapping(fields=("x",), seq_field="seq", time_field="ts", time_unit="iso")
    f = PayloadDecoder(m).decode(b'{"seq": 4294967297, "ts": "1970-01-01T01:00:01.5+01:00", "x": 1}')
    assert (f.seq, f.t0_us) == (1, 1_500_000)  # a 64-bit sample counter, taken modulo 2**32
    f = PayloadDecoder(m).decode(b'{"seq": 0, "ts": "1970-01-01T00:00:02.25", "x": 1}')
    assert f.t0_us == 2_250_000  # naive: UTC


@pytest.mark.parametrize(
    ("mapping", "payload", "message"),
    [
        ({"fields": ("x", "y")}, b'{"x": 1}', "'y' is missing"),
        ({"fields": ("x", "y")}, b'{"x": [1, 2], "y": [3]}', "same length"),
        ({"fields": ("x", "y")}, b'{"x": "1", "y": 2}', "numbers"),
        ({"fields": ("x", "y")}, b'{"x": true, "y": 2}', "numbers"),
        ({"fields": ("x", "y")}, b'{"x": [1, true], "y": [2, 3]}', "numbers"),
        ({"fields": ("x", "y")}, b'{"x": {"a": 1}, "y": 2}', "numbers"),
        ({"fields": ("x", "y")}, b'{"x": ' + b"1" * 400 + b', "y": 2}', "beyond float range"),
        ({"fields": ("x", "y")}, b'{"x": -' + b"9" * 4000 + b', "y": 2}', "beyond float range"),
        ({"fields": ("x", "y")}, b'{"x": [[1]], "y": [[2]]}', "samples"),
        ({"fields": ("x", "y")}, b"[]", "1..4096"),
        ({"fields": ("x", "y")}, b'[{"x": 1, "y": 2}, {"x": 1}]', "must all hold"),
        ({"fields": ("x", "y")}, b'[{"x": 1, "y": 2}, [1, 2]]', "must all hold"),
        ({"fields": ("x",)}, b'{"x": [' + b"1," * 4096 + b"1]}", "1..4096"),
        ({"fields": ("x",)}, b"{x: 1}", "not valid JSON"),
        ({"fields": ("x",)}, b"\xff\xfe{", "not valid JSON"),
        ({"fields": ("x",)}, b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        ({"fields": ("x",), "seq_field": "s"}, b'{"x": 1}', "'s' is missing"),
        ({"fields": ("x",), "seq_field": "s"}, b'{"x": 1, "s": -1}', "non-negative integer"),
        ({"fields": ("x",), "seq_field": "s"}, b'{"x": 1, "s": 1.0}', "non-negative integer"),
        ({"fields": ("x",), "time_field": "t"}, b'{"x": 1, "t": "now"}', "number of s"),
        ({"fields": ("x",), "time_field": "t"}, b'{"x": 1, "t": 1e400}', "not finite"),
        ({"fields": ("x",), "time_field": "t"}, b'{"x": 1, "t": -1}', "before 1970"),
        ({"fields": ("x",), "time_field": "t", "time_unit": "ms"}, b'{"x": 1, "t": ' + b"9" * 300 + b"}", "range"),
        ({"fields": ("x",), "time_field": "t", "time_unit": "iso"}, b'{"x": 1, "t": "yesterday"}', "ISO 8601"),
        ({"values": "v", "channels": 2}, b'{"v": [1, 2, 3]}', "the mapping says 2"),
        ({"values": "v"}, b'{"v": 3}', "samples"),
    ],
)
def test_malformed_payloads_are_frame_errors_that_say_why(mapping, payload, message):
    with pytest.raises(FrameError, match=message):
        PayloadDecoder(JsonMapping(**mapping)).decode(payload)


def test_wire_json_integers_beyond_float_range_are_bad_payloads_not_overflow_errors():
    for p in (b'{"seq": 1, "samples": [[1' + b"0" * 400 + b', 2]]}', b'{"seq": 1, "samples": [[1e400, null]]}'):
        try:
            f = decode_payload(p)
        except FrameError as exc:
            assert "beyond float range" in str(exc)
        else:  # 1e400 is a float literal: inf, an invalid sample the windower counts, as a float32 inf on the wire
            assert np.isinf(f.samples[0, 0]) and np.isnan(f.samples[0, 1])
    with pytest.raises(FrameError, match="'seq'"):
        decode_payload(b'{"seq": 1' + b"0" * 400 + b', "samples": [[1]]}')


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({}, "fields"),
        ({"fields": ("x",), "values": "v"}, "fields"),
        ({"fields": ("x", "x")}, "fields"),
        ({"fields": tuple(f"c{i}" for i in range(17))}, "fields"),
        ({"fields": ("a..b",)}, "fields"),
        ({"fields": ("",)}, "fields"),
        ({"values": ".v"}, "values"),
        ({"fields": ("x",), "channels": 1}, "channels"),
        ({"values": "v", "channels": 17}, "channels"),
        ({"values": "v", "records": "r"}, "records"),
        ({"fields": ("x",), "seq_field": "x"}, "seq_field"),
        ({"fields": ("x",), "seq_field": "t", "time_field": "t"}, "time_field"),
        ({"fields": ("x",), "time_unit": "h"}, "time_unit"),
        ({"fields": ("x",), "scale": 0.0}, "scale"),
        ({"fields": ("x",), "scale": float("inf")}, "scale"),
    ],
)
def test_bad_mappings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        JsonMapping(**kwargs)


def _longest_values(n: int, c: int) -> np.ndarray:
    """float32 values whose float64 repr is as long as any can be: -1.2345678...e-38."""
    return np.full((n, c), np.float32(-1.17549435e-38) * np.float32(1.0000001), np.float32)


@pytest.mark.parametrize("layout", ["sample", "columns", "records"])
def test_the_size_limit_admits_every_valid_payload_and_refuses_one_byte_more(layout):
    m = JsonMapping(fields=("data.accelerometer.x", "data.accelerometer.y", "data.accelerometer.z"),
                         seq_field="seq", time_field="time", time_unit="iso")
    x = _longest_values(1 if layout == "sample" else MAX_SAMPLES, 3)
    (payload,) = m.encode(2**32 - 1, x, t0_us=2**53, sample_rate=1.0, layout=layout)[:1]
    pretty = json.dumps(json.loads(payload), indent=1).encode()  # a sensor may indent its JSON
    dec = PayloadDecoder(m)
    for p in (payload, pretty):
        assert len(p) <= dec.max_bytes
        assert dec.decode(p).n_samples == len(x)
    with pytest.raises(PayloadTooLarge):
        dec.decode(b" " * (dec.max_bytes + 1))


def test_wire_limits_are_checked_before_parsing():
    biggest = encode_json_payload(2**32 - 1, _longest_values(MAX_SAMPLES, MAX_CHANNELS),
                                       t0_us=2**64 - 1, channels=[f"channel-{i}" for i in range(16)])
    assert len(biggest) <= WIRE_JSON_LIMIT and decode_payload(biggest).n_samples == MAX_SAMPLES
    with pytest.raises(PayloadTooLarge, match="refused unparsed"):
        decode_payload(b"{" * (WIRE_JSON_LIMIT + 1))  # never parsed: it would be a RecursionError
    frame = encode_frame(0, np.zeros((MAX_SAMPLES, MAX_CHANNELS)), sample_type="float32")
    assert len(frame) == MAX_FRAME_SIZE and decode_payload(frame).n_samples == MAX_SAMPLES
    with pytest.raises(PayloadTooLarge):
        decode_payload(frame + b"\x00")
    assert issubclass(PayloadTooLarge, FrameError)  # a caller that counts only FrameError still counts it


def test_frame_checksum_is_the_wire_crc_or_a_crc_of_the_samples_in_place():
    x = _samples(64, 2)
    b = encode_frame(5, x, sample_type="float32")
    f = decode_payload(b)
    assert f.checksum == f.crc == int.from_bytes(b[-4:], "little")
    g = Frame(5, 0, x)
    assert g.crc is None and g.checksum == Frame(5, 0, x.copy()).checksum
    y = x.copy()
    y[10, 1] += 1
    assert Frame(5, 0, y).checksum != g.checksum
    strided = np.asfortranarray(x)  # not C-contiguous: still the same identity
    assert Frame(5, 0, strided).checksum == g.checksum


# ---------------------------------------------------------------------------------------------- fuzzing
_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**400), max_value=10**400), st.floats(allow_nan=True),
    st.text(max_size=5), st.sampled_from(["x", "y", "seq", "t", "1"]),
)
_json = st.recursive(
    _json_scalars,
    lambda kids: st.lists(kids, max_size=6) | st.dictionaries(st.sampled_from(["x", "y", "z", "d", "seq", "t", "v",
                                                                                 "r", "samples", "t0_us", "0"]),
                                                               kids, max_size=6),
    max_leaves=40,
)
_paths = st.sampled_from(["x", "y", "z", "d.x", "d.0", "r.0.x", "v", "samples"])
_mappings = st.one_of(
    st.builds(lambda f, s, t, u: JsonMapping(fields=tuple(dict.fromkeys(f)), seq_field=s, time_field=t,
                                                  time_unit=u),
              st.lists(st.sampled_from(["x", "y", "z", "d.x", "d.0"]), min_size=1, max_size=3),
              st.sampled_from([None, "seq", "r.0.seq"]), st.sampled_from([None, "t"]), st.sampled_from(TIME_UNITS)),
    st.builds(lambda v, r: JsonMapping(fields=("x", "y"), records=r) if r else JsonMapping(values=v),
              _paths, st.sampled_from([None, "r", "samples"])),
)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mappings, _json)
def test_fuzz_mapped_json_never_raises_anything_but_frame_error(mapping, doc):
    dec = PayloadDecoder(mapping)
    try:
        f = dec.decode(_dumps(doc))
    except FrameError:
        return
    assert f.samples.dtype == np.float32 and f.samples.ndim == 2 and f.samples.flags.c_contiguous
    assert 1 <= f.n_samples <= MAX_SAMPLES and 1 <= f.n_channels <= MAX_CHANNELS
    assert 0 <= f.seq < SEQ_MOD and 0 <= f.t0_us < 2**64


@st.composite
def _shaped(draw) -> tuple[JsonMapping, bytes]:
    """A payload of the mapping's own shape whose leaves are partly replaced by hostile JSON values."""
    mapping = JsonMapping(fields=("x", "y", "d.z"), seq_field=draw(st.sampled_from([None, "seq"])),
                               time_field="t", time_unit=draw(st.sampled_from(TIME_UNITS)))
    layout = draw(st.sampled_from(["sample", "columns", "records"]))
    x = np.asarray(draw(st.lists(st.floats(width=32), min_size=3, max_size=12)), np.float32)
    (payload,) = mapping.encode(0, x[: len(x) // 3 * 3].reshape(-1, 3), t0_us=10**12, layout=layout)[:1]

    def mutate(node: object) -> object:
        if isinstance(node, dict):
            return {k: mutate(v) for k, v in node.items() if draw(st.integers(0, 9))}  # drop a key now and then
        if isinstance(node, list):
            return [mutate(v) for v in node]
        return draw(_json) if draw(st.integers(0, 5)) == 0 else node

    return mapping, _dumps(mutate(json.loads(payload)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_shaped())
def test_fuzz_json_of_the_right_shape_with_hostile_values_never_raises_anything_but_frame_error(shaped):
    mapping, payload = shaped
    try:
        f = PayloadDecoder(mapping).decode(payload)
    except FrameError:
        return
    assert f.samples.dtype == np.float32 and f.n_channels == 3 and 1 <= f.n_samples <= MAX_SAMPLES
    assert 0 <= f.t0_us < 2**64


@settings(max_examples=300, deadline=None)
@given(st.one_of(_json, st.dictionaries(st.sampled_from(["seq", "t0_us", "samples", "channels"]), _json, max_size=4),
                 st.builds(lambda s, rows, ch: {"seq": s, "samples": rows, "channels": ch},
                           st.integers(-5, 2**33), st.lists(st.lists(_json_scalars, max_size=4), max_size=4),
                           st.one_of(st.none(), st.integers(-1, 20), st.lists(st.text(max_size=2), max_size=4)))))
def test_fuzz_wire_json_never_raises_anything_but_frame_error(doc):
    try:
        f = decode_payload(_dumps(doc))
    except FrameError:
        return
    assert f.samples.dtype == np.float32 and 1 <= f.n_samples <= MAX_SAMPLES


@settings(max_examples=300, deadline=None)
@given(_mappings, st.binary(max_size=200))
def test_fuzz_arbitrary_bytes_are_frame_errors(mapping, data):
    for decode in (PayloadDecoder(mapping).decode, PayloadDecoder().decode):
        with contextlib.suppress(FrameError):  # anything else fails the test
            decode(data)
