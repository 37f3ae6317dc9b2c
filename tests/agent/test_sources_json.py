"""The MQTT source with a sensor's own JSON, on a real mosquitto: mapped payloads, counted sequence numbers,
oversized payloads refused unparsed, and duplicates recognised by CRC in the windower."""

from __future__ import annotations

import numpy as np

from edge_agent.config import MqttSection
from edge_agent.contract import preprocess
from edge_agent.contract.binary import encode_frame
from edge_agent.contract.frames import Frame
from edge_agent.contract.json_mapping import JsonMapping, PayloadDecoder
from edge_agent.contract.mqtt_payload import decode_payload
from edge_agent.mqtt_client import MqttConnection
from edge_agent.sources.mqtt import MqttSource
from edge_agent.windows import Windower
from tests.agent.test_sources import _drain, _publisher
from tests.waiting import wait_for


def test_mqtt_source_reads_a_declared_json_mapping_and_refuses_oversized_payloads(mosquitto):
    topic = "iot-2/evt/status/fmt/json"
    section = MqttSection(topic=topic, payload="json", fields=("x", "y", "z"))
    conn = MqttConnection(mosquitto.host, mosquitto.port, "agent-json")
    src = MqttSource(conn, section.samples_topic("s1"), decoder=section.decoder())
    pub = _publisher(mosquitto)
    limit = src.decoder.max_bytes
    try:
        src.start()
        conn.start()
        assert conn.wait_subscribed(10)
        x = np.arange(30, dtype=np.float32).reshape(10, 3)
        mapping = section.mapping()
        messages = mapping.encode(0, x[:4], layout="sample") + mapping.encode(0, x[4:], layout="columns")
        messages[2:2] = [b'{"x": 1}', b"{" * (limit + 1), b'{"x": 1, "y": 2, "z": 3, "pad": "' + b"." * limit + b'"}']
        for p in messages:
            assert pub.publish(topic, p, qos=1) is not None
        frames = _drain(src, 5)
        assert wait_for(lambda: src.counters.messages == len(messages), 10)
    finally:
        pub.stop()
        conn.stop()
    np.testing.assert_array_equal(np.concatenate([f.samples for f in frames]), x)
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]  # numbered as they arrive: the bad ones leave no gap
    c = src.counters
    assert (c.bad_payloads, c.oversized_payloads, c.frames, c.gaps_detectable) == (1, 2, 5, False)
    assert c.bytes == sum(map(len, messages))


def test_redelivered_binary_frames_are_duplicates_by_their_wire_crc_and_new_data_is_not():
    spec = preprocess.PreprocessSpec(mode="raw", channels=("a", "b"), window=16, hop=8)
    x = np.random.default_rng(3).standard_normal((256, 2)).astype(np.float32)
    y = x.copy()
    y[70, 0] += 1.0  # same seq and length as a frame already consumed, other data: a restarted sender
    frames = [decode_payload(encode_frame(a, x[a : a + 32], sample_type="float32")) for a in range(0, 256, 32)]
    again = decode_payload(encode_frame(64, x[64:96], sample_type="float32"))
    other = decode_payload(encode_frame(64, y[64:96], sample_type="float32"))
    assert again.crc == frames[2].crc and again.samples is not frames[2].samples
    w = Windower(spec)
    for f in [*frames[:4], again, frames[1], *frames[4:]]:
        w.push(f, lambda _w: None)
    assert w.counters.duplicates == 2 and w.counters.gaps == 0 and w.counters.samples_in == 256
    w.push(other, lambda _w: None)
    assert w.counters.duplicates == 2 and w.counters.resyncs == 1
    decoded = PayloadDecoder(JsonMapping(values="v", seq_field="s"))  # no wire CRC: one over the samples
    payload = b'{"s": 96, "v": %s}' % str(y[96:128].tolist()).encode()
    w.push(decoded.decode(payload), lambda _w: None)
    assert w.is_duplicate(decoded.decode(payload))
    assert not w.is_duplicate(decoded.decode(payload.replace(b'"s": 96', b'"s": 64')))
    assert not w.is_duplicate(Frame(96, 0, y[96:128] * 2))
