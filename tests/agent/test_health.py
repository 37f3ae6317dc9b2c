"""Health: a sensor that is not monitored says so through the alert sinks. Real pty, real bundle, real files."""

from __future__ import annotations

import json
import threading

import numpy as np
from click.testing import CliRunner

from edge_agent import metrics
from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.config import load_config
from edge_agent.contract.binary import encode_frame
from firmware_sim.link import PtyLink
from tests.agent.pipeline_helpers import RATE, agent_config
from tests.waiting import wait_for

HEALTH = {"no_data_s": 2.0, "no_window_s": 1.0}


def _frames(x: np.ndarray, seq0: int, n: int = 1024) -> list[bytes]:
    return [encode_frame(seq0 + a, x[a:a + n], sample_type="float32") for a in range(0, len(x) - n + 1, n)]


class Stream:
    """Frames into a pty from a thread, sequence numbers running on; ``x`` can be changed while it runs."""

    def __init__(self, link: PtyLink, x: np.ndarray, seq0: int = 0, pause_s: float = 0.02) -> None:
        self.link, self.x, self.seq, self.pause_s = link, x, seq0, pause_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            x = self.x
            for f in _frames(x, self.seq):
                self.link.send(f)
                if self.stop.wait(self.pause_s):
                    return
            self.seq += len(x) // 1024 * 1024

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def _health_lines(path) -> list[dict]:
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [x for x in lines if x["kind"] == "health"]


def test_no_windows_no_data_and_recovery_are_health_events_through_the_sinks(tmp_path, agent_bundle,
                                                                              degrading_samples):
    link = PtyLink(tmp_path / "ttyV0", write_timeout=10)
    cfg = agent_config(tmp_path, agent_bundle, source={"kind": "serial", "serial": {"port": link.path}},
                       health=HEALTH)
    events = []
    agent = Agent(load_config(cfg), on_event=events.append)
    sensor = agent.sensor()
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    healthy = degrading_samples[: RATE * 4]
    broken = healthy.copy()
    broken[np.random.default_rng(0).random(broken.shape) < 0.2] = np.nan  # a wire fault: 20 % of values lost
    alerts = tmp_path / "alerts.jsonl"
    thread.start()
    stream = Stream(link, healthy)
    try:
        assert wait_for(lambda: sensor.pipeline.counters.windows_scored > 10, 20)
        assert agent.status()["sensors"]["pump-7"]["health"].items() >= {"state": "ok", "reason": "", "since": None,
                                                                          "events": 0}.items()
        stream.x = broken
        assert wait_for(lambda: len(_health_lines(alerts)) == 1, 20)
        fault = _health_lines(alerts)[0]
        assert fault["state"] == "fault" and fault["condition"] == "no_windows" and fault["device"] == "pump-7"
        assert "of input invalid (NaN)" in fault["reason"] and "8192 valid contiguous samples" in fault["reason"]
        doc = agent.status()["sensors"]["pump-7"]["health"]
        assert doc["state"] == "no_windows" and doc["events"] == 1 and doc["since"] <= fault["time"]
        stream.x = healthy
        assert wait_for(lambda: len(_health_lines(alerts)) == 2, 20)
        assert _health_lines(alerts)[1]["state"] == "recovered"
        assert agent.status()["sensors"]["pump-7"]["health"]["state"] == "ok"
        stream.close()  # the sensor goes quiet
        assert wait_for(lambda: len(_health_lines(alerts)) == 3, 20)
        quiet = _health_lines(alerts)[2]
        assert quiet["condition"] == "no_data" and quiet["reason"].startswith("no data for")
        assert agent.status()["sensors"]["pump-7"]["health"].items() >= {
            "state": "no_data", "reason": agent.status()["sensors"]["pump-7"]["health"]["reason"],
            "since": quiet["since"], "events": 2}.items()  # it stopped being monitored twice
    finally:
        stream.close()
        stop.set()
        thread.join(20)
        link.close()
    assert [e.kind for e in events] == ["health"] * 3 and [e.state for e in events] == ["fault", "recovered", "fault"]
    table = CliRunner().invoke(main, ["status", "--file", str(tmp_path / "status.json"), "--sensor", "pump-7"])
    assert '"state": "no_data"' in table.output


def test_a_burst_sensor_is_not_reported_dead_between_bursts(tmp_path, agent_bundle, degrading_samples):
    link = PtyLink(tmp_path / "ttyV0", write_timeout=10)
    cfg = agent_config(tmp_path, agent_bundle, source={"kind": "serial", "serial": {"port": link.path}},
                       health={"no_data_s": 1.5})
    agent = Agent(load_config(cfg))
    sensor = agent.sensor()
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    faults = []
    try:
        assert wait_for(sensor.source.connected.is_set, 10)  # the first snapshot arrives whole
        for k in range(3):  # a one-second snapshot, its sequence numbers restarting at 0, then silence
            scored = sensor.pipeline.counters.windows_scored
            for f in _frames(degrading_samples[k * RATE:(k + 1) * RATE], 0):
                link.send(f)
            assert wait_for(lambda s=scored: sensor.pipeline.counters.windows_scored > s + 5, 20)
            assert wait_for(lambda: sensor.health.state.state == "ok", 5)
            silence = threading.Event()
            while not silence.wait(0.1):  # 3 s of silence, twice no_data_s
                faults.append(sensor.health.state.state)
                if len(faults) >= 30 * (k + 1):
                    break
        assert sensor.pipeline.burst
    finally:
        stop.set()
        thread.join(20)
        link.close()
    first, later = faults[:30], faults[30:]
    assert "no_data" in first  # before the second burst nobody can tell a burst sensor from a dead one
    assert set(later) == {"ok"}, later  # once it is known, its silences are not faults
    assert agent.status()["sensors"]["pump-7"]["health"]["events"] == 1  # the first silence only


