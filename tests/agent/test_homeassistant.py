"""Home Assistant MQTT discovery: every payload the agent publishes passes Home Assistant's documented schema,
and the entities' templates show the right states for the status payloads a real agent publishes."""

from __future__ import annotations

import json
import threading

import pytest

from edge_agent.agent import Agent
from edge_agent.config import config_from_dict
from edge_agent.contract import topics
from edge_agent.contract.errors import ConfigError
from edge_agent.homeassistant import discovery_configs, expire_after_s
from edge_agent.mqtt_client import MqttConnection
from firmware_sim.link import PtyLink
from tests.agent import ha_schema
from tests.agent.gateway_helpers import gateway_config, running
from tests.agent.pipeline_helpers import frames_of
from tests.waiting import wait_for

ENTITIES = {("sensor", "anomaly_score"), ("binary_sensor", "alert"), ("sensor", "alert_state"),
            ("binary_sensor", "health"), ("sensor", "model_version"), ("sensor", "threshold"),
            ("sensor", "windows_scored"), ("sensor", "inference_p99"), ("binary_sensor", "retraining_due"),
            ("sensor", "vibration_velocity"), ("sensor", "vibration_zone")}


def _cfg(**over):
    d = {"gateway": "hall_3", "mqtt": {}, "homeassistant": {"enabled": True},
         "sensors": [{"device": "pump-1", "source": {"kind": "serial", "serial": {"port": "/dev/ttyA"}},
                      "bundle": {"path": "b"}, "asset": "Cooling pump 1, drive end", "location": "Hall 3, bay 2"},
                     {"device": "Fan_9-b", "source": {"kind": "mqtt"}, "bundle": {"path": "b"}}]}
    d.update(over)
    return config_from_dict(d)


class _Collector:
    """A client that keeps the last payload of every topic under its filters (retained ones included)."""

    def __init__(self, broker, *filters: str) -> None:
        self.last: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.conn = MqttConnection(broker.host, broker.port, f"collector-{id(self)}")
        for f in filters:
            self.conn.subscribe(f, 1, self._on)
        self.conn.start()
        assert self.conn.wait_subscribed(10)

    def _on(self, msg) -> None:
        with self.lock:
            self.last[msg.topic] = bytes(msg.payload)

    def get(self, topic: str) -> bytes | None:
        with self.lock:
            return self.last.get(topic)

    def configs(self, prefix: str = "homeassistant") -> dict[str, bytes]:
        with self.lock:
            return {t: p for t, p in self.last.items() if t.startswith(prefix + "/") and p}

    def stop(self) -> None:
        self.conn.stop()


def _ours(configs: dict[str, bytes]) -> dict[str, dict]:
    return {t: json.loads(p) for t, p in configs.items() if json.loads(p).get("origin", {}).get("name") ==
            "vibration-edge"}


# ---------------------------------------------------------------------------------------------- payloads
def test_every_discovery_payload_passes_the_documented_schema():
    cfg = _cfg()
    configs = discovery_configs(cfg)
    problems = [e for t, p in configs.items() for e in ha_schema.validate(t, json.dumps(p))]
    assert problems == []
    node = "hall_3"  # ids are used verbatim: they are made of the characters discovery topics allow
    per_sensor = {}
    for topic, p in configs.items():
        m = ha_schema.TOPIC.fullmatch(topic.removeprefix("homeassistant/"))
        assert m["node_id"] == node
        if p["device"]["identifiers"] != [f"vibration_edge:{node}"]:
            assert p["device"]["via_device"] == f"vibration_edge:{node}"
            assert p["device"]["identifiers"] == [f"vibration_edge:{node}:{p['device']['name']}"]
            per_sensor.setdefault(p["device"]["name"], set()).add((m["component"], p["unique_id"].rsplit(":", 1)[1]))
            assert p["availability_mode"] == "all" and [a["topic"] for a in p["availability"]] == [
                "vib/gateway/hall_3/availability", topics.status_topic(p["device"]["name"])]
    assert per_sensor == {"pump-1": ENTITIES, "Fan_9-b": ENTITIES}
    assert len({p["unique_id"] for p in configs.values()}) == len(configs) == 1 + 2 * len(ENTITIES)
    score = configs[f"homeassistant/sensor/{node}/pump-1_anomaly_score/config"]
    assert score["state_class"] == "measurement" and score["expire_after"] == expire_after_s(10.0) == 60
    assert configs[f"homeassistant/sensor/{node}/pump-1_model_version/config"]["entity_category"] == "diagnostic"
    # the configured location is the device's area in Home Assistant; a sensor without one suggests none
    assert {p["device"].get("suggested_area") for p in configs.values() if p["device"]["name"] == "pump-1"} == {
        "Hall 3, bay 2"}
    assert all("suggested_area" not in p["device"] for p in configs.values() if p["device"]["name"] != "pump-1")


