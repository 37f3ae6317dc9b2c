"""Smoke test of the fleet-scale benchmark (bench/bench_fleet_scale.py --quick): virtual gateways' upload records
through a real mosquitto into real ``trainer collect`` processes (K = 1, then 2 on one shared subscription) writing to a
real S3-compatible store (SeaweedFS); every record receipted and in the dataset exactly once. Its retraining section
alone (--skip-collect) on 2 groups: serially, then on a real local Ray, every group accepted both ways. The figures
themselves (records/s, latency, the serial / Ray ratio) are the benchmark's job (`make bench`), not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_fleet_scale_quick_run_writes_every_record_once(tmp_path):
    out = tmp_path / "fleet_scale.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_fleet_scale.py"), "--quick", "--gateways", "6", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    facts = json.loads(out.with_suffix(".json").read_text())
    assert [r["collectors"] for r in facts["collect"]] == [1, 2]
    for r in facts["collect"]:
        assert r["records"] == r["published"] == 6 * 2, r
        assert r["receipted"] == r["in_dataset"] == r["records"] and r["missing"] == 0 and r["doubled"] == 0, r
        assert r["dataset"]["rows"] == r["dataset"]["unique"] == r["records"], r["dataset"]
        assert r["receipts_invalid"] == 0 and r["receipts_rejected"] == 0
        assert r["records_per_s"] > 0 and 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    assert facts["put"]["files"] == 5 and facts["put"]["part_bytes"] > 0
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| 2 | 12 |" in out.read_text()
    assert "retrain" not in facts, "--quick measures no retraining unless --retrain-groups is given"


@pytest.mark.slow
def test_bench_fleet_scale_retrain_section_serial_then_local_ray(tmp_path):
    out = tmp_path / "retrain.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_fleet_scale.py"), "--skip-collect", "--retrain-groups", "2",
         "--out", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    facts = json.loads(out.with_suffix(".json").read_text())
    assert "collect" not in facts
    t = facts["retrain"]
    assert t["groups"] == ["pumps", "fans"]
    serial, ray = t["runs"]["serial"], t["runs"]["ray"]
    assert serial["mode"] == "serial" and serial["startup_s"] == 0 and serial["notice"].startswith("--serial")
    assert ray["mode"] == "local Ray" and ray["startup_s"] > 0 and ray["notice"] is None
    for r in (serial, ray):
        assert r["statuses"] == {"accepted": 2, "refused": 0, "failed": 0}, r["per_group"]
        assert r["wall_s"] > 0 and all(v["seconds"] > 0 for v in r["per_group"].values())
    assert serial["workers"] == 1 and all(v["where"] != serial["per_group"]["pumps"]["where"]
                                          for v in ray["per_group"].values()), "the Ray tasks ran in other processes"
    assert t["ratio"] == serial["wall_s"] / ray["wall_s"]
    text = out.read_text()
    assert text.startswith("Retraining 2 groups: serial vs local Ray") and "| local Ray |" in text
    assert out.with_suffix(".png").stat().st_size > 0
