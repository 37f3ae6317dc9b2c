"""Technicians' answers to alerts (issue 17, item 6): the command and the record field (contract), the answers book
(one alert at a time, kept across restarts, never touching a file it does not own, a full disk costs nothing), the
silence in real sinks (a JSONL file, a real command, the log), and the config keys (group, the write token)."""

from __future__ import annotations

import base64
import json
import logging
import sys

import numpy as np
import pytest

from edge_agent.alerts import AlertEvent
from edge_agent.answers import FORMAT, AnswerBook
from edge_agent.config import config_from_dict
from edge_agent.contract.answer import MAX_SILENCE_H, AnswerError, Command, decode_command, record_answer
from edge_agent.contract.errors import UploadError
from edge_agent.contract.upload_record import decode_record, encode_record
from edge_agent.health import HealthEvent
from edge_agent.sinks import AlertDispatcher, CommandSink, JsonlSink, LogSink
from tests.fs import fill, tmpfs
from tests.waiting import wait_for


class Clock:
    def __init__(self, t: float = 1_790_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _event(kind: str, severity: str = "warning", t: float = 100.0) -> AlertEvent:
    return AlertEvent(kind=kind, severity=severity, device="pump-1", model_version="v1", score=2.0, threshold=1.0,
                      time=t, seq_end=1, stats={}, window_count=3, started_at=t)


# ------------------------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("payload, words", [
    (b'{"kind": "reboot"}', "not one of"),
    (b'{"kind": "silence"}', "silence needs hours"),
    (b'{"kind": "silence", "hours": 0}', "more than 0"),
    (b'{"kind": "silence", "hours": 168.5}', "at most 168"),
    (b'{"kind": "silence", "hours": NaN}', "silence needs hours"),
    (b'{"kind": "silence", "hours": true}', "silence needs hours"),
    (b'{"kind": "ack", "hours": 2}', "hours is for silence only"),
    (b'{"kind": "ack", "by": ""}', "'by' must be 1..64"),
    (b'{"kind": "ack", "by": "' + b"x" * 65 + b'"}', "'by' must be 1..64"),
    (b'{"kind": "ack", "by": "a\\u001b[31m"}', "'by' must be 1..64 printable"),
    (b'{"kind": "ack", "alert": "../x y"}', "not an alert id"),
    (b'{"kind": "ack", "device": "pump-2"}', r"unknown keys \['device'\]"),
    (b'["ack"]', "expected a JSON object"),
    (b"\xff\xfe", "not valid UTF-8 JSON"),
    (b'{"by": "me"}', "'kind' is required"),
    (b'{"kind": "ack", "by": "' + b"x" * 2000 + b'"}', "more than the 1024"),
])
def test_a_command_that_is_not_one_is_refused_with_the_reason(payload, words) -> None:
    with pytest.raises(AnswerError, match=words) as err:
        decode_command(payload)
    assert err.value.reason == "bad_request"


def test_a_command_round_trips_and_by_defaults_to_unknown() -> None:
    c = Command("silence", "J. Smith", 4.0, None)
    assert decode_command(c.encode()) == c
    assert decode_command(b'{"kind":"ack"}') == Command("ack", "unknown")
    assert decode_command(b'{"kind":"silence","hours":168}').hours == MAX_SILENCE_H


def _record(schema: int, **extra) -> bytes:
    samples = np.arange(8, dtype=np.float32).reshape(4, 2)
    doc = {"schema": schema, "device": "pump-1", "model_id": "m", "model_version": "v1", "seq_end": 64,
           "time_end": "2026-11-22T10:00:00", "sample_rate": 100.0, "channels": ["x", "y"], "units": "g",
           "score": 0.5, "threshold": 1.0, "state": "normal", "dtype": "float32", "shape": [4, 2],
           "data_b64": base64.b64encode(samples.astype("<f4").tobytes()).decode()}
    if schema >= 2:
        doc |= {"id": "r1", "kind": "alert", "gateway": "hall-3", "alert_ref": "a1"}
    return json.dumps(doc | extra).encode()


