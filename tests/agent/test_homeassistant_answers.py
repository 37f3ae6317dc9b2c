"""Home Assistant's answer entities (issue 17, item 6): buttons and a select that publish valid answer commands to
``vib/<device>/answer/set``, and a select and a sensor that read the retained ``vib/<device>/answer``, validated
against the documented discovery schema (``tests/agent/ha_schema.py``)."""

from __future__ import annotations

import json
import math

from edge_agent.alerts import AlertEvent
from edge_agent.answers import AnswerBook
from edge_agent.config import config_from_dict
from edge_agent.contract.answer import MAX_SILENCE_H, Command, decode_command
from edge_agent.homeassistant import NOT_SILENCED, SILENCE_OPTIONS, discovery_configs
from tests.agent import ha_schema

T0 = 1_790_000_000.0


def _raised() -> AlertEvent:
    return AlertEvent(kind="raised", severity="warning", device="pump-1", model_version="v1", score=2.0, threshold=1.0,
                      time=100.0, seq_end=1, stats={}, window_count=3, started_at=100.0)


def _cfg(answers_mqtt: bool):
    return config_from_dict({"gateway": "hall-3", "mqtt": {}, "homeassistant": {"enabled": True},
                             "answers": {"mqtt": answers_mqtt}, "sensors": [
                                 {"device": "pump-1", "source": {"kind": "mqtt"}, "bundle": {"path": "b"}}]})


def test_home_assistant_answer_entities_follow_the_documented_schema_and_send_valid_commands() -> None:
    configs = discovery_configs(_cfg(True))
    assert not [t for t in discovery_configs(_cfg(False)) if "/button/" in t or "/select/" in t]
    for topic, payload in configs.items():
        assert ha_schema.validate(topic, json.dumps(payload)) == [], topic
    node = "homeassistant/{}/hall-3/pump-1_{}/config"
    buttons = {k: configs[node.format("button", k)] for k in ("acknowledge", "confirm_fault", "false_alarm")}
    for key, kind in (("acknowledge", "ack"), ("confirm_fault", "confirmed"), ("false_alarm", "false_alarm")):
        b = buttons[key]
        assert b["command_topic"] == "vib/pump-1/answer/set" and "state_topic" not in b and b["retain"] is False
        assert decode_command(b["payload_press"]) == Command(kind, "Home Assistant")
    select = configs[node.format("select", "silence")]
    assert select["options"] == SILENCE_OPTIONS and SILENCE_OPTIONS[-1] == f"{int(MAX_SILENCE_H)} h"
    for option in SILENCE_OPTIONS:  # each option HA may send becomes a valid command
        cmd = decode_command(ha_schema.render_command(select["command_template"], option))
        assert (cmd.kind, cmd.hours) == (("unsilence", None) if option == NOT_SILENCED else
                                        ("silence", float(option.split()[0])))
    # the select and the answer sensor read the retained state the agent publishes
    book = AnswerBook(["pump-1"], None, lambda: T0).open()
    alert = book.sensor("pump-1").on_event(_raised())
    state = lambda: json.dumps(book.state("pump-1"))  # noqa: E731
    sensor = configs[node.format("sensor", "answer")]
    assert ha_schema.render(select["value_template"], state()) == NOT_SILENCED
    assert ha_schema.render(sensor["value_template"], state()) == "None"
    book.answer("pump-1", Command("silence", "Home Assistant", 4.0), "mqtt")
    book.answer("pump-1", Command("false_alarm", "Home Assistant", alert=alert), "mqtt")
    assert ha_schema.render(select["value_template"], state()) == "4 h"
    assert ha_schema.render(sensor["value_template"], state()) == "false_alarm" in sensor["options"]
    attrs = json.loads(ha_schema.render(sensor["json_attributes_template"], state()))
    assert attrs["answer"]["by"] == "Home Assistant" and attrs["alert"]["id"] == alert
    assert ha_schema.render(select["value_template"], "offline") == "None"
    assert math.isclose(attrs["silenced_until"], T0 + 4 * 3600)


def test_the_schema_checker_refuses_what_home_assistant_would_refuse() -> None:
    t = "homeassistant/button/hall-3/x/config"
    assert ha_schema.validate(t, json.dumps({"command_topic": "vib/+/answer/set", "state_topic": "a"})) == [
        f"{t}: state_topic: unknown option (Home Assistant would drop it silently)",
        f"{t}: command_topic: a publish topic has no wildcards"]
    t = "homeassistant/select/hall-3/x/config"
    assert ha_schema.validate(t, json.dumps({"command_topic": "a/b", "options": []})) == [
        f"{t}: options: must be a non-empty list of strings"]
    assert ha_schema.validate(t, json.dumps({"options": ["a"], "command_template": "{% if %}"}))[0] == \
        f"{t}: command_topic: required"
