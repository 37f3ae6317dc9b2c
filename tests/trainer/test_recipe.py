"""Data-aware defaults (trainer.recipe): the representation follows the data's properties, never its name."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.contract.recordings import Recording, Segment, load
from trainer import recipe


def _snapshots(n: int, length: int, rate: float, channels: int = 2, seed: int = 0) -> Recording:
    rng = np.random.default_rng(seed)
    t0 = np.datetime64("2020-01-01T00:00:00", "ms")
    segs = [Segment(rng.normal(size=(length, channels)).astype(np.float32), t0 + np.timedelta64(10 * i, "s"))
            for i in range(n)]
    return Recording(tuple(segs), tuple(f"c{j}" for j in range(channels)), rate, "g", "mem", "snapshots")


def _table(values: np.ndarray, minutes: int = 5) -> Recording:
    times = np.datetime64("2020-01-01T00:00", "ms") + np.arange(len(values)) * np.timedelta64(minutes, "m")
    return Recording((Segment(values.reshape(len(values), -1).astype(np.float32), None, times),),
                     ("value",), None, "", "mem", "nab")


def test_short_snapshots_give_one_window_per_snapshot_of_ten_blocks():
    rec = _snapshots(30, 2560, 25600.0)  # 0.1 s snapshots (FEMTO-like)
    r = recipe.choose(rec)
    assert (r.mode, r.block, r.window, r.hop, r.architecture) == ("features", 256, 10, 10, "lstm")
    assert r.features == recipe.FEATURES
    assert r.fft_bands[0] == (0.0, 800.0) and r.fft_bands[-1] == (6400.0, 12800.0) and len(r.fft_bands) == 5


def test_one_second_snapshots_use_blocks_of_a_tenth_of_a_second():
    r = recipe.choose(_snapshots(5, 20480, 20480.0, channels=4))  # IMS-like
    assert (r.mode, r.block, r.window, r.hop) == ("features", 2048, 10, 10)


def test_a_continuous_stream_uses_blocks_of_a_tenth_of_a_second_and_windows_of_one_second():
    rec = Recording((Segment(np.zeros((200_000, 1), np.float32)),), ("x",), 20000.0, "g", "mem", "npy")
    r = recipe.choose(rec)
    assert (r.mode, r.block, r.window, r.hop) == ("features", 2000, 10, 10)
    assert "continuous" in " ".join(r.reasons)


def test_a_slow_table_without_a_period_is_modelled_row_by_row_with_non_overlapping_windows():
    rng = np.random.default_rng(1)
    r = recipe.choose(_table(np.cumsum(rng.normal(size=600))))
    assert (r.mode, r.window, r.hop, r.train_hop, r.architecture) == ("raw", 10, 10, 1, "lstm")


@pytest.mark.parametrize("period, architecture", [(48, "lstm"), (288, "conv1d")])
def test_a_periodic_table_gets_windows_of_half_a_period(period, architecture):
    rng = np.random.default_rng(2)
    t = np.arange(4 * period)
    r = recipe.choose(_table(10 * np.sin(2 * np.pi * t / period) + rng.normal(scale=0.5, size=t.size)))
    assert abs(r.window - period // 2) <= 1 and (r.hop, r.architecture) == (period // 24, architecture)


def test_a_short_periodic_training_set_gets_shorter_windows_so_every_phase_is_fitted():
    rng = np.random.default_rng(4)
    t = np.arange(604)  # NAB's probation: 2.1 days of 5-minute rows, a daily cycle of 288 rows
    r = recipe.choose(_table(np.sin(2 * np.pi * t / 288) + 0.05 * rng.normal(size=t.size)))
    assert 72 <= r.window <= 110 and r.hop == 12
    fit_starts = 0.8 * (604 - r.window) - r.window
    assert fit_starts >= 287


def test_dominant_period_is_found_in_a_cycle_and_not_in_a_random_walk():
    rng = np.random.default_rng(3)
    t = np.arange(1000)
    period, acf, prominence = recipe.dominant_period(np.sin(2 * np.pi * t / 100)[:, None] + 0.1 * rng.normal(size=(1000, 1)))
    assert period == 100 and acf > 0.8 and prominence > 1.0
    walk = np.cumsum(rng.normal(size=1000))[:, None]
    _, _, prominence = recipe.dominant_period(walk)
    assert prominence < recipe.PERIOD_MIN_PROMINENCE


def test_explicit_options_win_and_a_window_alone_keeps_hop_equal_to_window():
    rec = _snapshots(30, 2560, 25600.0)
    r = recipe.resolve(rec, window=5)
    assert (r.window, r.hop, r.block, r.overridden) == (5, 5, 256, ("window",))
    r = recipe.resolve(rec, mode="raw")
    assert (r.mode, r.block, r.features, r.fft_bands, r.window) == ("raw", 1, (), (), 10)
    r = recipe.resolve(_table(np.arange(100.0)), mode="features", features=("rms",))
    assert (r.mode, r.block, r.features) == ("features", 10, ("rms",))
    assert recipe.resolve(rec, window=100).architecture == "conv1d"


#: format -> (path under the repository, mode, window, hop): the recipe per format documented in docs/central/train.md
RECIPES = {
    "ims": ("data/ims_bearing/raw_1st_test", "features", 10, 10),
    "ims-avg": ("data/ims_bearing/averaged/2nd_test_resmaple_10minutes.csv", "raw", 10, 10),
    "femto": ("tests/fixtures/data/femto_Bearing1_2", "features", 10, 10),
    "snapshots": ("data/femto/femto_Bearing1_2_first20_last20.npz", "features", 10, 10),
    "nab": ("data/nab/art_daily_jumpsup.csv", "raw", 108, 12),
    "npy": ("data/lorenz/watsoniotp.healthy.phase_aligned.npy", "raw", 10, 10),
}


@pytest.mark.parametrize("fmt", sorted(RECIPES))
def test_each_supported_format_gets_the_documented_default(fmt):
    from pathlib import Path

    path, mode, window, hop = RECIPES[fmt]
    rec = load(Path(__file__).resolve().parents[2] / path, fmt)
    training = rec.head(int(0.15 * rec.n_rows)) if fmt == "nab" else rec
    r = recipe.choose(rec, training)
    assert (r.mode, r.window, r.hop) == (mode, window, hop), r.describe()


def test_raw_vibration_in_a_csv_with_a_time_column_or_an_npy_with_a_given_rate_gets_features(tmp_path):
    t = np.arange(0, 3, 1 / 12000)
    x = np.c_[np.sin(2 * np.pi * 157 * t), np.random.default_rng(0).normal(size=len(t))]
    np.savetxt(tmp_path / "vib.csv", np.c_[t, x], delimiter=",", header="t,x,y", comments="", fmt="%.6f")
    np.save(tmp_path / "vib.npy", x.astype(np.float32))
    for rec in (load(tmp_path / "vib.csv"), load(tmp_path / "vib.npy", sample_rate=12000.0)):
        r = recipe.choose(rec)
        assert rec.sample_rate == 12000.0 and rec.channels[-2:] in (("x", "y"), ("ch0", "ch1"))
        assert (r.mode, r.block, r.window, r.hop) == ("features", 1200, 10, 10), r.describe()
    assert recipe.choose(load(tmp_path / "vib.npy")).mode == "raw", "without a rate nothing says it is vibration"


def _multi(values: np.ndarray, names: tuple[str, ...]) -> Recording:
    times = np.datetime64("2020-01-01T00:00", "ms") + np.arange(len(values)) * np.timedelta64(1, "s")
    return Recording((Segment(values.astype(np.float32), None, times),), names, None, "", "mem", "csv")


def test_slow_channels_of_a_process_table_are_judged_against_their_recent_level():
    """A pump table: flow is noisy, temperature warms up slowly. The temperature is taken relative to an average
    over a quarter of the training rows; a table whose channels are all slow (bearing RMS trends) or of one
    channel keeps its levels."""
    rng = np.random.default_rng(0)
    n = 400
    flow = rng.normal(32.0, 0.5, n)
    temp = 70.0 + 0.01 * np.arange(n) + rng.normal(0, 0.005, n)
    r = recipe.choose(_multi(np.column_stack([flow, temp]), ("flow", "temp")))
    assert r.relative == ("temp",) and r.relative_rows == 100.0
    assert "temp change slowly" in " ".join(r.reasons)
    assert recipe.slowness(np.column_stack([flow, temp]))[0] > 0.9
    both_slow = recipe.choose(_multi(np.column_stack([temp, temp * 2 + 1]), ("a", "b")))
    assert both_slow.relative == () and both_slow.relative_rows == 0.0
    assert recipe.choose(_multi(temp[:, None], ("temp",))).relative == ()
    constant = recipe.choose(_multi(np.column_stack([flow, np.ones(n)]), ("flow", "one")))
    assert constant.relative == ()  # a constant channel is not "slow": nothing to judge
    assert recipe.resolve(_multi(np.column_stack([flow, temp]), ("flow", "temp")), mode="features").relative == ()
