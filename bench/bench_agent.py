"""Benchmark: does the gateway agent keep up, how fast does it score, and what does it cost?

For each sensor case (25.6 kHz x 2 ch FEMTO-like, 20 kHz x 4 ch IMS-like, firmware_sim's bearing model)
a small bundle is trained per architecture (features mode: blocks of 1024 samples, rms/peak/kurtosis/crest,
windows of 8 blocks, hop 2; LSTM (the default) and Conv1D autoencoders; float32 + int8 variants), then:

* keep-up: CPU of one core (``time.process_time``) to decode binary int16 frames, window, featurise and
  score one second of signal, with the served int8 model (= CPU % at the real rate);
* replay: ``edge_agent.replay`` speed vs real time;
* per-window latency p50/p99 (scale + quantize + invoke + dequantize + error) for the int8 and float32
  variants through the agent's Scorer, and the same architecture run in-process by TensorFlow
  (``tf.function``, and ``jit_compile=True``) for comparison;
* start-up: ``edge-agent run`` as a process: time to the first inference (the start-up self-test) and RSS;
* alert latency: a pty stream paced in real time switches abruptly from healthy to a broken bearing;
  time from writing the first faulty frame to the alert event, and the same in samples.

    python bench/bench_agent.py [--seconds 30] [--out runs/bench_agent.md] [--cases femto,ims]

This script may import TensorFlow (training, the TF comparison); the agent it measures never does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.alerts import AlertPolicy  # noqa: E402
from edge_agent.config import load_config  # noqa: E402
from edge_agent.contract.binary import FrameDecoder, encode_frame, int16_scale  # noqa: E402
from edge_agent.contract.bundle import Bundle  # noqa: E402
from edge_agent.pipeline import Pipeline  # noqa: E402
from edge_agent.replay import replay  # noqa: E402
from edge_agent.scorer import Scorer  # noqa: E402
from firmware_sim import signals  # noqa: E402
from firmware_sim.link import PtyLink  # noqa: E402

CASES = {"femto": (25600.0, 2), "ims": (20000.0, 4)}
BLOCK, WINDOW, HOP = 1024, 8, 2
BIN = Path(sys.executable).parent


def train(preset: str, out: Path, architecture: str, seconds: int = 30) -> Path:
    from trainer.model import ModelConfig
    from trainer.pipeline import TrainOptions, run
    from trainer.train import FitConfig

    rate, _ = CASES[preset]
    x = signals.generate(signals.make_source("bearing", state="healthy", preset=preset, seed=1), int(rate * seconds))
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "healthy.npy", x)
    opts = TrainOptions(
        data=out / "healthy.npy", out=out / "bundle", format="npy", mode="features", window=WINDOW, hop=HOP,
        block=BLOCK, features=("rms", "peak", "kurtosis", "crest"),
        model=ModelConfig(architecture="conv1d", units=(16, 8), latent=4) if architecture == "conv1d"
        else ModelConfig(architecture="lstm"),
        fit=FitConfig(epochs=30, batch_size=16, patience=5), quantize="int8", latency_windows=50,
        model_id=f"bench-{preset}-{architecture}",
    )
    return run(opts).bundle


def keep_up(bundle: Bundle, preset: str, seconds: float) -> dict:
    """CPU seconds per signal second for decode + window + features + int8 scoring (+ alerts)."""
    rate, _ = CASES[preset]
    x = signals.generate(signals.make_source("bearing", state="healthy", preset=preset, seed=3), int(rate * seconds))
    scale = int16_scale(signals.PRESETS[preset].full_scale)
    stream = b"".join(encode_frame(a, x[a : a + 256], scale=scale) for a in range(0, len(x) - 255, 256))
    decoder = FrameDecoder()
    pipe = Pipeline(bundle, device="bench", threshold=bundle.threshold.value, policy=AlertPolicy(),
                    sample_rate=rate)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(stream), 65536):  # bulk reads, as the serial source does
        for frame in decoder.feed(stream[i : i + 65536]):
            pipe.push(frame)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return {"cpu_pct": 100 * cpu / seconds, "wall_x_realtime": seconds / wall, "windows": pipe.counters.windows_scored,
            "frames": decoder.frames}


def replay_speed(bundle: Bundle, preset: str, seconds: float) -> float:
    from edge_agent.contract.recordings.recording import Recording, Segment

    rate, _ = CASES[preset]
    x = signals.generate(signals.make_source("bearing", state="degrading", preset=preset, seed=4, life_s=seconds),
                         int(rate * seconds))
    rec = Recording((Segment(x),), bundle.spec.channels, rate, "g", "bench", "npy")
    return replay(bundle, rec).speed


def window_latency(bundle: Bundle, model_path: Path, windows: np.ndarray, n: int = 2000) -> dict:
    scorer = Scorer(bundle, model_path=model_path)
    for w in windows[:50]:
        scorer.score(w)
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        scorer.score(windows[i % len(windows)])
        times[i] = time.perf_counter() - t0
    us = times * 1e6
    return {"p50_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99))}


def tf_latency(bundle: Bundle, windows: np.ndarray, n: int = 500) -> dict:
    """The same architecture and size in TensorFlow, in-process (weights random: latency does not depend on them)."""
    import tensorflow as tf

    from trainer.model import ModelConfig, build

    cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in bundle.manifest["model"]["config"].items()})
    model = build(cfg, bundle.spec.window, bundle.spec.n_features, batch_size=1)
    scaled = bundle.scaler.transform(windows[:64])
    out = {}
    for name, fn in (("tf.function", tf.function(model)), ("tf.function(jit)", tf.function(model, jit_compile=True))):
        for w in scaled[:20]:
            fn(w[None])
        times = np.empty(n)
        for i in range(n):
            w = scaled[i % len(scaled)][None]
            t0 = time.perf_counter()
            y = fn(w).numpy()
            float(np.abs(y - w).mean())
            times[i] = time.perf_counter() - t0
        us = times * 1e6
        out[name] = {"p50_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99))}
    return out


def _config(tmp: Path, bundle: Path, port: str, rate: float) -> Path:
    cfg = tmp / "agent.toml"
    cfg.write_text(f"""device = "bench"
