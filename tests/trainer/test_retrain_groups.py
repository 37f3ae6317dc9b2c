"""`trainer retrain --by group`: one candidate per group from that group's windows, gated against the bundle that
group serves (CURRENT/<group>/), fanned out on a real local Ray or run serially; a group that fails is reported and
the others are written; bad inputs are clear errors naming the group, folder or dataset."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.contract.bundle import Bundle
from tests.trainer.test_retrain import collected
from trainer import dataset
from trainer.fanout import FanoutOptions, ray_available
from trainer.retrain import SUMMARY_FILE, RetrainOptions, plan_groups, retrain_groups

REPO = Path(__file__).resolve().parents[2]
#: Held-out normal windows per group (the latest 20 % of its healthy ones): they differ, so each comparison shows
#: it was made on its own group's windows.
HELD = {"pumps": 5, "fans": 6}


def group_bundle(src: Path, dst: Path, group: str | None) -> Path:
    """A copy of bundle ``src`` at ``dst`` whose manifest says model.group = ``group``, version ``<version>-<group>``
    (so each group's current bundle is told apart)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    if group is not None:
        manifest["model"]["group"] = group
    manifest["model"]["version"] = f"{manifest['model']['version']}-{group or 'any'}"
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


def fleet(root: Path, bundle: Path) -> tuple[Path, Path]:
    """(dataset, current): pumps (pump-1 healthy 25 windows, pump-2 one alert of 6), fans (fan-1 healthy 30,
    fan-2 one alert of 6), compressors (comp-2's alert of 4 windows, no healthy windows: too few to train on),
    mixers (mix-1's 30 "normal" windows of a broken bearing: the new model learns the fault as normal and misses
    mix-2's alert, refused); CURRENT/<group>/ for each."""
    data = root / "ds"
    collected(data, bundle, normal_state="healthy", n_normal=25, n_alert=6, group="pumps")
    collected(data, bundle, normal_state="healthy", n_normal=30, n_alert=6, group="fans", devices=("fan-1", "fan-2"))
    collected(data, bundle, normal_state="healthy", n_normal=0, n_alert=4, group="compressors",
              devices=("comp-1", "comp-2"))
    collected(data, bundle, normal_state="broken", n_normal=30, n_alert=6, group="mixers", devices=("mix-1", "mix-2"))
    for g in ("pumps", "fans", "compressors", "mixers"):
        group_bundle(bundle, root / "current" / g, g)
    return data, root / "current"


def trainer(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=240)


@pytest.fixture(scope="module")
def serial_run(agent_bundle: Path, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """(the process, OUT, CURRENT) of ``trainer retrain --by group --serial`` on the four groups (2 epochs)."""
    root = tmp_path_factory.mktemp("groups")
    data, current = fleet(root, agent_bundle)
    out = root / "out"
    proc = trainer("retrain", "--dataset", data, "--current", current, "--out", out, "--by", "group", "--serial",
                   "--epochs", "2")
    return proc, out, current


def test_each_group_gets_its_own_bundle_gated_against_its_own(serial_run) -> None:
    proc, out, current = serial_run
    assert proc.stdout.splitlines()[0] == "--serial: retraining the groups one after the other here, without Ray"
    for g in ("pumps", "fans"):
        new, served = Bundle.load(out / g), Bundle.load(current / g)
        assert new.group == g, "the new bundle is the group's model"
        r = new.manifest["retrain"]
        assert r["replaces"] == served.version == r["current"]["version"], "gated against its own group's bundle"
        assert r["new"]["normal_windows"] == HELD[g] and r["new"]["alert_windows"] == 6, "its own group's windows"
        assert f"groups=('{g}',)" in r["select"], "the manifest says which windows it was trained on"
        md = (out / f"{g}.retrain.md").read_text()
        assert md.startswith(f"# Retrain of group {g}: accepted") and "| held-out normal windows |" in md
        assert f"## group {g}: accepted" in proc.stdout
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["mode"] == "serial" and summary["notice"].startswith("--serial")


def test_groups_refused_or_failed_are_reported_and_the_others_are_written(serial_run) -> None:
    proc, out, _ = serial_run
    assert proc.returncode == 1, "a refused or failed group makes the exit status 1"
    assert not (out / "compressors").exists() and not (out / "mixers").exists()
    why = "0 healthy windows of group compressors are too few to train on"
    refused = ("the new model catches 0 of the 1 alerts the fleet reported, the current one 1: not written (--force "
               "writes it anyway)")
    last = proc.stdout.strip().splitlines()[-4:]  # one summary line per group, last
    assert sorted(last) == sorted([f"group compressors: failed: ValueError: {data_of(out)}: {why}",
                                   f"group fans: accepted → {(out / 'fans').resolve()}",
                                   f"group mixers: refused: {refused}",
                                   f"group pumps: accepted → {(out / 'pumps').resolve()}"])
    groups = json.loads((out / SUMMARY_FILE).read_text())["groups"]
    assert {g: v["status"] for g, v in groups.items()} == {"compressors": "failed", "fans": "accepted",
                                                            "mixers": "refused", "pumps": "accepted"}
    md = (out / "mixers.retrain.md").read_text()
    assert md.startswith("# Retrain of group mixers: refused") and "**fails the gate** (alerts caught 1 → 0 of 1" in md
    assert "## group mixers: refused" in proc.stdout and "| alerts caught (3 windows above threshold): the gate | 1 | 0 |" \
        in proc.stdout, "the refused group's table is shown"
    assert why in (out / "compressors.retrain.md").read_text()
    assert "Traceback" in (out / "compressors.retrain.log").read_text(), "the log keeps the traceback"
    assert "retraining on" in (out / "pumps.retrain.log").read_text()


def data_of(out: Path) -> str:
    return json.loads((out / SUMMARY_FILE).read_text())["dataset"]


def test_on_a_local_ray_the_groups_come_back_as_serially(serial_run) -> None:
    """The same retrain as Ray tasks (2 CPUs): the same outcomes and figures, computed in other processes."""
    if not ray_available():
        pytest.fail("ray is not installed: make setup installs the fleet extra (pip install -e '.[fleet]')")
    _, serial_out, current = serial_run
    data = Path(data_of(serial_out))
    out = serial_out.parent / "ray"
    told: list[str] = []
    ran = retrain_groups(RetrainOptions(dataset=data, current=current, out=out, epochs=2), None,
                         FanoutOptions(local_cpus=2), notify=told.append)
    assert ran.mode == "local Ray" and ran.notice is None and not told
    serial = json.loads((serial_out / SUMMARY_FILE).read_text())["groups"]
    assert {g: o.status for g, o in ran.outcomes.items()} == {g: v["status"] for g, v in serial.items()}
    assert ran.exit_code == 1
    for g in ("pumps", "fans"):
        o, s = ran.outcomes[g], serial[g]["comparison"]
        json.dumps(o.comparison)  # plain data came back, not Keras or numpy objects
        assert o.comparison["current"] == s["current"], "the same current model on the same held-out windows"
        for key in ("normal_windows", "alert_windows", "alerts", "alerts_caught", "false_alerts", "alerts_detected"):
            assert o.comparison["new"][key] == s["new"][key], key
        assert o.comparison["new"]["threshold"] == pytest.approx(s["new"]["threshold"], rel=1e-4)
        assert Bundle.load(o.bundle).group == g and o.bundle == (out / g).resolve()
        assert f"group {g}: retraining on" in o.log, "the task's log came back"
        assert o.where.startswith("pid ") and o.where != f"pid {os.getpid()}", "it ran in a Ray worker"
    assert ran.outcomes["compressors"].status == "failed"
    assert "too few to train on" in ran.outcomes["compressors"].reason


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.fixture
def small_fleet(agent_bundle: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A dataset of two groups (2 windows each, nothing trained here) and CURRENT with both groups' bundles."""
    data = tmp_path / "ds"
    collected(data, agent_bundle, normal_state="healthy", n_normal=2, n_alert=0, group="pumps")
    collected(data, agent_bundle, normal_state="healthy", n_normal=2, n_alert=0, group="fans",
              devices=("fan-1", "fan-2"))
    for g in ("pumps", "fans"):
        group_bundle(agent_bundle, tmp_path / "current" / g, g)
    return data, tmp_path / "current"


def _plan(data: Path, current: Path, groups=None) -> list[str]:
    return plan_groups(RetrainOptions(dataset=data, current=current, out=current.parent / "out"), groups)


def test_the_groups_to_retrain_and_the_bad_inputs(small_fleet, agent_bundle: Path, tmp_path: Path) -> None:
    data, current = small_fleet
    assert _plan(data, current) == ["fans", "pumps"]
    assert _plan(data, current, ["pumps"]) == ["pumps"]
    with pytest.raises(ValueError, match=r"--groups: no records of group valves in .* \(its groups: fans, pumps\)"):
        _plan(data, current, ["pumps", "valves"])
    for bad in ("a/b", "pumps+", "#"):
        with pytest.raises(ValueError, match=r"--groups .* is not a group id .*no '/', '\+' or '#'"):
            _plan(data, current, [bad])

    shutil.rmtree(current / "fans")
    with pytest.raises(ValueError) as info:
        _plan(data, current)
    assert str(info.value) == (f"records of group fans, but {current} has no fans/ bundle: no gateway serves a model "
                               "for it — train one with `trainer train --group fans` or leave it out with --groups")
    assert _plan(data, current, ["pumps"]) == ["pumps"], "--groups leaves it out"

    group_bundle(agent_bundle, current / "fans", "pumps")
    with pytest.raises(ValueError, match=r"fans: its manifest says model.group 'pumps', but it is in the folder of "
                                         r"group 'fans'"):
        _plan(data, current)
    shutil.rmtree(current / "fans")
    group_bundle(agent_bundle, current / "fans", None)
    with pytest.raises(ValueError, match=r"fans: its manifest has no model.group \(a model for any sensor\)"):
        _plan(data, current)

    for name in ("a+b", "a#b"):
        (current / name).mkdir()
        with pytest.raises(ValueError, match=re.escape(f"{name}: a group's folder must be named by the group, an id")):
            _plan(data, current, ["pumps"])
        (current / name).rmdir()

    plain = tmp_path / "no-groups"
    collected(plain, agent_bundle, normal_state="healthy", n_normal=2, n_alert=0)
    with pytest.raises(ValueError, match=r"none of its 2 selected windows carries a group"):
        _plan(plain, current)


def test_the_command_refuses_group_options_without_by_group(small_fleet, tmp_path: Path) -> None:
    data, current = small_fleet
    proc = trainer("retrain", "--dataset", data, "--current", current / "pumps", "--out", tmp_path / "o", "--groups",
                   "pumps", "--serial")
    assert proc.returncode == 2 and "--groups, --serial only with --by group" in proc.stderr
    proc = trainer("retrain", "--dataset", data, "--current", current, "--out", tmp_path / "o", "--by", "group",
                   "--groups", "pumps,valves", "--serial")
    assert proc.returncode == 1 and "no records of group valves" in proc.stderr
    assert not (tmp_path / "o").exists(), "nothing written on bad input"


def test_the_group_filter_reads_one_groups_windows(small_fleet) -> None:
    data, _ = small_fleet
    t = dataset.read_table(data, dataset.parse_select(["group=fans"]), columns=["group"])
    assert set(t.column("device").to_pylist()) == {"fan-1"} and set(t.column("group").to_pylist()) == {"fans"}
