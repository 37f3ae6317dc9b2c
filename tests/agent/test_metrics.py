"""/metrics: Prometheus text format 0.0.4, scraped over HTTP from a running gateway and read with a real parser."""

from __future__ import annotations

import math
import re
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent import __version__, metrics, telemetry
from edge_agent.agent import Agent
from firmware_sim.link import PtyLink
from tests.agent.gateway_helpers import gateway_config, running
from tests.agent.pipeline_helpers import frames_of
from tests.waiting import wait_for

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"')


def check_exposition(text: str) -> None:
    """The rules of the text format that a lenient parser lets pass: HELP and TYPE once per family before its
    samples, a family's samples together, counters named *_total, valid names, no series twice."""
    assert text.endswith("\n")
    seen_families: set[str] = set()
    series: set[str] = set()
    current = kind = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert NAME.fullmatch(name) and name not in seen_families, line
            seen_families.add(name)
            current, kind = name, None
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == current and kind in ("counter", "gauge"), line
            assert kind != "counter" or name.endswith("_total"), line
        else:
            m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
            assert m and m[1] == current and kind is not None, f"sample outside its family: {line}"
            if m[2]:
                rest = LABEL.sub("", m[2]).replace(",", "")
                assert rest == "", f"bad labels: {line}"
            float(m[3].replace("+Inf", "inf").replace("-Inf", "-inf"))
            key = f"{m[1]}{{{m[2] or ''}}}"
            assert key not in series, f"series twice: {line}"
            series.add(key)


def families(text: str) -> dict[str, dict[tuple, float]]:
    """{family name: {sorted label items: value}} (counter families keep their _total sample names)."""
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_render_escapes_labels_and_formats_values():
    device = 'pump "7"\\ne\nw'
    doc = {"gateway": "hall-3", "uptime_s": 12.5, "mqtt_connected": False, "mqtt": None,
           "sensors": {device: {"state": "online", "samples_in": 10, "windows_scored": 3, "alert_state": "warning",
                                "last_score": math.inf, "threshold": 0.19, "inference_ms_p50": 0.25,
                                "inference_ms_p99": None, "model_id": "m", "model_version": 'v"1',
                                "quantization": "int8", "threshold_source": "bundle", "crc_errors": 4,
                                "samples_missing": 7, "sinks": {"0:LogSink": {"delivered": 2, "failed": 0}},
                                "health": {"state": "no_windows", "reason": "x", "since": 1.7e9, "events": 1},
                                "drift": {"state": "drifting", "psi": 0.31, "windows": 500},
                                "uploads_kept": {"alert": 6, "normal": 2},
                                "rollout": {"state": "shadow", "model_version": "v2"}, "queue_capacity": 1024},
                       "fan": {"state": "no_model", "frames_in": 5, "health": {"state": "no_model"}}}}
    text = metrics.render(doc, status_age_s=0.4)
    check_exposition(text)
    f = families(text)
    lab = (("sensor", device),)
    assert f["edge_agent_windows_scored_total"] == {lab: 3.0}
    assert f["edge_agent_inputs_dropped_total"][(("reason", "crc_error"), ("sensor", device))] == 4
    assert f["edge_agent_samples_lost_total"][(("reason", "gap"), ("sensor", device))] == 7
    assert f["edge_agent_anomaly_score"][lab] == math.inf
    assert f["edge_agent_inference_p50_seconds"] == {lab: 0.00025} and "edge_agent_inference_p99_seconds" not in f
    assert {k: v for k, v in f["edge_agent_alert_state"].items() if v} == {(("sensor", device), ("state", "warning")): 1}
    assert {k: v for k, v in f["edge_agent_health"].items() if v} == {
        (("sensor", device), ("state", "no_windows")): 1, (("sensor", "fan"), ("state", "no_model")): 1}
    assert f["edge_agent_health_since_seconds"] == {lab: 1.7e9} and f["edge_agent_health_events_total"][lab] == 1
    info = next(iter(f["edge_agent_model_info"]))
    assert dict(info) == {"sensor": device, "model_id": "m", "model_version": 'v"1', "quantization": "int8",
                          "threshold_source": "bundle"}
    assert f["edge_agent_mqtt_connected"] == {(): 0.0} and f["edge_agent_status_age_seconds"] == {(): 0.4}
    assert f["edge_agent_queue_capacity_frames"] == {lab: 1024}
    assert f["edge_agent_alert_deliveries_total"][(("result", "delivered"), ("sensor", device), ("sink", "0:LogSink"))] == 2
    assert f["edge_agent_frames_total"] == {(("sensor", "fan"),): 5}
    assert "edge_agent_spool_bytes" not in f  # no uploads: nothing invented
    assert f["edge_agent_drift_psi"] == {lab: 0.31} and f["edge_agent_retraining_due"] == {lab: 1}
    assert f["edge_agent_uploads_kept_total"][(("kind", "alert"), ("sensor", device))] == 6
    assert dict(next(iter(f["edge_agent_rollout_info"]))) == {"sensor": device, "state": "shadow", "model_version": "v2"}
    assert not any(k[0][1] == "fan" for k in f["edge_agent_drift_psi"])  # a sensor without drift: nothing invented


