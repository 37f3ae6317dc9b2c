"""``firmware-sim`` on the command line: generate writes loadable files, run streams to a port."""

from __future__ import annotations

import json
import os

import numpy as np
from click.testing import CliRunner

from edge_agent.contract.binary import FrameDecoder
from edge_agent.contract.frames import Frame
from firmware_sim import signals
from firmware_sim.cli import main

from .conftest import drain_fd


def test_generate_npy_and_csv_are_loadable_and_equal(tmp_path):
    runner = CliRunner()
    npy, csv = tmp_path / "h.npy", tmp_path / "h.csv"
    for out in (npy, csv):
        res = runner.invoke(
            main, ["generate", "--signal", "lorenz", "--state", "healthy", "--samples", "500", "--out", str(out)]
        )
        assert res.exit_code == 0, res.output
        assert "500 samples x 3 channels" in res.output
    a = np.load(npy)
    assert a.shape == (500, 3) and a.dtype == np.float32
    assert np.array_equal(a, signals.generate(signals.LorenzSource("healthy"), 500))
    assert csv.read_text().splitlines()[0] == "x,y,z"
    assert np.array_equal(np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.float32), a)


def test_generate_degrading_bearing_spans_the_whole_file(tmp_path):
    out = tmp_path / "d.npy"
    args = ["generate", "--signal", "bearing", "--preset", "femto", "--state", "degrading", "--samples", "51200"]
    res = CliRunner().invoke(main, [*args, "--seed", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    x = np.load(out)
    assert x.shape == (51200, 2)
    first, last = signals.snapshot_stats(x[:2560])[0], signals.snapshot_stats(x[-2560:])[0]
    assert np.all(last > 3 * first)


def test_generate_bearing_with_preset_overrides(tmp_path):
    out = tmp_path / "bench.npy"
    args = ["generate", "--signal", "bearing", "--override", "roughness_g=0.15", "--override", "harmonics_g=0.03,0.02"]
    res = CliRunner().invoke(main, [*args, "--samples", "20000", "--seed", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    x = np.load(out)
    assert np.array_equal(x, signals.generate(signals.BearingSource("ims", seed=2, roughness_g=0.15,
                                                                    harmonics_g=(0.03, 0.02)), 20000))
    assert not np.array_equal(x, signals.generate(signals.BearingSource("ims", seed=2), 20000))
    assert signals.parse_overrides(["fault=inner", "fault_channels=0,1", "n_channels=2"]) == {
        "fault": "inner", "fault_channels": (0, 1), "n_channels": 2}
    runner = CliRunner()
    for bad, message in (("geometry=1", "not NAME=VALUE"), ("noise_g", "not NAME=VALUE"),
                         ("noise_g=loud", "'loud' is not a float value")):
        res = runner.invoke(main, ["generate", "--override", bad, "--samples", "5", "--out", str(out)])
        assert res.exit_code == 2 and message in res.output, res.output
    res = runner.invoke(main, ["generate", "--signal", "lorenz", "--override", "noise_g=0.1", "--samples", "5",
                               "--out", str(out)])
    assert res.exit_code == 1 and "for the bearing signal" in res.output


def test_generate_rejects_bad_input_clearly(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["generate", "--signal", "replay", "--samples", "5", "--out", str(tmp_path / "a.npy")])
    assert res.exit_code == 2 and "replay needs --data" in res.output
    res = runner.invoke(main, ["generate", "--signal", "lorenz", "--samples", "5", "--out", str(tmp_path / "a.txt")])
    assert res.exit_code != 0 and ".npy or .csv" in res.output
    res = runner.invoke(main, ["run", "--fault", "warp=0.1", "--duration", "1"])
    assert res.exit_code == 2 and "bad fault" in res.output


def test_run_streams_to_a_serial_port_and_reports_the_ledger():
    master, slave = os.openpty()
    try:
        args = [
            "run", "--signal", "lorenz", "--link", "serial", "--port", os.ttyname(slave), "--rate", "1000",
            "--duration", "2", "--speed", "0", "--fault", "drop=0.1", "--fault", "flip=0.05", "--seed", "4",
            "--json-summary",
        ]  # fmt: skip
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        summary = json.loads(res.output.strip().splitlines()[-1])
        dec = FrameDecoder()
        frames: list[Frame] = []
        expected = summary["frames_sent"] - summary["flipped_frames"]
        assert drain_fd(
            master, lambda b: frames.extend(dec.feed(b)), lambda: dec.frames + dec.crc_errors >= summary["frames_sent"]
        )
        assert summary["samples"] == 2000 and summary["dropped_frames"] > 0 and summary["overflow_bytes"] == 0
        assert dec.frames == expected and dec.crc_errors == summary["flipped_frames"]
    finally:
        os.close(master)
        os.close(slave)
