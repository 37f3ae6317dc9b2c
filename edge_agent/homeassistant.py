"""Home Assistant MQTT discovery: every sensor appears in Home Assistant as a device with its entities.

Nothing new is published for the entities' states: they all read the retained JSON the agent already
publishes on ``vib/<device>/status`` (``value_template`` / ``json_attributes_template``), so Home
Assistant shows exactly what ``edge-agent status`` shows. Topics (``<prefix>`` = ``discovery_prefix``,
``<node>`` = the gateway id, ``<object>`` = ``<device>_<entity>``: ids are made of the very characters
discovery topics allow (``contract.topics``), so they are used verbatim and never collide; unique ids
and device identifiers are ``vibration_edge:<gateway>[:<device>[:<entity>]]``)::

    <prefix>/sensor/<node>/<device>_anomaly_score/config     score of the last window (measurement)
    <prefix>/binary_sensor/<node>/<device>_alert/config      problem: on while an alert is active
    <prefix>/sensor/<node>/<device>_alert_state/config       enum: calibrating, normal, warning, critical
    <prefix>/binary_sensor/<node>/<device>_health/config     problem: on while the sensor is not monitored
                                                             (attributes: the health state and its reason)
    <prefix>/sensor/<node>/<device>_model_version/config     diagnostic (model id, quantization: attributes)
    <prefix>/sensor/<node>/<device>_threshold/config         diagnostic
    <prefix>/sensor/<node>/<device>_windows_scored/config    diagnostic, total_increasing
    <prefix>/sensor/<node>/<device>_inference_p99/config     diagnostic, duration in ms
    <prefix>/binary_sensor/<node>/gateway_online/config      connectivity of the gateway itself

With ``[answers] mqtt = true``, technicians answer the sensor's alert from Home Assistant (``edge_agent.answers``):
three buttons and a select publish to ``vib/<device>/answer/set`` (``contract.answer`` commands, ``by`` "Home
Assistant"), and a sensor shows the answer, from the retained ``vib/<device>/answer``::

    <prefix>/button/<node>/<device>_acknowledge/config       acknowledge the alert
    <prefix>/button/<node>/<device>_confirm_fault/config     confirmed fault
    <prefix>/button/<node>/<device>_false_alarm/config       false alarm
    <prefix>/select/<node>/<device>_silence/config           silence the alerts for 1 .. 168 h, or not
    <prefix>/sensor/<node>/<device>_answer/config            enum: the answer the alert's upload records carry

What to do and where: the alert, alert state and health entities carry the sensor's ``advice`` (what to do
now, ``edge_agent.advice``), ``advice_key``, ``asset`` and ``location`` as attributes; a configured
``location`` is also the device's suggested area.

Availability: every sensor entity lists two topics with ``availability_mode: all``: the gateway's
``vib/gateway/<gw>/availability`` (retained ``online``, and ``offline`` as the connection's last will or
after a clean stop) and the sensor's own status topic (retained JSON while the agent runs, ``offline``
after a clean stop). Score and alert entities also expire after three status periods without an update
(a scoring loop that stopped while the connection stayed up).

Lifecycle: the configs are retained and published again on every (re)connect. A sensor removed from the
config is removed from Home Assistant: on connect the agent reads back the retained configs under its own
``<node>`` that came from this program (origin ``vibration-edge``) and clears the ones it no longer
publishes with an empty retained message. Turning discovery off publishes and clears nothing (the broker
may be shared); ``mosquitto_sub -t '<prefix>/+/<node>/+/config' --remove-retained -W 1`` clears by hand.
"""

from __future__ import annotations

import json
import logging
import math

from edge_agent import __version__
from edge_agent.config import AgentConfig
from edge_agent.contract import topics
from edge_agent.contract.answer import RECORD_KINDS, Command
from edge_agent.contract.errors import ConfigError
from edge_agent.mqtt_client import MqttConnection
from edge_agent.status import DiscoveryCounters, fields_of

log = logging.getLogger(__name__)

ORIGIN = "vibration-edge"
MANUFACTURER = "vibration-edge"

#: Templates over the sensor's status payload (JSON while running, the string ``offline`` after a stop).
#: ``None`` is Home Assistant's payload for "unknown"; a guard on ``value_json`` keeps ``offline`` harmless.
_SENSOR_PRESENT = "{{ 'offline' if value == 'offline' else 'online' }}"
_SCORE = "{{ value_json.last_score if value_json is defined and value_json.last_score is number else 'None' }}"
_THRESHOLD = "{{ value_json.threshold if value_json is defined and value_json.threshold is number else 'None' }}"
_VELOCITY = ("{{ value_json.condition.velocity_mm_s if value_json is defined and value_json.condition is mapping "
             "and value_json.condition.velocity_mm_s is number else 'None' }}")