def test_the_schema_check_can_fail():
    """The validator refuses what Home Assistant refuses (else passing it would prove nothing)."""
    good = json.dumps(discovery_configs(_cfg())["homeassistant/sensor/hall_3/pump-1_alert_state/config"])
    topic = "homeassistant/sensor/hall/pump-1_alert_state/config"
    assert ha_schema.validate(topic, good) == []

    def bad(edit, where=topic) -> list[str]:
        p = json.loads(good)
        edit(p)
        return ha_schema.validate(where, json.dumps(p))

    assert bad(lambda p: p.pop("state_topic"))
    assert bad(lambda p: p.update(state_class="measurement"))  # options with a state class
    assert bad(lambda p: p.update(device_class="vibrationz"))
    assert bad(lambda p: p.update(availability_topic="x"))  # with the availability list
    assert bad(lambda p: p.update(availability_mode="most"))
    assert bad(lambda p: p.update(value_template="{{ value_json.x "))
    assert bad(lambda p: p["device"].pop("identifiers"))
    assert bad(lambda p: p.update(entity_category="primary"))
    assert bad(lambda p: p.update(stat_topic="typo"))
    assert bad(lambda p: None, "homeassistant/sensor/hall.3/pump-1/config")  # '.' is not allowed in a topic id
    # abbreviations are expanded as Home Assistant does before the check
    abbreviated = {"stat_t": "vib/x/status", "val_tpl": "{{ value }}", "uniq_id": "u", "dev_cla": "problem",
                   "dev": {"ids": ["d"], "name": "d"}, "avty": [{"t": "a"}], "o": {"name": "n"}}
    assert ha_schema.validate("homeassistant/binary_sensor/n/o/config", json.dumps(abbreviated)) == []


