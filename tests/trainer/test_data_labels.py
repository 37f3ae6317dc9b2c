"""Loaders: label columns are ground truth (never channels), tables split at pauses, clock glitches."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.contract.recordings import detect_format, load
from edge_agent.contract.recordings.recording import GAP_FACTOR, Segment, split_at_gaps

SENSORS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
           "Voltage", "Volume Flow RateRMS"]


def _skab_like(path, n=60, anomaly_from=40):
    """A pump-benchmark layout: ';'-separated, a datetime column, 8 sensors, anomaly + changepoint labels at 1 Hz."""
    rng = np.random.default_rng(0)
    t0 = np.datetime64("2020-03-09T10:14:33", "s")
    lines = [";".join(["datetime", *SENSORS, "anomaly", "changepoint"])]
    for i in range(n):
        values = rng.normal(size=len(SENSORS))
        anomaly = float(i >= anomaly_from)
        lines.append(";".join([str(t0 + i).replace("T", " "), *(f"{v:.5f}" for v in values), f"{anomaly:.1f}",
                               f"{float(i == anomaly_from):.1f}"]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_pump_benchmark_table_keeps_its_labels_out_of_the_channels(tmp_path):
    path = _skab_like(tmp_path / "1.csv")
    rec = load(path, detect_format(path))
    assert list(rec.channels) == SENSORS
    assert rec.label_names == ("anomaly", "changepoint")
    labels = rec.labels()
    assert labels.shape == (60, 2) and labels[:40, 0].sum() == 0 and labels[40:, 0].all() and labels[:, 1].sum() == 1
    assert rec.concatenated().shape == (60, 8)


def test_labels_follow_channel_selection_and_time_splits(tmp_path):
    rec = load(_skab_like(tmp_path / "1.csv"))
    before, after = rec.select_channels(["Current"]).split_at("2020-03-09T10:15:13")
    assert before.n_rows == 40 and after.n_rows == 20
    assert before.labels()[:, 0].sum() == 0 and after.labels()[:, 0].all()
    assert before.digest() != after.digest()


def test_a_generic_csv_with_a_label_column_keeps_it_out_too(tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("a,b,label\n" + "\n".join(f"{i},{2 * i},{int(i > 7)}" for i in range(10)) + "\n")
    rec = load(path, "csv")
    assert list(rec.channels) == ["a", "b"] and rec.label_names == ("label",)
    assert rec.labels()[:, 0].sum() == 2


def test_a_table_is_cut_into_segments_at_pauses():
    times = np.datetime64("2003-10-22T12:00", "ms") + np.array([0, 10, 20, 30, 40, 9000, 9010, 9020], "timedelta64[m]")
    seg = Segment(np.arange(8.0).reshape(8, 1), None, times)
    parts = split_at_gaps(seg)
    assert [p.n_rows for p in parts] == [5, 3]
    assert parts[1].start == times[5]
    steady = Segment(np.zeros((4, 1)), None, times[:4] + np.array([0, 1, 2, int(GAP_FACTOR) * 10 - 1], "timedelta64[m]"))
    assert len(split_at_gaps(steady)) == 1


def test_the_ims_table_with_test_pauses_loads_as_several_segments(shared_data):
    rec = load(shared_data / "ims_bearing" / "averaged" / "1st_test_resmaple_10minutes.csv")
    assert len(rec.segments) > 5 and rec.n_rows == 2156


def test_one_bad_time_of_day_in_a_snapshot_archive_is_a_glitch_not_a_new_day(tmp_path):
    tod = np.array([[15, 31, 39, 0], [15, 32, 19, 0], [9, 38, 46, 0], [15, 33, 39, 0]], np.float64)
    np.savez(tmp_path / "s.npz", acc=np.zeros((4, 10, 2), np.float32), time_of_day=tod)
    rec = load(tmp_path / "s.npz", "snapshots", date="2012-01-01")
    starts = np.array([s.start for s in rec.segments])
    assert (np.diff(starts) == np.timedelta64(40, "s")).all(), starts


def test_midnight_still_starts_a_new_day(tmp_path):
    tod = np.array([[23, 59, 30, 0], [23, 59, 50, 0], [0, 0, 10, 0]], np.float64)
    np.savez(tmp_path / "s.npz", acc=np.zeros((3, 10, 1), np.float32), time_of_day=tod)
    starts = [s.start for s in load(tmp_path / "s.npz", "snapshots", date="2012-01-01").segments]
    assert starts[-1] == np.datetime64("2012-01-02T00:00:10", "ms")


@pytest.mark.parametrize("name", ["anomaly", "Changepoint", "is_anomaly", "label"])
def test_label_names_are_recognised_in_any_case(tmp_path, name):
    path = tmp_path / "t.csv"
    path.write_text(f"timestamp,value,{name}\n2020-01-01 00:00:00,1.0,0\n2020-01-01 00:05:00,2.0,1\n")
    rec = load(path)
    assert rec.channels == ("value",) and len(rec.label_names) == 1
