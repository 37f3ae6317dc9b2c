"""``trainer evaluate --answers``: real bundles scored against the technicians' answers in a collected dataset (local
and on a real S3-compatible store): a confirmed fault caught by both, a false alarm raised only by the bundle whose
threshold was lowered below it; expected figures derived from each bundle's own scores of the windows; the errors
that name what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_agent.contract.bundle import Bundle
from edge_agent.contract.upload_record import UploadRecord, decode_record, encode_record
from firmware_sim import signals
from tests.agent.pipeline_helpers import RATE, copy_bundle, rewrite_bundle
from trainer import dataset
from trainer.cli import cli
from trainer.retrain import CATCH_WINDOWS, window_scores

WINDOW = 8 * 1024  # the agent bundle's window: 8 blocks of 1024 samples

#: (device, kind, state, bearing state, signal seed, hour, windows, alert_ref, answer on its last 2 windows):
#: pump-1 healthy; pump-2 a broken bearing (one context window before the alert, then the alert), confirmed, and its
#: healthy-looking windows of the hour before (not known healthy: left out); pump-3 a false alarm on a healthy
#: machine, and its windows of the hour before (healthy: near a false alarm, kept); pump-4 an alert only acknowledged.
PLAN = (
    ("pump-1", "normal", "normal", "healthy", 11, 10, 12, None, None),
    ("pump-2", "normal", "normal", "healthy", 13, 11, 4, None, None),
    ("pump-2", "alert", "normal", "broken", 12, 11, 1, "alert-c", None),
    ("pump-2", "alert", "critical", "broken", 22, 12, 6, "alert-c", "confirmed"),
    ("pump-3", "normal", "normal", "healthy", 14, 11, 4, None, None),
    ("pump-3", "alert", "warning", "healthy", 15, 12, 6, "alert-f", "false_alarm"),
    ("pump-4", "alert", "warning", "healthy", 16, 12, 3, "alert-a", "ack"),
)


def _records(channels: tuple[str, ...] = ("ch0", "ch1", "ch2", "ch3")) -> list[tuple[UploadRecord, tuple]]:
    """Each window's upload record as a gateway sends it, with its line of ``PLAN``."""
    out = []
    for line in PLAN:
        device, kind, state, bearing, seed, hour, n, ref, answer = line
        x = signals.generate(signals.make_source("bearing", state=bearing, preset="ims", seed=seed), n * WINDOW)
        for i in range(n):
            out.append((decode_record(encode_record(
                device=device, model_id="test-conv", model_version="served", seq_end=(hour * 100 + i + 1) * WINDOW,
                time_end=f"2026-11-22T{hour:02d}:{i // 60:02d}:{i % 60:02d}", sample_rate=RATE, channels=list(channels),
                score=9.0 if state != "normal" else 0.1, threshold=1.0, state=state, kind=kind, alert_ref=ref,
                answer={"kind": answer, "by": "J. Smith", "time": "2026-11-22T12:31:00Z"} if answer and i >= n - 2
                else None, samples=x[i * WINDOW:(i + 1) * WINDOW])), line))
    return out


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch) -> None:
    """A test that fails before its --out is read writes the default runs/evaluate-answers here, not in the repo."""
    monkeypatch.chdir(tmp_path)


def _write(where: Path | str, records: list) -> Path | str:
    writer = dataset.DatasetWriter(where)
    for rec, _ in records:
        writer.add(rec)
    writer.flush()
    return where