_ZONE = ("{{ value_json.condition.zone if value_json is defined and value_json.condition is mapping "
         "and value_json.condition.zone in ['A', 'B', 'C', 'D'] else 'None' }}")
_CONDITION_ATTRS = ("{{ (value_json.condition if value_json is defined and value_json.condition is mapping else {}) "
                    "| tojson }}")
ZONES = ["A", "B", "C", "D"]
_WINDOWS = ("{{ value_json.windows_scored if value_json is defined and value_json.windows_scored is number "
            "else 'None' }}")
_INFERENCE = ("{{ value_json.inference_ms_p99 if value_json is defined and value_json.inference_ms_p99 is number "
              "else 'None' }}")
_ALERT_STATE = ("{{ value_json.alert_state if value_json is defined and value_json.alert_state in "
                "['calibrating', 'normal', 'warning', 'critical'] else 'None' }}")
_ALERT_ON = ("{% if value_json is not defined or value_json.alert_state is not defined %}None"
             "{% elif value_json.alert_state in ['warning', 'critical'] %}ON{% else %}OFF{% endif %}")
# health: the sensor's own verdict when its status has one, else only "no model" counts as a problem
_HEALTH_ON = ("{% if value_json is not defined %}None"
              "{% elif value_json.health is defined and value_json.health.state is defined %}"
              "{{ 'OFF' if value_json.health.state == 'ok' else 'ON' }}"
              "{% else %}{{ 'ON' if value_json.state == 'no_model' else 'OFF' }}{% endif %}")
# what to do and where, beside the health verdict and the alert state (the sensor's status carries them)
_HEALTH_ATTRS = ("{{ (dict(value_json.health, advice_key=value_json.get('advice_key'), "
                 "advice=value_json.get('advice'), asset=value_json.get('asset'), location=value_json.get('location')) "
                 "if value_json is defined and value_json.health is defined "
                 "else {'state': value_json.state if value_json is defined else 'offline'}) | tojson }}")
_ALERT_ATTRS = ("{{ {'alert_state': value_json.get('alert_state'), 'advice_key': value_json.get('advice_key'), "
                "'advice': value_json.get('advice'), 'asset': value_json.get('asset'), "
                "'location': value_json.get('location')} | tojson if value_json is defined else '{}' }}")
_MODEL = "{{ value_json.model_version if value_json is defined and value_json.model_version else 'None' }}"
_MODEL_ATTRS = ("{{ {'model_id': value_json.model_id, 'quantization': value_json.quantization, "
                "'threshold': value_json.threshold, 'threshold_source': value_json.threshold_source} | tojson "
                "if value_json is defined and value_json.model_version is defined else '{}' }}")
_SCORE_ATTRS = ("{{ {'threshold': value_json.threshold, 'alert_state': value_json.alert_state} | tojson "
                "if value_json is defined and value_json.threshold is defined else '{}' }}")

_RETRAIN_ON = ("{% if value_json is not defined %}None"
               "{% elif value_json.drift is defined and value_json.drift.state is defined %}"
               "{{ 'ON' if value_json.drift.state == 'drifting' else 'OFF' }}{% else %}None{% endif %}")
_DRIFT_ATTRS = "{{ (value_json.drift if value_json is defined and value_json.drift is defined else {}) | tojson }}"

ALERT_STATES = ["calibrating", "normal", "warning", "critical"]

#: Who Home Assistant's answers are from (it cannot say which user pressed the button).
HA_BY = "Home Assistant"
#: The silence select's options: not silenced, or hours (the status page offers the same).
NOT_SILENCED = "not silenced"
SILENCE_HOURS = (1, 4, 8, 24, 72, 168)
SILENCE_OPTIONS = [NOT_SILENCED, *(f"{h} h" for h in SILENCE_HOURS)]
ANSWER_BUTTONS = (("acknowledge", "Acknowledge alert", "ack", "mdi:check"),
                  ("confirm_fault", "Confirm fault", "confirmed", "mdi:alert-decagram"),
                  ("false_alarm", "False alarm", "false_alarm", "mdi:close-octagon-outline"))
_SILENCE_COMMAND = ("{% if value == '" + NOT_SILENCED + "' %}"
                    + Command("unsilence", HA_BY).encode().decode()
                    + "{% else %}{\"kind\":\"silence\",\"hours\":{{ value.split(' ')[0] | int }},\"by\":\""
                    + HA_BY + "\"}{% endif %}")
