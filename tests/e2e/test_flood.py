"""One MQTT sensor floods the gateway (issue 14, break 2): with one shared connection the broker dropped the other
sensors' messages (mosquitto's default queue limits), or one thread decoding 2.4 MB JSON starved them, and SIGTERM
took 35 s. Real parts: mosquitto with its default limits, ``edge-agent run`` as a process, the flooders as
processes at the lowest CPU priority (on a gateway they would be devices on the network), healthy sensors
published in real time. ``python bench/bench_flood.py`` measures the same per flood mode."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edge_agent.contract import topics
from edge_agent.contract.binary import encode_frame, int16_scale
from edge_agent.mqtt_client import MqttConnection
from firmware_sim.broker import Broker
from tests.agent.pipeline_helpers import RATE
from tests.waiting import wait_for

BIN = Path(sys.executable).parent
FRAME = 256
FLOODER = Path(__file__).resolve().parents[2] / "bench" / "flooder.py"


def _config(tmp_path: Path, bundle: Path, broker: Broker, devices: tuple[str, ...]) -> Path:
    sensors = "".join(f'\n[[sensors]]\ndevice = "{d}"\n[sensors.source]\nkind = "mqtt"\nsample_rate = {RATE}\n'
                      for d in devices)
    path = tmp_path / "agent.toml"
    path.write_text(f'gateway = "hall-3"\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n[status]\nevery_s = 0.5\n'
                    f'file = "{tmp_path}/status.json"\n[http]\nenabled = false\n[bundle]\npath = "{bundle}"\n'
                    f'[alerts]\nk = 3\nn = 5\ncooldown_s = 0.0\n[alerts.sinks]\nmqtt = true\nlog = false\n{sensors}')
    return path


def _latency(pub: MqttConnection, device: str, x: np.ndarray, onset: int, alerts: dict[str, list[float]]) -> float:
    """Publish ``x`` in real time for ``device``; seconds from the first frame at ``onset`` to its alert."""
    t0, t_onset = time.monotonic(), None
    for a in range(0, len(x) - FRAME + 1, FRAME):
        if a >= onset and t_onset is None:
            t_onset = time.monotonic()
        assert pub.publish(topics.samples_topic(device), encode_frame(
            a, x[a:a + FRAME], scale=int16_scale(10.0)), qos=1) is not None
        ahead = t0 + (a + FRAME) / RATE - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        if t_onset is not None and any(t > t_onset for t in alerts[device]):
            break
    assert wait_for(lambda: any(t > t_onset for t in alerts[device]), 10), f"{device} raised no alert"
    return min(t for t in alerts[device] if t > t_onset) - t_onset


def test_a_flooding_sensor_costs_only_its_own_samples(tmp_path, agent_bundle) -> None:
    from firmware_sim import signals

    broker = Broker(tmp_path / "broker")  # mosquitto's defaults: 1000 queued, 20 in flight per client
    broker.start()
    devices = ("pump-a", "pump-b", "flooder")
    agent = subprocess.Popen([BIN / "edge-agent", "run", "--config", _config(tmp_path, agent_bundle, broker, devices)],
                             stdout=open(tmp_path / "agent.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    alerts: dict[str, list[float]] = {d: [] for d in devices}
    watch = MqttConnection(broker.host, broker.port, "watch")
    for d in devices:
        watch.subscribe(topics.alert_topic(d), 1, lambda m, d=d: json.loads(m.payload).get("kind") in (
            "raised", "escalated") and alerts[d].append(time.monotonic()))
    pub = MqttConnection(broker.host, broker.port, "sensors")
    flooders: list[subprocess.Popen] = []
    healthy = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=5), RATE * 3)
    broken = signals.generate(signals.make_source("bearing", state="broken", preset="ims", seed=6), RATE * 6)
    x = np.concatenate([healthy, broken])
    status = lambda: json.loads((tmp_path / "status.json").read_text())  # noqa: E731
    try:
        watch.start()
        pub.start()
        assert watch.wait_subscribed(10) and pub.wait_connected(10)
        assert wait_for(lambda: (tmp_path / "status.json").exists() and all(
            status()["sensors"][d]["state"] == "online" for d in devices), 30)
        quiet = _latency(pub, "pump-a", x, len(healthy), alerts)
        for mode in ("messages", "big-json"):  # valid frames at full speed, and 2.4 MB JSON payloads
            flooders.append(subprocess.Popen(
                [sys.executable, FLOODER, broker.host, str(broker.port), topics.samples_topic("flooder"), mode],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        assert wait_for(lambda: status()["sensors"]["flooder"]["messages"] > 20, 20), "the flood is on"
        flooded = _latency(pub, "pump-b", x, len(healthy), alerts)
        assert wait_for(lambda: status()["sensors"]["flooder"]["health"]["state"] == "flooding", 15), \
            status()["sensors"]["flooder"]["health"]
        doc = status()
        t_term = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
        stop_s = time.monotonic() - t_term
    finally:
        for f in flooders:
            f.kill()
            f.wait()
        if agent.poll() is None:
            agent.kill()
        pub.stop()
        watch.stop()
        broker.stop()
    b, f = doc["sensors"]["pump-b"], doc["sensors"]["flooder"]
    print(f"alert latency: quiet {quiet:.2f} s, flooded {flooded:.2f} s; flooder paused {f['intake_throttled_s']} s; "
          f"SIGTERM {stop_s:.1f} s")
    assert flooded <= 2 * max(quiet, 0.3), f"flooded {flooded:.2f} s vs quiet {quiet:.2f} s"
    assert (b["gaps"], b["samples_missing"], b["frames_dropped"]) == (0, 0, 0), "the healthy sensor lost nothing"
    assert b["health"]["state"] == "ok" and f["intake_throttled_s"] > 0 and "intake budget" in f["health"]["reason"]
    assert agent.returncode == 0 and stop_s < 10, f"SIGTERM took {stop_s:.1f} s (systemd gives 30)"

