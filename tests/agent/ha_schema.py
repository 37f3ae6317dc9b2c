"""Home Assistant's MQTT discovery schema for the ``sensor``, ``binary_sensor``, ``button`` and ``select`` platforms,
as documented.

Written from Home Assistant's documentation and its source (``homeassistant/components/mqtt``:
``abbreviations.py``, ``discovery.py`` (topic matcher), ``schemas.py`` (availability, device, origin, common
entity options), ``config.py`` (``MQTT_BASE_SCHEMA``: qos, encoding; ``MQTT_RO_SCHEMA``: ``state_topic`` required;
``MQTT_RW_SCHEMA``: ``command_topic`` required, ``optimistic``, ``retain``, ``state_topic`` optional), ``sensor.py``,
``binary_sensor.py``, ``button.py`` (``MQTT_BASE_SCHEMA`` + command_topic, command_template, device_class,
payload_press, retain: no state), ``select.py`` (``MQTT_RW_SCHEMA`` + command_template, options (required),
value_template); ``homeassistant/components/sensor/const.py``, ``binary_sensor`` and ``button`` for the device and
state classes). Stricter than Home Assistant in one way on purpose: Home Assistant drops unknown keys
silently (``extra=REMOVE_EXTRA``), which hides typos, so an unknown key is an error here.

``validate(topic, payload, prefix)`` returns the list of problems (empty: Home Assistant accepts it).
``render(template, payload)`` renders a ``value_template`` the way Home Assistant does for a received
message: variables ``value`` (the payload as text) and ``value_json`` (only when the payload is JSON);
``render_command(template, value)`` a ``command_template`` as Home Assistant does before it publishes (``value``:
the option chosen, the button's ``payload_press``).
"""

from __future__ import annotations

import contextlib
import json
import re

from jinja2.sandbox import ImmutableSandboxedEnvironment

TOPIC = re.compile(r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config")

# abbreviations.py: the ones that exist for the options of these two platforms and the shared options
ABBREVIATIONS = {
    "avty": "availability", "avty_mode": "availability_mode", "avty_t": "availability_topic",
    "avty_tpl": "availability_template", "def_ent_id": "default_entity_id", "dev": "device",
    "dev_cla": "device_class", "e": "encoding", "en": "enabled_by_default", "ent_cat": "entity_category",
    "ent_pic": "entity_picture", "exp_aft": "expire_after", "frc_upd": "force_update", "ic": "icon",
    "json_attr_t": "json_attributes_topic", "json_attr_tpl": "json_attributes_template",
    "lrst_val_tpl": "last_reset_value_template", "name": "name", "o": "origin", "obj_id": "object_id",
    "off_dly": "off_delay", "ops": "options", "pl_avail": "payload_available", "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off", "pl_on": "payload_on", "stat_cla": "state_class", "stat_t": "state_topic",
    "sug_dsp_prc": "suggested_display_precision", "t": "topic", "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement", "val_tpl": "value_template",
    "cmd_t": "command_topic", "cmd_tpl": "command_template", "pl_prs": "payload_press", "ret": "retain",
    "opt": "optimistic",
}
DEVICE_ABBREVIATIONS = {
    "cns": "connections", "cu": "configuration_url", "ids": "identifiers", "name": "name", "mf": "manufacturer",
    "mdl": "model", "mdl_id": "model_id", "hw": "hw_version", "sw": "sw_version", "sa": "suggested_area",
    "sn": "serial_number",
}
ORIGIN_ABBREVIATIONS = {"name": "name", "sw": "sw_version", "url": "support_url"}

# sensor/const.py SensorDeviceClass (the classes of the 2024 releases: newer ones would be refused by older
# Home Assistants, so the agent must not use them)
SENSOR_DEVICE_CLASSES = {
    "date", "enum", "timestamp", "apparent_power", "aqi", "atmospheric_pressure", "battery", "carbon_monoxide",
    "carbon_dioxide", "current", "data_rate", "data_size", "distance", "duration", "energy", "energy_storage",
    "frequency", "gas", "humidity", "illuminance", "irradiance", "moisture", "monetary", "nitrogen_dioxide",
    "nitrogen_monoxide", "nitrous_oxide", "ozone", "ph", "pm1", "pm10", "pm25", "power_factor", "power",
    "precipitation", "precipitation_intensity", "pressure", "reactive_energy", "reactive_power", "signal_strength",
    "sound_pressure", "speed", "sulphur_dioxide", "temperature", "volatile_organic_compounds",
    "volatile_organic_compounds_parts", "voltage", "volume", "volume_storage", "water", "weight", "wind_speed",
}
NON_NUMERIC_SENSOR_CLASSES = {"date", "enum", "timestamp"}
SENSOR_STATE_CLASSES = {"measurement", "total", "total_increasing"}
# DEVICE_CLASS_UNITS / DEVICE_CLASS_STATE_CLASSES of the classes the agent uses
DEVICE_CLASS_UNITS = {"duration": {"d", "h", "min", "s", "ms"}}
DEVICE_CLASS_STATE_CLASSES = {"duration": SENSOR_STATE_CLASSES, "enum": set(), "date": set(), "timestamp": set()}
# binary_sensor BinarySensorDeviceClass
BINARY_DEVICE_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door", "gas", "heat",
    "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug", "power", "presence",
    "problem", "running", "safety", "smoke", "sound", "tamper", "update", "vibration", "window",
}
# button ButtonDeviceClass
BUTTON_DEVICE_CLASSES = {"identify", "restart", "update"}
ENTITY_CATEGORIES = {"config", "diagnostic"}
AVAILABILITY_MODES = {"all", "any", "latest"}

