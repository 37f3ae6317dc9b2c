"""Smoke test of the sensors benchmark (bench/bench_sensors.py): two real ptys fed by the benchmark's feeder process
into a real pinned ``edge-agent run`` with two [[sensors]]; every window scored, nothing dropped. The figures
themselves (CPU, latency, the knee) are the benchmark's job (`make bench`), not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_sensors_quick_run_scores_every_window(tmp_path, agent_bundle):
    out = tmp_path / "sensors.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_sensors.py"), "--cases", "ims", "--bundle", str(agent_bundle),
         "--sensors", "2", "--seconds", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (row,) = json.loads(out.with_suffix(".json").read_text())
    assert row["sensors"] == 2 and row["windows_expected"] >= 2 * 12
    assert row["windows_scored"] == row["windows_expected"] and row["frames_dropped"] == 0
    assert row["samples_missing"] == 0 and row["cpu_pct"] > 0 and row["rss_mb"] > 20
    assert "| 20 kHz x 4 | 2 |" in out.read_text()
