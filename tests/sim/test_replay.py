"""Replay of recorded data through ``edge_agent.contract.recordings.load``: the real FEMTO, IMS and NAB files in ``data/``
and ``tests/fixtures/data/``, rate and channel names from the recording, chunking, looping, and clean
command-line errors for malformed files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_agent.contract import recordings as tdata
from firmware_sim import signals
from firmware_sim.cli import main

REPO = Path(__file__).resolve().parents[2]
FEMTO_DIR = REPO / "tests" / "fixtures" / "data" / "femto_Bearing1_2"
MALFORMED = REPO / "tests" / "fixtures" / "data" / "malformed"
IMS_DIR = REPO / "data" / "ims_bearing" / "raw_1st_test"
NAB = REPO / "data" / "nab" / "art_daily_small_noise.csv"


def _generate(args: list[str]):
    return CliRunner().invoke(main, ["generate", "--signal", "replay", *args])


# --------------------------------------------------------------------------- FEMTO
def test_femto_folder_replays_two_channels_at_25k6_equal_to_the_loader():
    rec = tdata.load(FEMTO_DIR)
    src = signals.ReplaySource(FEMTO_DIR)
    assert (src.n_channels, src.sample_rate, src.channels) == (2, 25600.0, rec.channels)
    assert src.format == "femto" and src.units == "g"
    x = signals.generate(src, rec.n_rows + 100)
    assert x.dtype == np.float32 and x.shape == (rec.n_rows, 2)  # finite replay: stops at the end
    assert np.array_equal(x, rec.concatenated())
    assert src.read(10).shape == (0, 2)
    assert src.full_scale >= np.abs(x).max()  # no clipping on the int16 wire


def test_femto_cli_generate_writes_the_loader_samples(tmp_path):
    """B1: the FEMTO CSV folder gave 6 columns (time fields + h, v) at 20 kHz."""
    out = tmp_path / "f.npy"
    res = _generate(["--data", str(FEMTO_DIR), "--samples", "3000", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "3000 samples x 2 channels at 25600 Hz" in res.output
    assert np.array_equal(np.load(out), tdata.load(FEMTO_DIR).concatenated()[:3000])
    csv = tmp_path / "f.csv"
    res = _generate(["--data", str(FEMTO_DIR), "--samples", "5", "--out", str(csv)])
    assert res.exit_code == 0, res.output
    assert csv.read_text().splitlines()[0] == ",".join(tdata.load(FEMTO_DIR).channels)


@pytest.mark.parametrize("chunks", [[1, 2559, 1, 3000, 10_000], [7] * 1200, [2560] * 4])
def test_reads_continue_where_they_stopped_independent_of_chunking(chunks):
    whole = signals.ReplaySource(FEMTO_DIR, loop=True).read(sum(chunks))
    src = signals.ReplaySource(FEMTO_DIR, loop=True)
    parts = np.concatenate([src.read(n) for n in chunks])
    assert np.array_equal(parts, whole)


def test_explicit_rate_overrides_and_channels_select():
    src = signals.ReplaySource(FEMTO_DIR, format="femto", sample_rate=1000, channels=["vertical"])
    assert (src.sample_rate, src.channels) == (1000.0, ("vertical",))
    assert np.array_equal(src.read(100), tdata.load(FEMTO_DIR).concatenated()[:100, 1:])
    with pytest.raises(ValueError, match="no channel 'axial'"):
        signals.ReplaySource(FEMTO_DIR, channels=["axial"])


# --------------------------------------------------------------------------- IMS
def test_ims_gz_folder_replays_every_snapshot_in_order_and_loops():
    files = sorted(IMS_DIR.iterdir())
    src = signals.ReplaySource(IMS_DIR, loop=True)
    assert (src.n_channels, src.sample_rate, src.format) == (8, 20480.0, "ims")
    x = signals.generate(src, 3 * 20480 + 10)
    with gzip.open(files[0], "rt") as fh:
        first = np.loadtxt(fh, dtype=np.float32)  # independent read of the first snapshot
    assert first.shape == (20480, 8)
    assert np.array_equal(x[:20480], first)
    assert np.array_equal(x[: 3 * 20480], tdata.load(IMS_DIR).concatenated())
    assert np.array_equal(x[3 * 20480 :], first[:10])  # looped to the first snapshot


# --------------------------------------------------------------------------- NAB
def test_nab_csv_replays_one_channel_and_needs_a_rate(tmp_path):
    """B2: the NAB CSV failed with a raw numpy conversion error."""
    out = tmp_path / "n.npy"
    res = _generate(["--data", str(NAB), "--samples", "100", "--out", str(out)])
    assert res.exit_code == 1
    assert "no sample rate" in res.output and "--rate" in res.output and "Traceback" not in res.output
    assert not out.exists()
    res = _generate(["--data", str(NAB), "--format", "nab", "--rate", "1", "--samples", "100", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "100 samples x 1 channels at 1 Hz" in res.output
    assert np.array_equal(np.load(out), tdata.load(NAB).concatenated()[:100])


# --------------------------------------------------------------------------- other formats
def test_csv_npy_and_snapshot_npz_replay(tmp_path):
    data = np.random.default_rng(0).standard_normal((100, 3)).astype(np.float32)
    np.savetxt(tmp_path / "a.csv", data, delimiter=",", header="x,y,z", comments="", fmt="%.9g")
    np.save(tmp_path / "a.npy", data)
    for name, fmt in (("a.csv", "csv"), ("a.npy", "auto")):
        src = signals.ReplaySource(tmp_path / name, format=fmt, sample_rate=1000)
        assert src.n_channels == 3
        assert np.array_equal(signals.generate(src, 200), data), name
    with pytest.raises(ValueError, match="no sample rate"):
        signals.ReplaySource(tmp_path / "a.npy")
    acc = np.arange(3 * 2560 * 2, dtype=np.float32).reshape(3, 2560, 2)
    np.savez(tmp_path / "b.npz", acc=acc)
    src = signals.ReplaySource(tmp_path / "b.npz", loop=True)
    assert (src.sample_rate, src.format) == (25600.0, "snapshots")
    x = signals.generate(src, 3 * 2560 + 10)
    assert np.array_equal(x[: 3 * 2560], acc.reshape(-1, 2))
    assert np.array_equal(x[3 * 2560 :], acc[0, :10])


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("fixture", "opts", "where"),
    [
        ("ims_bad_cell", [], "ims_bad_cell/2003.10.22.12.06.24:4:3: "),
        ("ims_ragged", ["--format", "ims"], "ims_ragged/2003.10.22.12.06.24:5"),
        ("nab_nan.csv", ["--rate", "1"], "nab_nan.csv:5:2: "),
        ("femto_ragged", [], "femto_ragged/acc_00001.csv:6"),
        ("csv_empty_cell.csv", ["--format", "csv", "--rate", "1"], "csv_empty_cell.csv:3:2: "),
        ("snapshots_no_acc.npz", ["--format", "snapshots"], "snapshots_no_acc.npz: "),
    ],
)
def test_malformed_data_give_a_clean_cli_error(tmp_path, fixture, opts, where):
    out = tmp_path / "x.npy"
    res = _generate(["--data", str(MALFORMED / fixture), *opts, "--samples", "10", "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: ") and where in res.output
    assert "Traceback" not in res.output and not out.exists()


def test_run_replay_of_malformed_data_fails_before_opening_a_link():
    res = CliRunner().invoke(main, [
        "run", "--signal", "replay", "--data", str(MALFORMED / "ims_bad_cell"), "--data-format", "ims",
        "--speed", "0", "--duration", "1",
    ])
    assert res.exit_code == 1
    assert "ims_bad_cell/2003.10.22.12.06.24:4:3: not a number" in res.output
    assert "link on" not in res.output


def test_wrong_or_unknown_format_is_a_clear_error(tmp_path):
    res = _generate(["--data", str(NAB), "--format", "femto", "--samples", "10", "--out", str(tmp_path / "x.npy")])
    assert res.exit_code == 1 and str(NAB) in res.output
    res = _generate(["--data", str(NAB), "--format", "wav", "--samples", "10", "--out", str(tmp_path / "x.npy")])
    assert res.exit_code == 2 and "wav" in res.output  # click rejects the choice
    with pytest.raises(ValueError, match="unknown replay format"):
        signals.ReplaySource(NAB, format="uploads")
