"""The point-label protocol of ``trainer evaluate`` (kind ``points``, ``train_rows``): train on the first N rows of
each file, judge every later row by the served alert state, F1/FAR/MAR over the files joined (SKAB definitions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_agent.alerts import AlertPolicy, AlertStateMachine, WindowResult
from trainer.evaluate import metrics, points
from trainer.evaluate.harness import load_suite, run_suite

T0 = np.datetime64("2020-03-09T10:00:00", "s")


def _pump_csv(path, n, shift_rows=None, shift=8.0, seed=0):
    """A SKAB-like table: ``;``-separated, 1 Hz datetime, three noisy channels, ``anomaly`` and ``changepoint``;
    the rows in ``shift_rows`` (a, b) are shifted by ``shift`` on every channel and labelled anomalous."""
    rng = np.random.default_rng(seed)
    lines = ["datetime;Current;Pressure;Temperature;anomaly;changepoint"]
    a, b = shift_rows or (n, n)
    for i in range(n):
        bad = a <= i < b
        x = rng.normal(size=3) + np.array([1.0, 0.2, 70.0]) + (shift if bad else 0.0)
        lines.append(f"{str(T0 + i).replace('T', ' ')};{x[0]:.4f};{x[1]:.4f};{x[2]:.4f};{int(bad)};{int(i in (a, b - 1))}")
    path.write_text("\n".join(lines) + "\n")


def _suite(path, body):
    path.write_text(body)
    return path


# ---------------------------------------------------------------------------------------------- definitions
def test_f1_far_mar_by_hand_over_files_joined():
    # file A: 12 rows, rows 0-3 train; judged rows 4-11: TP rows 6, 7, 9; FP rows 5, 10, 11; FN row 8; TN row 4
    truth_a = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0], bool)
    flags_a = np.array([1, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1], bool)
    # file B: 10 rows, rows 0-3 train; judged rows 4-9: TP row 5; FN row 4; FP row 9; TN rows 6, 7, 8
    truth_b = np.array([0, 0, 0, 0, 1, 1, 0, 0, 0, 0], bool)
    flags_b = np.array([0, 0, 0, 0, 0, 1, 0, 0, 0, 1], bool)
    a, b = points.figures(flags_a, truth_a, 4), points.figures(flags_b, truth_b, 4)
    assert (a["tp"], a["fp"], a["fn"], a["tn"], a["rows"]) == (3, 3, 1, 1, 8)
    assert (b["tp"], b["fp"], b["fn"], b["tn"], b["rows"]) == (1, 1, 1, 3, 6)
    assert a["all_rows"] == {"tp": 3, "fp": 4, "fn": 1, "tn": 4}, "row 0 was flagged during training: a false alarm"
    j = points.joined([a, b])
    assert (j["tp"], j["fp"], j["fn"], j["tn"], j["files"]) == (4, 4, 2, 4, 2)
    assert j["precision"] == pytest.approx(0.5) and j["recall"] == pytest.approx(4 / 6)
    assert j["f1"] == pytest.approx(8 / 14)  # 2 TP / (2 TP + FP + FN), SKAB's TP / (TP + (FP + FN) / 2)
    assert j["far"] == pytest.approx(4 / 8) and j["mar"] == pytest.approx(2 / 6)
    assert j["f1"] != pytest.approx((a["f1"] + b["f1"]) / 2), "files are joined by their counts, not averaged"
    w = points.joined([a, b], whole_files=True)  # as SKAB's notebooks count: the training rows too
    assert (w["tp"], w["fp"], w["fn"], w["tn"]) == (4, 5, 2, 11)
    assert w["far"] == pytest.approx(5 / 16) and w["f1"] == pytest.approx(8 / 15)


def test_a_row_carries_the_served_alert_state_of_the_latest_window_ending_at_or_before_it():
    """Windows of 10 rows; scores above the threshold on windows 5-9 (rows 50-99); default policy: raised on the
    3rd window above (3 of 5), cleared after 5 windows below 0.8 x threshold."""
    policy = AlertPolicy()
    machine = AlertStateMachine(policy, clock=lambda: 0.0)
    ends = np.arange(10, 201, 10)
    scores = np.where((ends > 50) & (ends <= 100), 5.0, 0.5)
    states = []
    for i, s in enumerate(scores):
        machine.update(WindowResult("d", "m", float(s), 1.0, float(i), int(ends[i])))
        states.append(machine.state)
    flags = metrics.point_flags(ends, np.array(states), 200)
    assert np.flatnonzero(flags).tolist() == list(range(79, 149)), \
        "flagged from the last row of the window that raised (rows 70-79) to the row before the clearing window's last"
    truth = np.zeros(200, bool)
    truth[50:100] = True
    m = points.figures(flags, truth, 20)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (21, 29, 49, 81)


# ---------------------------------------------------------------------------------------------- hostile suites
@pytest.mark.parametrize("extra, message", [
    ("train_rows = 400\ntrain_fraction = 0.3", "give one of train_fraction, train_until, train_rows"),
    ('train_rows = "400"', "train_rows must be a whole number"),
    ("train_rows = 0", "train_rows must be a whole number"),
    ('train_rows = 40\nreference = [{ detector = "X", f1 = 0.7, far_pct = 10.0, mar_pct = 5.0 }]', "exactly the keys"),
    ('train_rows = 40\nreference = [{ detector = "X", f1 = 0.7, far_pct = "10", mar_pct = 5.0, source = "p" }]',
     "far_pct must be a float"),
    ('train_rows = 40\nreference = [{ detector = "X", f1 = 0.7, far_pct = 1355.0, mar_pct = 5.0, source = "p" }]',
     "percent, as published"),
    ('train_rows = 40\nreference = "Conv-AE"', "reference must be a list"),
])
def test_a_bad_points_case_is_refused_naming_the_case_and_key(tmp_path, extra, message):
    _pump_csv(tmp_path / "1.csv", 50)
    suite = _suite(tmp_path / "s.toml", f'[[case]]\nname = "pump"\nkind = "points"\ndata = "1.csv"\n{extra}\n')
    with pytest.raises(ValueError, match=message) as err:
        load_suite(suite, tmp_path)
    assert "pump" in str(err.value)


def test_reference_rows_belong_to_points_cases(tmp_path):
    suite = _suite(tmp_path / "s.toml", '[[case]]\nname = "nab"\nkind = "windows"\ndata = "1.csv"\n'
                   'reference = [{ detector = "X", f1 = 0.7, far_pct = 1.0, mar_pct = 5.0, source = "p" }]\n')
    with pytest.raises(ValueError, match="points cases only"):
        load_suite(suite, tmp_path)


def test_a_file_shorter_than_the_training_rows_fails_its_case_with_a_message(tmp_path):
    _pump_csv(tmp_path / "short.csv", 300)
    suite = _suite(tmp_path / "s.toml", '[[case]]\nname = "pump"\nkind = "points"\ndata = "*.csv"\ntrain_rows = 400\n')
    outcomes = run_suite(load_suite(suite, tmp_path), tmp_path / "out", with_baselines=False)
    error = outcomes[0].figures["ae"]["error"]
    assert "short.csv" in error and "train_rows = 400" in error and "300 rows" in error, error
    assert "* pump: ValueError" in (tmp_path / "out" / "report.md").read_text()


def test_a_missing_label_column_is_named(tmp_path):
    from edge_agent.contract.recordings import load

    _pump_csv(tmp_path / "1.csv", 30)
    with pytest.raises(ValueError, match="no label column 'fault'.*anomaly"):
        points.truth_of(load(tmp_path / "1.csv"), "fault")


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_level_shifts_are_flagged_through_the_served_pipeline_and_joined(tmp_path):
    pytest.importorskip("tensorflow")
    from trainer.train import FitConfig

    data = tmp_path / "data"
    data.mkdir()
    _pump_csv(data / "1.csv", 700, shift_rows=(500, 600), seed=1)
    _pump_csv(data / "2.csv", 700, shift_rows=(500, 600), shift=-8.0, seed=2)
    suite = _suite(tmp_path / "s.toml", '[[case]]\nname = "pump"\nkind = "points"\ngroup = "pumps"\ndata = "*.csv"\n'
                   'train_rows = 400\nreference = [{ detector = "Published-AE", f1 = 0.78, far_pct = 13.55, '
                   'mar_pct = 28.02, source = "published, all 34 files" }]\n')
    out = tmp_path / "out"
    outcomes = run_suite(load_suite(suite, data), out, train_options={"fit": FitConfig(epochs=3)}, with_baselines=False)
    assert [o.case.name for o in outcomes] == ["pump/1", "pump/2"] and all(o.rows for o in outcomes), \
        [o.figures for o in outcomes]
    for o in outcomes:
        ae = o.figures["ae"]
        assert o.manifest["data"]["split"]["training_rows"] == 400 and ae["judged_from"] == 400 and ae["rows"] == 300
        assert o.manifest["recipe"]["window"] == 10 and o.manifest["recipe"]["hop"] == 10, o.manifest["recipe"]
        # served policy, windows of 10 rows: raised by the window ending at row 529 (3rd of 3 above), cleared by the
        # 5th window below (ending at row 649): rows 529-599 hit, 500-528 missed, 600-648 false, the rest quiet
        assert (ae["tp"], ae["fn"], ae["fp"], ae["tn"]) == (71, 29, 49, 151), ae
        assert ae["all_rows"] == {"tp": 71, "fn": 29, "fp": 49, "tn": 551}, ae["all_rows"]
        assert np.flatnonzero(o.rows["row_flags"]).tolist() == list(range(529, 649))
        saved = np.load(out / f"{o.case.name.replace('/', '-')}.npz")
        assert saved["row_truth"].sum() == 100 and saved["row_flags"].sum() == 120
        assert (out / f"{o.case.name.replace('/', '-')}.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    # joined: 142 TP, 98 FP, 58 FN, 302 TN -> F1 284 / 440, FAR 98 / 400, MAR 58 / 200
    assert "| pumps | ae | 2 | 0.592 | 0.710 | 0.645 | 24.5% | 29.0% | 0.645 / 8.2% / 29.0% |" in report, report
    assert "| pumps | Published-AE (published, all 34 files) | - | - | - | 0.78 | 13.55% | 28.02% | - |" in report
    results = json.loads((out / "results.json").read_text())
    assert results[0]["figures"]["ae"]["all_rows"]["tn"] == 551
