"""Identifiers and MQTT topics, defined once for the gateway, the simulator, the collectors and the publisher.

Ids (gateway, device = one sensor, group = a kind of machine) are 1..64 characters of ASCII letters, digits,
``_`` and ``-``, starting with a letter or a digit. They appear verbatim in MQTT topics and client ids, in file
and folder names (calibration files, dataset partitions) and in Home Assistant's discovery topics, whose
levels allow exactly that alphabet: no id is ever rewritten, so two ids can never turn into the same name.
An id outside the alphabet is refused where it enters (config, upload record, topic), with a suggestion.

Topics (``<d>`` a device id, ``<gw>`` a gateway id)::

    vib/<d>/samples            sensor -> gateway         frames (``wire``)
    vib/<d>/alert              gateway -> anyone         alert state (retained)
    vib/<d>/health             gateway -> anyone         whether the sensor is monitored (retained)
    vib/<d>/notice             gateway -> anyone         maintenance notices, e.g. retraining due (retained)
    vib/<d>/status             gateway -> anyone         the sensor's status document (retained)
    vib/<d>/upload             gateway -> collectors     windows for retraining (``upload_record``)
    vib/<d>/upload/receipt     collectors -> gateway     signed receipts: records held durably, or refused
    vib/<d>/rollout            gateway -> publisher      rollout state (retained)
    vib/<d>/answer/set         technicians -> gateway    an answer to the sensor's alert (``answer``; never retained)
    vib/<d>/answer             gateway -> anyone         the sensor's alert, its answer and silence (retained)
    vib/gateway/<gw>/status    gateway -> anyone         the gateway's summary (retained)
    vib/gateway/<gw>/availability                        ``online`` / ``offline`` (retained, last will)
    vib/gateway/bridge/<gw>    the gateway's broker      its bridge to the centre is up (1) or down (0)
    vib/rollout/...            publisher -> gateways     signed model rollouts (``rollout``)

Who may publish where is the brokers' ACL (docs: the threat model); the collectors take a record's device
from its topic (``device_of``), never from the record.
"""

from __future__ import annotations

import re

from .errors import ConfigError

#: The id alphabet (see the module docstring).
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_ID = re.compile(ID_PATTERN)
MAX_ID_LENGTH = 64
#: Device ids that would read as the gateway and rollout namespaces (``vib/gateway/...``, ``vib/rollout/...``).
RESERVED_DEVICES = ("gateway", "rollout")
DEVICE_LEAVES = ("samples", "alert", "health", "notice", "status", "upload", "upload/receipt", "rollout", "answer",
                 "answer/set")


def suggest_id(value: str) -> str:
    """``value`` made into a valid id (a suggestion for a message, or a default from a host name)."""
    text = re.sub(r"[^A-Za-z0-9_-]+", "-", value.encode("ascii", "ignore").decode()).strip("-_")
    return text[:MAX_ID_LENGTH] or "id"


def is_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_id(value: object, what: str = "device id") -> str:
    """``value`` if it is a valid id, else ConfigError saying why and what would do."""
    if is_id(value):
        if what.startswith("device") and value in RESERVED_DEVICES:
            raise ConfigError(f"invalid {what} {value!r}: reserved for vib/{value}/... (choose another name)")
        return value  # type: ignore[return-value]
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {type(value).__name__}")
    shown = value if len(value) <= 80 else value[:77] + "..."
    raise ConfigError(f"invalid {what} {shown!r}: 1..{MAX_ID_LENGTH} characters of A-Z a-z 0-9 _ -, starting with a "
                      f"letter or digit (it is used verbatim in topics, client ids and file names); e.g. "
                      f"{suggest_id(value)!r}")


def device_topic(device: str, leaf: str) -> str:
    """``vib/<device>/<leaf>``."""
    if leaf not in DEVICE_LEAVES:
        raise ValueError(f"unknown device topic leaf {leaf!r}")
    return f"vib/{check_id(device)}/{leaf}"


def samples_topic(device: str) -> str:
    return device_topic(device, "samples")


def alert_topic(device: str) -> str:
    return device_topic(device, "alert")


def health_topic(device: str) -> str:
    return device_topic(device, "health")


def notice_topic(device: str) -> str:
    return device_topic(device, "notice")


def status_topic(device: str) -> str:
    return device_topic(device, "status")


def upload_topic(device: str) -> str:
    return device_topic(device, "upload")


def receipt_topic(device: str) -> str:
    return device_topic(device, "upload/receipt")


def rollout_state_topic(device: str) -> str:
    return device_topic(device, "rollout")


def answer_topic(device: str) -> str:
    """The sensor's alert, its answer and its silence, retained (``edge_agent.answers``)."""
    return device_topic(device, "answer")


def answer_command_topic(device: str) -> str:
    """Where technicians (Home Assistant's buttons) send answers to the sensor's alert (``contract.answer``)."""
    return device_topic(device, "answer/set")


def gateway_topic(gateway: str, leaf: str) -> str:
    """``vib/gateway/<gateway>/<leaf>`` (leaf: ``status`` or ``availability``)."""
    if leaf not in ("status", "availability"):
        raise ValueError(f"unknown gateway topic leaf {leaf!r}")
    return f"vib/gateway/{check_id(gateway, 'gateway id')}/{leaf}"


def bridge_topic(gateway: str) -> str:
    """Where the gateway's mosquitto bridge reports its uplink (``notification_topic`` in the example)."""
    return f"vib/gateway/bridge/{check_id(gateway, 'gateway id')}"


def device_of(topic: str, leaf: str) -> str | None:
    """The device of ``vib/<device>/<leaf>``; None when ``topic`` is not that topic of a valid device id."""
    parts = topic.split("/")
    want = leaf.split("/")
    if len(parts) != 2 + len(want) or parts[0] != "vib" or parts[2:] != want or not is_id(parts[1]) \
            or parts[1] in RESERVED_DEVICES:
        return None
    return parts[1]
