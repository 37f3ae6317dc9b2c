"""``edge-agent doctor`` judges the live stream against the sensor's bundle the way ``run`` will: a stream of
another width, a sensor clocked at another rate, NaN and clipped values, and payloads of another format are each
a named row, with the sensor, what was seen, what the bundle expects and what to do. Real firmware-sim streams
over a pty and a real mosquitto, a real 4-channel bundle trained by the trainer, loaded by the real runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_agent.cli import main
from edge_agent.contract import topics
from edge_agent.contract.bundle import MANIFEST_FILE
from edge_agent.mqtt_client import MqttConnection
from tests.agent.agent_process import AgentProcess
from tests.agent.pipeline_helpers import RATE, agent_config, copy_bundle, rewrite_bundle
from tests.waiting import wait_for

BIN = Path(sys.executable).parent
RANGE_G = 10.0


def _doctor(cfg: Path) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["doctor", "--config", str(cfg), "--listen-s", "2", "--timeout-s", "5", "--json"])
    doc = json.loads(result.stdout)
    assert result.exit_code == doc["exit"], result.output
    return result.exit_code, {(c["scope"], c["name"]): c for c in doc["checks"]}


def _channels(bundle: Path) -> str:
    """The bundle's channel names as doctor lists them ("a, b, c, d")."""
    return ", ".join(json.loads((bundle / MANIFEST_FILE).read_text())["signal"]["channels"])


@pytest.fixture
def bundle_20khz(tmp_path, agent_bundle) -> Path:
    """The 4-channel test bundle, its manifest stating a 20 kHz signal of range ±10 g."""
    path = copy_bundle(agent_bundle, tmp_path / "bundle")

    def edit(manifest: dict) -> None:
        manifest["signal"] |= {"sample_rate": RATE, "range": RANGE_G}

    rewrite_bundle(path, manifest_edit=edit)
    return path


