"""Signal sources: Lorenz against the tutorial's recordings, bearing statistics against the IMS
and FEMTO recordings, determinism and chunking, snapshot statistics. (Replay: test_replay.py.)"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from firmware_sim import signals


# --------------------------------------------------------------------------- Lorenz
@pytest.mark.parametrize("state", ["healthy", "broken"])
def test_lorenz_matches_the_tutorial_recordings(shared_data, state):
    ref = np.load(shared_data / "lorenz_developerWorks" / f"watsoniotp.{state}.phase_aligned.npy")
    got = signals.generate(signals.LorenzSource(state), len(ref))
    assert got.dtype == np.float32 and got.shape == ref.shape == (3000, 3)
    np.testing.assert_allclose(got[:10], ref[:10], rtol=1e-6)
    np.testing.assert_allclose(got.mean(axis=0), ref.mean(axis=0), rtol=0.02, atol=0.05)
    np.testing.assert_allclose(got.std(axis=0), ref.std(axis=0), rtol=0.02)
    np.testing.assert_allclose(got.min(axis=0), ref.min(axis=0), rtol=0.02)
    np.testing.assert_allclose(got.max(axis=0), ref.max(axis=0), rtol=0.02)


def test_lorenz_first_step_and_degrading_moves_towards_broken():
    assert signals.generate(signals.LorenzSource("healthy"), 1)[0].tolist() == pytest.approx(
        [2.08, 3.37536, 3.97083], rel=1e-5
    )
    src = signals.LorenzSource("degrading", sample_rate=100.0, life_s=100.0)
    x = signals.generate(src, 12000)
    early, late = x[:3000], x[-1500:]
    healthy = signals.generate(signals.LorenzSource("broken"), 3000)
    assert late[:, 2].mean() > 2 * early[:, 2].mean()  # z grows with rho
    assert late[:, 2].mean() > 0.5 * healthy[:, 2].mean()
    assert np.isfinite(x).all()


# --------------------------------------------------------------------------- bearing vs recordings
def _ims_reference(shared_data):
    """RMS and excess kurtosis of IMS test 2, bearing 1 (outer race failure): first 100 snapshots
    (healthy) and the last 10 % of the live snapshots (snapshots after the rig stopped read ~0.002 g)."""
    path = shared_data / "ims_bearing" / "features_per_snapshot" / "test2_raw.csv"
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    rms = np.array([float(r["Bearing1_ch1_rms"]) for r in rows])
    kurt = np.array([float(r["Bearing1_ch1_kurt"]) for r in rows])
    live = rms > 10 * rms.min()
    rms, kurt = rms[live], kurt[live]
    late = slice(int(0.9 * len(rms)), None)
    return (rms[:100], kurt[:100]), (rms[late], kurt[late])


def _femto_reference(shared_data):
    """FEMTO condition 1 (1800 rpm: Bearing1_1, Bearing1_2), both channels: first 10 % of the
    stored snapshots (healthy) and the last 5 (end of life)."""
    early_r, early_k, late_r, late_k = [], [], [], []
    for name in ("Bearing1_1", "Bearing1_2"):
        with np.load(shared_data / "femto_pronostia_learning_set" / f"femto_learning_{name}_every4th.npz") as z:
            acc = z["acc"]
        stats = [signals.snapshot_stats(s) for s in acc]
        r = np.array([s[0] for s in stats])
        k = np.array([s[1] for s in stats])
        n_early = max(1, len(acc) // 10)
        early_r.append(r[:n_early].ravel())
        early_k.append(k[:n_early].ravel())
        late_r.append(r[-5:].ravel())
        late_k.append(k[-5:].ravel())
    cat = np.concatenate
    return (cat(early_r), cat(early_k)), (cat(late_r), cat(late_k))


def _sim_snapshots(preset: str, state: str, snap: int, count: int, life_s: float = 0.0, seed: int = 7):
    """RMS and kurtosis of ``count`` snapshots of ``snap`` samples from the faulty channel(s)
    (IMS: channel 0; FEMTO: both): the first ones, or for degrading the last ``count`` of the life."""
    src = signals.BearingSource(preset, state, life_s=life_s, seed=seed)
    n = int(round(life_s * src.sample_rate)) if state == "degrading" else snap * count
    x = signals.generate(src, n)[-snap * count :]
    chans = list(src.p.fault_channels)
    stats = [signals.snapshot_stats(x[i * snap : (i + 1) * snap, chans]) for i in range(count)]
    return np.concatenate([s[0] for s in stats]), np.concatenate([s[1] for s in stats])


def _within(values, ref, what):
    lo, hi = float(np.min(ref)), float(np.max(ref))
    assert np.all((values >= lo) & (values <= hi)), (
        f"{what}: simulated {np.round(values, 3)} outside [{lo:.3f}, {hi:.3f}]"
    )


def test_ims_bearing_healthy_and_late_life_match_the_recordings(shared_data):
    (h_rms, h_kurt), (l_rms, l_kurt) = _ims_reference(shared_data)
    rms, kurt = _sim_snapshots("ims", "healthy", 20480, 5)
    _within(rms, h_rms, "IMS healthy RMS")
    _within(kurt, h_kurt, "IMS healthy kurtosis")
    # the last 2 s of a 40 s life lie in the final 5 % (failure stage)
    rms, kurt = _sim_snapshots("ims", "degrading", 20000, 2, life_s=40.0)
    _within(rms, l_rms, "IMS late-life RMS")
    _within(kurt, l_kurt, "IMS late-life kurtosis")
    assert rms.min() > 2 * h_rms.max()


def test_femto_bearing_healthy_and_late_life_match_the_recordings(shared_data):
    (h_rms, h_kurt), (l_rms, l_kurt) = _femto_reference(shared_data)
    rms, kurt = _sim_snapshots("femto", "healthy", 2560, 10)
    _within(rms, h_rms, "FEMTO healthy RMS")
    _within(kurt, h_kurt, "FEMTO healthy kurtosis")
    rms, kurt = _sim_snapshots("femto", "degrading", 2560, 5, life_s=20.0)
    _within(rms, l_rms, "FEMTO late-life RMS")
    _within(kurt, l_kurt, "FEMTO late-life kurtosis")


# --------------------------------------------------------------------------- bearing model
def test_bearing_defect_frequency_and_presets():
    f = signals.IMS.frequencies
    assert f["bpfo"] == pytest.approx(236.4, abs=0.2) and f["bpfi"] == pytest.approx(296.9, abs=0.2)
    assert f["bsf"] == pytest.approx(139.9, abs=0.2) and f["ftf"] == pytest.approx(14.8, abs=0.1)
    assert (signals.FEMTO.sample_rate, signals.FEMTO.n_channels, signals.FEMTO.rpm) == (25600.0, 2, 1800.0)
    # a broken outer race shows up at BPFO in the envelope spectrum of channel 0
    src = signals.BearingSource("ims", "broken", seed=1)
    x = signals.generate(src, 40000)[:, 0].astype(np.float64)
    env = np.abs(x - x.mean())
    spec = np.abs(np.fft.rfft(env - env.mean()))
    freqs = np.fft.rfftfreq(len(env), 1 / src.sample_rate)
    band = (freqs > 50) & (freqs < 1000)
    assert abs(freqs[band][np.argmax(spec[band])] - f["bpfo"]) < 3


def test_severity_profile_stages():
    u = np.linspace(0, 1.2, 121)
    s = signals.severity(u)
    assert np.all(np.diff(s) >= 0) and s[0] == 0 and s[-1] == 1
    assert [signals.stage(float(signals.severity(v))) for v in (0.3, 0.7, 0.9, 0.99)] == [
        "healthy",
        "incipient",
        "severe",
        "failure",
    ]


@pytest.mark.parametrize(
    "make",
    [
        lambda: signals.BearingSource("femto", "degrading", life_s=1.0, seed=3),
        lambda: signals.BearingSource("ims", "broken", seed=3, fault="inner"),
        lambda: signals.LorenzSource("degrading", life_s=20.0),
    ],
)
def test_streaming_in_any_chunks_equals_one_read_and_is_seeded(make):
    whole = make().read(6000)
    src = make()
    sizes = [1, 7, 256, 1000, 3, 4733]
    parts = [src.read(k) for k in sizes]
    assert np.array_equal(np.concatenate(parts), whole)
    assert np.array_equal(make().read(6000), whole)


def test_bearing_seed_changes_the_noise():
    a = signals.BearingSource("ims", seed=1).read(1000)
    b = signals.BearingSource("ims", seed=2).read(1000)
    assert a.shape == (1000, 4) and not np.array_equal(a, b)


# --------------------------------------------------------------------------- snapshot_stats
def test_snapshot_stats_are_rms_and_excess_kurtosis_per_channel():
    rng = np.random.default_rng(3)
    gauss = rng.standard_normal(200_000)
    square = np.where(np.arange(200_000) % 2 == 0, 1.0, -1.0)  # kurtosis 1, excess -2
    x = np.stack([3.0 + 2.0 * gauss, square], axis=1)
    rms, kurt = signals.snapshot_stats(x)
    assert rms.shape == kurt.shape == (2,)
    assert rms == pytest.approx([np.sqrt(9.0 + 4.0), 1.0], rel=1e-2)  # RMS keeps the mean
    assert kurt == pytest.approx([0.0, -2.0], abs=0.05)  # kurtosis removes it; Gaussian reads 0
