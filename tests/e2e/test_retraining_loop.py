"""Central retraining from gateway uploads: records published to the broker are collected by
`trainer collect` into the Parquet dataset and a new bundle is trained from it with `--data DATASET`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from edge_agent.contract.bundle import Bundle
from edge_agent.contract.upload_record import encode_record
from firmware_sim import signals
from firmware_sim.broker import Broker
from trainer.dataset import DataFilter
from trainer.dataset import load as load_dataset

BIN = Path(sys.executable).parent
RATE = 25_600
N_RECORDS = 8


def _records() -> list[tuple[bytes, np.ndarray]]:
    source = signals.make_source("bearing", state="healthy", preset="femto", seed=5)
    out = []
    for i in range(N_RECORDS):  # the last one was uploaded while an alert was active
        samples = source.read(3 * RATE)  # 3 s per uploaded window
        payload = encode_record(
            device="gw-1", model_id="m", model_version="v1", seq_end=(i + 1) * 3 * RATE,
            time_end=f"2026-11-22T10:00:{3 * i:02d}", sample_rate=RATE, channels=("horizontal", "vertical"),
            score=0.1 if i < N_RECORDS - 1 else 0.5, threshold=0.2,
            state="normal" if i < N_RECORDS - 1 else "critical", samples=samples,
        )
        out.append((payload, samples))
    return out


def test_uploads_are_collected_and_retrained_on(mosquitto: Broker, tmp_path: Path) -> None:
    host, port = mosquitto.address
    collected = tmp_path / "collected"
    collector = subprocess.Popen(
        [BIN / "trainer", "collect", "--broker", f"{host}:{port}", "--out", collected, "--max-records", str(N_RECORDS),
         "--no-receipts"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    records = _records()
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gateway-under-test")
    publisher.connect(host, port)
    publisher.loop_start()
    try:
        seen = []
        for line in collector.stdout:  # the collector logs once the broker has granted its subscription
            seen.append(line)
            if "subscribed to $share/collectors/vib/+/upload" in line:
                break
        else:
            raise AssertionError("the collector never subscribed: " + "".join(seen))
        for payload, _ in records:
            info = publisher.publish("vib/gw-1/upload", payload, qos=1)
            info.wait_for_publish(timeout=10)
            assert info.is_published()
        output, _ = collector.communicate(timeout=30)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        if collector.poll() is None:
            collector.kill()
    assert collector.returncode == 0, output
    assert f"written {N_RECORDS}" in output, output

    recording = load_dataset(collected, DataFilter())
    assert recording.sample_rate == RATE and recording.channels == ("horizontal", "vertical")
    assert len(recording.segments) == N_RECORDS
    for segment, (_, samples) in zip(recording.segments, records, strict=True):
        np.testing.assert_array_equal(segment.data, samples)

    bundle_dir = tmp_path / "retrained"
    train = subprocess.run(
        [BIN / "trainer", "train", "--data", collected, "--mode", "features", "--block", "2560",
         "--features", "rms,kurtosis", "--window", "10", "--epochs", "3", "--model", "conv1d", "--out", bundle_dir],
        capture_output=True, text=True, timeout=300,
    )
    assert train.returncode == 0, train.stdout + train.stderr
    bundle = Bundle.load(bundle_dir)
    assert bundle.manifest["data"]["format"] == "dataset"
    assert bundle.manifest["data"]["segments"] == N_RECORDS - 1, "the window uploaded during an alert is not trained on"
    assert bundle.spec.channels == ("horizontal", "vertical") and bundle.spec.block == 2560
