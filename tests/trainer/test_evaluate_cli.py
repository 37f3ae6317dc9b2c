"""``trainer evaluate`` end to end on a discovered folder: a NAB-layout series and a point-labelled table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tensorflow")

from trainer.cli import cli  # noqa: E402


def _folder(root):
    rng = np.random.default_rng(0)
    t0 = np.datetime64("2020-01-01T00:00", "m")
    n = 1200
    v = 10 + rng.normal(size=n)
    v[900:960] += 12.0
    (root / "series").mkdir(parents=True)
    (root / "series" / "s.csv").write_text("timestamp,value\n" + "".join(
        f"{str(t0 + 5 * i).replace('T', ' ')}:00,{x:.4f}\n" for i, x in enumerate(v)))
    (root / "labels.json").write_text(json.dumps({"series/s.csv": [[str(t0 + 5 * 880).replace("T", " ") + ":00.000000",
                                                                    str(t0 + 5 * 1000).replace("T", " ") + ":00.000000"]]}))
    (root / "pump").mkdir()
    rows = ["datetime;a;b;anomaly;changepoint"]
    for i in range(600):
        bad = i >= 400
        a, b = rng.normal(size=2) + (6.0 if bad else 0.0)
        rows.append(f"{str(np.datetime64('2020-03-09T10:00:00') + i).replace('T', ' ')};{a:.4f};{b:.4f};{int(bad)};0")
    (root / "pump" / "1.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.slow
def test_evaluate_writes_a_report_and_a_timeline_per_recording(tmp_path):
    _folder(tmp_path / "data")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(tmp_path / "data"), "--out", str(out), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "### Labelled anomaly windows (NAB layout)" in report and "### Point labels" in report
    results = {r["case"]: r for r in json.loads((out / "results.json").read_text())}
    assert set(results) == {"s", "pump/1"}
    s, pump = results["s"]["figures"], results["pump/1"]["figures"]
    assert s["ae"]["windows"] == 1 and {"rms", "kurtosis", "tutorial"} <= set(s)
    assert s["ae"]["hit"] == 1, s["ae"]
    assert pump["ae"]["recall"] > 0.5 and pump["ae"]["far"] < 0.2, pump["ae"]
    assert results["pump/1"]["recipe"]["mode"] == "raw"
    assert (out / "s.png").stat().st_size > 10_000 and (out / "pump-1.png").is_file()
