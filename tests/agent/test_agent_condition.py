"""A real agent on a serial pty, streaming the simulator's growing outer-race fault (channel 0): its alerts name
the faulty channel, carry velocity, zone and a bearing report that says outer race; the status has the velocity and
zone; the trend over weeks serves the minutes it scored, as JSON and CSV (issue 17, items 1, 2, 3, 5)."""

from __future__ import annotations

import json
import urllib.request

from edge_agent.contract import preprocess
from edge_agent.contract.bundle import Bundle
from firmware_sim.link import PtyLink
from firmware_sim.signals import PRESETS
from tests.agent.pipeline_helpers import RATE, agent_config, frames_of
from tests.agent.test_agent_pty import Running
from tests.waiting import wait_for


def test_an_outer_race_fault_is_explained_measured_and_diagnosed(tmp_path, agent_bundle, degrading_samples) -> None:
    p = PRESETS["ims"]
    g = p.geometry
    link = PtyLink(tmp_path / "ttyV0", write_timeout=10)
    cfg = agent_config(tmp_path, agent_bundle, source={"kind": "serial", "serial": {"port": link.path},
                                                          "sample_rate": RATE},
                       severity={"units": "g", "machine_group": 2, "foundation": "rigid"},
                       bearing={"shaft_rpm": p.rpm, "rolling_elements": g.n_balls, "ball_diameter": g.ball_d,
                                "pitch_diameter": g.pitch_d, "contact_angle_deg": g.contact_deg},
                       http={"enabled": True, "port": 0})
    frames = frames_of(degrading_samples, 256)
    try:
        with Running(cfg) as run:
            assert wait_for(lambda: run.agent.sensor().source.connected.is_set(), 10)
            sent = 0
            for i, f in enumerate(frames):
                link.send(f)
                sent += 256
                if i % 80 == 79 or i == len(frames) - 1:
                    assert wait_for(lambda s=sent: run.agent.pipeline.windower.counters.samples_in >= s, 20)
            # samples_in moves before the last frame's window is scored and its velocity and trend row are kept: wait
            # for every window of the clean stream to have gone through (on_window comes last)
            spec = run.agent.pipeline.bundle.spec
            windows = len(preprocess.window_ends(sent // spec.block, spec.window, spec.hop))
            assert wait_for(lambda: len(run.results) == windows, 20), (len(run.results), windows)
            status = run.agent.status()
            port = run.agent.web.port
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sensors/pump-7/trend?span=1h", timeout=5) as r:
                trend = json.loads(r.read())
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sensors/pump-7/trend.csv?span=24h",
                                        timeout=5) as r:
                csv_text = r.read().decode()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sensors/pump-7/trend?span=1y", timeout=5)
                raise AssertionError("an unknown span must be refused")
            except urllib.error.HTTPError as exc:
                assert exc.code == 400
    finally:
        link.close()
    channels = Bundle.load(agent_bundle).spec.channels
    alerts = [e for e in run.events if getattr(e, "kind", None) in ("raised", "escalated")]
    assert alerts, "the growing fault must raise an alert"
    first = alerts[0]
    assert first.explanation["channels"][0]["name"] == channels[0], first.explanation["summary"]
    assert first.condition["severity"]["max_mm_s"] > 0 and first.condition["severity"]["zone"] in "ABCD"
    verdicts = [e.condition["bearing"]["verdict"] for e in alerts]
    assert "likely outer race" in verdicts, [e.condition["bearing"]["summary"] for e in alerts]
    # each report averaged the alert's windows above the threshold that do not overlap (hop = window / 4 here)
    averaged = [e.condition["bearing"]["windows"] for e in alerts]
    assert all(1 <= k <= 5 for k in averaged) and max(averaged) >= 2, averaged
    sensor = status["sensors"]["pump-7"]
    assert sensor["condition"]["velocity_mm_s"] > 0 and sensor["condition"]["zone"] in "ABCD"
    assert sensor["velocity_windows"] == sensor["windows_scored"] and sensor["diagnoses"] == len(alerts)
    assert sensor["diagnosis_windows"] == sum(averaged)
    assert status["trend"]["error"] is None
    assert trend["rows"] and sum(r[1] for r in trend["rows"]) == sensor["windows_scored"]
    assert [e[1] for e in trend["events"]][:1] == ["raised"]  # in the order they happened
    assert csv_text.splitlines()[0].startswith("time_utc,windows,score_max")
    line = json.loads((tmp_path / "alerts.jsonl").read_text().splitlines()[0])
    assert line["explanation"]["channels"][0]["name"] == channels[0] and "severity" in line["condition"]
