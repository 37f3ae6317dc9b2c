"""What to do, and where: every alert kind and health condition has a text for maintenance staff, a sensor's
config overrides it key by key, and the text, the asset and the location travel with every event through the
real sinks (a JSONL file, a real mosquitto, a real child program) and into the sensor's status."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from edge_agent.advice import KEYS, AdviceTexts, Advisor
from edge_agent.alerts import STAGES
from edge_agent.config import config_from_dict
from edge_agent.contract.errors import ConfigError
from edge_agent.health import CONDITIONS, HealthEvent, Notice
from edge_agent.mqtt_client import MqttConnection
from edge_agent.sinks import AlertDispatcher, CommandSink, JsonlSink, MqttAlertSink
from tests.agent.test_sinks import RECORDER, handled, make_event, next_message, subscribe
from tests.waiting import wait_for

SITE = "Pump 7 has a glued accelerometer: check the glue first, then the range (+/-10 g). Call Jan, ext. 214."


def _config(**sensor):
    return config_from_dict({"gateway": "hall-3", "advice": {"no_data": "Site rule: check the fuse box F3 first."},
                             "sensors": [{"device": "pump-7", "source": {"kind": "serial", "serial": {"port": "x"}},
                                          "bundle": {"path": "b"}} | sensor]})


def _health(condition: str = "no_data", state: str = "fault") -> HealthEvent:
    return HealthEvent(state, condition, "pump-7", "no data for 61 s (port /dev/ttyUSB0 is not open)",  # type: ignore[arg-type]
                       1.7e9, 1.7e9 + 61)


def test_every_alert_kind_and_health_condition_has_a_text_for_maintenance_staff():
    texts = AdviceTexts()
    assert set(CONDITIONS) - {"ok"} <= set(KEYS), "a health condition without its own what-to-do text"
    assert set(STAGES.values()) | {"over_range", "calibrating", "retraining_due", "not_monitored"} <= set(KEYS)
    for key in KEYS:
        text = texts.text(key)
        assert 60 <= len(text) <= 400 and text[0].isupper() and text.endswith("."), key
    over = texts.text("over_range").lower()
    assert "range" in over and "mounting" in over and "loose" in over  # what to check, in the words
    assert texts.text("nonsense") is None and texts.text(None) is None


def test_each_event_carries_its_advice_and_the_active_alert_remembers_over_range():
    a = Advisor(AdviceTexts(over_range=SITE), asset="Cooling pump 7, drive end", location="Hall 3, bay 2")
    over = a.annotate(make_event("raised", "critical", math.inf))
    assert over.kind == "raised" and over.severity == "critical"  # reads as the event
    d = over.to_dict()
    assert d["score"] is None and d["advice_key"] == "over_range" and d["advice"] == SITE
    assert (d["asset"], d["location"]) == ("Cooling pump 7, drive end", "Hall 3, bay 2")
    # the status says the same while the alert is active, even when the last scored window looks harmless
    assert a.status("ok", "critical") == {"asset": "Cooling pump 7, drive end", "location": "Hall 3, bay 2",
                                          "advice_key": "over_range", "advice": SITE}
    cleared = a.annotate(make_event("cleared", "normal", 0.1)).to_dict()
    assert cleared["advice_key"] is None and cleared["advice"] is None and cleared["asset"] == "Cooling pump 7, drive end"
    assert a.status("ok", "normal")["advice"] is None
    assert a.annotate(make_event("raised", "warning", 1.5)).to_dict()["advice_key"] == "changed"
    assert a.status("ok", "warning")["advice"] == AdviceTexts().changed
    assert a.annotate(make_event("escalated", "critical", 2.5)).to_dict()["advice_key"] == "degrading"
    assert a.annotate(_health()).to_dict()["advice"] == AdviceTexts().no_data
    assert a.annotate(_health("ok", "recovered")).to_dict()["advice"] is None
    assert a.annotate(_health("future_condition")).to_dict()["advice_key"] == "not_monitored"
    notice = Notice("raised", "retraining_due", "pump-7", "drifting", 1.7e9)
    assert a.annotate(notice).to_dict()["advice_key"] == "retraining_due"


def test_what_is_wrong_now_puts_a_sensor_that_is_not_monitored_first():
    a = Advisor()
    a.annotate(make_event("raised", "critical", 3.0))
    assert a.key_now("no_data", "critical") == "no_data"  # the alert cannot clear while nothing arrives
    assert a.key_now("ok", "normal", "no_model") == "no_model"
    assert a.key_now("partial", "critical") == "degrading"  # alerts still work on partial data
    assert a.key_now("partial", "normal") == "partial"
    assert a.key_now("ok", "calibrating") == "calibrating"
    assert a.key_now("ok", "normal") is None
    assert a.key_now("stuck", "normal") == "stuck"
    assert a.key_now("brand_new", "normal") == "not_monitored"


def test_the_config_overrides_texts_per_sensor_and_refuses_a_bad_key_clearly():
    s = _config(asset="Cooling pump 7, drive end", location="Hall 3, bay 2", advice={"over_range": SITE}).sensors[0]
    assert (s.asset, s.location) == ("Cooling pump 7, drive end", "Hall 3, bay 2")
    assert s.advice.over_range == SITE  # the sensor's own
    assert s.advice.no_data == "Site rule: check the fuse box F3 first."  # every sensor's, from the top level
    assert s.advice.degrading == AdviceTexts().degrading  # the default
    advisor = s.advisor()
    assert advisor.annotate(make_event("raised", "critical", math.inf)).to_dict()["advice"] == SITE
    one = config_from_dict({"device": "pump-7", "asset": "Fan 9", "location": "Roof",
                            "source": {"kind": "serial", "serial": {"port": "x"}}, "bundle": {"path": "b"}})
    assert (one.sensors[0].asset, one.sensors[0].location) == ("Fan 9", "Roof")  # the one-sensor layout

    def refused(**sensor) -> str:
        with pytest.raises(ConfigError) as err:
            _config(**sensor)
        return str(err.value)

    msg = refused(advice={"over_rnage": SITE})
    assert msg.startswith("sensors[0].advice.over_rnage: unknown key, did you mean 'over_range'? (known: ")
    assert "no_data" in msg and "degrading" in msg
    assert refused(advice={"no_data": "call\x00Jan"}) == (
        "sensors[0].advice.no_data: control character U+0000 at position 4: write plain text")
    assert refused(advice={"no_data": "x" * 501}).startswith("sensors[0].advice.no_data: at most 500 characters")
    assert refused(advice={"no_data": "   "}).startswith("sensors[0].advice.no_data: must hold some text")
    assert refused(asset="\x1b[31mred") == "sensors[0].asset: control character U+001B at position 0: write plain text"
    assert refused(location="x" * 121).startswith("sensors[0].location: at most 120 characters")
    with pytest.raises(ConfigError, match=r"^asset: goes into each \[\[sensors\]\] table"):
        config_from_dict({"gateway": "g", "asset": "A", "sensors": [{"device": "a", "source": {"kind": "mqtt"},
                                                                      "bundle": {"path": "b"}}], "mqtt": {}})
    with pytest.raises(ConfigError, match=r"^sensors\[0\]\.advice\.no_dta: unknown key, did you mean 'no_data'\?"):
        config_from_dict({"gateway": "g", "advice": {"no_dta": "x"}, "sensors": [
            {"device": "a", "source": {"kind": "mqtt"}, "bundle": {"path": "b"}}], "mqtt": {}})


def test_advice_asset_and_location_reach_the_jsonl_line_the_mqtt_alert_and_the_command(tmp_path: Path, mosquitto):
    advisor = _config(asset="Cooling pump 7, drive end", location="Hall 3, bay 2",
                      advice={"over_range": SITE}).sensors[0].advisor()
    script = tmp_path / "buzzer.py"
    script.write_text(RECORDER)
    calls = tmp_path / "calls.jsonl"
    jsonl = JsonlSink(tmp_path / "alerts.jsonl")
    command = CommandSink([sys.executable, str(script), str(calls)], timeout_s=20)
    with MqttConnection(mosquitto.host, mosquitto.port, "agent-advice") as conn:
        assert conn.wait_connected(10)
        mqtt_sink = MqttAlertSink(conn, "pump-7")
        sinks = [jsonl, command, mqtt_sink]
        for s in sinks:
            s.start()
        try:
            dispatcher = AlertDispatcher(sinks, advisor)
            dispatcher.emit(make_event("raised", "critical", math.inf))
            dispatcher.emit(_health())
            assert wait_for(lambda: handled(command) == 2, 30) and command.wait_idle(30)
            # wait_synced follows the alert topic only: the health state goes out on its own thread and topic
            assert mqtt_sink.wait_synced(10) and wait_for(lambda: mqtt_sink.counters.pending == 0, 10)
        finally:
            for s in sinks:
                s.close()
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(x["kind"], x["advice_key"]) for x in lines] == [("raised", "over_range"), ("health", "no_data")]
    assert lines[0]["advice"] == SITE and lines[0]["asset"] == "Cooling pump 7, drive end"
    assert lines[1]["advice"] == "Site rule: check the fuse box F3 first." and lines[1]["location"] == "Hall 3, bay 2"
    env = [json.loads(x)["env"] for x in calls.read_text().splitlines()]
    assert env[0]["EDGE_ALERT_ADVICE"] == SITE and env[0]["EDGE_ALERT_ASSET"] == "Cooling pump 7, drive end"
    assert env[0]["EDGE_ALERT_LOCATION"] == "Hall 3, bay 2" and env[0]["EDGE_ALERT_SCORE"] == "inf"
    assert env[1]["EDGE_ALERT_ADVICE"].startswith("Site rule") and env[1]["EDGE_ALERT_KIND"] == "health"
    for topic, key in (("vib/pump-7/alert", "over_range"), ("vib/pump-7/health", "no_data")):
        late, got = subscribe(mosquitto, topic, f"dashboard-{key}")
        try:
            body = json.loads(next_message(got).payload)
        finally:
            late.stop()
        assert body["advice_key"] == key and body["asset"] == "Cooling pump 7, drive end"
        assert body["location"] == "Hall 3, bay 2" and body["advice"]
