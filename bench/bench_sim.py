"""Benchmark: can the simulator sustain real sensor rates, end to end?

Streams binary int16 frames in real time (speed 1; plus unpaced "max" rows for headroom) from the bearing model at 25.6 kHz x 2 channels
(FEMTO) and 20 kHz x 4 channels (IMS), over a pseudo-terminal to a reader process that decodes
every frame, and over MQTT (one frame per message, QoS 1 and 0) through a mosquitto this script
starts on a free loopback port to a subscriber process that decodes every payload. Prints the
configured and ACHIEVED sample rates, what the receiver decoded, and the simulator's CPU use.

    python bench/bench_sim.py [--duration 5] [--frame-samples 256]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.contract import topics  # noqa: E402
from edge_agent.contract.binary import FrameDecoder  # noqa: E402
from edge_agent.contract.mqtt_payload import decode_payload  # noqa: E402
from firmware_sim import link, signals  # noqa: E402
from firmware_sim.stream import StreamConfig, Streamer  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
CASES = [("femto", 25600.0, 2), ("ims", 20000.0, 4)]


def _pty_reader(path: str, ready, stop, counts) -> None:
    import serial

    dec = FrameDecoder()
    with serial.Serial(path, timeout=0.1) as port:
        ready.set()
        while not stop.is_set():
            data = port.read(max(1, port.in_waiting))
            frames = dec.feed(data)
            with counts.get_lock():
                counts[0] += len(data)
                counts[1] += len(frames)
                counts[2] += sum(f.n_samples for f in frames)
                counts[3] = dec.crc_errors + dec.bad_headers


def _mqtt_reader(host: str, port: int, device: str, ready, stop, counts) -> None:
    import paho.mqtt.client as mqtt

    from edge_agent.contract.errors import FrameError

    def on_message(client, userdata, msg):
        try:
            f = decode_payload(msg.payload)
            ok, n = 1, f.n_samples
        except FrameError:
            ok, n = 0, 0
        with counts.get_lock():
            counts[0] += len(msg.payload)
            counts[1] += ok
            counts[2] += n
            counts[3] += 1 - ok

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topics.samples_topic(device), qos=1)
    client.on_subscribe = lambda c, u, mid, rcs, p: ready.set()
    client.on_message = on_message
    client.connect(host, port)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_mosquitto(workdir: Path) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not start") from None
            time.sleep(0.05)


def run_case(kind, preset, rate, channels, duration, frame, broker=None, qos=1, speed=1.0):  # noqa: ANN001
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    counts = ctx.Array("q", 4)
    source = signals.BearingSource(preset, "healthy", seed=1, sample_rate=rate, n_channels=channels)
    cfg = StreamConfig(fmt="binary", sample_type="int16", frame_samples=frame, speed=speed, progress_s=1e9)
    if kind == "pty":
        lk = link.PtyLink()
        reader = ctx.Process(target=_pty_reader, args=(lk.path, ready, stop, counts))
    else:
        lk = link.MqttLink("127.0.0.1", broker, "bench", qos=qos)
        reader = ctx.Process(target=_mqtt_reader, args=("127.0.0.1", broker, "bench", ready, stop, counts))
    reader.start()
    if not ready.wait(20):
        raise RuntimeError("reader did not start")
    cpu0 = time.process_time()
    report = Streamer(source, lk, cfg).run(int(duration * rate))
    cpu = time.process_time() - cpu0
    deadline = time.monotonic() + 10
    target = report.ledger.frames_sent
    while time.monotonic() < deadline:  # let the receiver catch up
        with counts.get_lock():
            if counts[1] + counts[3] >= target:
                break
        time.sleep(0.05)
    stop.set()
    reader.join(10)
    lk.close()
    label = "pty" if kind == "pty" else f"mqtt qos{qos}"
    return {
        "case": f"{label:9s} {rate / 1000:g} kHz x {channels}" + (" max" if speed == 0 else ""),
        "configured": f"{report.configured_rate:.0f}" if speed else "unpaced",
        "achieved": report.achieved_rate,
        "sent": report.ledger.samples_sent,
        "frames": report.ledger.frames_sent,
        "decoded_frames": counts[1],
        "decoded_samples": counts[2],
        "errors": counts[3],
        "cpu": cpu / report.elapsed_s,
        "overflow": report.overflow_bytes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per case")
    ap.add_argument("--frame-samples", type=int, default=256)
    args = ap.parse_args()
    rows = []
    for preset, rate, ch in CASES:
        rows.append(run_case("pty", preset, rate, ch, args.duration, args.frame_samples))
    for preset, rate, ch in CASES:  # headroom: the same data as fast as the pty takes it
        rows.append(run_case("pty", preset, rate, ch, args.duration, args.frame_samples, speed=0))
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = _start_mosquitto(Path(tmp))
        try:
            for qos in (1, 0):
                for preset, rate, ch in CASES:
                    rows.append(run_case("mqtt", preset, rate, ch, args.duration, args.frame_samples, port, qos))
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"\nfirmware-sim, binary int16, {args.frame_samples} samples/frame, {args.duration:g} s of data per case")
    head = f"{'case':28s} {'configured Hz':>13s} {'achieved Hz':>12s} {'sent':>9s} {'frames':>7s} "
    head += f"{'decoded fr':>10s} {'decoded samp':>12s} {'errors':>6s} {'sim CPU':>7s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['case']:28s} {r['configured']:>13s} {r['achieved']:12.0f} {r['sent']:9d} {r['frames']:7d} "
            f"{r['decoded_frames']:10d} {r['decoded_samples']:12d} {r['errors']:6d} {r['cpu']:7.0%}"
        )


if __name__ == "__main__":
    main()