[source]
kind = "serial"
sample_rate = {rate}
[source.serial]
port = "{port}"
reopen_max_s = 0.2
[bundle]
path = "{bundle}"
watch_s = 0
[alerts]
k = 3
n = 5
cooldown_s = 0
[alerts.sinks]
log = false
[status]
every_s = 1.0
file = "{tmp}/status.json"
mqtt = false
""")
    return cfg


def startup(bundle_dir: Path, rate: float) -> dict:
    """``edge-agent run`` as a process: seconds to the first inference (the start-up self-test) and RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(Path(tmp), bundle_dir, "loop://", rate)
        t0 = time.monotonic()
        p = subprocess.Popen([str(BIN / "edge-agent"), "run", "--config", str(cfg)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        line = p.stdout.readline()
        first = time.monotonic() - t0
        status = Path(tmp) / "status.json"
        deadline = time.monotonic() + 10
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        rss_kb = 0
        with open(f"/proc/{p.pid}/status") as f:
            for row in f:
                if row.startswith("VmRSS:"):
                    rss_kb = int(row.split()[1])
        p.terminate()
        p.wait(20)
    if not line.startswith("edge-agent: device"):
        raise RuntimeError(f"agent did not start: {line!r}")
    return {"first_inference_s": first, "rss_mb": rss_kb / 1024}


def alert_latency(bundle_dir: Path, preset: str, healthy_s: float = 5.0, broken_s: float = 3.0) -> dict:
    """A real-time paced pty stream switches from healthy to broken; time and samples from onset to the alert."""
    rate, _ = CASES[preset]
    h = signals.generate(signals.make_source("bearing", state="healthy", preset=preset, seed=5), int(rate * healthy_s))
    b = signals.generate(signals.make_source("bearing", state="broken", preset=preset, seed=6), int(rate * broken_s))
    x = np.concatenate([h, b])
    onset = len(h) // 256 * 256
    scale = int16_scale(signals.PRESETS[preset].full_scale)
    with tempfile.TemporaryDirectory() as tmp:
        link = PtyLink(Path(tmp) / "tty", write_timeout=5)
        cfg = load_config(_config(Path(tmp), bundle_dir, link.path, rate))
        raised: list[tuple[float, int]] = []
        agent = Agent(cfg, on_event=lambda e: raised.append((time.monotonic(), e.seq_end)) if e.kind == "raised" else None)
        stop = threading.Event()
        agent.start()  # the parts are up before the test acts
        th = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        th.start()
        while not agent.sensor().source.connected.is_set():
            time.sleep(0.01)
        t_start = time.monotonic()
        onset_wall = None
        for a in range(0, len(x) - 255, 256):
            due = t_start + a / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the sensor in real time
            if a >= onset and onset_wall is None:
                onset_wall = time.monotonic()
            link.send(encode_frame(a, x[a : a + 256], scale=scale))
            if raised:
                break
        deadline = time.monotonic() + 5
        while not raised and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        th.join(10)
        link.close()
    if not raised:
        return {"alert_latency_ms": None, "alert_latency_samples_ms": None, "window_ms": 1000 * BLOCK * WINDOW / rate}
    t_alert, seq_end = raised[0]
    return {"alert_latency_ms": 1000 * (t_alert - onset_wall), "alert_latency_samples_ms": 1000 * (seq_end - onset) / rate,
            "window_ms": 1000 * BLOCK * WINDOW / rate, "early": t_alert < onset_wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="signal seconds for keep-up and replay")
    ap.add_argument("--cases", default="femto,ims")
    ap.add_argument("--models", default="lstm,conv1d", help="autoencoder architectures to compare")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_agent.md")
    args = ap.parse_args()
    rows = []
    facts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset, arch in [(p, a) for p in args.cases.split(",") for a in args.models.split(",")]:
            rate, channels = CASES[preset]
            print(f"[{preset} {arch}] training a bundle ...", flush=True)
            bundle_dir = train(preset, Path(tmp) / f"{preset}-{arch}", arch)
            bundle = Bundle.load(bundle_dir)
            from edge_agent.contract import preprocess

            x = signals.generate(signals.make_source("bearing", state="healthy", preset=preset, seed=7), int(rate * 10))
            windows = preprocess.windows(preprocess.steps(x, bundle.spec), bundle.spec.window, bundle.spec.hop)
            ku = keep_up(bundle, preset, args.seconds)
            rs = replay_speed(bundle, preset, args.seconds)
            lat = {v: window_latency(bundle, bundle_dir / "variants" / f"model.{v}.tflite", windows)
                   for v in ("int8", "float32")}
            tfl = tf_latency(bundle, windows)
            st = startup(bundle_dir, rate)
            al = alert_latency(bundle_dir, preset)
            facts[f"{preset}-{arch}"] = {"keep_up": ku, "replay_x": rs, "latency": lat, "tf": tfl, "startup": st, "alert": al}
            name = f"{rate / 1000:g} kHz x {channels} ch, {arch}"
            rows.append((name, "CPU % of one core (decode+window+features+int8 score)", f"{ku['cpu_pct']:.2f} %", "<= 10 %"))
            rows.append((name, "replay speed", f"{rs:.0f}x real time", ">= 20x"))
            for v in ("int8", "float32"):
                rows.append((name, f"per window {v} TFLite p50 / p99", f"{lat[v]['p50_us']:.0f} / {lat[v]['p99_us']:.0f} us",
                             "p99 <= 1 ms"))
            rows.append((name, "int8 / float32 p50", f"{lat['int8']['p50_us'] / lat['float32']['p50_us']:.2f}", "<= 2"))
            for k, v in tfl.items():
                rows.append((name, f"per window TensorFlow {k} p50 / p99", f"{v['p50_us']:.0f} / {v['p99_us']:.0f} us", ""))
            rows.append((name, "first inference after start (process)", f"{st['first_inference_s']:.2f} s", "<= 2 s"))
            rows.append((name, "agent RSS", f"{st['rss_mb']:.0f} MB", "<= 80 MB"))
            if al["alert_latency_ms"] is None:
                rows.append((name, "alert latency from fault onset", "no alert", f"<= {al['window_ms'] + 100:.0f} ms"))
            else:
                rows.append((name, "alert latency from fault onset (wall / in samples)",
                             f"{al['alert_latency_ms']:.0f} / {al['alert_latency_samples_ms']:.0f} ms",
                             f"<= {al['window_ms'] + 100:.0f} ms (window + 100 ms)"))
    lines = ["| case | measure | result | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cpu = next((re.sub(r"\s+", " ", line.split(":", 1)[1].strip()) for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    args.out.write_text(f"Agent benchmark ({cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
                        f"windows of {WINDOW} x {BLOCK} samples, hop {HOP} blocks; {args.models} autoencoders; one thread)\n\n"
                        + table + "\n")
    (args.out.with_suffix(".json")).write_text(json.dumps(facts, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
