"""The central-retraining default (``make export-tflite``): the IMS test-2 tutorial reproduction.

Bearing 1 of IMS test 2 ends with an outer-race failure. Trained on the snapshots before
2004-02-15 12:52:39, the served int8 model must stay below its threshold on the whole training
period and cross it persistently before 2004-02-17.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.contract.bundle import Bundle

pytest.importorskip("tensorflow")

from trainer.pipeline import TrainOptions, run  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
IMS_TEST2 = REPO / "data" / "ims_bearing" / "averaged" / "2nd_test_resmaple_10minutes.csv"
#: The same arguments as the Makefile's export-tflite target.
DEFAULT = dict(format="ims-avg", start="2004-02-12T11:32:39", end="2004-02-19T06:12:39",
               train_until="2004-02-15T12:52:39", window=10, hop=1, quantize="int8")


@pytest.mark.slow
def test_ims_tutorial_reproduction_with_int8_bundle(tmp_path):
    if not IMS_TEST2.is_file():
        pytest.skip(f"{IMS_TEST2} is not shipped")
    result = run(TrainOptions(data=IMS_TEST2, out=tmp_path / "ims", latency_windows=200, **DEFAULT))
    bundle = Bundle.load(result.bundle)
    assert bundle.quantization == "int8"
    summary = result.report["summary"]
    assert summary["training_windows"] > 400
    assert summary["training_windows_above_threshold"] == 0, summary
    crossing = summary["first_persistent_crossing"]
    assert crossing is not None, summary
    assert np.datetime64(crossing["time"]) < np.datetime64("2004-02-17T00:00:00"), crossing
    assert np.datetime64(crossing["time"]) > np.datetime64(DEFAULT["train_until"]), crossing
    assert result.manifest["parity"]["agreement"] >= 0.99
    assert result.manifest["data"]["rows"] == 976  # 984 snapshots less 6 run-in and 2 post-shutdown rows
