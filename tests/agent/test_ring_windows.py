"""Ring buffer and windower: exact agreement with offline preprocessing, and gap/NaN/saturation handling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.contract import preprocess
from edge_agent.contract.binary import FrameDecoder, encode_frame, int16_scale
from edge_agent.contract.frames import SEQ_MOD, Frame
from edge_agent.ring import Ring
from edge_agent.windows import Windower

RAW = preprocess.PreprocessSpec(mode="raw", channels=("x", "y"), window=16, hop=4)
FEAT = preprocess.PreprocessSpec(
    mode="features",
    channels=("x", "y"),
    window=6,
    hop=2,
    block=32,
    features=("mean_abs", "rms", "std", "peak", "kurtosis", "crest"),
    fft_bands=((100.0, 1000.0), (1000.0, 4000.0)),
    sample_rate=10_000.0,
)


def _signal(n: int, c: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    return (np.sin(t * 0.07 * np.arange(1, c + 1)) + 0.3 * rng.standard_normal((n, c))).astype(np.float32)


def _frames(x: np.ndarray, sizes: list[int], seq0: int = 0) -> list[Frame]:
    out, pos = [], 0
    for i in range(len(x)):
        size = sizes[i % len(sizes)]
        if pos >= len(x):
            break
        chunk = x[pos : pos + size]
        out.append(Frame((seq0 + pos) % SEQ_MOD, pos * 100, chunk.copy()))
        pos += len(chunk)
    return out


def _collect(windower: Windower, frames: list[Frame]) -> tuple[np.ndarray, list[int]]:
    got, ends = [], []

    def emit(w):
        got.append(w.steps.copy())
        ends.append(w.seq_end)

    for f in frames:
        windower.push(f, emit)
    shape = (0, windower.spec.window, windower.spec.n_features)
    return (np.stack(got) if got else np.empty(shape, np.float32)), ends


def test_ring_wraps_and_copies_latest():
    ring = Ring(5, 2)
    data = np.arange(26, dtype=np.float32).reshape(13, 2)
    ring.write(data[:3])
    ring.write(data[3:7])  # wraps
    out = np.empty((4, 2), np.float32)
    np.testing.assert_array_equal(ring.latest(4, out), data[3:7])
    ring.write(data[7:13])  # more than capacity
    np.testing.assert_array_equal(ring.latest(4, out), data[9:13])
    assert ring.count == 5 and ring.total == 13
    with pytest.raises(ValueError):
        ring.latest(6, np.empty((6, 2), np.float32))


@pytest.mark.parametrize("spec", [RAW, FEAT], ids=["raw", "features"])
@pytest.mark.parametrize("sizes", [[1], [7, 100, 3], [4096], [33, 64]])
def test_windower_equals_offline_preprocessing(spec, sizes):
    x = _signal(spec.window_samples * 5 + 37)
    expected = preprocess.windows(preprocess.steps(x, spec), spec.window, spec.hop)
    windower = Windower(spec)
    got, ends = _collect(windower, _frames(x, sizes, seq0=2**32 - 50))
    assert got.shape == expected.shape and len(got) > 3
    np.testing.assert_array_equal(got, expected)  # exact, not approximately
    step_ends = preprocess.window_ends(len(x) // spec.block, spec.window, spec.hop) * spec.block
    assert ends == [int((2**32 - 50 + e) % 2**32) for e in step_ends]
    assert windower.counters.windows == len(expected) and windower.counters.gaps == 0


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=8))
def test_windower_equals_offline_for_any_framing(sizes):
    x = _signal(FEAT.window_samples * 3 + 11, seed=len(sizes))
    expected = preprocess.windows(preprocess.steps(x, FEAT), FEAT.window, FEAT.hop)
    got, _ = _collect(Windower(FEAT), _frames(x, sizes))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("spec", [RAW, FEAT], ids=["raw", "features"])
def test_gap_restarts_window_assembly(spec):
    x = _signal(spec.window_samples * 4)
    cut = spec.window_samples + 5
    missing = 3
    frames = _frames(x[:cut], [50]) + [
        Frame(cut + missing + i, 0, x[cut + missing + i : cut + missing + i + 50].copy())
        for i in range(0, len(x) - cut - missing, 50)
    ]
    got, _ = _collect(Windower(spec), frames)
    before = preprocess.windows(preprocess.steps(x[:cut], spec), spec.window, spec.hop)
    after = preprocess.windows(preprocess.steps(x[cut + missing :], spec), spec.window, spec.hop)
    np.testing.assert_array_equal(got, np.concatenate([before, after]))
    w = Windower(spec)
    _collect(w, frames)
    assert w.counters.gaps == 1 and w.counters.samples_missing == missing


def test_backwards_jump_is_a_resync():
    x, y = _signal(RAW.window_samples * 3), _signal(RAW.window_samples * 3, seed=1)
    frames = _frames(x, [20]) + _frames(y, [20])  # the sender restarted at seq 0 with new measurements
    w = Windower(RAW)
    got, _ = _collect(w, frames)
    first, second = (preprocess.windows(preprocess.steps(z, RAW), RAW.window, RAW.hop) for z in (x, y))
    np.testing.assert_array_equal(got, np.concatenate([first, second]))
    assert w.counters.duplicates == 0
    assert w.counters.gaps == 1 and w.counters.resyncs == 1 and w.counters.samples_missing == 0


@pytest.mark.parametrize("spec", [RAW, FEAT], ids=["raw", "features"])
def test_redelivered_duplicate_frames_are_dropped_without_a_gap(spec):
    """QoS 1 redelivers after a reconnect: a frame seen already must not count as a gap or restart windows."""
    x = _signal(spec.window_samples * 4)
    frames = _frames(x, [spec.window_samples // 3])
    with_dups = frames[:5] + [frames[3], frames[4]] + frames[5:]
    w = Windower(spec)
    got, _ = _collect(w, with_dups)
    np.testing.assert_array_equal(got, preprocess.windows(preprocess.steps(x, spec), spec.window, spec.hop))
    assert w.counters.duplicates == 2
    assert w.counters.gaps == 0 and w.counters.resyncs == 0 and w.counters.samples_missing == 0
    assert w.counters.samples_in == len(x)


@pytest.mark.parametrize("spec", [RAW, FEAT], ids=["raw", "features"])
@pytest.mark.parametrize("kind", ["nan", "range", "saturated"])
def test_invalid_samples_are_never_inside_a_scored_window(spec, kind):
    x = _signal(spec.window_samples * 4)
    bad_at = spec.window_samples * 2 + 3
    if kind == "nan":
        x[bad_at, 1] = np.nan
    else:
        x[bad_at, 0] = 40.0
    frames = _frames(x, [64])
    if kind == "saturated":  # through the real int16 codec: 40.0 clips to a saturated code
        frames = [FrameDecoder().feed(encode_frame(f.seq, f.samples, scale=int16_scale(10.0)))[0]
                  for f in frames]
    w = Windower(spec, value_range=20.0 if kind == "range" else None)
    got, ends = _collect(w, frames)
    assert w.counters.samples_invalid == 1
    for e in ends:  # no window covers the bad sample
        assert not (e - spec.window_samples <= bad_at < e)
    if kind != "saturated":
        before = preprocess.windows(preprocess.steps(x[:bad_at], spec), spec.window, spec.hop)
        after = preprocess.windows(preprocess.steps(x[bad_at + 1 :], spec), spec.window, spec.hop)
        np.testing.assert_array_equal(got, np.concatenate([before, after]))
    else:
        assert len(got) > 0


def test_wrong_channel_count_is_rejected_and_counted():
    w = Windower(RAW)
    assert w.push(Frame(0, 0, np.zeros((10, 3), np.float32)), lambda _w: None) == 0
    assert w.counters.frames_rejected == 1


def test_window_stats_are_per_channel():
    x = np.zeros((FEAT.window_samples, 2), np.float32)
    x[:, 0] = 2.0
    x[5, 1] = -3.0
    seen = []
    Windower(FEAT).push(Frame(0, 0, x), lambda win: seen.append(dict(win.stats)))
    assert len(seen) == 1
    assert seen[0]["rms"][0] == pytest.approx(2.0) and seen[0]["peak"] == [2.0, 3.0]


# --------------------------------------------------------------------------- bridging short gaps
ORDER_FREE = preprocess.PreprocessSpec(mode="features", channels=("x", "y"), window=6, hop=2, block=32,
                                       features=("rms", "peak", "kurtosis", "crest"))


def _bridged(windower: Windower, frames: list[Frame]) -> tuple[np.ndarray, list[int]]:
    got, bridged = [], []

    def emit(w):
        got.append(w.steps.copy())
        bridged.append(w.bridged)

    for f in frames:
        windower.push(f, emit)
    return np.stack(got), bridged


def test_bridged_windows_are_the_windows_of_the_valid_samples_and_say_how_many_were_missing():
    x = _signal(32 * 60)
    lost = np.zeros(len(x), bool)
    lost[[100, 101, 700, 1300]] = True  # NaN rows: a run of two, then single ones
    frames = []
    for a in range(0, len(x), 50):
        chunk = x[a:a + 50].copy()
        chunk[lost[a:a + 50]] = np.nan
        frames.append(Frame(a, 0, chunk))
    del frames[30]  # and one lost frame (rows 1500..1549)
    lost[1500:1550] = True
    w = Windower(ORDER_FREE, bridge=60)
    got, bridged = _bridged(w, frames)
    expected = preprocess.windows(preprocess.steps(x[~lost], ORDER_FREE), ORDER_FREE.window, ORDER_FREE.hop)
    np.testing.assert_array_equal(got, expected)  # exactly what the valid samples make, nothing invented
    assert w.counters.samples_bridged == 54 and w.counters.windows_bridged == sum(b > 0 for b in bridged) > 0
    assert max(bridged) == 50 and w.counters.windows_withheld == 0


def test_a_gap_beyond_the_budget_restarts_and_a_window_over_budget_is_withheld():
    x = _signal(32 * 40)
    frames = [Frame(a, 0, x[a:a + 32].copy()) for a in range(0, len(x), 32)]
    del frames[12]  # 32 samples: more than a budget of 20 -> restart, as without bridging
    w = Windower(ORDER_FREE, bridge=20)
    _, ends = _collect(w, frames)
    assert w.counters.samples_bridged == 0 and all(e <= 12 * 32 or e >= 13 * 32 + 6 * 32 for e in ends)
    y = x.copy()
    y[[40, 50, 60, 70]] = np.nan  # 4 NaN rows in one stretch, each bridged, together over a budget of 3
    w = Windower(ORDER_FREE, bridge=3)
    _collect(w, [Frame(a, 0, y[a:a + 32].copy()) for a in range(0, len(y), 32)])
    assert w.counters.windows_withheld > 0 and w.counters.samples_bridged == 4


@pytest.mark.parametrize("spec", [RAW, FEAT], ids=["raw", "fft-bands"])
def test_where_order_matters_a_rare_nan_is_interpolated_not_a_broken_window(spec):
    """Issue 14, break 8: with FFT bands (the default bundle's) or raw windows, 1 invalid value in 10,000 broke a
    window each time: now a short NaN run is filled linearly from its neighbours, and the windows are those of the
    filled signal."""
    x = _signal(32 * 40)
    filled = x.copy()
    for row in (100, 701):
        x[row] = np.nan
        filled[row] = (filled[row - 1] + filled[row + 1]) / 2  # its neighbours sit in the same frame of 32
    w = Windower(spec, bridge=100)
    got, bridged = _bridged(w, [Frame(a, 0, x[a:a + 32].copy()) for a in range(0, len(x), 32)])
    expected = preprocess.windows(preprocess.steps(filled, spec), spec.window, spec.hop)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert w.counters.samples_bridged == 2 and w.counters.samples_discarded == 0 and sum(bridged) >= 2


def test_with_fft_bands_a_lost_frame_drops_its_block_so_no_spectrum_spans_the_gap():
    x = _signal(32 * 40)
    frames = [Frame(a, 0, x[a:a + 16].copy()) for a in range(0, len(x), 16)]
    del frames[21]  # rows 336..351 lost: the block of rows 320..351 can only be half assembled
    w = Windower(FEAT, bridge=100)
    got, bridged = _bridged(w, frames)
    assert w.counters.samples_bridged == 32 and w.counters.samples_discarded == 0  # 16 lost + 16 of the dropped block
    keep = np.r_[0:320, 352:len(x)]  # the blocks that exist: every one made of 32 contiguous samples
    expected = preprocess.windows(preprocess.steps(x[keep], FEAT), FEAT.window, FEAT.hop)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    raw = Windower(RAW, bridge=100)  # raw windows cannot bridge a gap: it restarts
    _collect(raw, frames)
    assert raw.counters.samples_bridged == 0 and raw.counters.gaps == 1


def test_over_range_samples_are_never_bridged():
    x = _signal(32 * 40)
    x[100] = 50.0
    w = Windower(ORDER_FREE, value_range=10.0, bridge=100)
    _collect(w, [Frame(a, 0, x[a:a + 32].copy()) for a in range(0, len(x), 32)])
    assert w.counters.samples_over_range == 1 and w.counters.samples_bridged == 0
