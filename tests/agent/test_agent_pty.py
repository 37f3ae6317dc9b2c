"""The agent on a serial pty: a real int8 bundle, garbage on the line, hot swap, a corrupt bundle at start,
calibration, the status command, frames with another channel count."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from edge_agent import calibration
from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.config import load_config
from edge_agent.contract import preprocess
from edge_agent.contract.binary import encode_frame
from edge_agent.contract.bundle import MANIFEST_FILE, Bundle
from edge_agent.contract.errors import BundleError
from firmware_sim.link import PtyLink
from tests.agent.pipeline_helpers import ONSET_S, RATE, agent_config, copy_bundle, frames_of, rewrite_bundle
from tests.waiting import wait_for


class Running:
    """An Agent running in a thread until the with-block ends."""

    def __init__(self, cfg_path, **kwargs):
        self.cfg = load_config(cfg_path)
        self.events, self.results = [], []
        self.agent = Agent(self.cfg, on_event=self.events.append,
                           on_window=lambda w, r, e: self.results.append(r), **kwargs)
        self.stop = threading.Event()
        self.agent.start()  # the parts are up before the test acts
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive()


def test_pty_stream_with_garbage_keeps_scoring_and_alerts_after_onset(tmp_path, agent_bundle, degrading_samples):
    link = PtyLink(tmp_path / "ttyV0", write_timeout=10)
    cfg = agent_config(tmp_path, agent_bundle, source={"kind": "serial", "serial": {"port": link.path}})
    frames = frames_of(degrading_samples, 256)
    rng = np.random.default_rng(3)
    corrupted = set(rng.choice(len(frames), 5, replace=False).tolist())
    garbage = 0
    try:
        with Running(cfg) as run:
            assert wait_for(lambda: run.agent.sensor().source.connected.is_set(), 10)
            sent = 0
            for i, f in enumerate(frames):
                junk = bytes(rng.integers(0, 256, int(rng.integers(0, 2 * len(f) // 10)), dtype=np.uint8))
                junk = junk.replace(b"\xa5", b"\x00")  # no fake sync markers: the garbage count stays exact
                garbage += len(junk)
                if i in corrupted:
                    f = f[:40] + bytes([f[40] ^ 0xFF]) + f[41:]
                else:
                    sent += 256
                link.send(junk + f)
                if i % 80 == 79 or i == len(frames) - 1:  # let the agent catch up (no drops to reason about)
                    assert wait_for(lambda s=sent: run.agent.pipeline.windower.counters.samples_in >= s, 20)
            assert wait_for(lambda: run.agent.status()["windows_scored"] > 0, 5)
            status = run.agent.status()["sensors"]["pump-7"]
    finally:
        link.close()
    assert garbage / sum(map(len, frames)) > 0.08  # ~10 % garbage bytes on the line
    assert status["crc_errors"] >= len(corrupted)
    assert status["bytes_discarded"] >= garbage
    assert status["gaps"] == len(corrupted) and status["samples_missing"] == 256 * len(corrupted)
    assert status["frames_dropped"] == 0
    spec = Bundle.load(agent_bundle).spec
    clean = len(preprocess.window_ends(len(degrading_samples) // spec.block, spec.window, spec.hop))
    assert clean // 2 < status["windows_scored"] < clean  # windows spanning the lost frames were not scored
    raised = [e for e in run.events if e.kind == "raised"]
    assert raised, f"no alert; last scores {[round(r.score, 3) for r in run.results[-5:]]}"
    first = raised[0].seq_end / RATE
    assert ONSET_S <= first <= len(degrading_samples) / RATE
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "raised" and json.loads(lines[0])["device"] == "pump-7"
    saved = json.loads((tmp_path / "status.json").read_text())
    # samples_in moves before the last frame's windows are scored: the stop may come after one more window
    final = run.agent.pipeline.counters.windows_scored
    assert saved["state"] == "stopped" and saved["windows_scored"] == final >= status["windows_scored"]


def test_hot_swap_accepts_good_bundles_and_rejects_bad_ones(tmp_path, agent_bundle):
    bundle = copy_bundle(agent_bundle, tmp_path / "bundle")
    cfg = agent_config(tmp_path, bundle)
    with Running(cfg) as run:
        agent = run.agent
        first = agent.pipeline.bundle.version
        rewrite_bundle(bundle, version="v2")
        assert wait_for(lambda: agent.sensor().counters.model_swaps == 1, 10)
        assert agent.pipeline.bundle.version == "v2"

        def bad_shape(m):
            m["tflite"]["input"]["shape"] = [1, 9, 16]

        rewrite_bundle(bundle, version="v3", manifest_edit=bad_shape)
        assert wait_for(lambda: agent.sensor().counters.model_rejects == 1, 10)
        rewrite_bundle(bundle, version="v4", model=b"TFL3 not a model", base=agent_bundle)
        assert wait_for(lambda: agent.sensor().counters.model_rejects == 2, 10)
        rewrite_bundle(bundle, version="v5", model=(agent_bundle / "model.tflite").read_bytes(), base=agent_bundle)
        assert wait_for(lambda: agent.sensor().counters.model_swaps == 2, 10)
        manifest = json.loads((bundle / MANIFEST_FILE).read_text())
        manifest["model"]["version"] = "v6"
        manifest["tflite"]["sha256"] = "0" * 64  # a digest that does not match the model
        (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
        assert wait_for(lambda: agent.sensor().counters.model_rejects == 3, 10)
        assert agent.pipeline.bundle.version == "v5" and first != "v5"
        assert agent.status()["sensors"]["pump-7"]["model_version"] == "v5"


def test_agent_refuses_a_corrupt_bundle_at_start(tmp_path, agent_bundle):
    bundle = copy_bundle(agent_bundle, tmp_path / "bundle")
    blob = bytearray((bundle / "model.tflite").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (bundle / "model.tflite").write_bytes(bytes(blob))
    cfg = agent_config(tmp_path, bundle)
    with pytest.raises(BundleError, match="sha256"):
        Agent(load_config(cfg)).start()
    result = CliRunner().invoke(main, ["run", "--config", str(cfg)])
    assert result.exit_code == 1 and "sha256" in result.output


def _stream_in_background(link: PtyLink, x: np.ndarray, stop: threading.Event) -> threading.Thread:
    def feed():
        seq = 0
        while not stop.is_set():
            for f in frames_of(x, 256, seq0=seq):
                if stop.is_set():
                    return
                link.send(f)
            seq += len(x) // 256 * 256

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    return t


def test_calibrate_sets_the_device_threshold_until_cleared(tmp_path, agent_bundle, degrading_samples):
    bundle = copy_bundle(agent_bundle, tmp_path / "bundle")
    link = PtyLink(tmp_path / "ttyV0", write_timeout=5)
    cfg = agent_config(tmp_path, bundle, source={"kind": "serial", "serial": {"port": link.path}})
    stop = threading.Event()
    feeder = _stream_in_background(link, degrading_samples[: RATE * 8], stop)  # healthy part only
    try:
        result = CliRunner().invoke(main, ["calibrate", "--config", str(cfg), "--windows", "40", "--timeout-s", "60"])
    finally:
        stop.set()
        feeder.join(10)
        link.close()
    assert result.exit_code == 0, result.output
    record = calibration.load(tmp_path / "calibration.json")
    b = Bundle.load(bundle)
    assert record.n == 40 and record.method == b.threshold.method and record.bundle_version == b.version
    assert record.value > 0 and record.value != b.threshold.value
    assert calibration.threshold_in_force(tmp_path / "calibration.json", b, "pump-7") == (record.value, "calibration")
    agent = Agent(load_config(cfg)).start()
    assert agent.pipeline.threshold == record.value and agent.status()["sensors"]["pump-7"]["threshold_source"] == "calibration"
    agent.close()
    rewrite_bundle(bundle, version="retrained")  # another model: the stored threshold no longer applies
    assert calibration.threshold_in_force(tmp_path / "calibration.json", Bundle.load(bundle), "pump-7") == (
        b.threshold.value, "bundle")
    result = CliRunner().invoke(main, ["calibrate", "--config", str(cfg), "--clear"])
    assert result.exit_code == 0 and "cleared" in result.output
    assert calibration.load(tmp_path / "calibration.json") is None


def test_status_command_prints_the_status_file(tmp_path, agent_bundle):
    cfg = agent_config(tmp_path, agent_bundle)
    with Running(cfg) as run:
        assert wait_for(lambda: (tmp_path / "status.json").exists(), 10)
        first_inference = run.agent.sensor().first_inference_s
    result = CliRunner().invoke(main, ["status", "--config", str(cfg)])
    assert result.exit_code == 0
    for field in ("samples_in", "frames_dropped", "crc_errors", "gaps", "windows_scored", "inference_ms_p99",
                  "alerts", "model_version"):
        assert field in result.output
    assert first_inference > 0
    missing = CliRunner().invoke(main, ["status", "--file", str(tmp_path / "nope.json")])
    assert missing.exit_code == 1 and "no status file" in missing.output


def test_frames_with_another_channel_count_are_counted_not_fatal(tmp_path, agent_bundle):
    link = PtyLink(tmp_path / "ttyV0", write_timeout=5)
    cfg = agent_config(tmp_path, agent_bundle, source={"kind": "serial", "serial": {"port": link.path}})
    try:
        with Running(cfg) as run:
            assert wait_for(lambda: run.agent.sensor().source.connected.is_set(), 10)
            link.send(encode_frame(0, np.zeros((64, 2), np.float32)))
            assert wait_for(lambda: run.agent.status()["sensors"]["pump-7"]["frames_rejected"] == 1, 10)
    finally:
        link.close()
