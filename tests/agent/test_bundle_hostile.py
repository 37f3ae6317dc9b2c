"""Bundles handled as technicians handle them: `cp` over a served model, a hostile manifest, a deploy copied
file by file, and the atomic way (`edge-agent deploy`). Real agent processes, real ptys, real bundles."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest
from click.testing import CliRunner

from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.config import load_config
from edge_agent.contract.bundle import MANIFEST_FILE, MODEL_FILE, Bundle, deploy_bundle, write_bundle
from edge_agent.contract.errors import BundleError
from firmware_sim.link import PtyLink
from tests.agent.agent_process import BIN, AgentProcess, Feeder
from tests.agent.pipeline_helpers import RATE, agent_config, copy_bundle, rewrite_bundle
from tests.waiting import wait_for

NESTED = "[" * 200_000 + "]" * 200_000


def _new_version(agent_bundle, dst, version: str):
    """A complete bundle directory ``dst``: the test bundle as model ``version``."""
    copy_bundle(agent_bundle, dst)
    rewrite_bundle(dst, version=version)
    return dst


def test_cp_over_the_served_model_never_kills_a_running_agent(tmp_path, agent_bundle, degrading_samples):
    bundle = copy_bundle(agent_bundle, tmp_path / "bundle")
    link = PtyLink(tmp_path / "ttyV0", write_timeout=10)
    cfg = agent_config(tmp_path, bundle, source={"kind": "serial", "serial": {"port": link.path}})
    agent = AgentProcess(cfg, tmp_path, tmp_path / "status.json")
    try:
        with Feeder(link, degrading_samples[: RATE * 8], RATE):
            assert agent.wait_sensor(lambda s: s.get("windows_scored", 0) > 5, 60), agent.log()
            # `cp other/model.tflite bundle/model.tflite`: the file is truncated in place, then written
            with open(bundle / MODEL_FILE, "wb") as f:
                scored = agent.sensor()["windows_scored"]  # and the agent keeps scoring on the truncated file
                assert agent.wait_sensor(lambda s: s["windows_scored"] >= scored + 20, 30), agent.log()
                f.write((agent_bundle / "variants" / "model.float32.tflite").read_bytes())
            assert agent.wait_sensor(lambda s: s["model_rejects"] >= 2, 20), agent.log()
            scored = agent.sensor()["windows_scored"]
            assert agent.wait_sensor(lambda s: s["windows_scored"] >= scored + 20, 30), agent.log()
            # the atomic way: a new bundle, checked, copied beside the served one and renamed into place
            new = _new_version(agent_bundle, tmp_path / "new", "v2")
            done = subprocess.run([str(BIN / "edge-agent"), "deploy", str(new), "--config", str(cfg)],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            assert "deployed test-conv v2" in done.stdout and "bundle.previous" in done.stdout
            assert agent.wait_sensor(lambda s: s["model_version"] == "v2" and s["model_swaps"] == 1, 20), agent.log()
            assert (tmp_path / "bundle.previous" / MANIFEST_FILE).exists()
    finally:
        rc = agent.stop()
        link.close()
    log = agent.log()
    assert rc == 0, log[-3000:]
    assert "rejected, keeping model" in log and "sha256" in log
    final = agent.status()
    assert final["state"] == "stopped" and final["sensors"]["pump-7"]["model_rejects"] >= 2  # empty, then foreign


def test_deploy_refuses_a_bad_bundle_and_never_replaces_what_is_not_a_bundle(tmp_path, agent_bundle):
    bad = copy_bundle(agent_bundle, tmp_path / "bad")
    (bad / MODEL_FILE).write_bytes(b"TFL3 truncated")
    served = copy_bundle(agent_bundle, tmp_path / "served")
    result = CliRunner().invoke(main, ["deploy", str(bad), "--to", str(served)])
    assert result.exit_code == 1 and "not deployed" in result.output and "sha256" in result.output
    assert Bundle.load(served).version == Bundle.load(agent_bundle).version
    assert not (tmp_path / "served.previous").exists()
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a bundle"):
        deploy_bundle(agent_bundle, home)
    with pytest.raises(BundleError, match="not a bundle"):  # the trainer's --out is held to the same rule
        write_bundle(home, json.loads((agent_bundle / MANIFEST_FILE).read_text()), b"model")
    assert (home / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "home", "served"]  # no temporary left behind


def _running(cfg_path):
    agent = Agent(load_config(cfg_path))
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    return agent, stop, thread


def test_a_deeply_nested_manifest_is_a_refused_bundle_at_run_time_at_start_and_in_validate_config(tmp_path,
                                                                                                 agent_bundle):
    bundle = copy_bundle(agent_bundle, tmp_path / "bundle")
    cfg = agent_config(tmp_path, bundle)
    agent, stop, thread = _running(cfg)
    sensor = agent.sensor()
    try:
        served = sensor.pipeline.bundle.version
        (bundle / MANIFEST_FILE).write_text(NESTED)  # written in place while the agent runs
        assert wait_for(lambda: sensor.counters.model_rejects == 1, 10)
        assert "nested too deeply" in sensor.counters.model_last_reject
        assert thread.is_alive() and sensor.pipeline.bundle.version == served
        rewrite_bundle(bundle, version="v2", base=agent_bundle)  # the watcher lived on: the next bundle swaps
        assert wait_for(lambda: sensor.counters.model_swaps == 1, 10)
    finally:
        stop.set()
        thread.join(20)
    (bundle / MANIFEST_FILE).write_text(NESTED)
    with pytest.raises(BundleError, match="nested too deeply"):
        Bundle.load(bundle)
    with pytest.raises(BundleError, match="no sensor has a model"):
        Agent(load_config(cfg)).start()
    check = subprocess.run([str(BIN / "edge-agent"), "validate-config", str(cfg)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 1 and "bundle.path" in check.stderr and "nested too deeply" in check.stderr
    run = subprocess.run([str(BIN / "edge-agent"), "run", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1 and "nested too deeply" in run.stderr
    assert "Traceback" not in check.stderr + run.stderr


@pytest.mark.parametrize("bad", ["directory", "huge", "not utf-8"])
def test_other_hostile_manifests_are_refused_bundles(tmp_path, agent_bundle, bad):
    bundle = copy_bundle(agent_bundle, tmp_path / "bundle")
    manifest = bundle / MANIFEST_FILE
    manifest.unlink()
    if bad == "directory":
        manifest.mkdir()
    elif bad == "huge":
        manifest.write_bytes(b" " * (5 << 20) + b"{}")
    else:
        manifest.write_bytes(b"\xff\xfe{}")
    with pytest.raises(BundleError, match={"directory": "is a directory", "huge": "larger than",
                                           "not utf-8": "not valid JSON"}[bad]):
        Bundle.load(bundle)


def test_a_deploy_copied_file_by_file_is_picked_up_once_complete(tmp_path, agent_bundle):
    bundle = copy_bundle(agent_bundle, tmp_path / "bundle")
    cfg = agent_config(tmp_path, bundle)
    new = _new_version(agent_bundle, tmp_path / "new", "v2")
    model = (new / MODEL_FILE).read_bytes()
    agent, stop, thread = _running(cfg)
    sensor = agent.sensor()
    counters = sensor.counters
    try:
        # the manifest first, the model still being copied: rejected, the old model serves on
        (bundle / MANIFEST_FILE).write_bytes((new / MANIFEST_FILE).read_bytes())
        with open(bundle / MODEL_FILE, "wb") as f:
            f.write(model[: len(model) // 2])
            f.flush()
            assert wait_for(lambda: counters.model_rejects >= 1, 10)
            f.write(model[len(model) // 2:])
        assert wait_for(lambda: counters.model_swaps == 1, 10), counters
        assert sensor.pipeline.bundle.version == "v2"
        # a manifest whose digest was mistyped: rejected; `touch` makes the watcher look again; fixed: served
        manifest = json.loads((new / MANIFEST_FILE).read_text())
        manifest["model"]["version"] = "v3"
        good_sha, manifest["tflite"]["sha256"] = manifest["tflite"]["sha256"], "f" * 64
        (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
        assert wait_for(lambda: counters.model_rejects >= 2, 10)
        rejects = counters.model_rejects
        os.utime(bundle / MANIFEST_FILE)  # touch
        assert wait_for(lambda: counters.model_rejects == rejects + 1, 10)
        manifest["tflite"]["sha256"] = good_sha
        (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
        assert wait_for(lambda: counters.model_swaps == 2, 10)
        assert sensor.pipeline.bundle.version == "v3" and thread.is_alive()
    finally:
        stop.set()
        thread.join(20)
