"""Every ``trainer`` command checks its inputs before it imports TensorFlow: a wrong file is refused at once.

Each case runs ``trainer.cli.main`` in a fresh interpreter (this test process may have imported TensorFlow
already) and reports the exit code and whether TensorFlow or Keras were imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import json, sys
from trainer.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "imported": [m for m in ("tensorflow", "keras") if m in sys.modules]}))
"""


def trainer(*args: str | Path) -> tuple[dict, str]:
    """(the probe's verdict, stderr) of ``trainer ARGS`` run in-process in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def table(path: Path, header: str, rows: int, row=lambda i: f"{i},{i % 7}") -> Path:
    path.write_text(header + "\n" + "".join(row(i) + "\n" for i in range(rows)))
    return path


@pytest.mark.parametrize("case", ["text cell", "too few rows", "bad --train-until", "bad --start"])
def test_train_refuses_wrong_data_without_importing_tensorflow(tmp_path, case):
    out = tmp_path / "bundle"
    if case == "text cell":
        data = table(tmp_path / "d.csv", "x,y", 50, lambda i: f"{i},{'ok' if i == 30 else i}")
        args, expected = [], "d.csv:32:2: not a number: 'ok'"
    elif case == "too few rows":
        data = table(tmp_path / "d.csv", "x,y", 8)
        args, expected = ["--window", "10"], "the longest segment has 8 steps (1 rows each) but a window needs 10"
    else:
        data = table(tmp_path / "d.csv", "time,x", 50, lambda i: f"2024-01-01T00:{i:02d}:00,{i % 7}")
        args = ["--train-until" if case == "bad --train-until" else "--start", "soon"]
        expected = "cannot read 'soon' as a time"
    verdict, err = trainer("train", "--data", data, "--out", out, *args)
    assert verdict == {"code": 1, "imported": []}, err
    assert expected in err and f"training failed, {out} left unchanged" in err
    assert not out.exists()


def test_retrain_and_evaluate_refuse_wrong_inputs_without_importing_tensorflow(tmp_path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "not-a-bundle").mkdir()
    verdict, err = trainer("retrain", "--dataset", tmp_path / "dataset", "--current", tmp_path / "not-a-bundle",
                           "--out", tmp_path / "new")
    assert verdict == {"code": 1, "imported": []}, err
    assert "retraining failed" in err and "dataset: is not a dataset" in err  # the first wrong input, named
    (tmp_path / "empty").mkdir()
    verdict, err = trainer("evaluate", "--data", tmp_path / "empty", "--out", tmp_path / "eval")
    assert verdict == {"code": 1, "imported": []}, err
    assert "no cases to evaluate" in err


# ------------------------------------------------------------------------------ CSV tables as a user exports them
ROWS = 30
CSV_CASES = {
    # case: (the file's lines, what the refusal says, the options that load it)
    "text column": (["x,y,z,status", *(f"{i % 5},{i % 3},{i % 7},{'ok' if i % 4 else 'warn'}" for i in range(ROWS))],
                    "d.csv:2:4: not a number: 'warn' in column 'status': a text column; select the numeric columns "
                    "(trainer train --channels x,y,z)", ["--channels", "x,y,z"]),
    "preamble": (["Logger: VX-200 serial 4411", "Sample rate: 1 Hz", "", "time,x,y,z",
                  *(f"{i},{i % 5},{i % 3},{i % 7}" for i in range(ROWS))],
                 "lines 1-3 look like a preamble above the table, which starts at line 4 ('time,x,y,z'): skip them "
                 "with skip_rows=3 (trainer train --skip-rows 3)", ["--skip-rows", "3"]),
    "US dates": (["Date,x,y,z", *(f"12/31/2026 1:{i:02d} PM,{i % 5},{i % 3},{i % 7}" for i in range(ROWS))],
                 "d.csv:2:1: not a number: '12/31/2026 1:00 PM' in column 'Date': a date-time in a format not read "
                 "here; times are read from the first column: ISO 8601 (2026-12-31 13:05:00, 2026-12-31T13:05:00.250Z)"
                 ", YYYY.MM.DD.HH.MM.SS, or numbers under a header named time", ["--channels", "x,y,z"]),
    "US dates named time": (["time,x,y,z", *(f"12/31/2026 1:{i:02d} PM,{i % 5},{i % 3},{i % 7}" for i in range(ROWS))],
                            "Convert the column, or leave it out: select the value columns (trainer train --channels "
                            "x,y,z) and give their rate if they are evenly sampled (--sample-rate HZ)",
                            ["--channels", "x,y,z", "--sample-rate", "1"]),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_a_csv_as_exported_is_refused_with_what_to_do_and_loads_once_it_is_done(tmp_path, case):
    """Each refusal says what to do; done, the table loads (ROWS rows x 3 channels) and is refused only for a
    window longer than the recording, still without TensorFlow."""
    lines, refusal, fix = CSV_CASES[case]
    data = tmp_path / "d.csv"
    data.write_text("\n".join(lines) + "\n")
    verdict, err = trainer("train", "--data", data, "--out", tmp_path / "bundle")
    assert verdict == {"code": 1, "imported": []}, err
    assert refusal in err
    verdict, err = trainer("train", "--data", data, "--out", tmp_path / "bundle", "--window", str(ROWS + 1), *fix)
    assert verdict == {"code": 1, "imported": []}, err
    assert f"{ROWS} rows x 3 channels" in err and f"a window needs {ROWS + 1}" in err
    if case == "US dates named time":
        assert "column 1 ('time') is ignored: not a number: '12/31/2026 1:00 PM'" in err


def test_csv_channels_pick_columns_by_name_or_index_and_leave_the_others_unread(tmp_path):
    from edge_agent.contract.recordings import DataFormatError, load

    path = tmp_path / "t.csv"
    path.write_text("time,x,label,y,note\n" + "".join(
        f"2026-01-01T00:00:{i:02d},{i},{int(i == 3)},{10 * i},{'text, quoted' if i % 2 else 'n/a'}\n"
        .replace("text, quoted", '"text, quoted"') for i in range(6)))
    rec = load(path, channels=[1, "x"])  # indices count the columns after the time column, labels left out
    assert rec.channels == ("y", "x") and rec.label_names == ("label",)
    assert rec.concatenated()[:, 0].tolist() == [0, 10, 20, 30, 40, 50] and rec.labels()[:, 0].tolist()[3] == 1
    assert str(rec.segments[0].row_times[1]) == "2026-01-01T00:00:01.000"
    for channels, message in (([5], "channel index 5 out of range for 3 columns (x, y, note)"),
                              (["label"], "no channel 'label'; the columns are ['x', 'y', 'note']"),
                              (["note"], "t.csv:2:5: not a number: 'n/a' in column 'note': a text column; select "
                                         "the numeric columns (trainer train --channels x,y)")):
        with pytest.raises(DataFormatError) as caught:
            load(path, channels=channels)
        assert message in str(caught.value)
    path.write_text("t_ms,a,b\n" + "".join(f"{2 * i},{i},-{i}\n" for i in range(10)))  # numeric time, 500 Hz
    rec = load(path, channels=["b"])
    assert (rec.channels, rec.sample_rate, rec.concatenated()[-1, 0]) == (("b",), 500.0, -9.0)


def test_skip_rows_reads_a_preamble_table_as_csv_and_only_csv(tmp_path):
    from edge_agent.contract.recordings import load

    path = tmp_path / "p.csv"
    path.write_text("timestamp,value\nexported by logger\ntime,x\n" + "".join(f"{i},{i * i}\n" for i in range(5)))
    rec = load(path, skip_rows=2)  # without it, auto detection takes the first line for a NAB header
    assert (rec.format, rec.channels, rec.concatenated()[:, 0].tolist()) == ("csv", ("x",), [0, 1, 4, 9, 16])
    np_path = tmp_path / "a.npy"
    __import__("numpy").save(np_path, __import__("numpy").zeros((4, 2)))
    with pytest.raises(ValueError, match="rows can be skipped in CSV tables only"):
        load(np_path, skip_rows=1)