def test_templates_read_the_status_the_agent_publishes():
    configs = discovery_configs(_cfg())
    node = "hall_3"
    ent = {key: configs[f"homeassistant/{comp}/{node}/pump-1_{key}/config"] for comp, key in ENTITIES}
    running_doc = {"device": "pump-1", "state": "online", "model_id": "m", "model_version": "v2",
                   "quantization": "int8", "threshold": 0.19, "threshold_source": "bundle",
                   "alert_state": "critical", "last_score": 0.52, "windows_scored": 12,
                   "inference_ms_p50": 0.1, "inference_ms_p99": 0.3,
                   "health": {"state": "no_data", "reason": "no frame for 61 s", "since": 1.7e9, "events": 2}}
    payload = json.dumps(running_doc)
    r = lambda key, p=payload: ha_schema.render(ent[key]["value_template"], p)  # noqa: E731
    assert float(r("anomaly_score")) == 0.52 and r("alert") == "ON" and r("alert_state") == "critical"
    assert r("health") == "ON" and r("model_version") == "v2" and float(r("threshold")) == 0.19
    assert r("windows_scored") == "12" and float(r("inference_p99")) == 0.3
    attrs = json.loads(ha_schema.render(ent["health"]["json_attributes_template"], payload))
    assert attrs == running_doc["health"] | dict.fromkeys(("advice_key", "advice", "asset", "location"))
    # what to do and where: the health, alert and alert-state entities carry them as attributes
    advised = json.dumps(running_doc | {"asset": "Cooling pump 1, drive end", "location": "Hall 3, bay 2",
                                        "advice_key": "no_data", "advice": "Check the cable."})
    where = {"advice_key": "no_data", "advice": "Check the cable.", "asset": "Cooling pump 1, drive end",
             "location": "Hall 3, bay 2"}
    assert json.loads(ha_schema.render(ent["health"]["json_attributes_template"], advised)) == (
        running_doc["health"] | where)
    for key in ("alert", "alert_state"):
        assert json.loads(ha_schema.render(ent[key]["json_attributes_template"], advised)) == where | {
            "alert_state": "critical"}
        assert ha_schema.render(ent[key]["json_attributes_template"], "offline") == "{}"
    assert json.loads(ha_schema.render(ent["model_version"]["json_attributes_template"], payload))["quantization"] == "int8"
    # health ok; before the sensor's status has a health verdict, only "no model" is a problem
    assert r("health", json.dumps(running_doc | {"health": {"state": "ok", "reason": "", "since": None,
                                                            "events": 2}})) == "OFF"
    # retraining due: the drift verdict; a sensor without drift monitoring (or not yet known) is unknown
    assert r("retraining_due") == "None"
    drifting = json.dumps(running_doc | {"drift": {"state": "drifting", "psi": 0.4, "windows": 500}})
    assert r("retraining_due", drifting) == "ON"
    assert json.loads(ha_schema.render(ent["retraining_due"]["json_attributes_template"], drifting))["psi"] == 0.4
    assert r("retraining_due", json.dumps(running_doc | {"drift": {"state": "stable"}})) == "OFF"
    no_health = {k: v for k, v in running_doc.items() if k != "health"}
    assert r("health", json.dumps(no_health)) == "OFF"
    assert r("health", json.dumps({"device": "pump-1", "state": "no_model"})) == "ON"
    # no model yet, calibrating, and the "offline" left after a clean stop: unknown, never a template error
    for doc in ({"device": "pump-1", "state": "no_model"}, "offline"):
        p = doc if isinstance(doc, str) else json.dumps(doc)
        assert r("anomaly_score", p) == r("alert_state", p) == r("alert", p) == r("model_version", p) == "None"
        assert ha_schema.render(ent["anomaly_score"]["availability"][1]["value_template"], p) == (
            "offline" if p == "offline" else "online")
    # velocity and zone beside the anomaly state (a machine can be anomalous in zone A)
    shaking = json.dumps(running_doc | {"condition": {"velocity_mm_s": 3.2, "zone": "C", "zone_meaning": "plan"}})
    assert float(r("vibration_velocity", shaking)) == 3.2 and r("vibration_zone", shaking) == "C"
    assert json.loads(ha_schema.render(ent["vibration_zone"]["json_attributes_template"], shaking))["zone"] == "C"
    unmeasured = json.dumps(running_doc | {"condition": {"velocity_mm_s": None, "zone": None}})
    assert r("vibration_velocity", unmeasured) == r("vibration_zone", unmeasured) == "None"
    assert r("vibration_velocity") == r("vibration_zone") == "None"  # a status without the condition
    calibrating = json.dumps(running_doc | {"alert_state": "calibrating"})
    assert r("alert", calibrating) == "OFF" and r("alert_state", calibrating) == "calibrating"