COMMON = {  # schemas.py MQTT_ENTITY_COMMON_SCHEMA + config.py MQTT_BASE_SCHEMA (qos, encoding)
    "availability", "availability_mode", "availability_topic", "availability_template", "payload_available",
    "payload_not_available", "device", "origin", "enabled_by_default", "entity_category", "entity_picture", "icon",
    "json_attributes_topic", "json_attributes_template", "object_id", "default_entity_id", "unique_id", "qos",
    "encoding",
}
RO = {"state_topic", "value_template"}  # MQTT_RO_SCHEMA (state_topic required)
RW = {"command_topic", "optimistic", "retain", "state_topic"}  # MQTT_RW_SCHEMA (command_topic required)
PLATFORM = {
    "sensor": RO | {"device_class", "expire_after", "force_update", "last_reset_value_template", "name", "options",
                    "suggested_display_precision", "state_class", "unit_of_measurement"},
    "binary_sensor": RO | {"device_class", "expire_after", "force_update", "name", "off_delay", "payload_off",
                           "payload_on"},
    "button": {"command_template", "command_topic", "device_class", "name", "payload_press", "retain"},
    "select": RW | {"command_template", "name", "options", "value_template"},
}
REQUIRED = {"sensor": ("state_topic",), "binary_sensor": ("state_topic",), "button": ("command_topic",),
            "select": ("command_topic", "options")}
DEVICE_KEYS = {"identifiers", "connections", "manufacturer", "model", "model_id", "name", "hw_version",
               "serial_number", "sw_version", "via_device", "suggested_area", "configuration_url"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}

_env = ImmutableSandboxedEnvironment()


def expand(payload: dict) -> dict:
    """Abbreviated keys replaced by their full names (discovery.py ``_replace_all_abbreviations``)."""
    out = {ABBREVIATIONS.get(k, k): v for k, v in payload.items()}
    if isinstance(out.get("availability"), list):
        out["availability"] = [{ABBREVIATIONS.get(k, k): v for k, v in a.items()} if isinstance(a, dict) else a
                               for a in out["availability"]]
    if isinstance(out.get("device"), dict):
        out["device"] = {DEVICE_ABBREVIATIONS.get(k, k): v for k, v in out["device"].items()}
    if isinstance(out.get("origin"), dict):
        out["origin"] = {ORIGIN_ABBREVIATIONS.get(k, k): v for k, v in out["origin"].items()}
    return out


def valid_subscribe_topic(topic: object) -> str | None:
    """None when ``topic`` is a valid MQTT subscribe topic, else the reason."""
    if not isinstance(topic, str) or not topic:
        return "must be a non-empty string"
    if len(topic.encode("utf-8")) > 65535 or "\0" in topic:
        return "too long or contains NUL"
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole last level"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def valid_publish_topic(topic: object) -> str | None:
    """None when ``topic`` is a valid MQTT publish topic (no wildcards), else the reason."""
    why = valid_subscribe_topic(topic)
    if why is None and ("+" in topic or "#" in topic):
        return "a publish topic has no wildcards"
    return why