@pytest.fixture(scope="module")
def answered(tmp_path_factory, agent_bundle: Path) -> dict:
    """The dataset, the served bundle and one whose threshold is just below the false alarm's deciding window."""
    root = tmp_path_factory.mktemp("answers")
    records = _records()
    _write(root / "ds", records)
    served = Bundle.load(agent_bundle)
    fa = window_scores(served, [r.samples for r, line in records if line[7] == "alert-f"])
    assert np.sort(fa)[-CATCH_WINDOWS] < served.threshold.value, "construction: the served bundle stays quiet on it"
    lowered = copy_bundle(agent_bundle, root / "lowered")
    value = 0.99 * float(np.sort(fa)[-CATCH_WINDOWS])  # exactly CATCH_WINDOWS of its windows above: raised
    rewrite_bundle(lowered, version="lowered", manifest_edit=lambda m: m["threshold"].__setitem__("value", value))
    return {"ds": root / "ds", "records": records, "bundles": (agent_bundle, lowered), "root": root}


def _expected(bundle: Path, records: list) -> dict:
    """The figures counted here from the bundle's score of every window and the plan."""
    b = Bundle.load(bundle)
    t = b.threshold.value

    def caught(ref: str) -> bool:
        s = window_scores(b, [r.samples for r, line in records if line[7] == ref and line[2] != "normal"])
        return int((s > t).sum()) >= min(CATCH_WINDOWS, len(s))

    normal = window_scores(b, [r.samples for r, line in records if line[1] == "normal" and line[0] != "pump-2"])
    confirmed, raised = int(caught("alert-c")), int(caught("alert-f"))
    return {"threshold": t, "confirmed_caught": confirmed, "false_alarms_raised": raised,
            "precision": confirmed / (confirmed + raised) if confirmed + raised else None,
            "normal_windows": len(normal), "false_alerts": int((normal > t).sum()),
            "false_alert_rate": float((normal > t).mean()), "normal_ratio_p50": float(np.median(normal / t))}


