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
    assert "retraining failed" in err and "not-a-bundle" in err
    (tmp_path / "empty").mkdir()
    verdict, err = trainer("evaluate", "--data", tmp_path / "empty", "--out", tmp_path / "eval")
    assert verdict == {"code": 1, "imported": []}, err
    assert "no cases to evaluate" in err
