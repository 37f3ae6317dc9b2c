"""Windows for training: framed inside segments with the shared preprocessing, scaler fitted on training rows."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.contract.preprocess import PreprocessSpec, model_inputs
from edge_agent.contract.recordings import Recording, Segment

pytest.importorskip("tensorflow")

from trainer.split import parse_time, split_recording  # noqa: E402
from trainer.train import fit_scaler, make_windows, split_validation  # noqa: E402


def snapshots(n_snap: int = 3, length: int = 4096, rate: float = 20480.0) -> Recording:
    rng = np.random.default_rng(0)
    start = np.datetime64("2004-02-12T10:00:00", "ms")
    segs = [Segment(rng.normal(0, 0.1 * (i + 1), (length, 2)).astype(np.float32),
                    start + np.timedelta64(600 * i, "s")) for i in range(n_snap)]
    return Recording(segs, ("x", "y"), rate, "g", "test", "snapshots")


def test_features_windows_stay_inside_segments_and_carry_times():
    rec = snapshots()
    spec = PreprocessSpec(mode="features", channels=("x", "y"), window=4, hop=2, block=512,
                          features=("rms", "kurtosis"), sample_rate=rec.sample_rate)
    scaler = fit_scaler(rec, spec)
    ws = make_windows(rec, spec, scaler)
    per_segment = 1 + (4096 // 512 - 4) // 2  # 8 steps per snapshot -> 3 windows
    assert ws.windows.shape == (3 * per_segment, 4, 4) and ws.windows.dtype == np.float32
    np.testing.assert_array_equal(ws.ends[:per_segment], [2048, 3072, 4096])
    assert ws.ends[per_segment] == 4096 + 2048  # second snapshot starts its own windows
    # the time of a window is the time of its last sample
    assert ws.times[0] == rec.segments[0].start + np.timedelta64(round(2047 * 1000 / rec.sample_rate), "ms")
    assert ws.times[per_segment] > ws.times[per_segment - 1] + np.timedelta64(500, "s")
    # identical to what the gateway computes from the same samples, spec and scaler
    np.testing.assert_array_equal(ws.windows[:per_segment], model_inputs(rec.segments[0].data, spec, scaler))


def test_scaler_sees_training_rows_only_and_is_deterministic():
    times = np.datetime64("2004-02-12T00:00", "ms") + np.arange(100) * np.timedelta64(600, "s")
    data = np.linspace(0, 1, 200, dtype=np.float32).reshape(100, 2)
    rec = Recording([Segment(data.copy(), None, times)], ("a", "b"), None, "g", "t", "ims-avg")
    spec = PreprocessSpec(mode="raw", channels=("a", "b"), window=5)
    train, n = split_recording(rec, "2004-02-12T05:00:00")
    assert n == 30
    scaler = fit_scaler(train, spec)
    np.testing.assert_array_equal(scaler.maximum, data[29])
    a, b = make_windows(rec, spec, scaler), make_windows(rec, spec, fit_scaler(train, spec))
    np.testing.assert_array_equal(a.windows, b.windows)
    assert a.windows.max() > 1.0  # later data beyond the training range is not clipped


def test_validation_split_is_time_ordered_without_overlap():
    fit_idx, val_idx = split_validation(100, 0.2, window=10, hop=1)
    assert val_idx.tolist() == list(range(80, 100))
    assert fit_idx[-1] == 70  # windows 71..79 share steps with window 80 and are dropped
    with pytest.raises(ValueError, match="too few"):
        split_validation(10, 0.5, window=10, hop=1)


def test_time_formats():
    assert parse_time("2004.02.15.12.52.39") == parse_time("2004-02-15 12:52:39") == parse_time("2004-02-15T12:52:39")
    with pytest.raises(ValueError, match="cannot read"):
        parse_time("15/02/2004")



def test_validation_split_by_rows_drops_only_windows_that_overlap():
    from trainer.train import split_validation_rows

    # continuous: windows of 10 rows every row; the 9 before the first validation window overlap it
    fit_idx, val_idx = split_validation_rows(np.arange(10, 110), 10, 0.2)
    assert val_idx[0] == 80 and fit_idx[-1] == 70 and len(fit_idx) == 71
    # snapshots: one window per 2560-row snapshot, nothing overlaps, nothing is lost
    ends = np.arange(1, 40) * 2560
    fit_idx, val_idx = split_validation_rows(ends, 2560, 0.2, min_validation=20)
    assert len(val_idx) == 19 and len(fit_idx) == 20  # at least 20 validation windows when that leaves as many
    with pytest.raises(ValueError, match="too few"):
        split_validation_rows(np.array([10]), 10, 0.2)