def _template(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a template string"
    try:
        _env.from_string(value)
    except Exception as exc:  # jinja2's TemplateSyntaxError and friends
        return f"does not compile: {exc}"
    return None


def validate(topic: str, payload: bytes | str, prefix: str = "homeassistant") -> list[str]:
    """Every problem Home Assistant would have with this discovery message (empty list: accepted)."""
    errors: list[str] = []
    if not topic.startswith(prefix + "/"):
        return [f"{topic}: not under the discovery prefix {prefix!r}"]
    m = TOPIC.fullmatch(topic[len(prefix) + 1:])
    if m is None:
        return [f"{topic}: does not match <prefix>/<component>/[<node_id>/]<object_id>/config"]
    component = m["component"]
    if component not in PLATFORM:
        return [f"{topic}: component {component!r} is not checked here"]
    try:
        raw = json.loads(payload)
    except ValueError as exc:
        return [f"{topic}: not JSON: {exc}"]
    if not isinstance(raw, dict):
        return [f"{topic}: payload must be a JSON object"]
    p = expand(raw)

    def err(key: str, msg: str) -> None:
        errors.append(f"{topic}: {key}: {msg}")

    for key in sorted(set(p) - COMMON - PLATFORM[component]):
        err(key, "unknown option (Home Assistant would drop it silently)")
    # MQTT_RO_SCHEMA / MQTT_RW_SCHEMA / the button's own
    for key in REQUIRED[component]:
        if key not in p:
            err(key, "required")
    for key in ("state_topic", "json_attributes_topic", "availability_topic"):
        if key in p and (why := valid_subscribe_topic(p[key])):
            err(key, why)
    if "command_topic" in p and (why := valid_publish_topic(p["command_topic"])):
        err("command_topic", why)
    for key in ("value_template", "json_attributes_template", "availability_template", "last_reset_value_template",
                "command_template"):
        if key in p and (why := _template(p[key])):
            err(key, why)
    for key in ("retain", "optimistic"):
        if key in p and not isinstance(p[key], bool):
            err(key, "must be a boolean")
    if "qos" in p and p["qos"] not in (0, 1, 2):
        err("qos", "must be 0, 1 or 2")
    for key in ("encoding", "unique_id", "object_id", "default_entity_id", "entity_picture", "payload_available",
                "payload_not_available"):
        if key in p and not isinstance(p[key], str):
            err(key, "must be a string")
    # availability (schemas.py: availability and availability_topic are exclusive)
    if "availability" in p and "availability_topic" in p:
        err("availability", "must not be used together with availability_topic")
    if "availability_mode" in p and p["availability_mode"] not in AVAILABILITY_MODES:
        err("availability_mode", f"must be one of {sorted(AVAILABILITY_MODES)}")
    if "availability" in p:
        avail = p["availability"] if isinstance(p["availability"], list) else [p["availability"]]
        for i, a in enumerate(avail):
            if not isinstance(a, dict):
                err(f"availability[{i}]", "must be a mapping")
                continue
            for k in sorted(set(a) - {"topic", "payload_available", "payload_not_available", "value_template"}):
                err(f"availability[{i}].{k}", "unknown option")
            if "topic" not in a:
                err(f"availability[{i}].topic", "required")
            elif why := valid_subscribe_topic(a["topic"]):
                err(f"availability[{i}].topic", why)
            if "value_template" in a and (why := _template(a["value_template"])):
                err(f"availability[{i}].value_template", why)
    # entity options
    if "enabled_by_default" in p and not isinstance(p["enabled_by_default"], bool):
        err("enabled_by_default", "must be a boolean")
    if "entity_category" in p and p["entity_category"] not in ENTITY_CATEGORIES:
        err("entity_category", f"must be one of {sorted(ENTITY_CATEGORIES)}")
    if "icon" in p and not (isinstance(p["icon"], str) and re.fullmatch(r"[^:\s]+:[^:\s]+", p["icon"])):
        err("icon", "must be 'prefix:name', e.g. mdi:gauge")
    if "name" in p and p["name"] is not None and not isinstance(p["name"], str):
        err("name", "must be a string or null")
    for key in ("expire_after", "off_delay", "suggested_display_precision"):
        if key in p and (isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 0):
            err(key, "must be an integer >= 0")
    if "force_update" in p and not isinstance(p["force_update"], bool):
        err("force_update", "must be a boolean")
    # device and origin
    if "device" in p:
        d = p["device"]
        if not isinstance(d, dict):
            err("device", "must be a mapping")
        else:
            for k in sorted(set(d) - DEVICE_KEYS):
                err(f"device.{k}", "unknown option")
            ids = d.get("identifiers", [])
            ids = [ids] if isinstance(ids, str) else ids
            if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
                err("device.identifiers", "must be a string or a list of strings")
            if not ids and not d.get("connections"):
                err("device", "must have at least one identifying value in identifiers and/or connections")
            for k in DEVICE_KEYS - {"identifiers", "connections"}:
                if k in d and not isinstance(d[k], str):
                    err(f"device.{k}", "must be a string")
    if "origin" in p:
        o = p["origin"]
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            err("origin", "must be a mapping with a name")
        else:
            for k in sorted(set(o) - ORIGIN_KEYS):
                err(f"origin.{k}", "unknown option")
    # platform rules
    dc = p.get("device_class")
    if component == "button":
        if dc is not None and dc not in BUTTON_DEVICE_CLASSES:
            err("device_class", f"{dc!r} is not a button device class")
        if "payload_press" in p and not isinstance(p["payload_press"], str):
            err("payload_press", "must be a string")
        if "name" in p and not (isinstance(p["name"], str) and p["name"].isprintable()):
            err("name", "must be a printable string")
        return errors
    if component == "select":
        options = p.get("options")
        if not (isinstance(options, list) and options and all(isinstance(o, str) for o in options)):
            err("options", "must be a non-empty list of strings")
        elif len(set(options)) != len(options):
            err("options", "must not repeat an option")
        return errors
    if component == "binary_sensor":
        if dc is not None and dc not in BINARY_DEVICE_CLASSES:
            err("device_class", f"{dc!r} is not a binary_sensor device class")
        for key in ("payload_on", "payload_off"):
            if key in p and not isinstance(p[key], str):
                err(key, "must be a string")
        return errors
    sc, unit, options = p.get("state_class"), p.get("unit_of_measurement"), p.get("options")
    if dc is not None and dc not in SENSOR_DEVICE_CLASSES:
        err("device_class", f"{dc!r} is not a sensor device class")
    if sc is not None and sc not in SENSOR_STATE_CLASSES:
        err("state_class", f"{sc!r} is not a state class")
    if unit is not None and not isinstance(unit, str):
        err("unit_of_measurement", "must be a string")
    if "last_reset_value_template" in p and sc != "total":
        err("last_reset_value_template", "only with state_class total")
    if options is not None:
        if not isinstance(options, list) or not options:
            err("options", "must be a non-empty list")
        if sc or unit:
            err("options", "not allowed together with state_class or unit_of_measurement")
        if dc != "enum":
            err("options", "needs device_class enum")
    if dc in NON_NUMERIC_SENSOR_CLASSES and (sc or unit):
        err("device_class", f"{dc} sensors have no state_class or unit")
    if dc in DEVICE_CLASS_UNITS and unit not in DEVICE_CLASS_UNITS[dc]:
        err("unit_of_measurement", f"{unit!r} is not a unit of device class {dc}")
    if dc in DEVICE_CLASS_STATE_CLASSES and sc is not None and sc not in DEVICE_CLASS_STATE_CLASSES[dc]:
        err("state_class", f"{sc!r} is not allowed for device class {dc}")
    return errors


def render(template: str, payload: bytes | str) -> str:
    """A template rendered for a received payload, as Home Assistant does (``value``, ``value_json``)."""
    text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    variables: dict = {"value": text}
    with contextlib.suppress(ValueError):  # value_json exists only for a JSON payload
        variables["value_json"] = json.loads(text)
    return _env.from_string(template).render(**variables).strip()


def render_command(template: str, value: str) -> str:
    """A ``command_template`` rendered as Home Assistant does before publishing (``value``: the option or payload)."""
    return _env.from_string(template).render(value=value).strip()
