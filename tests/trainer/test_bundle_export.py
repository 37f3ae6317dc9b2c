"""Train a tiny model on real IMS data once, then check what the export promises.

One session-scoped run of the real pipeline (tiny LSTM, few epochs, ~2 days of the IMS test-2
table) feeds every test here: builtin-only op lists, Keras/TFLite parity recomputed from the
bundle's own manifest, bundle schema and corruption handling, atomic replacement, seeded
determinism, and ``trainer inspect``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.contract.bundle import Bundle, write_bundle
from edge_agent.contract.errors import BundleError
from edge_agent.contract.preprocess import model_inputs
from edge_agent.scorer import TFLiteModel

pytest.importorskip("tensorflow")

from edge_agent.contract.recordings import load  # noqa: E402
from trainer.export import ExportError, check_parity, convert, evaluate  # noqa: E402
from trainer.model import ModelConfig, build, export_clone  # noqa: E402
from trainer.pipeline import TrainOptions, run  # noqa: E402
from trainer.split import parse_time, trim_recording  # noqa: E402
from trainer.tflite_eval import model_ops, non_builtin_ops, parity, spearman  # noqa: E402
from trainer.train import FitConfig, keras_scores  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
IMS_TEST2 = REPO / "data" / "ims_bearing" / "averaged" / "2nd_test_resmaple_10minutes.csv"
TINY = dict(
    data=IMS_TEST2, format="ims-avg", start="2004-02-12T11:32:39", end="2004-02-17T12:00:00",
    train_until="2004-02-14T00:00:00", window=6, hop=1, quantize="int8", model=ModelConfig(units=(8, 4)),
    fit=FitConfig(epochs=4, patience=2, seed=7), latency_windows=50, model_id="tiny-ims",
)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The real pipeline on a small slice: (TrainResult, bundle path)."""
    if not IMS_TEST2.is_file():
        pytest.skip(f"{IMS_TEST2} is not shipped")
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    result = run(TrainOptions(out=out, **TINY))
    return result, out


@pytest.fixture
def bundle_copy(tiny, tmp_path) -> Path:
    """A private copy of the tiny bundle that a test may damage."""
    _, path = tiny
    dst = tmp_path / "bundle"
    shutil.copytree(path, dst)
    return dst


# ---------------------------------------------------------------- ops


def test_every_variant_uses_builtin_ops_only(tiny):
    _, path = tiny
    files = [path / "model.tflite", *sorted((path / "variants").glob("*.tflite"))]
    assert len(files) == 3
    for f in files:
        ops = model_ops(f)
        assert ops, f
        assert non_builtin_ops(ops) == [], (f, ops)
        assert "WHILE" not in ops and "FULLY_CONNECTED" in ops, (f, ops)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["tflite"]["ops"] == model_ops(path / "model.tflite")


def test_non_builtin_ops_are_recognised():
    assert non_builtin_ops(["ADD", "FlexTensorListReserve", "CUSTOM", "TILE", "MyCustomOp"]) == [
        "FlexTensorListReserve", "CUSTOM", "MyCustomOp"]


# ---------------------------------------------------------------- parity


def test_served_int8_model_agrees_with_keras_on_held_out_windows(tiny):
    result, path = tiny
    bundle = Bundle.load(path)
    assert bundle.quantization == "int8"
    # rebuild the held-out windows from the data and the manifest only, as the gateway would
    rec = trim_recording(load(IMS_TEST2, "ims-avg"), TINY["start"], TINY["end"])
    _, later = rec.split_at(parse_time(TINY["train_until"]))
    windows = model_inputs(later.segments[0].data, bundle.spec, bundle.scaler)
    assert windows.shape[1:] == (6, 4) and len(windows) > 100
    reference = keras_scores(result.model, windows)
    served = TFLiteModel(bundle.model_path).score(windows)
    p = parity(reference, served, bundle.threshold.value)
    assert p["agreement"] >= 0.99, p
    assert p["spearman"] > 0.99, p
    assert p["reference_above"] > 0 and p["reference_above"] < len(windows), "threshold must split the data"
    assert p["max_rel_error"] < 0.2, p
    # the float32 variant is essentially exact
    f32 = TFLiteModel(path / "variants" / "model.float32.tflite").score(windows)
    np.testing.assert_allclose(f32, reference, rtol=1e-4)


