"""The gateway's side of the fleet loop with real brokers and a real agent.

* Rollouts to an agent that streams at full rate (20 kHz x 4 channels, real time): unsigned, foreign-signed,
  corrupt and wrong-shape rollouts are rejected while the old model keeps scoring; a good one is shadowed,
  swapped in between two frames, and no sample is lost.
* The agent killed with SIGKILL while it spools: the spool reopens intact, and the restarted agent delivers it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.contract import rollout, topics
from edge_agent.contract.binary import encode_frame, int16_scale
from edge_agent.contract.upload_record import decode_record
from edge_agent.mqtt_client import MqttConnection
from edge_agent.spool import Spool
from firmware_sim.broker import Broker
from tests.agent.pipeline_helpers import RATE, agent_config, rewrite_bundle
from tests.e2e.fleet_helpers import CollectorThread
from tests.waiting import wait_for

BIN = Path(sys.executable).parent
FRAME = 256


class Stream:
    """A healthy bearing published in real time as binary frames (QoS 1) on its own thread."""

    def __init__(self, broker: Broker, samples: np.ndarray, device: str = "pump-7") -> None:
        self.samples, self.topic = samples, topics.samples_topic(device)
        self.sent = 0
        self.conn = MqttConnection(broker.host, broker.port, "sensor-under-test")
        self.conn.start()
        assert self.conn.wait_connected(10)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        for a in range(0, len(self.samples) - FRAME + 1, FRAME):
            frame = encode_frame(a, self.samples[a:a + FRAME], scale=int16_scale(10.0))
            info = self.conn.publish(self.topic, frame, qos=1)
            assert info is not None
            self.sent = a + FRAME
            ahead = t0 + self.sent / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # real time: the sensor's own pace

    def close(self) -> None:
        self.thread.join(120)
        self.conn.stop()


def raw_publish(broker: Broker, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="workstation-raw")
    client.connect(*broker.address)
    client.loop_start()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def rollout_messages(bundle: Path, key: Ed25519PrivateKey, *, corrupt: bool = False, unsigned: bool = False,
                     shape: list | None = None) -> list[tuple[str, bytes]]:
    meta, chunks = rollout.make_metadata(bundle, rollout.pack_bundle(bundle), "pump-7", key, 16_384)
    fields = {k: v for k, v in json.loads(meta).items() if k != "signature"}
    if shape is not None:  # a model for another sensor type, correctly signed
        fields["bundle"]["input_shape"] = shape
    signed = fields if unsigned else fields | {"signature": base64.b64encode(key.sign(rollout.canonical(fields)))
                                                .decode()}
    if corrupt:
        chunks[0] = chunks[0][:50] + bytes([chunks[0][50] ^ 0xFF]) + chunks[0][51:]
    target, rid = fields["target"], fields["rollout_id"]
    return [(rollout.chunk_topic(target, rid, i), c) for i, c in enumerate(chunks)] + \
        [(rollout.meta_topic(target), rollout.canonical(signed))]


def test_rollouts_to_a_gateway_streaming_at_full_rate(tmp_path, agent_bundle) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    bundle = tmp_path / "bundle"
    shutil.copytree(agent_bundle, bundle)
    new = tmp_path / "new"
    shutil.copytree(agent_bundle, new)
    rewrite_bundle(new, version="test-conv-rolled-out")
    key = Ed25519PrivateKey.generate()
    cfg = load_config(agent_config(
        tmp_path, bundle, source={"kind": "mqtt", "mqtt": {"qos": 1}, "sample_rate": RATE},
        mqtt={"host": broker.host, "port": broker.port},
        rollout={"public_keys": [rollout.public_key_text(key.public_key())], "shadow_windows": 30,
                 "probation_windows": 40},
    ))
    from firmware_sim import signals

    samples = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=4), RATE * 25)
    agent = Agent(cfg)
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    runner.start()
    sensor = agent.sensor()
    state = lambda: sensor.fleet.rollout.status()  # noqa: E731
    old = sensor.pipeline.bundle.version
    try:
        assert agent.wait_ready(10)
        stream = Stream(broker, samples)
        stream.thread.start()
        for case, kwargs, reason in (
            ("unsigned", {"unsigned": True}, "unsigned"),  # ignored and counted: no trusted key signed it
            ("foreign key", {}, "unknown key"),
            ("corrupt chunk", {"corrupt": True}, "signed it"),  # "no trusted key signed it" (before its metadata)
            ("wrong shape", {"shape": [1, 16, 16]}, "this sensor's model takes"),  # signed: refused for a reason
        ):
            scored = sensor.pipeline.counters.windows_scored
            ignored = state()["ignored"]
            signer = Ed25519PrivateKey.generate() if case == "foreign key" else key
            raw_publish(broker, rollout_messages(new, signer, **kwargs))
            if case == "wrong shape":
                assert wait_for(lambda r=reason: state()["state"] == "rejected" and r in (state()["reason"] or ""),
                                timeout=15), (case, state())
            else:
                assert wait_for(lambda r=reason, n=ignored: state()["ignored"] > n and r in (
                    state()["last_ignored"] or ""), timeout=15), (case, state())
                assert state()["state"] in ("idle", "received"), (case, state())
            assert wait_for(lambda s=scored: sensor.pipeline.counters.windows_scored > s + 5, timeout=10), \
                f"{case}: the old model keeps scoring"
            assert sensor.pipeline.bundle.version == old and json.loads(
                (bundle / "manifest.json").read_text())["model"]["version"] == old
        raw_publish(broker, rollout_messages(new, key))
        assert wait_for(lambda: state()["state"] == "serving" and sensor.pipeline.bundle.version == new_version(new),
                        timeout=30), state()
        # the scoring thread counts the swap after it put the new model in the pipeline: wait for the count
        assert wait_for(lambda: sensor.counters.model_swaps == 1, timeout=10), sensor.counters.model_swaps
        assert state()["shadow_windows"] == 30
        stream.close()
        assert stream.sent > RATE * 20
        assert wait_for(lambda: sensor.pipeline.windower.counters.samples_in == stream.sent, timeout=20), \
            "every sample streamed reached the pipeline across the swap"
        wc = sensor.pipeline.windower.counters
        assert (wc.gaps, wc.samples_missing, sensor.source.counters.frames_dropped) == (0, 0, 0)
        assert wait_for(lambda: not state()["probation"], timeout=10), "probation passed on the healthy machine"
        assert json.loads((bundle / "manifest.json").read_text())["model"]["version"] == new_version(new)
        assert (bundle.parent / "bundle.previous" / "manifest.json").exists()
    finally:
        stop.set()
        runner.join(15)
        broker.stop()


def new_version(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["model"]["version"]


def test_agent_killed_while_spooling_reopens_intact_and_resumes(tmp_path, agent_bundle) -> None:
    """Calibration windows are all kept: the spool grows at the window rate until SIGKILL."""
    broker = Broker(tmp_path / "broker", extra_conf="allow_anonymous true\nmax_queued_messages 0\n")
    broker.start()
    spool_path = tmp_path / "spool.sqlite"
    cfg_path = agent_config(
        tmp_path, agent_bundle, source={"kind": "mqtt", "mqtt": {"qos": 1}, "sample_rate": RATE},
        mqtt={"host": broker.host, "port": broker.port}, calibration={"path": str(tmp_path / "cal.json"),
                                                                     "windows": 100_000},
        uploads={"enabled": True, "spool_path": str(spool_path), "receipts": True, "receipt_timeout_s": 5.0},
    )
    from firmware_sim import signals

    samples = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=9), RATE * 30)
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    agent = subprocess.Popen([BIN / "edge-agent", "run", "--config", cfg_path], stdout=subprocess.DEVNULL,
                             stderr=subprocess.STDOUT, env=env)
    stream = None
    try:
        assert wait_for(lambda: (tmp_path / "status.json").exists(), timeout=20)
        stream = Stream(broker, samples)
        stream.thread.start()

        def spooled() -> int:
            try:
                with Spool(spool_path) as peek:
                    return len(peek)
            except Exception:  # held by the agent (one agent per spool): read it with sqlite3 instead
                import sqlite3

                db = sqlite3.connect(f"file:{spool_path}?mode=ro", uri=True)
                try:
                    return db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
                finally:
                    db.close()

        assert wait_for(lambda: spooled() > 40, timeout=30)
        agent.send_signal(signal.SIGKILL)  # while it writes a window a tenth of a second
        agent.wait(10)
        stream.close()
        with Spool(spool_path) as spool:  # the lock of a dead process is taken over; quick_check passes
            records = spool.peek(100_000, resend_after_s=0)
            assert len(records) == len(spool) > 40 and spool.counters.quarantined == 0
            ids = {decode_record(r.payload).id for r in records}
            assert {r.kind for r in records} == {"calibration"} and len(ids) == len(records)

        collector = CollectorThread(broker.address, tmp_path / "dataset")
        assert collector.subscribed.wait(10)
        cfg_path.write_text(cfg_path.read_text().replace("windows = 100000", "windows = 0"))
        agent = subprocess.Popen([BIN / "edge-agent", "run", "--config", cfg_path], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.STDOUT, env=env)
        got = lambda: set(collector.ids())  # noqa: E731
        assert wait_for(lambda: ids <= got(), timeout=40), f"{len(ids - got())} of {len(ids)} spooled not delivered"
        status = json.loads((tmp_path / "status.json").read_text())
        assert wait_for(lambda: json.loads((tmp_path / "status.json").read_text())["uploads"]["pending"] == 0,
                        timeout=20), status["uploads"]
        collector.stop()
    finally:
        if stream is not None and stream.thread.is_alive():
            stream.close()
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(15)
        broker.stop()