def test_ids_that_would_collide_are_refused_never_rewritten():
    """Gateways "hall.3" and "hall_3_42fd83" used to share a discovery node (one deleted the other's configs), and
    sensors "pump 1" and "pump_1_3dded7" an object id: ids outside the topic alphabet are now refused at start."""
    for gateway in ("hall.3", "hall 3", "h\u00e4lle", "x" * 65):
        with pytest.raises(ConfigError, match=r"^gateway: invalid gateway id"):
            _cfg(gateway=gateway)
    for device in ("pump 1", "pump.1", "\U0001f600" * 21, "gateway"):
        with pytest.raises(ConfigError, match=r"sensors\[0\]\.device: invalid device id"):
            _cfg(sensors=[{"device": device, "source": {"kind": "mqtt"}, "bundle": {"path": "b"}}])
    with pytest.raises(ConfigError, match="differ only in case"):
        _cfg(sensors=[{"device": d, "source": {"kind": "mqtt", "mqtt": {"topic": f"t/{i}"}}, "bundle": {"path": "b"}}
                      for i, d in enumerate(("Pump-1", "pump-1"))])
    # what is valid is used verbatim: the two former collisions are now two distinct, valid configs
    a, b = discovery_configs(_cfg(gateway="hall_3")), discovery_configs(_cfg(gateway="hall_3_42fd83"))
    assert not set(a) & set(b) and not {p["unique_id"] for p in a.values()} & {p["unique_id"] for p in b.values()}


def test_discovery_needs_a_broker_and_the_mqtt_status():
    with pytest.raises(ConfigError, match=r"homeassistant.enabled: needs a \[mqtt\]"):
        _cfg(mqtt=None)
    with pytest.raises(ConfigError, match="status.mqtt"):
        _cfg(status={"mqtt": False})
    with pytest.raises(ConfigError, match="homeassistant.discovery_prefix"):
        _cfg(homeassistant={"enabled": True, "discovery_prefix": "ha/+/x"})
    assert not config_from_dict({"device": "p", "source": {"kind": "serial", "serial": {"port": "x"}},
                                 "bundle": {"path": "b"}}).homeassistant.enabled  # off by default


