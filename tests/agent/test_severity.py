"""Physical severity (edge_agent/severity.py): velocity RMS against analytic cases, the band, the zones, the policy."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from edge_agent.severity import (
    STANDARD_GRAVITY,
    ZONE_TABLE,
    SeverityPolicy,
    SeverityTracker,
    band_for,
    normalize_units,
    resolve_units,
    units_of,
    velocity_rms,
    zone,
)

FS = 25_600.0
N = 25_600  # 1 s windows


def sine(freq: float, amplitude: float = 1.0, n: int = N, fs: float = FS, phase: float = 0.3) -> np.ndarray:
    t = np.arange(n) / fs
    return (amplitude * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)[:, None]


def expected_mm_s(amplitude_m_s2: float, freq: float) -> float:
    """A sine of acceleration amplitude a at f has velocity amplitude a / (2πf): RMS a / (2πf) / √2."""
    return amplitude_m_s2 / (2 * np.pi * freq) / math.sqrt(2) * 1000.0


# ------------------------------------------------------------------------------------------- analytic cases
@pytest.mark.parametrize("freq", [20.0, 50.0, 123.4, 159.155, 500.0, 900.0])
def test_a_sine_in_g_reads_its_analytic_velocity(freq):
    v = velocity_rms(sine(freq, amplitude=0.5), FS, "g")
    assert v.shape == (1,)
    assert v[0] == pytest.approx(expected_mm_s(0.5 * STANDARD_GRAVITY, freq), rel=0.005)


@pytest.mark.parametrize("units", ["m/s2", "m/s^2", "M/S²", "m/s/s"])
def test_a_sine_in_m_s2_reads_its_analytic_velocity(units):
    v = velocity_rms(sine(159.155, amplitude=10.0), FS, units)[0]
    assert v == pytest.approx(10.0 / (2 * np.pi * 159.155) / math.sqrt(2) * 1000, rel=0.002)  # 7.07 mm/s
    assert velocity_rms(sine(159.155, amplitude=10.0 / STANDARD_GRAVITY), FS, "g")[0] == pytest.approx(v, rel=1e-6)


def test_channels_are_measured_each_on_its_own():
    x = np.hstack([sine(80.0, 0.2), sine(300.0, 1.0), sine(80.0, 0.0)])
    v = velocity_rms(x, FS, "g")
    assert v == pytest.approx([expected_mm_s(0.2 * STANDARD_GRAVITY, 80.0),
                               expected_mm_s(1.0 * STANDARD_GRAVITY, 300.0), 0.0], rel=0.005, abs=1e-6)


def test_two_sines_add_in_power():
    v1, v2 = expected_mm_s(STANDARD_GRAVITY, 60.0), expected_mm_s(3 * STANDARD_GRAVITY, 400.0)
    v = velocity_rms(sine(60.0) + sine(400.0, 3.0), FS, "g")[0]
    assert v == pytest.approx(math.hypot(v1, v2), rel=0.005)


@pytest.mark.parametrize("freq", [0.5, 3.0, 5.0, 1300.0, 3000.0, 9000.0])
def test_a_sine_outside_the_band_contributes_nothing(freq):
    in_band = expected_mm_s(STANDARD_GRAVITY, 100.0)
    assert velocity_rms(sine(freq), FS, "g")[0] < 0.005 * in_band


def test_offset_drift_and_gravity_do_not_integrate_into_velocity():
    t = np.arange(N, dtype=np.float32)[:, None] / FS
    clean = velocity_rms(sine(100.0, 0.3), FS, "g")[0]
    dirty = sine(100.0, 0.3) + 1.0 + 0.05 * t  # 1 g of gravity on the axis, a slow thermal drift
    assert velocity_rms(dirty, FS, "g")[0] == pytest.approx(clean, rel=0.002)


def test_white_noise_matches_parseval():
    """White noise of variance σ² has E|A_k|² = σ² Σw² per bin; the velocity mean square is then the band's sum
    2σ²/n · Σ 1/(2πf_k)². The 1/f² weight puts most of it in the band's lowest bins, so one 1 s window scatters by
    ~13 %: 40 windows of 4 s (0.25 Hz bins) scatter by ~2 % (seeds 0-4: -2.9 % .. +1.1 %)."""
    rng = np.random.default_rng(7)
    sigma, n = 2.0, 4 * N
    f = np.arange(40, 4001, dtype=np.float64) / 4.0  # the band's bins at 0.25 Hz spacing
    expected = 2 * sigma**2 / n * np.sum(1 / (2 * np.pi * f) ** 2) * 1e6
    measured = np.mean([velocity_rms(rng.normal(0, sigma, (n, 1)), FS, "m/s2")[0] ** 2 for _ in range(40)])
    assert measured == pytest.approx(expected, rel=0.05)


# ------------------------------------------------------------------------------------------- the band
def test_the_band_is_complete_from_2560_hz_and_cut_below():
    assert band_for(2560.0, 2560).complete and band_for(2560.0, 2560).high_hz == 1000.0
    cut = band_for(2000.0, 2000)
    assert (cut.complete, cut.high_hz) == (False, 800.0)
    assert "lower bound" in cut.notes[0]
    x = sine(900.0, n=2000, fs=2000.0) + sine(100.0, n=2000, fs=2000.0)
    assert velocity_rms(x, 2000.0, "g")[0] == pytest.approx(expected_mm_s(STANDARD_GRAVITY, 100.0), rel=0.01)


def test_the_lower_edge_follows_the_machine_speed_setting():
    slow = sine(5.0, n=2 * N)
    assert velocity_rms(slow, FS, "g")[0] < 0.01 * expected_mm_s(STANDARD_GRAVITY, 5.0)
    assert velocity_rms(slow, FS, "g", low_hz=2.0)[0] == pytest.approx(expected_mm_s(STANDARD_GRAVITY, 5.0), rel=0.01)


def test_too_low_a_sample_rate_is_refused_saying_what_to_do():
    with pytest.raises(ValueError, match=r"sample rate 800 Hz is too low .* 2500 Hz or more"):
        velocity_rms(sine(100.0, n=800, fs=800.0), 800.0, "g")
    for bad in (0.0, -1.0, math.nan, math.inf, True, "25600"):
        with pytest.raises(ValueError, match="sample rate"):
            band_for(bad, 1000)


def test_a_window_too_short_for_the_lower_edge_is_refused_and_a_short_one_noted():
    with pytest.raises(ValueError, match=r"window of 1024 samples .* 2560 samples \(0.1 s\) or more"):
        velocity_rms(sine(100.0, n=1024), FS, "g")
    femto = band_for(FS, 2560)  # FEMTO's 0.1 s snapshots: 10 Hz bins
    assert femto.complete and "10 Hz edge is measured roughly" in femto.notes[0]
    assert velocity_rms(sine(200.0, n=2560), FS, "g")[0] == pytest.approx(expected_mm_s(STANDARD_GRAVITY, 200.0),
                                                                           rel=0.01)


# ------------------------------------------------------------------------------------------- units and bad input
def test_unknown_units_give_no_velocity_and_say_so():
    with pytest.raises(ValueError, match="units 'counts' are not acceleration units"):
        velocity_rms(sine(100.0), FS, "counts")
    tracker = SeverityTracker(SeverityPolicy(), FS, "unknown")
    s = tracker.update(sine(100.0))
    assert (s.velocity_mm_s, s.max_mm_s, s.zone) == (None, None, None)
    assert "units 'unknown' unknown" in s.notes[0] and '"g" or "m/s2"' in s.notes[0]
    assert tracker.counts.refused == 1
    json.dumps(s.as_dict(), allow_nan=False)


def test_units_come_from_the_policy_else_the_bundle():
    assert [normalize_units(u) for u in ("g", " G ", "m/s^2", "mm/s", "", None, 3)] == \
        ["g", "g", "m/s2", "unknown", "unknown", "unknown", "unknown"]
    manifest = {"signal": {"channels": ["x"], "units": "m/s²"}}
    assert units_of(manifest) == "m/s2" and units_of({}) == "unknown" and units_of({"signal": None}) == "unknown"
    assert resolve_units(SeverityPolicy(), manifest) == "m/s2"
    assert resolve_units(SeverityPolicy(units="g"), manifest) == "g"


def test_a_channel_with_nan_reads_none_the_others_are_measured():
    x = np.hstack([sine(100.0), sine(100.0)])
    x[500, 1] = np.nan
    v = velocity_rms(x, FS, "g")
    assert v[0] == pytest.approx(expected_mm_s(STANDARD_GRAVITY, 100.0), rel=0.005) and np.isnan(v[1])
    tracker = SeverityTracker(SeverityPolicy(), FS, "g")
    s = tracker.update(x)
    assert s.velocity_mm_s[1] is None and s.channel == 0 and s.zone == "D"
    assert "channel 1: samples not finite" in s.notes[-1] and tracker.counts.nonfinite == 1
    json.dumps(s.as_dict(), allow_nan=False)
    x[:, 0] = np.inf
    s = SeverityTracker(SeverityPolicy(), FS, "g").update(x)
    assert s.velocity_mm_s is None and "channel 0, 1" in s.notes[0]


@pytest.mark.parametrize("bad", [np.zeros((N, 1, 2)), np.zeros((1, 2)), np.zeros((N, 0)), np.array(["a"] * 10),
                                 None])
def test_a_tracker_never_raises_on_a_bad_window(bad):
    tracker = SeverityTracker(SeverityPolicy(), FS, "g")
    s = tracker.update(bad)
    assert s.velocity_mm_s is None and "samples: must be numbers shaped" in s.notes[0]
    assert tracker.counts.refused == 1
    s = SeverityTracker(SeverityPolicy(), None, "g").update(sine(100.0))
    assert "sample rate unknown" in s.notes[0]
    s = SeverityTracker(SeverityPolicy(), 500.0, "g").update(sine(100.0, n=500, fs=500.0))
    assert "too low" in s.notes[0]


# ------------------------------------------------------------------------------------------- zones
@pytest.mark.parametrize(("group", "foundation"), list(ZONE_TABLE))
def test_zone_boundaries_belong_to_the_lower_zone(group, foundation):
    policy = SeverityPolicy(machine_group=group, foundation=foundation)
    ab, bc, cd = ZONE_TABLE[(group, foundation)]
    assert policy.boundaries() == (ab, bc, cd)
    assert [zone(v, policy) for v in (0.0, ab, ab + 1e-9, bc, bc + 1e-9, cd, cd + 1e-9, 1e6)] == \
        ["A", "A", "B", "B", "C", "C", "D", "D"]


def test_the_iso_table_rows():
    """ISO 10816-3:2009 Annex A, Tables A.1 (group 1) and A.2 (group 2), mm/s RMS."""
    assert ZONE_TABLE == {(1, "rigid"): (2.3, 4.5, 7.1), (1, "flexible"): (3.5, 7.1, 11.0),
                          (2, "rigid"): (1.4, 2.8, 4.5), (2, "flexible"): (2.3, 4.5, 7.1)}
    assert SeverityPolicy().table() == "ISO 10816-3 group 2, rigid foundation"


def test_custom_boundaries_replace_the_table():
    policy = SeverityPolicy(zone_ab_mm_s=0.5, zone_bc_mm_s=1.0, zone_cd_mm_s=2)
    assert policy.boundaries() == (0.5, 1.0, 2.0) and policy.table() == "custom"
    assert [zone(v, policy) for v in (0.5, 0.7, 1.5, 2.5)] == ["A", "B", "C", "D"]


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, -math.inf])
def test_zone_refuses_a_velocity_that_is_not_one(bad):
    with pytest.raises(ValueError, match="velocity_mm_s: must be a finite number >= 0"):
        zone(bad, SeverityPolicy())


# ------------------------------------------------------------------------------------------- the policy
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"units": "mm/s"}, "units: must be one of g, m/s2, unknown"),
    ({"machine_group": 3}, "machine_group: must be 1"),
    ({"machine_group": True}, "machine_group: must be 1"),
    ({"foundation": "soft"}, "foundation: must be 'rigid' or 'flexible'"),
    ({"band_low_hz": 5.0}, "band_low_hz: must be 10"),
    ({"average_s": -1.0}, "average_s: must be a finite number"),
    ({"average_s": math.inf}, "average_s: must be a finite number"),
    ({"zone_ab_mm_s": 1.0, "zone_bc_mm_s": 2.0}, "zone_cd_mm_s: custom zone boundaries need all three"),
    ({"zone_ab_mm_s": 1.0, "zone_bc_mm_s": 1.0, "zone_cd_mm_s": 3.0}, "zone_bc_mm_s: must be above zone_ab_mm_s"),
    ({"zone_ab_mm_s": 1.0, "zone_bc_mm_s": 2.0, "zone_cd_mm_s": 1.5}, "zone_cd_mm_s: must be above zone_bc_mm_s"),
    ({"zone_ab_mm_s": -1.0, "zone_bc_mm_s": 2.0, "zone_cd_mm_s": 3.0}, "zone_ab_mm_s: must be a positive number"),
    ({"zone_ab_mm_s": math.nan, "zone_bc_mm_s": 2.0, "zone_cd_mm_s": 3.0}, "zone_ab_mm_s: must be a positive"),
])
def test_a_bad_policy_is_refused_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        SeverityPolicy(**kwargs)


def test_every_setting_is_declared_for_the_config():
    """Each field carries a description and its range or choices, and its default passes them."""
    for f in dataclasses.fields(SeverityPolicy):
        meta = f.metadata
        assert meta["doc"], f.name
        assert meta["choices"] is not None or meta["lo"] is not None, f.name
        if f.default is not None:
            assert f.default in meta["choices"] if meta["choices"] else meta["lo"] <= f.default <= meta["hi"]


# ------------------------------------------------------------------------------------------- the tracker
def test_the_tracker_averages_the_mean_square_over_the_last_seconds():
    tracker = SeverityTracker(SeverityPolicy(average_s=2.0), FS, "g")
    v1 = expected_mm_s(STANDARD_GRAVITY, 100.0)
    s = tracker.update(sine(100.0))
    assert s.max_mm_s == pytest.approx(v1, rel=0.005) and s.averaged_s == 1.0 and s.zone == "D"
    s = tracker.update(sine(100.0, 2.0))
    assert s.max_mm_s == pytest.approx(v1 * math.sqrt((1 + 4) / 2), rel=0.005) and s.averaged_s == 2.0
    s = tracker.update(sine(100.0, 2.0))  # the first window has left the 2 s
    assert s.max_mm_s == pytest.approx(2 * v1, rel=0.005) and s.averaged_s == 2.0
    assert tracker.counts.windows == 3 and tracker.counts.refused == 0
    d = s.as_dict()
    assert d["zone"] == "D" and d["zone_meaning"].startswith("severe") and d["band_hz"] == [10.0, 1000.0]
    assert d["boundaries_mm_s"] == {"A/B": 1.4, "B/C": 2.8, "C/D": 4.5} and d["band_complete"] is True
    json.dumps(d, allow_nan=False)


def test_overlapping_windows_are_measured_once_a_window_length_and_zero_seconds_keeps_one_window():
    """Windows of 1 s every 0.25 s: every fourth is measured, standing for the 1 s since the last; the others
    return the last value without an FFT (counted)."""
    tracker = SeverityTracker(SeverityPolicy(average_s=2.0), FS, "g")
    v = expected_mm_s(0.01 * STANDARD_GRAVITY, 100.0)
    s = tracker.update(sine(100.0, 0.01), new_s=0.25)
    assert s.max_mm_s == pytest.approx(v, rel=0.005) and s.averaged_s == 0.25
    for _ in range(3):  # three quarters of them measured already: the same severity, no FFT
        assert tracker.update(sine(100.0, 0.05), new_s=0.25) is s
    assert tracker.counts.overlapping == 3
    s = tracker.update(sine(100.0, 0.02), new_s=0.25)  # 1 s since the last: measured, for that 1 s
    assert s.max_mm_s == pytest.approx(v * math.sqrt((0.25 + 4) / 1.25), rel=0.005) and s.averaged_s == 1.25
    assert s.zone == "A" and tracker.counts.windows == 5 and tracker.counts.overlapping == 3
    only_last = SeverityTracker(SeverityPolicy(average_s=0.0), FS, "g")
    only_last.update(sine(100.0, 1.0))
    assert only_last.update(sine(100.0, 0.01)).max_mm_s == pytest.approx(v, rel=0.005)


def test_a_new_channel_count_or_a_reset_starts_the_average_over():
    tracker = SeverityTracker(SeverityPolicy(), FS, "g")
    tracker.update(sine(100.0, 1.0))
    s = tracker.update(np.hstack([sine(100.0, 0.01), sine(100.0, 0.02)]))
    assert s.velocity_mm_s == pytest.approx([expected_mm_s(0.01 * STANDARD_GRAVITY, 100.0),
                                             expected_mm_s(0.02 * STANDARD_GRAVITY, 100.0)], rel=0.005)
    assert s.channel == 1
    tracker.reset(sample_rate=20_000.0, units="m/s2")
    s = tracker.update(sine(100.0, 1.0, n=20_000, fs=20_000.0))
    assert s.units == "m/s2" and s.averaged_s == 1.0
    assert s.max_mm_s == pytest.approx(expected_mm_s(1.0, 100.0), rel=0.005)
