"""Config of MQTT sources that read a sensor's own JSON: the mapping keys are checked at load, errors name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_agent.config import config_from_dict, load_config
from edge_agent.contract.binary import MAX_FRAME_SIZE
from edge_agent.contract.errors import ConfigError
from edge_agent.contract.json_mapping import JsonMapping
from edge_agent.contract.mqtt_payload import WIRE_JSON_LIMIT

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _mqtt(**source_mqtt) -> dict:
    return {"device": "s1", "mqtt": {}, "bundle": {"path": "b"}, "source": {"kind": "mqtt", "mqtt": source_mqtt}}


def test_shipped_json_sensor_example_is_valid():
    cfg = load_config(EXAMPLES / "agent-json-sensor.toml")
    ibm, press = (s.source.mqtt for s in cfg.sensors)
    assert ibm.samples_topic("lorenz-1") == "iot-2/type/lorenz/id/lorenz-1/evt/status/fmt/json"
    assert ibm.mapping() == JsonMapping(fields=("x", "y", "z")) and ibm.decoder().counted
    m = press.mapping()
    assert m.fields == ("acc.x", "acc.y") and (m.seq_field, m.time_field, m.time_unit, m.scale) == ("n", "ts", "ms", 0.001)
    assert not press.decoder().counted and press.decoder().max_bytes == m.max_payload_bytes


def test_wire_payloads_stay_the_default():
    cfg = config_from_dict(_mqtt())
    m = cfg.sensor().source.mqtt
    assert m.payload == "wire" and m.mapping() is None and m.samples_topic("s1") == "vib/s1/samples"
    assert m.decoder().max_bytes == max(MAX_FRAME_SIZE, WIRE_JSON_LIMIT)
    assert config_from_dict(_mqtt(topic_device="other")).sensor().source.mqtt.samples_topic("s1") == "vib/other/samples"


@pytest.mark.parametrize(
    ("source_mqtt", "key"),
    [
        ({"payload": "xml"}, "source.mqtt.payload"),
        ({"payload": "json"}, "source.mqtt.fields"),
        ({"payload": "json", "fields": []}, "source.mqtt.fields"),
        ({"payload": "json", "fields": "x"}, "source.mqtt.fields"),
        ({"payload": "json", "fields": ["x", "x"]}, "source.mqtt.fields"),
        ({"payload": "json", "fields": ["x"], "values": "v"}, "source.mqtt.fields"),
        ({"payload": "json", "fields": ["a..b"]}, "source.mqtt.fields"),
        ({"payload": "json", "values": "v", "channels": 0}, "source.mqtt.channels"),
        ({"payload": "json", "fields": ["x"], "channels": 1}, "source.mqtt.channels"),
        ({"payload": "json", "values": "v", "records": "r"}, "source.mqtt.records"),
        ({"payload": "json", "fields": ["x"], "seq_field": "x"}, "source.mqtt.seq_field"),
        ({"payload": "json", "fields": ["x"], "time_unit": "ms"}, "source.mqtt.time_unit"),
        ({"payload": "json", "fields": ["x"], "time_field": "t", "time_unit": "hours"}, "source.mqtt.time_unit"),
        ({"payload": "json", "fields": ["x"], "scale": 0}, "source.mqtt.scale"),
        ({"payload": "json", "fields": ["x"], "scale": "1"}, "source.mqtt.scale"),
        ({"payload": "json", "fields": ["x"], "max_payload_bytes": 10}, "source.mqtt.max_payload_bytes"),
        ({"payload": "json", "fields": ["x"], "colour": "red"}, "source.mqtt.colour"),
        ({"fields": ["x"]}, "source.mqtt.fields"),
        ({"max_payload_bytes": 4096}, "source.mqtt.max_payload_bytes"),
        ({"topic": "a/+/b"}, "source.mqtt.topic"),
        ({"topic": "a/#"}, "source.mqtt.topic"),
        ({"topic": ""}, "source.mqtt.topic"),
        ({"topic": "a/b", "topic_device": "x"}, "source.mqtt.topic"),
    ],
)
def test_bad_mappings_name_the_key(source_mqtt, key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: "):
        config_from_dict(_mqtt(**source_mqtt))


def test_two_sensors_on_one_topic_are_refused_whatever_names_it():
    data = {"gateway": "g", "mqtt": {}, "bundle": {"path": "b"}, "source": {"kind": "mqtt"},
            "sensors": [{"device": "a", "source": {"mqtt": {"topic": "vib/b/samples"}}}, {"device": "b"}]}
    with pytest.raises(ConfigError, match=r"^sensors\[1\]\.source\.mqtt: topic 'vib/b/samples' is already used"):
        config_from_dict(data)
    data["sensors"][0]["source"]["mqtt"] = {"topic": "iot-2/evt/status/fmt/json", "payload": "json", "fields": ["x"]}
    assert [s.source.mqtt.samples_topic(s.device) if s.source.mqtt else s.device
            for s in config_from_dict(data).sensors] == ["iot-2/evt/status/fmt/json", "b"]