def test_manifest_records_parity_size_and_latency_per_variant(tiny):
    result, _ = tiny
    m = result.manifest
    assert set(m["variants"]) == {"float32", "int8"}
    for name, v in m["variants"].items():
        assert v["size_bytes"] > 1000
        assert v["latency"]["p50_us"] > 0 and v["latency"]["p99_us"] >= v["latency"]["p50_us"]
        assert v["parity"]["n_windows"] > 50 and v["parity"]["agreement"] >= 0.99, name
    assert m["parity"]["variant"] == "int8" and m["parity"]["min_agreement"] == 0.99
    q = m["tflite"]["input"]["quantization"]
    assert m["tflite"]["input"]["dtype"] == "int8" and q["scale"] > 0 and -128 <= q["zero_point"] <= 127
    assert m["tflite"]["stateful"] is False


def test_scorer_repeats_itself_and_quantizes_like_the_runtime(tiny):
    _, path = tiny
    scorer = TFLiteModel(path / "model.tflite")
    assert scorer.stateful is False
    rng = np.random.default_rng(3)
    a, b = rng.random((2, 6, 4), dtype=np.float32)
    first = scorer.score_window(a)
    scorer.score_window(b)
    assert scorer.score_window(a) == first
    # out-of-range inputs saturate instead of wrapping around
    assert np.isfinite(scorer.score_window(np.full((6, 4), 50.0, np.float32)))
    with pytest.raises(ValueError, match="window shape"):
        scorer.score_window(np.zeros((5, 4), np.float32))


def test_parity_gate_fails_with_a_clear_message():
    ref = np.linspace(0.0, 1.0, 200)
    cand = ref.copy()
    cand[95:105] = cand[95:105][::-1] + 0.2  # ten windows around the threshold flip
    p = parity(ref, cand, threshold=0.5)
    assert p["agreement"] < 0.99
    with pytest.raises(ExportError, match=r"agree with Keras on 9\d\.\d\d% of 200 held-out windows .*--quantize auto"):
        check_parity("int8", p, 0.99)
    check_parity("int8", p, 0.9)  # accepted when the user lowers the bar


def test_spearman_matches_definition():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(np.sqrt(3) / 2)


def test_conv1d_autoencoder_exports_to_builtin_ops_with_parity():
    rng = np.random.default_rng(0)
    windows = rng.random((64, 10, 3), dtype=np.float32)
    config = ModelConfig(architecture="conv1d", units=(8, 4), latent=4)
    model = build(config, 10, 3)
    clone = export_clone(model, config)
    ref = keras_scores(model, windows)
    for name in ("float32", "int8"):
        blob = convert(clone, name, representative=windows)
        facts, scores = evaluate(name, blob, windows, ref, threshold=float(np.median(ref)), latency_windows=10)
        assert non_builtin_ops(facts["ops"]) == [] and "CONV_2D" in facts["ops"]
        assert facts["parity"]["spearman"] > 0.9, facts["parity"]


# ---------------------------------------------------------------- bundle schema and corruption


def test_bundle_loads_and_matches_the_manifest(tiny):
    result, path = tiny
    bundle = Bundle.load(path)
    assert bundle.input_shape == (1, 6, 4)
    assert bundle.spec.channels == ("Bearing 1", "Bearing 2", "Bearing 3", "Bearing 4")
    assert bundle.threshold.method == "mean_std" and bundle.threshold.value > 0
    assert bundle.version.startswith("tiny-ims-")
    for key in ("digest", "source", "format", "rows"):
        assert result.manifest["data"][key]
    assert (path / "report" / "report.json").is_file()
    for png in ("loss.png", "histogram.png", "timeline.png"):
        assert (path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((path / "report" / "report.json").read_text())
    assert report["figures"]["timeline"] == "timeline.png"
    assert report["summary"]["threshold"] == bundle.threshold.value


def test_flipped_byte_in_model_is_refused(bundle_copy):
    model = bundle_copy / "model.tflite"
    blob = bytearray(model.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    model.write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="sha256 .* does not match the manifest"):
        Bundle.load(bundle_copy)


def test_broken_manifest_is_refused(bundle_copy):
    manifest_path = bundle_copy / "manifest.json"
    good = json.loads(manifest_path.read_text())
    manifest_path.write_text(manifest_path.read_text()[:-20])
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(bundle_copy)
    del good["threshold"]["value"]
    manifest_path.write_text(json.dumps(good))
    with pytest.raises(BundleError, match="missing 'threshold.value'"):
        Bundle.load(bundle_copy)


def _edit_manifest(bundle: Path, edit) -> None:
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    edit(manifest)
    manifest_path.write_text(json.dumps(manifest))


def test_manifest_that_misstates_the_quantization_is_refused(bundle_copy):
    served = json.loads((bundle_copy / "manifest.json").read_text())["tflite"]["quantization"]
    assert served == "int8"
    _edit_manifest(bundle_copy, lambda m: m["tflite"].update(quantization="float32"))
    with pytest.raises(BundleError, match="manifest says the model is float32"):
        Bundle.load(bundle_copy)
    _edit_manifest(bundle_copy, lambda m: m["tflite"].update(quantization="int8"))
    _edit_manifest(bundle_copy, lambda m: m["tflite"]["input"]["quantization"].update(zero_point=0))
    with pytest.raises(BundleError, match="input tensor is quantized with scale"):
        Bundle.load(bundle_copy)


def test_model_file_outside_the_bundle_is_refused(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["tflite"].update(file="../model.tflite"))
    with pytest.raises(BundleError, match="inside the bundle"):
        Bundle.load(bundle_copy)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["tflite"]["input"]["quantization"].update(scale="0.1"),
        lambda m: m["tflite"]["input"].update(quantization=[0.1, 0]),
        lambda m: m["signal"].update(sample_rate="25.6 kHz"),
        lambda m: m["preprocess"].update(window="ten"),
        lambda m: m["scaler"].update(min=None),
    ],
    ids=["scale-string", "quantization-list", "rate-string", "window-string", "scaler-null"],
)
def test_values_of_the_wrong_type_deep_in_the_manifest_are_a_bundle_error(bundle_copy, edit):
    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError):
        Bundle.load(bundle_copy)


