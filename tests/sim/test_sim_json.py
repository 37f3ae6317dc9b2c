"""firmware_sim publishing a sensor's own JSON shapes (the IBM Watson IoT tutorial's per-sample messages and batches)
on any topic of a real mosquitto; corrupted messages are exactly the ledger's."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from click.testing import CliRunner

from edge_agent.contract.errors import FrameError
from edge_agent.contract.json_mapping import JsonMapping, PayloadDecoder
from edge_agent.mqtt_client import MqttConnection
from firmware_sim import link, signals
from firmware_sim.cli import main
from firmware_sim.faults import FaultInjector
from firmware_sim.stream import StreamConfig, Streamer
from tests.waiting import wait_for

TOPIC = "iot-2/evt/status/fmt/json"


@pytest.mark.parametrize(("fmt", "mapping"), [
    ("json-per-sample", None),  # the default mapping: x, y, z, no seq, no time
    ("json-columns", JsonMapping(fields=("d.x", "d.y", "d.z"), seq_field="seq", time_field="ts", time_unit="ms")),
    ("json-records", JsonMapping(fields=("x", "y", "z"), records="data", seq_field="i", time_field="t")),
    ("json-rows", JsonMapping(values="acc", seq_field="i", time_field="t", time_unit="iso")),
])
def test_json_shapes_over_mqtt_decode_to_the_signal_and_flips_are_the_ledgers(mosquitto, fmt, mapping):
    n = 600
    got: list[bytes] = []
    lock = threading.Lock()

    def on_message(msg) -> None:
        with lock:
            got.append(msg.payload)

    sub = MqttConnection(mosquitto.host, mosquitto.port, "sub", on_message=on_message, subscriptions=[(TOPIC, 1)])
    sub.start()
    try:
        assert sub.wait_subscribed(10)
        cfg = StreamConfig(fmt=fmt, mapping=mapping, frame_samples=20, speed=0)
        faults = FaultInjector({"flip": 0.1}, seed=3)
        with link.MqttLink(mosquitto.host, mosquitto.port, "sim", topic=TOPIC) as lk:
            streamer = Streamer(signals.LorenzSource("healthy", sample_rate=1000.0), lk, cfg, faults)
            report = streamer.run(n)
        per_frame = 20 if fmt == "json-per-sample" else 1
        assert wait_for(lambda: len(got) == report.ledger.frames_sent * per_frame, 15)
    finally:
        sub.stop()
    dec = PayloadDecoder(streamer.mapping)
    frames, bad = [], 0
    for p in got:
        try:
            frames.append(dec.decode(p))
        except FrameError:
            bad += 1
    assert len(report.ledger.flipped_seqs) > 0 and bad == len(report.ledger.flipped_seqs)
    clean = signals.generate(signals.LorenzSource("healthy", sample_rate=1000.0), n)
    if dec.counted:  # no seq: the receiver cannot place what it got; the good samples still arrive in order
        assert len(frames) == n - bad
    else:
        got_x = np.concatenate([f.samples for f in frames])
        idx = np.concatenate([np.arange(f.seq, f.seq + f.n_samples) for f in frames])
        np.testing.assert_array_equal(got_x, clean[idx])
        assert len(idx) == n - 20 * bad and all(f.t0_us == f.seq * 1000 for f in frames)  # 1 kHz


def test_cli_options_of_the_json_shapes_are_checked():
    runner = CliRunner()
    res = runner.invoke(main, ["run", "--link", "mqtt", "--fields", "x,y", "--duration", "1"])
    assert res.exit_code == 2 and "only with a sensor's own JSON" in res.output
    res = runner.invoke(main, ["run", "--link", "mqtt", "--payload", "json-per-sample", "--fields", "x,x"])
    assert res.exit_code == 2 and "'x' is given twice" in res.output
    res = runner.invoke(main, ["run", "--link", "serial", "--payload", "json-per-sample"])
    assert res.exit_code == 2 and "serial links carry binary or csv" in res.output
    res = runner.invoke(main, ["run", "--topic", "a/b"])
    assert res.exit_code == 2 and "only with --link mqtt" in res.output
