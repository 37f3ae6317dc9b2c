"""The main job end to end: simulate, train, deploy, stream a failing bearing, watch the alerts.

1. firmware_sim generates a healthy bearing recording (FEMTO-like: 25.6 kHz, 2 channels);
2. the trainer fits an LSTM autoencoder on it and exports an int8 bundle;
3. the edge agent starts on that bundle, listening on a virtual serial port (or MQTT);
4. firmware_sim streams a run that degrades to failure, in real time, into the agent;
5. alerts are printed as the agent raises them, and a summary compares fault onset with the first alert.

Run with ``make demo`` (serial) or ``make demo-mqtt``. Everything lands in ``runs/demo-<link>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from firmware_sim.signals import SEVERITY_PROFILE

BIN = Path(sys.executable).parent
RATE = 25_600.0
BLOCK = 2_560  # 0.1 s per step: one FEMTO snapshot length
HEALTHY_S = 120.0  # training data: two minutes of a healthy machine
LIFE_S = 60.0  # streamed run: healthy until 60 % of life, then incipient -> severe -> failure
ONSET_FRACTION = SEVERITY_PROFILE[1][0]


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(cmd: list[str], **kwargs) -> None:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen, int]:
    """A private broker on a free loopback port, for the MQTT demo."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\n")
    broker = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return broker, port
        except OSError:
            if broker.poll() is not None:
                raise SystemExit(f"mosquitto exited with code {broker.returncode}") from None
            time.sleep(0.1)
    broker.kill()
    raise SystemExit("mosquitto did not start within 10 s")


def agent_config(workdir: Path, link: str, broker_port: int | None) -> Path:
    source = (
        f'[source]\nkind = "serial"\n\n[source.serial]\nport = "{workdir / "sensor.pty"}"\nformat = "binary"\n'
        if link == "serial"
        else f'[source]\nkind = "mqtt"\n\n[source.mqtt]\nqos = 1\n\n[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n'
    )
    text = f"""device = "demo-bearing"

{source}
[bundle]
path = "bundle"
watch_s = 0

[alerts]
k = 3
n = 5
clear_ratio = 0.8
clear_windows = 10
cooldown_s = 30.0
critical_ratio = 2.0

[alerts.sinks]
log = false
jsonl = "alerts.jsonl"
mqtt = {"true" if link == "mqtt" else "false"}

[status]
every_s = 2.0
file = "status.json"
mqtt = {"true" if link == "mqtt" else "false"}

[calibration]
path = "calibration.json"
"""
    path = workdir / "agent.toml"
    path.write_text(text)
    return path


def read_alerts(path: Path) -> list[dict]:
    """Alert events the agent appended to its JSONL sink."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def wait_for_path(path: Path, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the simulator did not create {path}")
        time.sleep(0.05)


def wait_for_status(path: Path, key: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Wait until the agent's status file reports ``key`` true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(path.read_text()).get(key):
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"the agent did not report {key} within {timeout:.0f} s")


def wait_until_idle(path: Path, timeout: float = 10.0) -> None:
    """Wait until the agent has scored everything sent: windows_scored stops growing between status writes."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        time.sleep(2.5)  # one status period (every_s = 2) plus margin
        try:
            scored = json.loads(path.read_text()).get("windows_scored")
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if scored == last:
            return
        last = scored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--link", choices=("serial", "mqtt"), default="serial")
    parser.add_argument("--workdir", type=Path, default=None, help="default: runs/demo-<link>")
    parser.add_argument("--life", type=float, default=LIFE_S, help="seconds from start of stream to failure")
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    workdir = (args.workdir or Path("runs") / f"demo-{args.link}").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    began = time.monotonic()

    step("1/4  firmware_sim: healthy training recording")
    healthy = workdir / "healthy.npy"
    run([BIN / "firmware-sim", "generate", "--signal", "bearing", "--preset", "femto", "--state", "healthy",
         "--samples", int(HEALTHY_S * RATE), "--seed", 1, "--out", healthy])

    step("2/4  trainer: LSTM autoencoder -> int8 TFLite bundle")
    run([BIN / "trainer", "train", "--data", healthy, "--format", "npy",
         "--mode", "features", "--block", BLOCK, "--features", "rms,kurtosis", "--window", 10, "--hop", 1,
         "--epochs", args.epochs, "--quantize", "int8", "--model-id", "demo-bearing", "--out", workdir / "bundle"])

    step(f"3/4  edge agent on the bundle, fed over {args.link}")
    broker, broker_port = start_mosquitto(workdir) if args.link == "mqtt" else (None, None)
    config = agent_config(workdir, args.link, broker_port)
    run([BIN / "edge-agent", "validate-config", config])

    duration = args.life + 5.0
    onset_s = ONSET_FRACTION * args.life
    step(f"4/4  firmware_sim streams {duration:.0f} s: healthy, fault onset at {onset_s:.0f} s, failure at {args.life:.0f} s")
    link_args = (["--link", "serial", "--link-path", workdir / "sensor.pty"] if args.link == "serial"
                 else ["--link", "mqtt", "--broker", f"127.0.0.1:{broker_port}", "--device", "demo-bearing"])
    sim_cmd = [BIN / "firmware-sim", "run", "--signal", "bearing", "--preset", "femto", "--state", "degrading",
               "--life", args.life, "--duration", duration, "--seed", 2, *link_args, "--frame-samples", 256]
    agent = sim = None
    try:
        if args.link == "serial":  # the simulator owns the pty: start it first, then open its port
            print("$ " + " ".join(map(str, sim_cmd)), flush=True)
            sim = subprocess.Popen([str(c) for c in sim_cmd])
            wait_for_path(workdir / "sensor.pty", sim)
            agent = subprocess.Popen([BIN / "edge-agent", "run", "--config", config])
        else:  # the agent subscribes first, so that no sample published before it is lost
            agent = subprocess.Popen([BIN / "edge-agent", "run", "--config", config])
            wait_for_status(workdir / "status.json", "mqtt_connected", agent)
            print("$ " + " ".join(map(str, sim_cmd)), flush=True)
            sim = subprocess.Popen([str(c) for c in sim_cmd])
        if sim.wait() != 0:
            raise SystemExit(f"firmware-sim failed with exit code {sim.returncode}")
        wait_until_idle(workdir / "status.json")
    finally:
        for proc in (sim, agent):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if broker is not None:
            broker.terminate()

    alerts = read_alerts(workdir / "alerts.jsonl")
    doc = json.loads((workdir / "status.json").read_text()) if (workdir / "status.json").exists() else {}
    status = next(iter(doc.get("sensors", {}).values()), {})
    raised = [a for a in alerts if a["kind"] == "raised"]
    print("\n=== summary")
    print(f"  fault onset (degradation starts)  t = {onset_s:6.1f} s")
    if raised:
        first = raised[0]["seq_end"] / RATE
        print(f"  first alert                       t = {first:6.1f} s  ({raised[0]['severity']}, "
              f"{first - onset_s:+.1f} s after onset)")
    else:
        print("  first alert                       none")
    for key in ("samples_in", "windows_scored", "gaps", "crc_errors", "inference_ms_p50", "inference_ms_p99"):
        if key in status:
            print(f"  {key:<33} {status[key]}")
    print(f"  demo took {time.monotonic() - began:.0f} s; files in {workdir}")
    ok = bool(raised) and raised[0]["seq_end"] / RATE >= onset_s
    if not ok:
        print("  DEMO FAILED: no alert after the fault onset" if not raised else "  DEMO FAILED: alert before onset")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