def test_schema_3_carries_the_answer_and_the_group_and_schemas_1_and_2_still_decode() -> None:
    answer = record_answer("false_alarm", "J. Smith", 1_790_000_000.0)
    raw = encode_record(device="pump-1", model_id="m", model_version="v1", seq_end=64, time_end="2026-11-22T10:00:00",
                        sample_rate=100.0, channels=["x"], score=3.0, threshold=1.0, state="warning",
                        samples=np.ones((4, 1), np.float32), alert_ref="a1", answer=answer, group="centrifugal-pump")
    r = decode_record(raw)
    assert (r.schema, r.answer, r.group) == (3, answer, "centrifugal-pump")
    assert r.answer == {"kind": "false_alarm", "by": "J. Smith", "time": "2026-09-21T14:13:20+00:00"}
    assert decode_record(r.encode()).answer == answer  # re-encoded as it was
    for schema in (1, 2):  # migration: what an older schema lacks is None
        old = decode_record(_record(schema))
        assert (old.schema, old.answer, old.group) == (schema, None, None)
    assert decode_record(_record(3, answer=None, group=None)).answer is None
    with pytest.raises(UploadError, match="unknown keys"):
        decode_record(_record(2, answer=None, group=None))  # schema 2 has no such fields


@pytest.mark.parametrize("extra, words", [
    ({"answer": {"kind": "reboot", "by": "x", "time": "2026-11-22T10:00:00"}, "group": None}, "answer kind"),
    ({"answer": {"kind": "ack", "by": "x"}, "group": None}, "exactly the keys"),
    ({"answer": {"kind": "ack", "by": "x", "time": "yesterday"}, "group": None}, "not ISO-8601"),
    ({"answer": {"kind": "ack", "by": "\x00", "time": "2026-11-22T10:00:00"}, "group": None}, "printable"),
    ({"answer": "false_alarm", "group": None}, "'answer' has type str"),
    ({"answer": None, "group": "pumps/all"}, "invalid group id"),
])
def test_a_record_with_a_bad_answer_or_group_is_refused(extra, words) -> None:
    with pytest.raises(UploadError, match=words):
        decode_record(_record(3, **extra))


# ------------------------------------------------------------------------------------------------ the book
def test_answers_go_to_the_current_or_last_alert_and_survive_a_restart(tmp_path) -> None:
    path, clock = tmp_path / "answers.json", Clock()
    book = AnswerBook(["pump-1", "fan-2"], path, clock).open()
    view = book.sensor("pump-1")
    with pytest.raises(AnswerError, match="no alert to answer") as err:
        book.answer("pump-1", Command("ack", "J. Smith"), "page")
    assert err.value.reason == "no_alert"
    with pytest.raises(AnswerError) as err:
        book.answer("pump-9", Command("silence", "x", 1.0), "mqtt")
    assert err.value.reason == "unknown_sensor"
    first = view.on_event(_event("raised"))
    assert view.record_answer(first) is None  # no answer yet: the records carry none
    book.answer("pump-1", Command("ack", "J. Smith", alert=first), "page")
    assert view.record_answer(first)["kind"] == "ack"
    assert view.on_event(_event("escalated", "critical")) == first  # the same alert, more severe
    clock.t += 60
    book.answer("pump-1", Command("false_alarm", "J. Smith", alert=first), "page")
    book.answer("pump-1", Command("ack", "K. Jones"), "mqtt")  # a later ack never hides the verdict
    assert view.record_answer(first) == record_answer("false_alarm", "J. Smith", clock.t)
    assert view.on_event(_event("cleared", "normal")) == first
    book.answer("pump-1", Command("confirmed", "K. Jones"), "mqtt")  # after the clear: still that alert
    assert view.record_answer(first)["kind"] == "confirmed"
    second = view.on_event(_event("raised"))
    assert second != first and view.record_answer(second) is None and view.record_answer(first) is None
    with pytest.raises(AnswerError, match="no longer the sensor's") as err:  # a page left open on the first alert
        book.answer("pump-1", Command("false_alarm", "J. Smith", alert=first), "page")
    assert err.value.reason == "stale_alert"
    book.answer("pump-1", Command("silence", "J. Smith", 2.0), "page")
    assert book.status()["refused"] == {"no_alert": 1, "unknown_sensor": 1, "stale_alert": 1}
    status = view.status()
    assert status["answers"] == {"ack": 2, "false_alarm": 1, "confirmed": 1, "silence": 1}
    assert status["silenced_until"] == clock.t + 7200 and status["silenced_by"] == "J. Smith"
    assert status["alert"]["id"] == second and status["alert"]["active"] and status["answer"]["kind"] == "silence"
    book.close()
    assert path.read_text().startswith(FORMAT)

    again = AnswerBook(["pump-1", "fan-2"], path, clock).open()  # a restart
    v2 = again.sensor("pump-1")
    assert v2.alert_id() == second and v2.status() == status | {"events_silenced": 0}
    assert [a["kind"] for a in v2.recent()] == ["ack", "false_alarm", "ack", "confirmed", "silence"]
    clock.t += 7200
    assert v2.silence() is None and again.tick() == ["pump-1"] and again.tick() == []
    again.close()


