"""CLI: validate-config, replay (same pipeline as run), the agent never imports TensorFlow, packaging."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from edge_agent import calibration
from edge_agent.cli import main
from edge_agent.contract.bundle import Bundle
from edge_agent.replay import replay
from tests.agent.pipeline_helpers import ONSET_S, RATE, agent_config

ROOT = Path(__file__).resolve().parents[2]


def test_validate_config_exit_codes(tmp_path, agent_bundle):
    good = agent_config(tmp_path, agent_bundle)
    ok = CliRunner().invoke(main, ["validate-config", str(good)])
    assert ok.exit_code == 0 and "ok" in ok.output
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("k = 3", "k = 9"))
    fail = CliRunner().invoke(main, ["validate-config", str(bad)])
    assert fail.exit_code == 1 and "alerts.k: must be 1..n" in fail.output
    nowhere = tmp_path / "nowhere.toml"
    nowhere.write_text(good.read_text().replace(str(agent_bundle), str(tmp_path / "no-bundle-here")))
    missing = CliRunner().invoke(main, ["validate-config", str(nowhere)])
    assert missing.exit_code == 1 and "bundle.path" in missing.output and "no-bundle-here does not exist" in missing.output


def test_replay_cli_writes_rows_and_the_trainer_plots_them(tmp_path, agent_bundle, degrading_samples):
    data = tmp_path / "run.npy"
    np.save(data, degrading_samples)
    out, png = tmp_path / "scores.csv", tmp_path / "scores.png"
    result = CliRunner().invoke(main, ["replay", "--bundle", str(agent_bundle), "--data", str(data), "--format", "npy",
                                       "--calibrate", "30", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["index_end", "time_end", "score", "threshold", "state", "event"]
    assert [r["state"] for r in rows[:30]] == ["calibrating"] * 30 and rows[30]["threshold"] != ""
    device_threshold = calibration.compute(np.array([float(r["score"]) for r in rows[:30]]), Bundle.load(agent_bundle),
                                           "replay").value
    assert float(rows[30]["threshold"]) == float(f"{device_threshold:.9g}")
    raised = [int(r["index_end"]) for r in rows if r["event"] == "raised"]
    assert raised and raised[-1] / RATE >= ONSET_S  # the real fault is caught (a 30-window threshold may add early ones)
    from edge_agent.replay import ReplayRow
    from trainer.report import plot_replay

    plot_replay(png, [ReplayRow(int(r["index_end"]), r["time_end"], float(r["score"]),
                                float(r["threshold"]) if r["threshold"] else None, r["state"], r["event"]) for r in rows])
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_replay_equals_the_live_pipeline_scores(agent_bundle, degrading_samples):
    """Replay's rows are the windows and scores the gateway computes (same code path): check a few by hand."""
    from edge_agent.contract import preprocess
    from edge_agent.contract.recordings.recording import Recording, Segment
    from edge_agent.scorer import Scorer

    bundle = Bundle.load(agent_bundle)
    x = degrading_samples[: RATE * 4]
    rec = Recording((Segment(x.copy()),), bundle.spec.channels, float(RATE), "g", "mem", "npy")
    result = replay(bundle, rec)
    windows = preprocess.windows(preprocess.steps(x, bundle.spec), bundle.spec.window, bundle.spec.hop)
    expected = Scorer(bundle).score_windows(windows)
    np.testing.assert_allclose([r.score for r in result.rows], expected, rtol=0, atol=0)
    assert result.speed is not None and result.speed > 1


AGENT_ONLY = """
import sys, threading, json
from edge_agent.cli import main
args = json.loads(sys.argv[1])
if args[0] == "run-briefly":
    from edge_agent.config import load_config
    from edge_agent.agent import Agent
    stop = threading.Event()
    agent = Agent(load_config(args[1]))
    threading.Timer(1.0, stop.set).start()
    agent.run(stop)
else:
    try:
        main(args, standalone_mode=False)
    except SystemExit:
        pass
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print("HEAVY=" + ",".join(bad))
"""


def _modules_after(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-c", AGENT_ONLY, json.dumps(args)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_agent_never_imports_tensorflow(tmp_path, agent_bundle, degrading_samples):
    data = tmp_path / "run.npy"
    np.save(data, degrading_samples[: RATE * 2])
    assert _modules_after(["replay", "--bundle", str(agent_bundle), "--data", str(data), "--format", "npy",
                           "--out", str(tmp_path / "s.csv")]) == "HEAVY="
    assert (tmp_path / "s.csv").exists()
    cfg = agent_config(tmp_path, agent_bundle)
    assert _modules_after(["run-briefly", str(cfg)]) == "HEAVY="
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "stopped"


def _requirements(groups: dict, name: str, group: str, seen: set) -> set[str]:
    """Requirement names of an extra, following self-references like ``vibration-edge[agent]``."""
    out = set()
    for req in groups[group]:
        base = req.split(";")[0].strip()
        if base.startswith(name + "["):
            for extra in base[len(name) + 1 : -1].split(","):
                if extra not in seen:
                    seen.add(extra)
                    out |= _requirements(groups, name, extra.strip(), seen)
        else:
            out.add(base.split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip().lower())
    return out


def test_agent_extra_does_not_pull_tensorflow():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = project["optional-dependencies"]
    agent = _requirements(groups, project["name"], "agent", {"agent"}) | {
        r.split(">")[0].split("=")[0].strip().lower() for r in project.get("dependencies", [])
    }
    assert {"ai-edge-litert", "paho-mqtt", "pyserial", "click", "numpy"} <= agent
    assert not {d for d in agent if d.startswith(("tensorflow", "keras", "tf-keras", "tf_keras"))}
    assert "tensorflow-cpu" in _requirements(groups, project["name"], "trainer", {"trainer"})  # the check can fail
