"""Technicians' answers on a real gateway (issue 17, item 6): real HTTP requests to the page's endpoint, a real
mosquitto, sensors on real ptys scored by a real bundle. A forged write without the token and a cross-site POST are
refused and counted; an acknowledge then a false alarm reach the alert's next upload records (with the sensor's
group); a silence holds the alerts back from the sinks, never scoring or uploads, and what it held back goes out
when it ends."""

from __future__ import annotations

import json
import sys
import urllib.request

from edge_agent.agent import Agent
from edge_agent.contract import topics
from edge_agent.contract.upload_record import decode_record
from edge_agent.mqtt_client import MqttConnection
from firmware_sim.link import PtyLink
from tests.agent.answer_helpers import TOKEN, Watcher, good, post, until_alert
from tests.agent.gateway_helpers import gateway_config, running
from tests.agent.pipeline_helpers import RATE, frames_of
from tests.waiting import wait_for


def test_writes_need_the_token_and_the_page_itself_and_every_refusal_is_counted(tmp_path, agent_bundle) -> None:
    link = PtyLink(tmp_path / "tty1")
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "ro").mkdir()
    read_only = Agent(gateway_config(tmp_path / "ro", agent_bundle, {"pump-1": link})).start()
    try:
        status, _ = post(read_only.web.port, "/api/sensors/pump-1/answer", {"kind": "ack"}, good())
        assert status == 405 and read_only.web.status()["writes_refused"] == {"read_only": 1}
        assert read_only.status()["http"]["writable"] is False and read_only.status()["answers"]["file"] is None
        assert not (tmp_path / "ro" / "answers.json").exists(), "nothing can answer: no answers file"
    finally:
        read_only.close()

    agent = Agent(gateway_config(tmp_path, agent_bundle, {"pump-1": link},
                                 http={"port": 0, "write_token_file": "token"})).start()
    try:
        port, path = agent.web.port, "/api/sensors/pump-1/answer"
        silence = {"kind": "silence", "hours": 2, "by": "J. Smith"}
        here = f"http://127.0.0.1:{port}"
        refused = [  # (what, body, headers, status, reason)
            ("forged: no token", silence, {"Content-Type": "application/json"}, 401, "no_token"),
            ("forged: a guessed token", silence, good("0" * 32), 403, "bad_token"),
            ("forged: not a bearer token", silence, good() | {"Authorization": f"Basic {TOKEN}"}, 403, "bad_token"),
            ("another site's page", silence, good(Origin="http://evil.example"), 403, "cross_site"),
            ("another port of this host", silence, good(Origin=f"http://127.0.0.1:{port + 1}"), 403, "cross_site"),
            ("a sandboxed frame", silence, good(Origin="null"), 403, "cross_site"),
            ("a browser says cross-site", silence, good(**{"Sec-Fetch-Site": "cross-site"}), 403, "cross_site"),
            ("a browser says same-site", silence, good(**{"Sec-Fetch-Site": "same-site"}), 403, "cross_site"),
            ("a form's body", b"kind=silence&hours=2", good() | {"Content-Type": "application/x-www-form-urlencoded"},
             415, "not_json"),
            ("a text/plain form", b'{"kind":"silence","hours":2}', good() | {"Content-Type": "text/plain"}, 415,
             "not_json"),
            ("a body too large", b"{" + b" " * 5000 + b"}", good(), 413, "too_large"),
        ]
        for what, body, headers, want, reason in refused:
            status, reply = post(port, path, body, headers)
            assert (status, reply.get("reason")) == (want, reason), what
        status, _ = post(port, "/api/sensors/pump-1/reboot", silence, good())
        assert status == 404
        # the agent's own refusals: counted as answers refused
        assert post(port, path, {"kind": "ack", "by": "J. Smith"}, good())[0] == 409  # no alert yet
        assert post(port, "/api/sensors/pump-9/answer", silence, good())[0] == 404
        assert post(port, path, {"kind": "silence", "hours": 169}, good())[0] == 400
        assert agent.sensor("pump-1").answers.status()["answers"] == {}, "nothing refused was recorded"

        status, reply = post(port, path, silence, good(Origin=here, **{"Sec-Fetch-Site": "same-origin"}))
        assert status == 200 and reply["answer"]["kind"] == "silence" and reply["answer"]["via"] == "page"
        doc = agent.status()
        assert doc["http"]["writable"] is True
        assert doc["http"]["writes_refused"] == {"no_token": 1, "bad_token": 2, "cross_site": 5, "not_json": 2,
                                                 "too_large": 1, "not_found": 1}
        assert doc["answers"]["refused"] == {"no_alert": 1, "unknown_sensor": 1, "bad_request": 1}
        assert doc["sensors"]["pump-1"]["answers"]["silenced_by"] == "J. Smith"
        assert json.loads((tmp_path / "answers.json").read_text())["sensors"]["pump-1"]["silence"]["hours"] == 2
        with running(agent):  # the scoring loop refreshes the snapshot /metrics serves

            def metrics() -> str:
                with urllib.request.urlopen(f"{here}/metrics", timeout=10) as r:
                    return r.read().decode()

            assert wait_for(lambda: 'edge_agent_answers_total{sensor="pump-1",kind="silence"} 1' in metrics(), 10)
            text = metrics()
        metrics = text
        assert 'edge_agent_http_writes_refused_total{reason="cross_site"} 5' in metrics
        assert 'edge_agent_answers_refused_total{reason="no_alert"} 1' in metrics
        assert "edge_agent_silenced_until_seconds{sensor=\"pump-1\"}" in metrics
        assert [e["answer"] for e in agent.sensor("pump-1").history.snapshot()["alerts"]] == ["silence"]
    finally:
        agent.close()
        link.close()


