"""Loaders on the shipped real data slices (data/) and on malformed fixtures (tests/fixtures/data/)."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.contract.recordings import DataFormatError, Recording, Segment, detect_format, load

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"
FIX = REPO / "tests" / "fixtures" / "data"
BAD = FIX / "malformed"

AVG_A = DATA / "ims_bearing/averaged/Averaged_BearingTest_Dataset.csv"
AVG_B = DATA / "ims_bearing/averaged/2nd_test_resmaple_10minutes.csv"
AVG_1 = DATA / "ims_bearing/averaged/1st_test_resmaple_10minutes_first50.csv"
IMS_RAW = DATA / "ims_bearing/raw_1st_test"
FEMTO_NPZ = DATA / "femto/femto_Bearing1_2_first20_last20.npz"
FEMTO_CSV = FIX / "femto_Bearing1_2"
NAB_OK = DATA / "nab/art_daily_small_noise.csv"
NAB_ANOM = DATA / "nab/art_daily_jumpsup.csv"
LORENZ_H = DATA / "lorenz/watsoniotp.healthy.phase_aligned.npy"
LORENZ_B = DATA / "lorenz/watsoniotp.broken.phase_aligned.npy"

TUTORIAL_CUT = "2004-02-15 12:52:39"


@pytest.fixture(scope="module")
def ims_raw() -> Recording:
    return load(IMS_RAW)


# ---------------------------------------------------------------------------- IMS raw
def test_ims_raw_shapes_names_times(ims_raw: Recording) -> None:
    assert ims_raw.format == "ims"
    assert ims_raw.channels == ("B1x", "B1y", "B2x", "B2y", "B3x", "B3y", "B4x", "B4y")
    assert ims_raw.sample_rate == 20480.0 and ims_raw.units == "g"
    assert [s.data.shape for s in ims_raw.segments] == [(20480, 8)] * 3
    assert all(s.data.dtype == np.float32 and s.data.flags.c_contiguous for s in ims_raw.segments)
    assert [str(s.start) for s in ims_raw.segments] == [
        "2003-10-22T12:06:24.000", "2003-10-22T12:09:13.000", "2003-10-22T12:14:13.000"]
    assert all(s.row_times is None for s in ims_raw.segments)


def test_ims_raw_values_match_source_text(ims_raw: Recording) -> None:
    with gzip.open(IMS_RAW / "2003.10.22.12.06.24.gz", "rt") as fh:
        first = [float(v) for v in fh.readline().split("\t")]
    np.testing.assert_array_equal(ims_raw.segments[0].data[0], np.array(first, np.float32))
    np.testing.assert_array_equal(ims_raw.segments[0].data[0][:3], np.float32([-0.022, -0.039, -0.183]))


def test_ims_raw_mean_abs_equals_first_test_table(ims_raw: Recording) -> None:
    table = load(AVG_1)
    assert table.format == "ims-avg" and table.channels[0] == "Bearing 1-A" and table.n_channels == 8
    rows = table.segments[0]
    for k, seg in enumerate(ims_raw.segments):
        assert rows.row_times[k] == seg.start
        np.testing.assert_allclose(np.abs(seg.data.astype(np.float64)).mean(axis=0), rows.data[k], atol=1e-5)


def test_ims_options_limit_start_channels() -> None:
    rec = load(IMS_RAW, format="ims", limit=1, start=1, channels=["B3x", 7])
    assert len(rec.segments) == 1 and str(rec.segments[0].start) == "2003-10-22T12:09:13.000"
    assert rec.channels == ("B3x", "B4y") and rec.segments[0].data.shape == (20480, 2)


def test_ims_single_file() -> None:
    rec = load(IMS_RAW / "2003.10.22.12.14.13.gz")
    assert rec.format == "ims" and len(rec.segments) == 1 and rec.n_rows == 20480


# ---------------------------------------------------------------------------- IMS tables
def test_ims_avg_both_layouts() -> None:
    a, b = load(AVG_A), load(AVG_B)
    assert (a.format, b.format) == ("ims-avg", "ims-avg")
    assert a.channels == ("Bearing 1", "Bearing 2", "Bearing 3", "Bearing4")  # as in the source header
    assert b.channels == ("Bearing 1", "Bearing 2", "Bearing 3", "Bearing 4")
    assert (a.n_rows, b.n_rows) == (982, 984)
    assert a.sample_rate is None and len(a.segments) == 1
    ta, tb = a.segments[0].row_times, b.segments[0].row_times
    assert str(ta[0]) == "2004-02-12T10:52:39.000" and str(ta[-1]) == "2004-02-19T06:22:39.000"
    assert str(tb[0]) == "2004-02-12T10:32:39.000"
    assert a.segments[0].data[0, 0] == pytest.approx(0.0602364373260413, rel=1e-6)
    # Overlap: layout (b) has two extra leading snapshots; the rest agree row for row.
    np.testing.assert_array_equal(ta, tb[2:])
    np.testing.assert_allclose(a.segments[0].data, b.segments[0].data[2:], atol=1e-5)


def test_split_at_tutorial_cut() -> None:
    rec = load(AVG_A)
    before, after = rec.split_at(TUTORIAL_CUT)
    # pandas' inclusive slice in the tutorial gives 445 training rows; this split is half-open.
    assert (before.n_rows, after.n_rows) == (444, 538)
    assert before.segments[0].row_times[-1] < np.datetime64("2004-02-15T12:52:39")
    assert str(after.segments[0].row_times[0]) == "2004-02-15T12:52:39.000"
    joined = np.concatenate([before.concatenated(), after.concatenated()])
    np.testing.assert_array_equal(joined, rec.concatenated())
    assert before.channels == rec.channels and before.format == "ims-avg"


def test_split_at_snapshots_moves_whole_segments(ims_raw: Recording) -> None:
    before, after = ims_raw.split_at("2003-10-22 12:09:13")
    assert [s.n_rows for s in before.segments] == [20480]
    assert [str(s.start) for s in after.segments] == ["2003-10-22T12:09:13.000", "2003-10-22T12:14:13.000"]
    with pytest.raises(ValueError, match="no time"):
        load(LORENZ_H).split_at("2020-01-01")


# ---------------------------------------------------------------------------- FEMTO
def test_femto_snapshots_npz() -> None:
    rec = load(FEMTO_NPZ)
    assert rec.format == "snapshots" and rec.channels == ("horizontal", "vertical")
    assert len(rec.segments) == 40 and rec.segments[0].data.shape == (2560, 2)
    assert rec.sample_rate == 25600.0 and rec.units == "g"
    np.testing.assert_array_equal(rec.segments[0].data[0], np.array([0.05, -0.253], np.float32))
    assert rec.segments[0].start is None
    with np.load(FEMTO_NPZ) as z:
        np.testing.assert_array_equal(rec.segments[-1].data, z["acc"][-1])
        assert int(z["snapshot_index"][-1]) == 870 and int(z["n_snapshots_total"]) == 871


def test_femto_snapshot_times_with_date() -> None:
    rec = load(FEMTO_NPZ, date="2011-03-01", limit=2, start=19)
    # snapshots 76 and 796 of Bearing1_2, one every 10 s from 08:47:05.197
    assert [str(s.start) for s in rec.segments] == ["2011-03-01T08:59:45.197", "2011-03-01T10:59:45.197"]


def test_femto_csv_folder_equals_npz() -> None:
    csv = load(FEMTO_CSV)
    assert csv.format == "femto" and detect_format(FEMTO_CSV) == "femto"
    assert len(csv.segments) == 3  # temp_00001.csv ignored; acc_00009.csv uses ';'
    npz = load(FEMTO_NPZ, limit=3)
    for s_csv, s_npz in zip(csv.segments, npz.segments, strict=True):
        np.testing.assert_array_equal(s_csv.data, s_npz.data)
    assert csv.digest() == npz.digest()
    dated = load(FEMTO_CSV, date="2011-03-01")
    assert str(dated.segments[2].start) == "2011-03-01T08:48:25.197"


# ---------------------------------------------------------------------------- NAB, CSV, npy
def test_nab_files() -> None:
    for path in (NAB_OK, NAB_ANOM):
        rec = load(path)
        assert rec.format == "nab" and rec.channels == ("value",) and rec.n_rows == 4032
        t = rec.segments[0].row_times
        assert str(t[0]) == "2014-04-01T00:00:00.000" and str(t[-1]) == "2014-04-14T23:55:00.000"
        assert np.all(np.diff(t) == np.timedelta64(5, "m"))
    assert load(NAB_ANOM).segments[0].data[0, 0] == pytest.approx(19.761251, rel=1e-6)


def test_generic_csv(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("time;a;b\n2024-01-01T00:00:00;1.5;2\n2024-01-01T00:00:01;3;4.25\n", encoding="utf-8")
    rec = load(p, format="csv", sample_rate=1.0)
    assert rec.channels == ("a", "b") and rec.sample_rate == 1.0
    np.testing.assert_array_equal(rec.segments[0].data, [[1.5, 2], [3, 4.25]])
    assert str(rec.segments[0].row_times[1]) == "2024-01-01T00:00:01.000"
    q = tmp_path / "plain.txt"
    q.write_text("1\t2\t3\n4\t5\t6\n", encoding="utf-8")
    plain = load(q)
    assert plain.format == "csv" and plain.channels == ("ch0", "ch1", "ch2")
    assert plain.segments[0].row_times is None
    assert plain.segments[0].data[1, 2] == 6


@pytest.mark.parametrize(("header", "t0", "step", "rate", "epoch"), [
    ("t,x,y", 0.0, 1 / 12000, 12000.0, False),            # elapsed seconds at 12 kHz, printed to 1 µs
    ("Time (ms),x,y", 5.0, 0.1, 10000.0, False),          # elapsed milliseconds
    ("time,temp,pressure", 1.7e9, 60.0, None, True),      # Unix seconds: row times, not a channel
    ("timestamp,value", 1.7e12, 300_000.0, None, True),   # Unix milliseconds under NAB's header
])
def test_a_numeric_time_column_is_time_not_a_channel(tmp_path: Path, header, t0, step, rate, epoch) -> None:
    p = tmp_path / "t.csv"
    t = t0 + step * np.arange(2400)
    values = np.random.default_rng(0).normal(size=(2400, header.count(",")))
    np.savetxt(p, np.c_[t, values], delimiter=",", header=header, comments="", fmt=["%.6f"] + ["%.5f"] * values.shape[1])
    rec = load(p)
    assert rec.format == "csv" and rec.channels == tuple(header.split(",")[1:])
    np.testing.assert_allclose(rec.segments[0].data, values, atol=1e-5)
    assert rec.sample_rate == rate
    times = rec.segments[0].row_times
    if epoch:
        ms = t * (1000.0 if t0 < 1e11 else 1.0)
        assert times is not None and int(times[0].astype(np.int64)) == round(ms[0])
    else:
        assert times is None


def test_a_column_named_like_time_that_is_not_increasing_stays_a_channel(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("t,x\n3,1\n2,2\n5,3\n", encoding="utf-8")
    rec = load(p)
    assert rec.channels == ("t", "x") and rec.sample_rate is None


def test_spreadsheet_exports_trailing_delimiters_and_decimal_commas(tmp_path: Path) -> None:
    excel = tmp_path / "excel.csv"
    excel.write_text("a;b;\n1,5;2;\n3;4,25;\n", encoding="utf-8")
    rec = load(excel)
    assert rec.channels == ("a", "b")
    np.testing.assert_array_equal(rec.segments[0].data, [[1.5, 2], [3, 4.25]])
    timed = tmp_path / "timed.csv"
    timed.write_text("datetime;temp;anomaly;\n2024-01-01 00:00:00;20,5;0;\n2024-01-01 00:01:00;21,0;1;\n",
                     encoding="utf-8")
    t = load(timed)
    assert t.channels == ("temp",) and t.label_names == ("anomaly",)
    np.testing.assert_array_equal(t.segments[0].data[:, 0], [20.5, 21.0])
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('"time","Temperature, °C","Pressure, bar"\n2024-01-01 00:00:00,20.5,1.0\n'
                      '2024-01-01 00:01:00,21.0,1.1\n', encoding="utf-8")
    assert load(quoted).channels == ("Temperature, °C", "Pressure, bar")
    points = tmp_path / "points.csv"
    points.write_text("a;b\n1.5;2\n1,000;3\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="1,000"):
        load(points)  # a file that uses decimal points elsewhere: a comma is not silently a decimal point


def test_a_snapshot_archive_states_its_sample_rate(tmp_path: Path) -> None:
    acc = np.random.default_rng(1).normal(size=(3, 1000, 3)).astype(np.float32)
    np.savez(tmp_path / "s.npz", acc=acc, sample_rate=np.float64(51200.0))
    np.savez(tmp_path / "plain.npz", acc=acc)
    assert load(tmp_path / "s.npz").sample_rate == 51200.0
    assert load(tmp_path / "plain.npz").sample_rate == 25600.0, "FEMTO's rate when the archive says nothing"
    assert load(tmp_path / "plain.npz", sample_rate=10000.0).sample_rate == 10000.0
    np.savez(tmp_path / "mono.npz", acc=acc[:, :, 0], fs=20000)
    mono = load(tmp_path / "mono.npz")
    assert mono.sample_rate == 20000.0 and mono.channels == ("ch0",) and mono.segments[0].data.shape == (1000, 1)
    np.save(tmp_path / "first.npy", acc[0].T)  # (3, 1000): channels first
    assert load(tmp_path / "first.npy").segments[0].data.shape == (1000, 3)
    np.savez(tmp_path / "bad.npz", acc=acc, sample_rate=np.array([1.0, 2.0]))
    with pytest.raises(DataFormatError, match="sample_rate"):
        load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="cannot be given for nab"):
        load(NAB_OK, sample_rate=10.0)


def test_npy_shapes(tmp_path: Path) -> None:
    h, b = load(LORENZ_H, names=["x", "y", "z"]), load(LORENZ_B)
    assert h.format == "npy" and h.channels == ("x", "y", "z") and h.n_rows == 3000
    np.testing.assert_allclose(h.segments[0].data[0], [2.08, 3.375, 3.971], atol=1e-3)
    np.testing.assert_allclose(b.segments[0].data[0], [2.24, 5.198, 3.794], atol=1e-3)
    np.save(tmp_path / "one.npy", np.arange(5.0))
    np.save(tmp_path / "three.npy", np.zeros((4, 10, 2)))
    assert load(tmp_path / "one.npy").segments[0].data.shape == (5, 1)
    three = load(tmp_path / "three.npy", sample_rate=100.0)
    assert [s.data.shape for s in three.segments] == [(10, 2)] * 4 and three.sample_rate == 100.0


# ---------------------------------------------------------------------------- auto detection
@pytest.mark.parametrize(("path", "fmt"), [
    (IMS_RAW, "ims"),
    (IMS_RAW / "2003.10.22.12.06.24.gz", "ims"),
    (AVG_A, "ims-avg"),
    (AVG_B, "ims-avg"),
    (AVG_1, "ims-avg"),
    (FEMTO_CSV, "femto"),
    (FEMTO_NPZ, "snapshots"),
    (NAB_OK, "nab"),
    (LORENZ_H, "npy"),
    (BAD / "csv_empty_cell.csv", "csv"),
    (BAD / "uploads_bad_base64.jsonl", "uploads"),
])
def test_detect_format(path: Path, fmt: str) -> None:
    assert detect_format(path) == fmt


def test_unknown_format_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown data format"):
        load(AVG_A, format="parquet")
    with pytest.raises(DataFormatError, match="no such file"):
        load(tmp_path / "nope.csv")
    (tmp_path / "notes.md").write_text("hello", encoding="utf-8")
    with pytest.raises(DataFormatError, match="cannot detect"):
        load(tmp_path)


# ---------------------------------------------------------------------------- malformed input
@pytest.mark.parametrize(("path", "fmt", "file", "line", "col", "msg"), [
    ("ims_bad_cell", "auto", "2003.10.22.12.06.24", 4, 3, "not a number: '0.1x3'"),
    ("ims_ragged", "auto", "2003.10.22.12.06.24", 5, 8, "expected 8 columns, found 7"),
    ("ims_nan", "auto", "2003.10.22.12.06.24", 3, 8, "NaN is not allowed"),
    ("ims_bad_name", "auto", "2003.10.22.12.16", None, None, "bad file name"),
    ("ims_bad_date", "ims", "2003.13.22.12.06.24", None, None, "not a valid date-time"),
    ("ims_empty", "auto", "2003.10.22.12.06.24", None, None, "empty file"),
    ("ims_truncated_gz", "auto", "2003.10.22.12.06.24.gz", None, None, "truncated gzip"),
    ("ims_not_gzip", "ims", "2003.10.22.12.06.24.gz", None, None, "gzip"),
    ("ims_six_columns", "auto", "2004.02.12.10.32.39", 1, None, "expected 4 or 8"),
    ("ims_mixed_columns", "auto", "2004.02.12.10.42.39", 1, None, "earlier files have 4"),
    ("ims_avg_bad_time.csv", "auto", "ims_avg_bad_time.csv", 4, 2, "not a date-time"),
    ("ims_avg_bad_cell.csv", "auto", "ims_avg_bad_cell.csv", 3, 3, "not a number: 'abc'"),
    ("ims_avg_ragged.csv", "ims-avg", "ims_avg_ragged.csv", 3, 6, "expected 5 columns, found 6"),
    ("nab_nan.csv", "auto", "nab_nan.csv", 5, 2, "NaN is not allowed"),
    ("nab_header_only.csv", "nab", "nab_header_only.csv", 1, None, "no data rows"),
    ("csv_empty_cell.csv", "auto", "csv_empty_cell.csv", 3, 2, "empty cell"),
    ("femto_ragged", "auto", "acc_00001.csv", 6, 6, "expected 6 columns, found 5"),
    ("femto_bad_name", "auto", "acc_0001a.csv", None, None, "bad file name"),
    ("npy_nan.npy", "auto", "npy_nan.npy", None, None, "non-finite value at index [1, 0]"),
    ("snapshots_no_acc.npz", "snapshots", "snapshots_no_acc.npz", None, None, "no 'acc' array"),
    ("uploads_bad_base64.jsonl", "auto", "uploads_bad_base64.jsonl", 2, None, "not valid base64"),
])
def test_malformed_fixture(
    path: str, fmt: str, file: str, line: int | None, col: int | None, msg: str,
) -> None:
    with pytest.raises(DataFormatError) as info:
        load(BAD / path, format=fmt)
    err = info.value
    assert Path(err.path).name == file
    assert (err.line, err.column) == (line, col)
    assert msg in err.message
    where = ":".join(str(v) for v in (err.path, line, col) if v is not None)
    assert str(err) == f"{where}: {err.message}"


def test_bad_cell_in_large_file_is_located(tmp_path: Path) -> None:
    """The bulk parser's failure is re-scanned to the exact line and column."""
    rows = np.round(np.random.default_rng(0).normal(size=(20480, 4)), 3)
    lines = ["\t".join(f"{v:.3f}" for v in r) for r in rows]
    lines[17000] = lines[17000].rsplit("\t", 1)[0] + "\t-"
    folder = tmp_path / "ims"
    folder.mkdir()
    with gzip.open(folder / "2004.02.12.10.32.39.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"2004\.02\.12\.10\.32\.39\.gz:17001:4: not a number: '-'"):
        load(folder)


# ---------------------------------------------------------------------------- Recording helpers
def test_digest_is_stable_and_sensitive() -> None:
    a = load(AVG_A)
    assert a.digest() == load(AVG_A).digest()
    # Pinned: changes only if the file, the parser or the digest definition changes.
    assert a.digest() == "3f8fad2f0149874330ef4d70ead7f483ff3c88a6bb2edb499612dec386a6bcc1"
    assert a.select_channels([0, 1, 2, 3]).digest() == a.digest()
    assert a.select_channels([1, 0, 2, 3]).digest() != a.digest()
    assert a.head(981).digest() != a.digest()
    changed = Recording(a.segments, a.channels, 1.0, a.units, a.source, a.format)
    assert changed.digest() != a.digest()


def test_head_select_and_read_only(ims_raw: Recording) -> None:
    h = ims_raw.head(25000)
    assert [s.n_rows for s in h.segments] == [20480, 4520]
    assert h.segments[1].start == ims_raw.segments[1].start
    np.testing.assert_array_equal(h.concatenated(), ims_raw.concatenated()[:25000])
    sel = ims_raw.select_channels("B2y")
    np.testing.assert_array_equal(sel.segments[2].data[:, 0], ims_raw.segments[2].data[:, 3])
    with pytest.raises(KeyError, match="no channel"):
        ims_raw.select_channels(["B9"])
    with pytest.raises(ValueError, match="read-only"):
        ims_raw.segments[0].data[0, 0] = 1.0
    times = ims_raw.head(3).times()
    assert times is not None and times[1] - times[0] == np.timedelta64(49, "us")  # 1 / 20480 Hz
    assert times[0] == ims_raw.segments[0].start


def test_segment_validation() -> None:
    with pytest.raises(ValueError, match="2-D"):
        Segment(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="row_times"):
        Segment(np.zeros((3, 1), np.float32), None, np.array(["2020-01-01"] * 2, "datetime64[ms]"))
    with pytest.raises(ValueError, match="columns"):
        Recording((Segment(np.zeros((3, 2), np.float32)),), ("a",), None, "", "x", "csv")


def test_data_package_does_not_import_tensorflow() -> None:
    code = ("import sys, trainer, edge_agent.contract.recordings, edge_agent.contract.upload_record; "
            "from edge_agent.contract.recordings import load; load(sys.argv[1]); "
            "bad = [m for m in ('tensorflow', 'keras', 'pandas') if m in sys.modules]; "
            "sys.exit('imported: %s' % bad if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code, str(AVG_A)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