# ---------------------------------------------------------------------------------------------- on a broker
def test_a_gateway_appears_in_home_assistant_and_cleans_up_after_itself(tmp_path, mosquitto, agent_bundle,
                                                                        degrading_samples):
    # retained before the agent starts: a config of a sensor this gateway no longer has, and another program's
    stale_topic = "homeassistant/sensor/hall-3/old-pump_anomaly_score/config"
    foreign_topic = "homeassistant/sensor/hall-3/thermo_temperature/config"
    seed = MqttConnection(mosquitto.host, mosquitto.port, "seed")
    seed.start()
    assert seed.wait_connected(10)
    infos = [seed.publish(stale_topic, json.dumps({"state_topic": "vib/old-pump/status", "unique_id": "x",
                                                   "origin": {"name": "vibration-edge"}}), qos=1, retain=True),
             seed.publish(foreign_topic, json.dumps({"state_topic": "t", "origin": {"name": "other-app"}}), qos=1,
                          retain=True)]
    for info in infos:
        info.wait_for_publish(5)
    seed.stop()

    links = {"pump-1": PtyLink(tmp_path / "tty1", write_timeout=10), "pump-2": PtyLink(tmp_path / "tty2")}
    cfg = gateway_config(tmp_path, agent_bundle, links, mqtt={"host": mosquitto.host, "port": mosquitto.port},
                         status={"mqtt": True}, homeassistant={"enabled": True},
                         sensor_keys={"pump-1": {"asset": "Cooling pump 1", "location": "Hall 3",
                                                 "advice": {"changed": "Walk past pump 1 today.",
                                                            "degrading": "Stop pump 1 at the next break."}}})
    expected = set(discovery_configs(cfg))
    watch = _Collector(mosquitto, "homeassistant/#", "vib/#")
    agent = Agent(cfg)
    try:
        with running(agent):
            assert wait_for(lambda: expected <= set(watch.configs()), 10)
            assert wait_for(lambda: watch.get(stale_topic) == b"", 10), "the stale config was not cleared"
            frames = frames_of(degrading_samples, 1024)
            for i, f in enumerate(frames):
                links["pump-1"].send(f)
                if i < len(frames) // 4:
                    links["pump-2"].send(f)
                if i % 50 == 49:
                    assert wait_for(lambda i=i: agent.sensor("pump-1").pipeline.windower.counters.samples_in
                                    >= (i + 1) * 1024, 20)
            assert wait_for(lambda: agent.sensor("pump-1").pipeline.counters.alert_events > 0, 10)
            assert wait_for(lambda: json.loads(watch.get(topics.status_topic("pump-1")) or b"{}").get(
                "alert_state") in ("warning", "critical"), 10)
            live = {t: watch.get(t) for t in ("vib/gateway/hall-3/availability", topics.status_topic("pump-1"),
                                              topics.status_topic("pump-2"))}
            status = agent.status()
    finally:
        for link in links.values():
            link.close()
    assert wait_for(lambda: watch.get("vib/gateway/hall-3/availability") == b"offline", 10)
    assert wait_for(lambda: watch.get(topics.status_topic("pump-1")) == b"offline", 10)
    watch.stop()

    # what a Home Assistant connecting now gets: the retained configs, all valid, and nobody else's removed
    fresh = _Collector(mosquitto, "homeassistant/#")
    try:
        assert wait_for(lambda: expected <= set(fresh.configs()), 10)
        retained = fresh.configs()
    finally:
        fresh.stop()
    ours = _ours(retained)
    assert set(ours) == expected and stale_topic not in retained and foreign_topic in retained
    problems = [e for t in ours for e in ha_schema.validate(t, retained[t])]
    assert problems == []
    assert status["homeassistant"] == {"entities": len(expected), "published": len(expected), "removed": 1}

    # the entities as Home Assistant would show them while the agent ran, and after it stopped
    def entity(device: str, component: str, key: str) -> dict:
        return ours[f"homeassistant/{component}/hall-3/{device}_{key}/config"]

    def shown(device: str, component: str, key: str, payload: bytes) -> str:
        return ha_schema.render(entity(device, component, key)["value_template"], payload)

    def available(device: str, key: str, component: str, payloads: dict[str, bytes]) -> bool:
        e = entity(device, component, key)
        return all(ha_schema.render(a.get("value_template", "{{ value }}"), payloads[a["topic"]]) ==
                   a.get("payload_available", "online") for a in e["availability"])  # availability_mode: all

    p1, p2 = live[topics.status_topic("pump-1")], live[topics.status_topic("pump-2")]
    s1 = json.loads(p1)
    assert float(shown("pump-1", "sensor", "anomaly_score", p1)) == s1["last_score"]
    assert shown("pump-1", "binary_sensor", "alert", p1) == "ON"
    assert shown("pump-1", "sensor", "alert_state", p1) in entity("pump-1", "sensor", "alert_state")["options"]
    assert shown("pump-1", "sensor", "alert_state", p1) in ("warning", "critical")
    assert shown("pump-2", "binary_sensor", "alert", p2) == "OFF"
    assert shown("pump-1", "sensor", "model_version", p1) == s1["model_version"]
    assert shown("pump-1", "binary_sensor", "health", p1) == "OFF"
    alert_attrs = json.loads(ha_schema.render(entity("pump-1", "binary_sensor", "alert")["json_attributes_template"], p1))
    assert alert_attrs["advice"] in ("Walk past pump 1 today.", "Stop pump 1 at the next break.")
    assert (alert_attrs["asset"], alert_attrs["location"]) == ("Cooling pump 1", "Hall 3")
    assert entity("pump-1", "sensor", "anomaly_score")["device"]["suggested_area"] == "Hall 3"
    assert json.loads(ha_schema.render(entity("pump-2", "binary_sensor", "alert")["json_attributes_template"],
                                       p2))["advice"] is None  # monitored and normal: nothing to do
    assert int(shown("pump-2", "sensor", "windows_scored", p2)) == json.loads(p2)["windows_scored"] > 0
    assert all(available(d, "anomaly_score", "sensor", live) for d in ("pump-1", "pump-2"))
    after = {t: b"offline" for t in live}
    assert not available("pump-1", "anomaly_score", "sensor", after)
    assert shown("pump-1", "sensor", "anomaly_score", b"offline") == "None"
    gw = ours["homeassistant/binary_sensor/hall-3/gateway_online/config"]
    assert gw["payload_on"] == live["vib/gateway/hall-3/availability"].decode() == "online"
    assert s1["alerts"] >= 1
