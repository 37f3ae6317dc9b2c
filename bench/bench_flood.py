"""One MQTT sensor floods its gateway: what does it cost the others? (issue 14, break 2; part of ``make bench``)

    python bench/bench_flood.py [--out runs/bench-flood] [--modes none,messages,big-json]

Real parts: a mosquitto with its default limits (max_queued_messages 1000, max_inflight_messages 20), one
``edge-agent run`` process with two MQTT sensors on one bundle (features mode, IMS-like 20 kHz x 4), a healthy
sensor published in real time from this process, and for each flood mode a separate process that floods the
other sensor's topic (``bench/flooder.py``, at the lowest CPU priority: on a gateway it is a device on the network):

* ``messages``: valid binary frames (256 samples) at QoS 1 as fast as one core sends them;
* ``big-json``: the largest valid wire JSON payload (4096 samples x 16 channels, 2.4 MB) as fast as it goes.

For each mode the healthy sensor streams 8 s of a healthy bearing, then a broken one; the alert latency is the
time from the first broken frame published to the alert received on ``vib/<device>/alert`` (the alert needs
k = 3 windows above the threshold). Also reported: the flooder's intake pauses and health, the healthy
sensor's frames lost, and how long SIGTERM takes under the flood (systemd's default stop timeout is 30 s).
Writes ``OUT/flood.json`` and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firmware_sim.broker import Broker  # noqa: E402

BIN = Path(sys.executable).parent
RATE, FRAME = 20_000, 256
HEALTHY, FLOODER = "pump-1", "pump-2"



def train_bundle(out: Path) -> Path:
    bundle = out / "bundle"
    if (bundle / "manifest.json").exists():
        return bundle
    from firmware_sim import signals
    from trainer.model import ModelConfig
    from trainer.pipeline import TrainOptions, run
    from trainer.train import FitConfig

    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "healthy.npy", signals.generate(signals.make_source("bearing", state="healthy", preset="ims",
                                                                      seed=1), RATE * 30))
    opts = TrainOptions(data=out / "healthy.npy", out=bundle, format="npy", mode="features", window=8, hop=2,
                        block=1024, features=("rms", "peak", "kurtosis", "crest"),
                        model=ModelConfig(architecture="conv1d", units=(16, 8), latent=4),
                        fit=FitConfig(epochs=30, batch_size=16, patience=5), quantize="int8", latency_windows=50,
                        model_id="flood")
    return run(opts).bundle


def write_config(work: Path, bundle: Path, broker: Broker) -> Path:
    sensors = "".join(f'\n[[sensors]]\ndevice = "{d}"\n[sensors.source]\nkind = "mqtt"\nsample_rate = {RATE}\n'
                      for d in (HEALTHY, FLOODER))
    path = work / "agent.toml"
    path.write_text(f"""gateway = "flood-bench"