class Sim:
    """``firmware-sim run ARGS`` until the test ends."""

    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen([str(BIN / "firmware-sim"), "run", "--duration", "60", *args],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait(10)


@pytest.fixture
def sims():
    started: list[Sim] = []
    yield lambda *args: started.append(Sim(*args)) or started[-1]
    for sim in started:
        sim.stop()


def _pty(sims, port: Path, *args: str) -> Path:
    sims("--link", "serial", "--link-path", str(port), "--frame-samples", "256", *args)
    assert wait_for(port.exists, 20), "firmware-sim made no pty"
    return port


def _publishing(broker, device: str, timeout: float = 20.0) -> bool:
    """Wait until a message arrives on ``device``'s samples topic (the simulator is up and publishing)."""
    got = threading.Event()
    watch = MqttConnection(broker.host, broker.port, "test-watch")
    watch.subscribe(topics.samples_topic(device), 0, lambda msg: got.set())
    watch.start()
    try:
        return got.wait(timeout)
    finally:
        watch.stop()


def _serial_config(tmp_path: Path, bundle: Path, port: Path) -> Path:
    return agent_config(tmp_path, bundle, source={"kind": "serial", "sample_rate": RATE,
                                                  "serial": {"port": str(port)}},
                        uploads={"spool_path": str(tmp_path / "spool.sqlite")})


def test_a_stream_of_another_width_is_a_named_failure(tmp_path, sims, agent_bundle):
    """The new user's case: doctor said "data ok" for a stream whose every frame run then rejected."""
    two = tmp_path / "two.npy"
    rng = np.random.default_rng(0)
    np.save(two, rng.normal(0, 0.5, (RATE * 10, 2)).astype(np.float32))
    port = _pty(sims, tmp_path / "ttySIM", "--signal", "replay", "--data", str(two), "--rate", str(RATE), "--loop")
    code, rows = _doctor(_serial_config(tmp_path, agent_bundle, port))
    assert code == 2
    assert rows[("pump-7", "data")]["verdict"] == "ok", rows  # samples do arrive, at 20 kHz ...
    assert rows[("pump-7", "payload")]["verdict"] == "ok", rows  # ... as valid binary frames ...
    channels = rows[("pump-7", "channels")]
    assert channels["verdict"] == "FAIL"  # ... of 2 channels, where the model takes 4
    detail = channels["detail"]
    assert detail.startswith("sensor pump-7: the stream has 2 channels, the bundle's model ")
    assert f"expects 4 (channels {_channels(agent_bundle)})" in detail and "reject every frame" in detail
    assert "edge-agent deploy" in detail  # what to do
    assert ("pump-7", "rate") in rows and ("pump-7", "values") in rows


def test_a_running_agent_that_rejects_frames_is_a_channels_failure(tmp_path, sims, agent_bundle):
    """With the agent running, doctor leaves its serial port alone and reads its status: rejected frames are named."""
    two = tmp_path / "two.npy"
    np.save(two, np.random.default_rng(0).normal(0, 0.5, (RATE * 10, 2)).astype(np.float32))
    port = _pty(sims, tmp_path / "ttySIM", "--signal", "replay", "--data", str(two), "--rate", str(RATE), "--loop")
    cfg = _serial_config(tmp_path, agent_bundle, port)
    agent = AgentProcess(cfg, tmp_path, tmp_path / "status.json")
    try:
        assert agent.wait_sensor(lambda d: d.get("frames_rejected", 0) > 0, 30), agent.log()[-2000:]
        code, rows = _doctor(cfg)
    finally:
        assert agent.stop() == 0, agent.log()[-2000:]
    assert code == 2
    assert "(read by the running agent)" in rows[("pump-7", "data")]["detail"]
    channels = rows[("pump-7", "channels")]
    assert channels["verdict"] == "FAIL", rows
    assert channels["detail"].startswith("sensor pump-7: the running agent rejected ")
    assert f"expects 4 (channels {_channels(agent_bundle)})" in channels["detail"]


def test_a_sensor_clocked_at_another_rate_and_nan_values_are_named(tmp_path, sims, bundle_20khz):
    """The bearing at 10 kHz (its frames' timestamps say so) into a bundle trained at 20 kHz; 1 % of values NaN."""
    port = _pty(sims, tmp_path / "ttySIM", "--signal", "bearing", "--rate", "10000", "--fault", "nan=0.01")
    code, rows = _doctor(_serial_config(tmp_path, bundle_20khz, port))
    assert code == 2
    rate = rows[("pump-7", "rate")]
    assert rate["verdict"] == "FAIL", rows
    assert rate["detail"].startswith("sensor pump-7: the stream's timestamps say 10,000 Hz, the bundle's "
                                     "signal.sample_rate (")
    assert "says 20,000 Hz (-50.0%)" in rate["detail"] and "set the sensor to 20,000 Hz" in rate["detail"]
    assert rows[("pump-7", "data")]["verdict"] == "warn"  # the arrival rate is off too, on this machine's clock
    assert "of 20,000 Hz expected" in rows[("pump-7", "data")]["detail"]
    values = rows[("pump-7", "values")]
    assert values["verdict"] == "warn", values
    share = float(values["detail"].split("(")[1].split("%")[0])
    assert 0.7 <= share <= 1.3, values  # 1 % NaN injected
    assert f"beyond the bundle's signal.range ±{RANGE_G:g}" in values["detail"]
    assert rows[("pump-7", "channels")]["verdict"] == "ok"


def test_clipped_values_fail_and_the_same_stream_at_the_bundle_rate_passes(tmp_path, sims, bundle_20khz):
    port = _pty(sims, tmp_path / "ttyCLIP", "--signal", "bearing", "--fault", "saturate=0.6")
    code, rows = _doctor(_serial_config(tmp_path, bundle_20khz, port))
    values = rows[("pump-7", "values")]
    assert code == 2 and values["verdict"] == "FAIL", rows
    assert values["detail"].startswith("sensor pump-7: ") and "saturated" in values["detail"]
    assert "run would score almost nothing" in values["detail"]
    port = _pty(sims, tmp_path / "ttyOK", "--signal", "bearing")
    _, rows = _doctor(_serial_config(tmp_path, bundle_20khz, port))
    stream = {name: rows[("pump-7", name)] for name in ("data", "payload", "channels", "rate", "values")}
    assert all(c["verdict"] == "ok" for c in stream.values()), stream
    assert stream["rate"]["detail"].startswith("the stream's timestamps say 20,000 Hz, the bundle's "
                                               "signal.sample_rate")
    assert stream["values"]["detail"].startswith("0 of ")


def test_mqtt_stream_is_checked_and_a_payload_of_another_format_is_named(tmp_path, sims, mosquitto, agent_bundle):
    """A healthy binary MQTT sensor passes every stream row; the same sensor publishing its own JSON while the
    config expects the gateway's wire payloads is a payload failure naming the refusal and the key to set."""
    broker = f"{mosquitto.host}:{mosquitto.port}"
    cfg = agent_config(tmp_path, agent_bundle, source={"kind": "mqtt", "sample_rate": RATE},
                       mqtt={"host": mosquitto.host, "port": mosquitto.port},
                       uploads={"spool_path": str(tmp_path / "spool.sqlite")})
    sim = sims("--signal", "bearing", "--link", "mqtt", "--broker", broker, "--device", "pump-7")
    assert _publishing(mosquitto, "pump-7"), "firmware-sim publishes nothing"
    code, rows = _doctor(cfg)
    sim.stop()
    stream = {name: rows[("pump-7", name)] for name in ("data", "payload", "channels", "rate", "values")}
    assert all(c["verdict"] == "ok" for c in stream.values()), stream
    assert "vib/pump-7/samples" in stream["payload"]["detail"]
    assert stream["rate"]["detail"].startswith("the stream's timestamps say 20,000 Hz, source.sample_rate in")

    sims("--signal", "bearing", "--link", "mqtt", "--broker", broker, "--device", "pump-7", "--rate", "200",
         "--payload", "json-per-sample", "--fields", "a,b,c,d")
    assert _publishing(mosquitto, "pump-7"), "firmware-sim publishes nothing"
    code, rows = _doctor(cfg)
    assert code == 2
    payload = rows[("pump-7", "payload")]
    assert payload["verdict"] == "FAIL", rows
    assert payload["detail"].startswith("sensor pump-7: ") and "messages on vib/pump-7/samples, none decodes" in \
        payload["detail"]
    assert "first refused: " in payload["detail"] and "source.mqtt.payload" in payload["detail"]
    assert rows[("pump-7", "data")]["detail"].endswith("data arrives but nothing decodes (see payload)")
    assert ("pump-7", "channels") not in rows  # nothing decoded: nothing to judge it by