def test_check_exposition_can_fail():
    good = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n"
    check_exposition(good)
    for bad in ("# HELP a x\n# TYPE a counter\na 1\n",  # counter without _total
                "a_total 1\n",  # no HELP/TYPE
                good + "# HELP b y\n# TYPE b gauge\nb 1\na_total{x=\"1\"} 2\n",  # family split
                good + "a_total 2\n"):  # same series twice
        try:
            check_exposition(bad)
        except AssertionError:
            continue
        raise AssertionError(f"accepted: {bad!r}")


def test_metrics_scraped_from_a_running_gateway(tmp_path, agent_bundle, degrading_samples):
    links = {"pump-1": PtyLink(tmp_path / "tty1", write_timeout=10), "pump-2": PtyLink(tmp_path / "tty2")}
    cfg = gateway_config(tmp_path, agent_bundle, links)
    agent = Agent(cfg)
    frames = frames_of(degrading_samples[: 20_000 * 4], 1024)
    try:
        with running(agent):
            assert wait_for(lambda: agent.web.port is not None, 10)
            for f in frames:
                links["pump-1"].send(f)
            links["pump-2"].send(frames[0] + b"\xa5\x5a" + b"\x00" * 40)  # garbage: a bad header / CRC
            for f in frames[1:]:
                bad = bytearray(f)
                bad[30] ^= 0xFF  # one flipped payload byte: CRC error
                links["pump-2"].send(bytes(bad) if f is frames[5] else f)
            p1, p2 = agent.sensor("pump-1").pipeline, agent.sensor("pump-2")
            assert wait_for(lambda: p1.windower.counters.samples_in == len(frames) * 1024, 20)
            assert wait_for(lambda: p2.source.counters.crc_errors >= 1 and p2.pipeline.counters.windows_scored > 0, 20)
            # the snapshot the endpoint serves catches up within a second once the input stops
            assert wait_for(lambda: agent.snapshot()[0]["sensors"]["pump-1"]["windows_scored"] == p1.counters.windows_scored
                            and agent.snapshot()[0]["sensors"]["pump-2"]["crc_errors"] >= 1, 10)
            scraped: list = []

            def scrape() -> bool:
                """The scrape and the snapshot it served: the scoring loop replaces the snapshot every second (pump-2
                may still be scoring), so a scrape counts only when the same snapshot was in place around it."""
                before = agent.snapshot()[0]
                with urllib.request.urlopen(f"http://127.0.0.1:{agent.web.port}/metrics", timeout=10) as r:
                    got = r.headers["Content-Type"], r.read().decode()
                scraped[:] = [*got, before]
                return agent.snapshot()[0] is before

            assert wait_for(scrape, 10), "the snapshot was replaced during every scrape"
            ctype, text, doc = scraped
    finally:
        for link in links.values():
            link.close()
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    check_exposition(text)
    f = families(text)
    for dev in ("pump-1", "pump-2"):
        s, lab = doc["sensors"][dev], (("sensor", dev),)
        assert f["edge_agent_windows_scored_total"][lab] == s["windows_scored"] > 0
        assert f["edge_agent_samples_total"][lab] == s["samples_in"]
        assert f["edge_agent_inference_p99_seconds"][lab] == pytest.approx(s["inference_ms_p99"] / 1000, rel=1e-9)
        assert f["edge_agent_queue_frames"][lab] == s["queued_frames"]
        assert f["edge_agent_queue_capacity_frames"][lab] == 1024
        assert sum(f["edge_agent_alert_state"][lab + (("state", st),)] for st in telemetry.ALERT_STATES) == 1
        assert f["edge_agent_alert_state"][lab + (("state", s["alert_state"]),)] == 1
        assert f["edge_agent_model_info"][(("model_id", "test-conv"), ("model_version", s["model_version"]),
                                           ("quantization", "int8"), ("sensor", dev), ("threshold_source", "bundle"))] == 1
    crc = f["edge_agent_inputs_dropped_total"][(("reason", "crc_error"), ("sensor", "pump-2"))]
    assert crc == doc["sensors"]["pump-2"]["crc_errors"] >= 1
    assert f["edge_agent_inputs_dropped_total"][(("reason", "crc_error"), ("sensor", "pump-1"))] == 0
    assert f["edge_agent_build_info"][(("gateway", "hall-3"), ("version", __version__))] == 1
    assert 0 <= f["edge_agent_status_age_seconds"][()] < 5