def test_model_file_may_be_a_symlink_inside_the_bundle(bundle_copy):
    served = bundle_copy / "model.tflite"
    target = bundle_copy / "variants" / "served.tflite"
    served.rename(target)
    served.symlink_to(Path("variants") / "served.tflite")
    assert Bundle.load(bundle_copy).model_path == served


# ---------------------------------------------------------------- atomicity


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_failed_write_leaves_previous_bundle_and_no_temp_dirs(bundle_copy, tmp_path):
    before = _snapshot(bundle_copy)
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    with pytest.raises(FileNotFoundError):
        write_bundle(bundle_copy, manifest, b"new model", report_dir=tmp_path / "no-such-report")
    assert _snapshot(bundle_copy) == before
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]
    Bundle.load(bundle_copy)


def test_failed_training_run_leaves_previous_bundle(bundle_copy):
    before = _snapshot(bundle_copy)
    # POT needs >= 500 validation windows; this slice has far fewer, so the run fails after training
    opts = TrainOptions(out=bundle_copy, threshold_method="pot", **{**TINY, "fit": FitConfig(epochs=1, seed=7)})
    with pytest.raises(ValueError, match="threshold calibration needs at least 500"):
        run(opts)
    assert _snapshot(bundle_copy) == before
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bundle_scores(tiny, tmp_path):
    first, first_path = tiny
    second = run(TrainOptions(out=tmp_path / "again", **TINY))
    assert second.manifest["threshold"] == first.manifest["threshold"]
    assert second.manifest["scaler"] == first.manifest["scaler"]
    assert second.manifest["data"]["digest"] == first.manifest["data"]["digest"]
    windows = np.random.default_rng(5).random((40, 6, 4), dtype=np.float32)
    a = TFLiteModel(first_path / "model.tflite").score(windows)
    b = TFLiteModel(second.bundle / "model.tflite").score(windows)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- trainer inspect


def _trainer(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO)


def test_inspect_prints_the_manifest_summary(tiny):
    _, path = tiny
    proc = _trainer("inspect", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "tiny-ims" in proc.stdout and "int8" in proc.stdout and "OK" in proc.stdout
    assert "variant    float32" in proc.stdout and "agreement" in proc.stdout
    proc = _trainer("inspect", "--json", str(path))
    assert json.loads(proc.stdout)["tflite"]["quantization"] == "int8"


def test_inspect_runs_without_tensorflow(tiny):
    _, path = tiny
    code = ("import sys\nfrom trainer.cli import main\n"
            "try:\n    main(['inspect', sys.argv[1]])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "sha256" in proc.stdout and "OK" in proc.stdout


def test_inspect_refuses_a_corrupt_bundle(bundle_copy):
    model = bundle_copy / "model.tflite"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    proc = _trainer("inspect", str(bundle_copy))
    assert proc.returncode == 1
    assert "INVALID" in proc.stderr and "sha256" in proc.stderr
    proc = _trainer("inspect", str(bundle_copy / "nowhere"))
    assert proc.returncode == 1 and "nowhere does not exist" in proc.stderr


def test_train_cli_reports_bad_options_without_writing(tmp_path):
    out = tmp_path / "b"
    proc = _trainer("train", "--data", str(IMS_TEST2), "--out", str(out), "--train-until", "yesterday-ish")
    assert proc.returncode == 1
    assert "cannot read 'yesterday-ish' as a time" in proc.stderr
    assert not out.exists()