[mqtt]
host = "{broker.host}"
port = {broker.port}
[status]
every_s = 0.5
file = "{work}/status.json"
[http]
enabled = false
[bundle]
path = "{bundle}"
[alerts]
k = 3
n = 5
cooldown_s = 0.0
[alerts.sinks]
mqtt = true
log = false
{sensors}""")
    return path


def status(work: Path) -> dict:
    try:
        return json.loads((work / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def run_mode(mode: str, work: Path, bundle: Path, healthy: np.ndarray, broken: np.ndarray) -> dict:
    from edge_agent.contract import topics
    from edge_agent.contract.binary import encode_frame, int16_scale
    from edge_agent.mqtt_client import MqttConnection

    work.mkdir(parents=True, exist_ok=True)
    broker = Broker(work / "broker")  # mosquitto's default queue limits
    broker.start()
    agent = subprocess.Popen([BIN / "edge-agent", "run", "--config", write_config(work, bundle, broker)],
                             stdout=open(work / "agent.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    flooder = None
    alerts: list[float] = []
    watch = MqttConnection(broker.host, broker.port, "bench-watch")
    watch.subscribe(topics.alert_topic(HEALTHY), 1, lambda m: json.loads(m.payload).get("kind") in (
        "raised", "escalated") and alerts.append(time.monotonic()))
    watch.start()
    pub = MqttConnection(broker.host, broker.port, "bench-sensor")
    pub.start()
    try:
        assert watch.wait_subscribed(10) and pub.wait_connected(10)
        deadline = time.monotonic() + 20
        while not status(work).get("sensors") and time.monotonic() < deadline:
            time.sleep(0.2)
        if mode != "none":
            flooder = subprocess.Popen([sys.executable, REPO / "bench" / "flooder.py", broker.host, str(broker.port),
                                        topics.samples_topic(FLOODER), mode], stdout=subprocess.DEVNULL,
                                       stderr=open(work / "flooder.log", "w"))  # noqa: SIM115
            time.sleep(2.0)  # the flood is on before anything is measured
        x = np.concatenate([healthy, broken])
        onset = len(healthy)
        t0 = time.monotonic()
        t_onset = None
        for a in range(0, len(x) - FRAME + 1, FRAME):
            if a >= onset and t_onset is None:
                t_onset = time.monotonic()
            pub.publish(topics.samples_topic(HEALTHY), encode_frame(a, x[a:a + FRAME],
                                                                         scale=int16_scale(10.0)), qos=1)
            ahead = t0 + (a + FRAME) / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            if alerts and alerts[-1] > (t_onset or float("inf")):
                break
        deadline = time.monotonic() + 5
        while not (alerts and alerts[-1] > t_onset) and time.monotonic() < deadline:
            time.sleep(0.05)
        doc = status(work)
        s_h, s_f = doc["sensors"][HEALTHY], doc["sensors"][FLOODER]
        t_term = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
        stop_s = time.monotonic() - t_term
    finally:
        if flooder is not None:
            flooder.kill()
            flooder.wait()
        if agent.poll() is None:
            agent.kill()
        pub.stop()
        watch.stop()
        broker.stop()
    latency = next((t - t_onset for t in alerts if t > t_onset), None)
    return {"mode": mode, "alert_latency_s": None if latency is None else round(latency, 2),
            "healthy_frames_in": s_h.get("frames_in"), "healthy_gaps": s_h.get("gaps"),
            "healthy_samples_missing": s_h.get("samples_missing"), "healthy_health": s_h["health"]["state"],
            "flooder_messages": s_f.get("messages"), "flooder_throttled_s": s_f.get("intake_throttled_s"),
            "flooder_health": s_f["health"]["state"], "flooder_reason": s_f["health"].get("reason"),
            "sigterm_s": round(stop_s, 2), "exit": agent.returncode}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench-flood")
    ap.add_argument("--modes", default="none,messages,big-json")
    args = ap.parse_args()
    from firmware_sim import signals

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    bundle = train_bundle(args.out / "train")
    healthy = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=5), RATE * 8)
    broken = signals.generate(signals.make_source("bearing", state="broken", preset="ims", seed=6), RATE * 10)
    rows = [run_mode(m, args.out / m, bundle, healthy, broken) for m in args.modes.split(",")]
    (args.out / "flood.json").write_text(json.dumps(rows, indent=2))
    print(f"{'flood':10s} {'alert latency':>13s} {'healthy lost':>12s} {'healthy':>8s} {'flooder msgs':>12s} "
          f"{'paused':>7s} {'flooder':>9s} {'SIGTERM':>7s}")
    for r in rows:
        lat = "none" if r["alert_latency_s"] is None else f"{r['alert_latency_s']:.2f} s"
        print(f"{r['mode']:10s} {lat:>13s} {r['healthy_samples_missing'] or 0:12d} {r['healthy_health']:>8s} "
              f"{r['flooder_messages'] or 0:12d} {r['flooder_throttled_s'] or 0:6.1f}s {r['flooder_health']:>9s} "
              f"{r['sigterm_s']:6.1f}s")
    base = next((r["alert_latency_s"] for r in rows if r["mode"] == "none"), None)
    worst = max((r["alert_latency_s"] or float("inf") for r in rows if r["mode"] != "none"), default=None)
    if base and worst is not None:
        print(f"worst flooded latency / unflooded: {worst / base:.2f} (goal <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
