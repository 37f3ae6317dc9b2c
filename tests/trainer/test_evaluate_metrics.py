"""The evaluation harness's scoring rules: NAB scores, window hits, point metrics, run-to-failure figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.evaluate import metrics, nab
from trainer.evaluate.harness import discover, load_suite


def test_scaled_sigmoid_matches_nab_anchor_values():
    assert nab.scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert nab.scaled_sigmoid(0.0) == 0.0
    assert nab.scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(3.0) == -1.0


def test_nab_score_rewards_early_detection_and_costs_misses_and_false_alarms():
    n, windows = 1000, [(400, 499), (700, 799)]
    early = nab.score(n, windows, [400, 700])
    assert early.raw == pytest.approx(2 * nab.scaled_sigmoid(-1.0) / nab.scaled_sigmoid(-1.0) * 1.0, rel=1e-9)
    late = nab.score(n, windows, [490, 790])
    assert 0 < late.raw < early.raw
    missed = nab.score(n, windows, [])
    assert missed.raw == missed.null == -2.0 and missed.fn == 2
    only_fp = nab.score(n, windows, [300])  # no window before it: -fp weight
    assert only_fp.raw == pytest.approx(-2.0 - 0.11) and only_fp.fp == 1
    in_probation = nab.score(n, windows, [10])
    assert in_probation.raw == -2.0 and in_probation.fp == 0
    low_fp = nab.score(n, windows, [300], "reward_low_FP_rate")
    assert low_fp.raw == pytest.approx(-2.0 - 0.22)
    assert nab.normalised([early]) == pytest.approx(100.0) and nab.normalised([missed]) == pytest.approx(0.0)


def test_a_false_alarm_right_after_a_window_costs_little():
    windows = [(400, 499)]
    just_after = nab.score(1000, windows, [410, 505]).raw
    far_after = nab.score(1000, windows, [410, 900]).raw
    assert far_after < just_after < nab.score(1000, windows, [410]).raw


def test_window_hits_count_raises_inside_and_outside_after_the_training_part():
    r = metrics.window_hits([50, 420, 430, 600, 760], [(400, 499), (700, 799)], after_row=100)
    assert r == {"windows": 2, "hit": 2, "outside": 1}


def test_point_metrics_and_flags():
    flags = metrics.point_flags(np.array([10, 20, 30, 40]), np.array(["normal", "warning", "warning", "normal"]), 45)
    assert not flags[:19].any() and flags[19:39].all() and not flags[39:].any()
    truth = np.zeros(45, bool)
    truth[25:45] = True
    m = metrics.point_metrics(flags, truth)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (14, 6, 6, 19)
    assert m["precision"] == pytest.approx(0.7) and m["recall"] == pytest.approx(0.7)
    assert m["far"] == pytest.approx(6 / 25) and m["mar"] == pytest.approx(6 / 20)


def test_run_to_failure_figures():
    states = np.array(["calibrating"] * 3 + ["normal"] * 10 + ["warning"] * 2 + ["normal"] * 5 + ["critical"] * 10)
    times = np.arange(len(states)) * 3600.0
    r = metrics.run_to_failure(states, times, healthy_until=times[15])
    assert r["episodes"] == 2 and r["episodes_healthy"] == 1 and r["stayed_raised"]
    assert r["first_alert_life"] == pytest.approx(20 / 29) and r["lead_h"] == pytest.approx(9.0)
    assert r["first_any_life"] == pytest.approx(13 / 29)
    assert r["first_degrading_life"] == pytest.approx(20 / 29) and r["degrading_lead_h"] == pytest.approx(9.0)
    assert not r["degrading_healthy"]
    early = metrics.run_to_failure(states, times, healthy_until=times[25])
    assert early["degrading_healthy"] and early["episodes_healthy"] == 2
    quiet = metrics.run_to_failure(np.array(["normal"] * 5 + ["warning"] * 5), np.arange(10.0), healthy_until=3.0)
    assert quiet["first_degrading_life"] is None and not quiet["degrading_healthy"]


def test_discover_finds_nab_layout_series_and_labelled_tables(tmp_path):
    (tmp_path / "realKnownCause").mkdir()
    (tmp_path / "realKnownCause" / "machine.csv").write_text("timestamp,value\n2020-01-01 00:00:00,1\n")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "combined_windows.json").write_text(json.dumps(
        {"realKnownCause/machine.csv": [["2020-01-01 00:00:00.000000", "2020-01-01 01:00:00.000000"]],
         "realKnownCause/missing.csv": []}))
    (tmp_path / "pump").mkdir()
    (tmp_path / "pump" / "1.csv").write_text("datetime;a;anomaly;changepoint\n2020-01-01 00:00:00;1;0;0\n")
    (tmp_path / "plain.csv").write_text("a,b\n1,2\n")
    np.savez(tmp_path / "bearing.npz", acc=np.zeros((3, 10, 2), np.float32), time_of_day=np.zeros((3, 4)))
    np.savez(tmp_path / "untimed.npz", acc=np.zeros((3, 10, 2), np.float32))
    cases = discover(tmp_path)
    assert [(c.kind, c.data.name) for c in cases] == [("windows", "machine.csv"), ("run-to-failure", "bearing.npz"),
                                                      ("points", "1.csv")]
    assert cases[0].label_key == "realKnownCause/machine.csv" and cases[0].train_fraction == nab.PROBATION
    assert [c.group for c in cases[1:]] == ["run to failure", "pump"], "a recording at the top has a named group"


def test_the_shared_suite_parses(shared_data):
    from pathlib import Path

    suite = Path(__file__).resolve().parents[2] / "bench" / "evaluate_shared.toml"
    cases = load_suite(suite, shared_data)
    kinds = {c.kind for c in cases}
    assert kinds == {"run-to-failure", "windows", "points"} and sum(c.kind == "windows" for c in cases) == 11
    skab = [c for c in cases if c.kind == "points"]
    assert len(skab) == 16 and all(c.train_rows == 400 and len(c.reference) == 4 for c in skab)
    assert all(c.data.exists() for c in cases)