def test_two_bundles_against_a_confirmed_fault_and_a_false_alarm(answered: dict) -> None:
    served, lowered = answered["bundles"]
    out = answered["root"] / "out"
    result = CliRunner().invoke(cli, ["evaluate", "--answers", str(answered["ds"]), "--bundle", str(served),
                                      "--bundle", str(lowered), "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "answers.json").read_text())
    assert results["answered_alerts"] == {"confirmed": 1, "false_alarm": 1}
    assert results["unanswered_alerts"] == 1, "an acknowledged alert is no verdict"
    assert results["normal_windows_near_alerts"] == 4, "pump-2's hour before its confirmed fault is not known healthy"
    cols = {c["version"]: c for c in results["bundles"]}
    for bundle, col in ((served, cols[Bundle.load(served).version]), (lowered, cols["lowered"])):
        want = _expected(bundle, answered["records"])
        for key, value in want.items():
            assert col[key] == pytest.approx(value), (bundle, key)
        assert col["confirmed_faults"] == col["false_alarms"] == 1
        alerts = {a["alert_ref"]: a for a in col["alerts"]}
        assert set(alerts) == {"alert-c", "alert-f"} and alerts["alert-c"]["windows"] == 6, "the context window is not"
        assert alerts["alert-c"]["by"] == "J. Smith" and alerts["alert-f"]["answer"] == "false_alarm"
        assert (alerts["alert-f"]["deciding_ratio"] > 1) == alerts["alert-f"]["caught"]
    # the construction: both catch the fault, only the lowered threshold raises the false alarm
    assert cols["lowered"]["confirmed_caught"] == cols[Bundle.load(served).version]["confirmed_caught"] == 1
    assert cols[Bundle.load(served).version]["false_alarms_raised"] == 0 and cols["lowered"]["false_alarms_raised"] == 1
    assert cols[Bundle.load(served).version]["precision"] == 1.0 and cols["lowered"]["precision"] == 0.5
    md = (out / "answers.md").read_text()
    assert f"| | {served} | {lowered} |" in md and "| false alarms it would still raise | 0 | 1 |" in md
    assert "| false alarms it would still raise | 0 | 1 |" in result.output
    assert (out / "answers.png").stat().st_size > 10_000


def test_an_s3_dataset_gives_the_same_figures(answered: dict, s3_dataset: str, tmp_path: Path) -> None:
    _write(s3_dataset, answered["records"])
    served, _ = answered["bundles"]
    local = CliRunner().invoke(cli, ["evaluate", "--answers", str(answered["ds"]), "--bundle", str(served),
                                     "--out", str(tmp_path / "local")])
    remote = CliRunner().invoke(cli, ["evaluate", "--answers", s3_dataset, "--bundle", str(served),
                                      "--out", str(tmp_path / "s3")])
    assert local.exit_code == remote.exit_code == 0, remote.output
    a, b = (json.loads((tmp_path / d / "answers.json").read_text()) for d in ("local", "s3"))
    assert a["bundles"] == b["bundles"] and b["dataset"] == s3_dataset


def _fails(args: list[str], *expected: str, code: int = 1) -> str:
    result = CliRunner().invoke(cli, ["evaluate", *args])
    assert result.exit_code == code, result.output
    for text in expected:
        assert text in result.output, result.output
    return result.output


def test_a_dataset_without_answers_says_how_answers_get_there(answered: dict, tmp_path: Path) -> None:
    served, _ = answered["bundles"]
    plain = _write(tmp_path / "plain", [(r, line) for r, line in _records() if line[7] in (None, "alert-a")])
    _fails(["--answers", str(plain), "--bundle", str(served), "--out", str(tmp_path / "out")],
           f"{plain}: no technician's answer", "its 1 alert(s) carry only ack (no verdict)", "status page",
           "Home Assistant", "vib/<device>/answer/set", "trainer collect")
    # the selection decides too: another device's answers are not these
    _fails(["--answers", str(answered["ds"]), "--bundle", str(served), "--select", "device=pump-1", "--out",
            str(tmp_path / "out")],
           "no technician's answer", "it holds no alert windows")
    assert not (tmp_path / "out").exists()


def test_a_bundle_that_does_not_fit_the_windows_is_named(answered: dict, tmp_path: Path) -> None:
    served, _ = answered["bundles"]
    other_rate = copy_bundle(served, tmp_path / "10k")
    rewrite_bundle(other_rate, manifest_edit=lambda m: m["signal"].__setitem__("sample_rate", 10_000))
    _fails(["--answers", str(answered["ds"]), "--bundle", str(served), "--bundle", str(other_rate), "--out",
            str(tmp_path / "out")],
           f"{other_rate}: does not fit the windows (sample rate)", "at 10000 Hz", "at 20000 Hz", "--select device=")
    renamed = copy_bundle(served, tmp_path / "xyz")
    rewrite_bundle(renamed, manifest_edit=lambda m: m["preprocess"].update(channels=["x", "y", "z", "w"],
                                                                            feature_names=[]))
    _fails(["--answers", str(answered["ds"]), "--bundle", str(renamed), "--out", str(tmp_path / "out")],
           f"{renamed}: does not fit the windows (channels)", "['x', 'y', 'z', 'w']", "['ch0', 'ch1', 'ch2', 'ch3']")


def test_not_a_dataset_and_usage_errors(answered: dict, tmp_path: Path) -> None:
    served, _ = answered["bundles"]
    (tmp_path / "empty").mkdir()
    _fails(["--answers", str(tmp_path / "empty"), "--bundle", str(served)], "is not a dataset", "trainer collect")
    _fails(["--answers", str(served), "--bundle", str(served)], "is not a dataset: no device=… folders")
    _fails(["--answers", str(answered["ds"]), "--bundle", str(answered["ds"])], str(answered["ds"]), "manifest")
    _fails(["--answers", str(answered["ds"])], "--answers needs one or more --bundle", code=2)
    _fails(["--answers", str(answered["ds"]), "--bundle", str(served), "--data", str(tmp_path)], "not both", code=2)
    _fails(["--answers", str(answered["ds"]), "--bundle", str(served), "--epochs", "3"], "--epochs: only with --data",
           code=2)
    _fails(["--data", str(tmp_path), "--bundle", str(served)], "--bundle: only with --answers", code=2)
    _fails([], "give --data DIR", code=2)