def test_a_file_that_is_not_the_answers_is_refused_untouched_and_answers_stay_in_memory(tmp_path, caplog) -> None:
    path = tmp_path / "answers.json"
    path.write_text('{"users": ["root"]}\n')  # someone else's JSON under the configured name
    book = AnswerBook(["pump-1"], path).open()
    assert book.status()["file"] is None and "holds something else" in book.status()["error"]
    book.answer("pump-1", Command("silence", "J. Smith", 1.0), "page")  # still taken, in memory
    book.close()
    assert path.read_text() == '{"users": ["root"]}\n' and not (tmp_path / "answers.json.lock").exists()
    assert "kept in memory only" in caplog.text


def test_a_corrupt_answers_file_of_ours_is_moved_aside(tmp_path) -> None:
    path = tmp_path / "answers.json"
    path.write_text(FORMAT + ',"version":1,"sensors":{"pump-1":{"alert":{"id":')  # a write cut short
    book = AnswerBook(["pump-1"], path).open()
    assert book.status()["quarantined"] == 1 and book.status()["file"] == str(path)
    aside = list(tmp_path.glob("answers.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text().startswith(FORMAT)
    book.answer("pump-1", Command("silence", "J. Smith", 1.0), "mqtt")
    book.close()
    assert json.loads(path.read_text())["sensors"]["pump-1"]["last"]["by"] == "J. Smith"


def test_a_second_agent_cannot_take_the_same_answers_file(tmp_path) -> None:
    path = tmp_path / "answers.json"
    first = AnswerBook(["pump-1"], path).open()
    second = AnswerBook(["pump-1"], path).open()
    try:
        assert second.status()["file"] is None and "in use by another edge-agent" in second.status()["error"]
    finally:
        second.close()
        first.close()


def test_a_full_disk_keeps_answers_in_memory_and_writes_them_when_space_returns(tmp_path) -> None:
    with tmpfs(tmp_path / "disk", "64k") as disk:
        path = disk / "answers.json"
        book = AnswerBook(["pump-1"], path).open()
        view = book.sensor("pump-1")
        alert = view.on_event(_event("raised"))
        filler = fill(disk)
        book.answer("pump-1", Command("false_alarm", "J. Smith", alert=alert), "page")  # never raises
        assert book.status()["write_errors"] >= 1 and "cannot write" in book.status()["error"]
        assert view.record_answer(alert)["kind"] == "false_alarm"  # the uploads still get it
        assert not list(disk.glob(".answers.json.*.tmp")), "no temporary file left on the full disk"
        filler.unlink()
        book.tick()  # the status tick writes what waited
        assert book.status()["error"] is None
        book.close()
        saved = json.loads(path.read_text())["sensors"]["pump-1"]
        assert saved["answer"]["kind"] == "false_alarm" and saved["alert"]["id"] == alert


# ------------------------------------------------------------------------------------------------ silence in sinks
def test_a_silence_marks_what_the_sinks_get_runs_no_command_and_sends_what_it_held_back_when_over(
        tmp_path, caplog) -> None:
    clock = Clock()
    book = AnswerBook(["pump-1"], None, clock).open()
    view = book.sensor("pump-1")
    ran = tmp_path / "ran"
    script = tmp_path / "buzzer.py"
    script.write_text(f"import sys\nopen({str(ran)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    jsonl, command, logsink = JsonlSink(tmp_path / "alerts.jsonl"), CommandSink([sys.executable, str(script)]), LogSink()
    for sink in (jsonl, command):
        sink.start()
    dispatcher = AlertDispatcher([jsonl, command, logsink], answers=view)
    lines = lambda: [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]  # noqa: E731
    runs = lambda: [json.loads(x) for x in ran.read_text().splitlines()] if ran.exists() else []  # noqa: E731
    try:
        book.answer("pump-1", Command("silence", "J. Smith", 4.0), "page")
        caplog.set_level(logging.INFO, logger="edge_agent.sinks")
        for e in (_event("raised"), _event("escalated", "critical")):
            view.on_event(e)
            dispatcher.emit(e)
        fault = HealthEvent("fault", "no_data", "pump-1", "no data for 60 s", 100.0, 160.0)
        dispatcher.emit(fault)
        assert [(x["kind"], x["silenced"]["by"]) for x in lines()] == [("raised", "J. Smith"),
                                                                       ("escalated", "J. Smith"),
                                                                       ("health", "J. Smith")]
        assert command.wait_idle(10) and runs() == [] and command.counters.silenced == 3
        assert "silenced until" in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert jsonl.counters.silenced == 3 and logsink.counters.silenced == 3 and view.status()["events_silenced"] == 3
        dispatcher.emit(HealthEvent("recovered", "ok", "pump-1", "data again", None, 170.0))  # always goes out
        # wait_idle can return before the worker marks itself busy with the event it just took: wait for the run
        assert wait_for(lambda: command.ran == 1, 10) and command.wait_idle(10) and [r["kind"] for r in runs()] == \
            ["health"]
        dispatcher.tick()
        assert len(lines()) == 4, "nothing more while the silence lasts"
        clock.t += 4 * 3600 + 1  # the silence is over: the alert still active goes out once, unmarked
        dispatcher.tick()
        assert wait_for(lambda: command.ran == 2, 10) and command.wait_idle(10)
        last = lines()[-1]
        assert (last["kind"], last["severity"], last.get("after_silence"), "silenced" in last) == \
            ("escalated", "critical", True, False)
        assert [r["kind"] for r in runs()] == ["health", "escalated"]
        dispatcher.tick()
        assert len(lines()) == 5, "sent once"
    finally:
        jsonl.close()
        command.close()


def test_group_is_an_id_and_answers_mqtt_needs_a_broker() -> None:
    from edge_agent.contract.errors import ConfigError

    base = {"gateway": "hall-3", "sensors": [{"device": "pump-1", "source": {"kind": "mqtt"}, "bundle": {"path": "b"},
                                              "group": "centrifugal pump"}], "mqtt": {}}
    with pytest.raises(ConfigError, match=r"sensors\[0\]\.group: invalid group id 'centrifugal pump'"):
        config_from_dict(base)
    base["sensors"][0]["group"] = "centrifugal-pump"
    assert config_from_dict(base).sensors[0].group == "centrifugal-pump"
    with pytest.raises(ConfigError, match=r"answers.mqtt: needs a \[mqtt\] broker"):
        config_from_dict({"device": "pump-1", "source": {"kind": "serial", "serial": {"port": "/dev/null"}},
                          "bundle": {"path": "b"}, "answers": {"mqtt": True}})
    with pytest.raises(ConfigError, match="write_token_file or write_token_env, not both"):
        config_from_dict(base | {"http": {"write_token_file": "t", "write_token_env": "T"}})


def test_a_write_token_too_short_is_refused_without_showing_it(tmp_path) -> None:
    from edge_agent.config import http_write_token
    from edge_agent.contract.errors import ConfigError

    (tmp_path / "token").write_text("hunter2\n")
    cfg = config_from_dict({"device": "pump-1", "source": {"kind": "serial", "serial": {"port": "/dev/null"}},
                            "bundle": {"path": "b"}, "http": {"write_token_file": "token"}}, base_dir=tmp_path)
    assert cfg.page_writable and cfg.answers_enabled
    with pytest.raises(ConfigError, match="at least 16 printable characters") as err:
        http_write_token(cfg)
    assert "hunter2" not in str(err.value)
    (tmp_path / "token").write_text("0123456789abcdef0123\n")
    assert http_write_token(cfg) == "0123456789abcdef0123"

