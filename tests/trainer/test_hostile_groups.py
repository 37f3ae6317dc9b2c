"""Hostile group and answer values in a collected dataset (a file written into it by hand or by another writer: the
collector itself refuses such records): ``trainer retrain --by group`` leaves forged groups out, counted, and plans
the real groups; ``trainer dataset summary`` and ``trainer evaluate --answers`` count forged answers as invalid
instead of crashing."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from edge_agent.contract.bundle import Bundle
from edge_agent.contract.upload_record import UploadError, decode_record, encode_record
from trainer import dataset
from trainer.cli import cli
from trainer.retrain import RetrainOptions, dataset_groups, plan_groups

FORGED = ["x" * 10_000, "a/b", "+", "#", "ü", "a\x00b", "../../etc", ""]


def _record(version: str, i: int, group: str | None):
    return decode_record(encode_record(
        device="pump-1", model_id="m", model_version=version, seq_end=(i + 1) * 8192,
        time_end=f"2026-11-22T10:00:{i:02d}", sample_rate=20_000, channels=["ch0", "ch1", "ch2", "ch3"], score=0.1,
        threshold=1.0, state="normal", kind="normal", alert_ref=None, group=group,
        samples=np.zeros((8192, 4), np.float32)))


def test_the_collector_refuses_records_whose_group_is_no_id(agent_bundle: Path) -> None:
    version = Bundle.load(agent_bundle).version
    good = json.loads(encode_record(
        device="pump-1", model_id="m", model_version=version, seq_end=8192, time_end="2026-11-22T10:00:00",
        sample_rate=20_000, channels=["ch0"], score=0.1, threshold=1.0, state="normal", kind="normal",
        alert_ref=None, group="pumps", samples=np.zeros((8192, 1), np.float32)))
    for g in [*FORGED, 7, ["pumps"], {"a": 1}, True]:
        try:
            decode_record(json.dumps(good | {"group": g}))
        except UploadError as exc:
            assert "group" in str(exc) and len(str(exc)) < 400
        else:
            raise AssertionError(f"group {ascii(g)[:40]} was accepted")


def test_forged_groups_in_the_dataset_are_left_out_not_planned(agent_bundle: Path, tmp_path: Path, caplog) -> None:
    version = Bundle.load(agent_bundle).version
    writer = dataset.DatasetWriter(tmp_path / "ds")
    for i, g in enumerate(["pumps"] * 3 + FORGED + [None]):
        writer.add(dataclasses.replace(_record(version, i, "pumps"), group=g))
    writer.flush()
    current = tmp_path / "current" / "pumps"
    shutil.copytree(agent_bundle, current)
    manifest = json.loads((current / "manifest.json").read_text())
    manifest["model"]["group"] = "pumps"
    (current / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="trainer.retrain"):
        counts, none = dataset_groups(tmp_path / "ds")
        planned = plan_groups(RetrainOptions(dataset=tmp_path / "ds", current=tmp_path / "current",
                                             out=tmp_path / "out"))
    assert counts == {"pumps": 3} and none == 1 and planned == ["pumps"]
    warned = [r.getMessage() for r in caplog.records if "no id" in r.getMessage()]
    assert warned and f"{len(FORGED)} windows" in warned[0] and len(warned[0]) < 1000


def test_forged_answers_are_counted_invalid_not_a_crash(agent_bundle: Path, tmp_path: Path) -> None:
    version = Bundle.load(agent_bundle).version
    forged = [{"kind": None, "by": None, "time": None}, {"kind": "ack", "by": "t", "time": "2026"},
              {"kind": "x" * 5000, "by": "\x00", "time": "9999"}]
    writer = dataset.DatasetWriter(tmp_path / "ds")
    for i, a in enumerate(forged):
        rec = dataclasses.replace(_record(version, i, "pumps"), answer=a, state="critical", kind="alert",
                                  alert_ref=f"alert-{i}")
        writer.add(rec)
    writer.flush()
    out = CliRunner().invoke(cli, ["dataset", "summary", str(tmp_path / "ds")])
    assert out.exit_code == 0 and out.exception is None, out.output
    assert "ack 1" in out.output and "invalid 2" in out.output and "x" * 100 not in out.output
    out = CliRunner().invoke(cli, ["evaluate", "--answers", str(tmp_path / "ds"), "--bundle", str(agent_bundle),
                                   "--out", str(tmp_path / "out")])
    assert out.exit_code == 1 and "no technician's answer" in out.output, out.output
    assert "carry only ack, invalid (no verdict)" in out.output and "x" * 100 not in out.output