def test_an_ack_then_a_false_alarm_reach_the_alerts_next_upload_records(tmp_path, agent_bundle, degrading_samples,
                                                                         mosquitto) -> None:
    link = PtyLink(tmp_path / "tty1", write_timeout=10)
    (tmp_path / "token").write_text(TOKEN + "\n")
    cfg = gateway_config(tmp_path, agent_bundle, {"pump-1": link}, http={"port": 0, "write_token_file": "token"},
                         mqtt={"host": mosquitto.host, "port": mosquitto.port},
                         uploads={"enabled": True, "receipts": False, "spool_path": str(tmp_path / "spool.sqlite"),
                                  "context_after": 1000}, source={"sample_rate": RATE},
                         sensor_keys={"pump-1": {"group": "centrifugal-pump"}})
    agent = Agent(cfg)
    watcher = Watcher(mosquitto, topics.upload_topic("pump-1"))
    frames = frames_of(degrading_samples, 1024)
    try:
        with running(agent):
            assert watcher.conn.wait_subscribed(10) and agent.wait_ready(10)
            port, path = agent.web.port, "/api/sensors/pump-1/answer"
            nxt = until_alert(agent, link, frames, len(frames) // 2)
            alert = agent.sensor("pump-1").answers.alert_id()
            assert alert is not None
            status, reply = post(port, path, {"kind": "ack", "by": "J. Smith", "alert": alert}, good())
            assert status == 200 and reply["answer"]["alert"] == alert
            status, reply = post(port, path, {"kind": "false_alarm", "by": "J. Smith", "alert": alert}, good())
            assert status == 200
            answered = reply["answer"]["time"]
            for f in frames[nxt:]:  # the alert goes on: its next windows are spooled with the answer
                link.send(f)

            def records():
                return [decode_record(p) for p in watcher.payloads(topics.upload_topic("pump-1"))]

            assert wait_for(lambda: any(r.answer and r.answer["kind"] == "false_alarm" for r in records()), 30)
            history = agent.sensor("pump-1").history.snapshot()["alerts"]
    finally:
        link.close()
        watcher.conn.stop()
    got = records()
    mine = [r for r in got if r.alert_ref == alert]
    assert mine and all(r.kind == "alert" for r in mine)
    carried = [r.answer for r in mine if r.answer is not None]
    assert carried[-1]["kind"] == "false_alarm" and carried[-1]["by"] == "J. Smith"
    assert all(a["kind"] in ("ack", "false_alarm") for a in carried)
    assert sum(a["kind"] == "false_alarm" for a in carried) >= 1
    assert {r.schema for r in got} == {3} and {r.group for r in got} == {"centrifugal-pump"}
    assert all(r.answer is None for r in got if r.alert_ref != alert), "only that alert's records carry it"
    # the page's alert history: the raise (with its alert id), then the two answers with who and how
    kinds = [(e["kind"], e.get("answer")) for e in history]
    assert kinds.index(("raised", None)) < kinds.index(("answer", "ack")) < kinds.index(("answer", "false_alarm"))
    last = [e for e in history if e.get("answer") == "false_alarm"][-1]
    assert (last["by"], last["via"], last["alert"], last["time"]) == ("J. Smith", "page", alert, answered)


def test_a_silence_holds_alerts_back_from_the_sinks_never_scoring_or_uploads(tmp_path, agent_bundle,
                                                                               degrading_samples, mosquitto) -> None:
    link = PtyLink(tmp_path / "tty1", write_timeout=10)
    ran = tmp_path / "buzzer.log"
    script = tmp_path / "buzzer.py"
    script.write_text(f"import sys\nopen({str(ran)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    cfg = gateway_config(tmp_path, agent_bundle, {"pump-1": link}, mqtt={"host": mosquitto.host, "port": mosquitto.port},
                         answers={"mqtt": True},
                         alerts={"sinks": {"log": True, "jsonl": str(tmp_path / "alerts.jsonl"),
                                           "command": [sys.executable, str(script)]}},
                         uploads={"enabled": True, "receipts": False, "spool_path": str(tmp_path / "spool.sqlite")},
                         source={"sample_rate": RATE})
    agent = Agent(cfg)
    watcher = Watcher(mosquitto, topics.upload_topic("pump-1"), topics.answer_topic("pump-1"))
    technician = MqttConnection(mosquitto.host, mosquitto.port, "home-assistant")
    technician.start()
    frames = frames_of(degrading_samples, 1024)
    sensor = agent.sensor("pump-1")

    def lines() -> list[dict]:
        p = tmp_path / "alerts.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []

    def state() -> dict | None:
        got = watcher.payloads(topics.answer_topic("pump-1"))
        return json.loads(got[-1]) if got else None

    topic = topics.answer_command_topic("pump-1")
    try:
        assert technician.wait_connected(10)
        # a retained command (left on the broker): it would be taken again at every reconnect of the agent
        technician.publish(topic, b'{"kind": "silence", "hours": 8}', qos=1, retain=True).wait_for_publish(5)
        with running(agent):
            assert watcher.conn.wait_subscribed(10) and agent.wait_ready(10)
            assert wait_for(lambda: agent.answers.status()["refused"] == {"retained": 1}, 10)
            technician.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)  # cleared: an empty message
            technician.publish(topic, b"PRESS", qos=1).wait_for_publish(5)  # not a command
            assert wait_for(lambda: agent.answers.status()["refused"] == {"retained": 1, "bad_request": 2}, 10), \
                agent.answers.status()
            technician.publish(topic, b'{"kind": "silence", "hours": 8, "by": "J. Smith"}', qos=1).wait_for_publish(5)
            assert wait_for(lambda: sensor.answers.silence() is not None, 10)
            assert wait_for(lambda: (state() or {}).get("silenced_by") == "J. Smith", 10)
            nxt = until_alert(agent, link, frames, len(frames) // 2)
            scored = sensor.pipeline.counters.windows_scored
            for f in frames[nxt: nxt + 20]:
                link.send(f)
            assert wait_for(lambda: sensor.pipeline.counters.windows_scored > scored, 20), "scoring goes on"
            assert wait_for(lambda: any(decode_record(p).kind == "alert"
                                        for p in watcher.payloads(topics.upload_topic("pump-1"))), 20), \
                "the alert's windows are uploaded"
            assert wait_for(lambda: [x["kind"] for x in lines()][:1] == ["raised"], 10)
            held = lines()
            assert all(x["silenced"]["by"] == "J. Smith" for x in held if x["kind"] in ("raised", "escalated"))

            def command_sink() -> dict:
                sinks = agent.status()["sensors"]["pump-1"]["sinks"]
                return next(v for k, v in sinks.items() if k.endswith("CommandSink"))

            # the dispatcher hands the event to the JSONL sink, then to the command sink: wait for its count
            assert wait_for(lambda: command_sink()["silenced"] >= 1, 10), command_sink()
            assert command_sink()["delivered"] == 0 and not ran.exists()
            assert sensor.answers.status()["events_silenced"] >= 1
            history = sensor.history.snapshot()["alerts"]
            assert any(e["kind"] == "raised" and e["silenced"] for e in history)

            technician.publish(topic, b'{"kind": "unsilence", "by": "J. Smith"}', qos=1).wait_for_publish(5)
            # the script creates its file before it writes the event: wait for the whole line
            assert wait_for(lambda: ran.exists() and ran.read_text().endswith("\n"), 20), \
                "what the silence held back goes out once it is over"
            after = json.loads(ran.read_text().splitlines()[0])
            assert after["after_silence"] is True and after["kind"] in ("raised", "escalated")
            assert wait_for(lambda: (state() or {}).get("silenced_until", 0) is None, 10)
            assert (state() or {})["last"]["kind"] == "unsilence" and (state() or {})["last"]["via"] == "mqtt"
    finally:
        link.close()
        technician.stop()
        watcher.conn.stop()