_SILENCE_STATE = ("{% if value_json is not defined %}None"
                  "{% elif value_json.silenced_hours is number %}{{ '%g h' | format(value_json.silenced_hours) }}"
                  "{% else %}" + NOT_SILENCED + "{% endif %}")
_ANSWER = ("{{ value_json.answer.kind if value_json is defined and value_json.answer is mapping "
           "and value_json.answer.kind in " + str(list(RECORD_KINDS)) + " else 'None' }}")
_ANSWER_ATTRS = ("{{ {'answer': value_json.answer, 'alert': value_json.alert, 'last': value_json.last, "
                 "'silenced_until': value_json.silenced_until, 'silenced_by': value_json.silenced_by} | tojson "
                 "if value_json is defined else '{}' }}")


def expire_after_s(status_every_s: float) -> int:
    """Seconds after which Home Assistant marks score and alert entities unavailable: three status periods,
    at least a minute (whole seconds: Home Assistant wants a positive integer)."""
    return max(60, math.ceil(3 * status_every_s))


def discovery_configs(cfg: AgentConfig) -> dict[str, dict]:
    """Every discovery config this gateway publishes: ``{topic: payload}`` (payloads in full key names)."""
    prefix = cfg.homeassistant.discovery_prefix
    node = topics.check_id(cfg.gateway, "gateway id")
    gateway_ident = f"vibration_edge:{node}"
    availability_topic = topics.gateway_topic(cfg.gateway, "availability")
    origin = {"name": ORIGIN, "sw_version": __version__}
    expire = expire_after_s(cfg.status.every_s)
    out: dict[str, dict] = {
        f"{prefix}/binary_sensor/{node}/gateway_online/config": {
            "name": "Online",
            "unique_id": f"{gateway_ident}:online",
            "state_topic": availability_topic,
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "qos": 1,
            "device": {"identifiers": [gateway_ident], "name": f"{cfg.gateway} gateway", "manufacturer": MANUFACTURER,
                       "model": "edge-agent gateway", "sw_version": __version__},
            "origin": origin,
        },
    }
    for s in cfg.sensors:
        obj = s.device
        ident = f"{gateway_ident}:{obj}"
        status = topics.status_topic(s.device)
        device = {"identifiers": [ident], "name": s.device, "manufacturer": MANUFACTURER,
                  "model": "vibration anomaly detector", "sw_version": __version__, "via_device": gateway_ident}
        if s.location:
            device["suggested_area"] = s.location
        common = {
            "state_topic": status,
            "qos": 1,
            "availability": [{"topic": availability_topic},
                             {"topic": status, "value_template": _SENSOR_PRESENT}],
            "availability_mode": "all",
            "device": device,
            "origin": origin,
        }
        entities = {
            ("sensor", "anomaly_score"): {
                "name": "Anomaly score", "value_template": _SCORE, "state_class": "measurement",
                "expire_after": expire, "icon": "mdi:chart-bell-curve",
                "json_attributes_topic": status, "json_attributes_template": _SCORE_ATTRS},
            ("binary_sensor", "alert"): {
                "name": "Alert", "device_class": "problem", "value_template": _ALERT_ON, "expire_after": expire,
                "json_attributes_topic": status, "json_attributes_template": _ALERT_ATTRS},
            ("sensor", "alert_state"): {
                "name": "Alert state", "device_class": "enum", "options": ALERT_STATES, "value_template": _ALERT_STATE,
                "expire_after": expire, "icon": "mdi:alert-outline",
                "json_attributes_topic": status, "json_attributes_template": _ALERT_ATTRS},
            ("binary_sensor", "health"): {
                "name": "Health", "device_class": "problem", "value_template": _HEALTH_ON,
                "json_attributes_topic": status, "json_attributes_template": _HEALTH_ATTRS},
            ("binary_sensor", "retraining_due"): {
                "name": "Retraining due", "device_class": "problem", "value_template": _RETRAIN_ON,
                "entity_category": "diagnostic", "icon": "mdi:school-outline",
                "json_attributes_topic": status, "json_attributes_template": _DRIFT_ATTRS},
            ("sensor", "model_version"): {
                "name": "Model version", "value_template": _MODEL, "entity_category": "diagnostic",
                "icon": "mdi:brain", "json_attributes_topic": status, "json_attributes_template": _MODEL_ATTRS},
            ("sensor", "vibration_velocity"): {
                "name": "Vibration velocity", "value_template": _VELOCITY, "unit_of_measurement": "mm/s",
                "state_class": "measurement", "expire_after": expire, "icon": "mdi:sine-wave",
                "json_attributes_topic": status, "json_attributes_template": _CONDITION_ATTRS},
            ("sensor", "vibration_zone"): {
                "name": "Vibration zone (ISO 10816-3)", "device_class": "enum", "options": ZONES,
                "value_template": _ZONE, "expire_after": expire, "icon": "mdi:speedometer",
                "json_attributes_topic": status, "json_attributes_template": _CONDITION_ATTRS},
            ("sensor", "threshold"): {
                "name": "Threshold", "value_template": _THRESHOLD, "state_class": "measurement",
                "entity_category": "diagnostic", "icon": "mdi:gauge"},
            ("sensor", "windows_scored"): {
                "name": "Windows scored", "value_template": _WINDOWS, "state_class": "total_increasing",
                "entity_category": "diagnostic", "icon": "mdi:counter"},
            ("sensor", "inference_p99"): {
                "name": "Inference p99", "value_template": _INFERENCE, "device_class": "duration",
                "unit_of_measurement": "ms", "state_class": "measurement", "entity_category": "diagnostic"},
        }
        entities = {k: e | common for k, e in entities.items()}
        if cfg.answers_mqtt:
            entities |= _answer_entities(s.device, {k: v for k, v in common.items() if k != "state_topic"})
        for (component, key), entity in entities.items():
            topic = f"{prefix}/{component}/{node}/{obj}_{key}/config"
            if topic in out:
                raise ConfigError(f"homeassistant: sensors {s.device!r} and another make the same discovery topic "
                                  f"{topic}: rename one")
            out[topic] = entity | {"unique_id": f"{ident}:{key}"}
    return out