def test_a_rare_nan_on_the_default_representation_costs_no_window_and_lost_windows_show_in_health(
        tmp_path, bands_bundle, degrading_samples):
    """Issue 14, break 8: with FFT bands (the trainer's default for vibration) gap bridging did not apply: at 1 invalid
    value in 10,000, 2 windows were scored in 40 s and health said ok. Now the NaN is interpolated and every window
    is scored; and when samples are lost on a scale bridging cannot cover, health says partial, never ok."""
    link = PtyLink(tmp_path / "ttyV0", write_timeout=10)
    cfg = agent_config(tmp_path, bands_bundle, source={"kind": "serial", "serial": {"port": link.path}},
                       health={"no_data_s": 5.0, "no_window_s": 30.0, "coverage_s": 5.0})
    agent = Agent(load_config(cfg))
    sensor = agent.sensor()
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    healthy = degrading_samples[: RATE * 6].copy()
    rare = healthy.copy()
    rare[np.random.default_rng(1).random(rare.shape) < 1e-4] = np.nan  # 1 value in 10,000
    thread.start()
    stream = Stream(link, rare, pause_s=0.01)
    try:
        assert wait_for(lambda: sensor.pipeline.windower.counters.samples_in > RATE * 12, 60)
        wc = sensor.pipeline.windower.counters
        spec = sensor.pipeline.bundle.spec
        assert wc.samples_invalid > 0 and wc.samples_bridged >= wc.samples_invalid // 4
        assert wc.samples_discarded < spec.window_samples, "no window lost to a rare NaN"
        assert sensor.pipeline.counters.windows_scored >= 0.9 * wc.samples_in / (spec.hop * spec.block) - 2
        assert wait_for(lambda: sensor.health.coverage is not None and sensor.health.coverage > 0.99, 10)
        assert sensor.status()["health"]["state"] == "ok"
        lossy = healthy.copy()
        for a in range(0, len(lossy), 3000):  # a burst of 300 NaN rows every 3000: too long to fill in
            lossy[a:a + 300] = np.nan
        stream.x = lossy
        assert wait_for(lambda: sensor.status()["health"]["state"] == "partial", 20), sensor.status()["health"]
        health = sensor.status()["health"]
        assert "reached a scored window" in health["reason"] and health["coverage"] < 0.9
        assert sensor.pipeline.counters.windows_scored > 0
    finally:
        stream.close()
        stop.set()
        thread.join(20)
        link.close()


def test_a_frozen_channel_is_a_stuck_fault_naming_it_and_recovers_when_it_moves(tmp_path, agent_bundle,
                                                                                degrading_samples):
    """A sensor whose value stops changing is easy to reconstruct: no score shows it. The bundle says how long a value
    lasted in training (a vibration value: one sample or two); a channel frozen longer is a health fault."""
    link = PtyLink(tmp_path / "ttyV0", write_timeout=10)
    cfg = agent_config(tmp_path, agent_bundle, source={"kind": "serial", "serial": {"port": link.path}},
                       health=HEALTH)
    events = []
    agent = Agent(load_config(cfg), on_event=events.append)
    sensor = agent.sensor()
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    healthy = degrading_samples[: RATE * 4]
    frozen = healthy.copy()
    frozen[:, 2] = healthy[0, 2]  # channel 2 repeats one reading (a dead converter)
    channel = sensor.pipeline.bundle.spec.channels[2]
    alerts = tmp_path / "alerts.jsonl"
    thread.start()
    stream = Stream(link, healthy)
    try:
        assert wait_for(lambda: sensor.pipeline.counters.windows_scored > 10, 20)
        assert agent.status()["sensors"]["pump-7"]["health"]["state"] == "ok"
        stream.x = frozen
        assert wait_for(lambda: len(_health_lines(alerts)) == 1, 20)
        fault = _health_lines(alerts)[0]
        assert fault["state"] == "fault" and fault["condition"] == "stuck"
        assert f"channel {channel} has read {healthy[0, 2]:.6g} for" in fault["reason"]
        assert "check that sensor, its cable" in fault["reason"]
        doc = agent.status()["sensors"]["pump-7"]
        assert doc["health"]["state"] == "stuck" and doc["stuck_episodes"] == 1 and doc["windows_scored"] > 10
        text = metrics.render(agent.status())
        assert 'edge_agent_health{sensor="pump-7",state="stuck"} 1' in text
        assert 'edge_agent_stuck_episodes_total{sensor="pump-7"} 1' in text
        stream.x = healthy
        assert wait_for(lambda: len(_health_lines(alerts)) == 2, 20)
        recovered = _health_lines(alerts)[1]
        assert recovered["state"] == "recovered" and recovered["reason"] == "the frozen channel changes again"
        assert agent.status()["sensors"]["pump-7"]["health"]["state"] == "ok"
    finally:
        stream.close()
        stop.set()
        thread.join(20)
        link.close()
    health = [(e.state, e.condition) for e in events if e.kind == "health"]
    assert health == [("fault", "stuck"), ("recovered", "ok")]  # (the frozen channel's odd features also alert)