def _answer_entities(device: str, controls: dict) -> dict[tuple[str, str], dict]:
    """The answer buttons, the silence select and the answer sensor of one sensor (``controls``: the common options
    without a state topic)."""
    command, state = topics.answer_command_topic(device), topics.answer_topic(device)
    out: dict[tuple[str, str], dict] = {
        ("button", key): {"name": name, "command_topic": command, "payload_press": Command(kind, HA_BY).encode().decode(),
                          "retain": False, "icon": icon} | controls
        for key, name, kind, icon in ANSWER_BUTTONS}
    out[("select", "silence")] = {
        "name": "Silence alerts", "command_topic": command, "command_template": _SILENCE_COMMAND,
        "options": SILENCE_OPTIONS, "state_topic": state, "value_template": _SILENCE_STATE, "retain": False,
        "icon": "mdi:bell-sleep"} | controls
    out[("sensor", "answer")] = {
        "name": "Answer", "state_topic": state, "value_template": _ANSWER, "device_class": "enum",
        "options": list(RECORD_KINDS), "icon": "mdi:account-check", "json_attributes_topic": state,
        "json_attributes_template": _ANSWER_ATTRS} | controls
    return out


class Discovery:
    """Publishes the discovery configs on every connect and clears this gateway's configs that are gone.

    Both run on paho's network thread (a connect listener, a subscription handler): quick, no waiting.
    ``start`` registers them (before the connection starts).
    """

    def __init__(self, cfg: AgentConfig, connection: MqttConnection) -> None:
        self.connection = connection
        self.cfg = cfg
        self.node = cfg.gateway
        self.configs: dict[str, str] = {}
        self.counters = DiscoveryCounters()

    def start(self) -> None:
        """Make the configs (ConfigError when two sensors collide) and register on the connection."""
        self.configs = {t: json.dumps(p, separators=(",", ":")) for t, p in discovery_configs(self.cfg).items()}
        self.counters.entities = len(self.configs)
        self.connection.add_connect_listener(self.publish)
        self.connection.subscribe(f"{self.cfg.homeassistant.discovery_prefix}/+/{self.node}/+/config", 1,
                                  self._on_config)

    def publish(self) -> None:
        """Publish every config, retained, QoS 1 (on connect)."""
        for topic, payload in self.configs.items():
            if self.connection.publish(topic, payload, qos=1, retain=True) is not None:
                self.counters.published += 1

    def _on_config(self, msg) -> None:
        """A retained config under this gateway's node: clear it if this program made it and no longer does."""
        if msg.topic in self.configs or not msg.payload:
            return
        try:
            doc = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError):
            return  # not ours: ours are JSON
        origin = doc.get("origin", doc.get("o")) if isinstance(doc, dict) else None
        if not (isinstance(origin, dict) and origin.get("name") == ORIGIN):
            return
        log.info("home assistant: removing %s (no such sensor in the config any more)", msg.topic)
        if self.connection.publish(msg.topic, b"", qos=1, retain=True) is not None:
            self.counters.removed += 1

    def status(self) -> dict:
        return fields_of(self.counters)
