"""The whole central-retraining run: data -> windows -> model -> threshold -> TFLite -> checked bundle.

::

    load ─► split at --train-until ─► scaler (training rows only) ─► windows (per segment)
         ─► fit (time-ordered validation) ─► threshold on validation scores
         ─► float32 + int8 TFLite ─► ops / size / latency / parity per variant
         ─► parity gate on the served variant ─► report/ ─► write_bundle (atomic)

Nothing is written to ``out`` unless every check passes, so a failed run leaves the previous
bundle in place.
"""

from __future__ import annotations

import logging
import platform
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

from edge_agent.contract import threshold as thresholds
from edge_agent.contract.bundle import SCHEMA_VERSION, write_bundle
from edge_agent.contract.preprocess import PreprocessSpec
from edge_agent.contract.recordings import detect_format, load
from edge_agent.scorer import TFLiteModel
from trainer.export import VARIANTS, check_parity, convert, evaluate, quiet_tensorflow
from trainer.model import ModelConfig, export_clone
from trainer.report import PERSISTENCE, write_report
from trainer.split import parse_time, split_recording, trim_recording
from trainer.train import FitConfig, WindowSet, fit, fit_scaler, keras_scores, make_windows, split_validation

log = logging.getLogger(__name__)

#: Most held-out windows scored for parity (evenly spaced when there are more).
PARITY_MAX_WINDOWS = 3000


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``trainer train`` needs; defaults are the IMS test-2 tutorial reproduction's."""

    data: Path
    out: Path
    format: str = "auto"
    channels: tuple[str, ...] | None = None
    train_until: str | None = None
    start: str | None = None
    end: str | None = None
    mode: str = "raw"
    window: int = 10
    hop: int = 1
    block: int = 1
    features: tuple[str, ...] = ()
    fft_bands: tuple[tuple[float, float], ...] = ()
    model: ModelConfig = field(default_factory=ModelConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    quantize: str = "int8"
    threshold_method: str = thresholds.DEFAULT_METHOD
    threshold_params: dict = field(default_factory=dict)
    min_agreement: float = 0.99
    model_id: str | None = None
    latency_windows: int = 1000
    persistence: int = PERSISTENCE
    recording: object = None  # a Recording already loaded (trainer.dataset, trainer.retrain); ``data`` only names it


@dataclass(frozen=True)
class TrainResult:
    """What :func:`run` wrote, plus the trained Keras model (the parity reference) for callers that want it."""

    bundle: Path
    manifest: dict
    report: dict
    model: object = None


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "ai-edge-litert", "tflite-runtime", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _model_id(opts: TrainOptions) -> str:
    if opts.model_id:
        return opts.model_id
    stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(opts.data).stem if Path(opts.data).is_file() else Path(opts.data).name)
    return f"{stem.strip('-').lower() or 'model'}-{opts.model.architecture}"


def _evenly(n: int, most: int) -> np.ndarray:
    return np.arange(n) if n <= most else np.linspace(0, n - 1, most).round().astype(np.int64)


def run(opts: TrainOptions) -> TrainResult:
    """Train, export, verify and write the bundle to ``opts.out``. Raises ExportError/ValueError on failure."""
    quiet_tensorflow()
    t_start = time.monotonic()
    if opts.quantize not in VARIANTS:
        raise ValueError(f"--quantize must be one of {list(VARIANTS)}, got {opts.quantize!r}")
    if not 0 < opts.min_agreement <= 1:
        raise ValueError(f"--min-agreement must be in (0, 1], got {opts.min_agreement}")
    load_opts = {"channels": list(opts.channels)} if opts.channels else {}
    fmt = detect_format(opts.data) if opts.format == "auto" and opts.recording is None else opts.format
    if fmt == "uploads":  # retrain only on windows the gateway scored as normal
        load_opts["healthy_only"] = True
    rec = opts.recording if opts.recording is not None else load(opts.data, fmt, **load_opts)
    log.info("loaded %r", rec)
    rec = trim_recording(rec, opts.start, opts.end)
    if rec.n_rows == 0:
        raise ValueError(f"{opts.data}: no data rows")
    spec = PreprocessSpec(mode=opts.mode, channels=rec.channels, window=opts.window, hop=opts.hop, block=opts.block,
                          features=opts.features, fft_bands=opts.fft_bands, sample_rate=rec.sample_rate)

    train_rec, n_train_rows = split_recording(rec, opts.train_until)
    scaler = fit_scaler(train_rec, spec)
    everything = make_windows(rec, spec, scaler)
    if len(everything) == 0:
        longest = max(seg.n_rows for seg in rec.segments) // spec.block
        raise ValueError(f"no windows: the longest segment has {longest} steps but a window needs {spec.window}")
    is_train = everything.ends <= n_train_rows
    n_train_windows = int(is_train.sum())
    if not is_train[:n_train_windows].all():
        raise ValueError("segments are not in time order; cannot split training windows from later ones")
    fit_idx, val_idx = split_validation(n_train_windows, opts.fit.validation_fraction, spec.window, spec.hop)
    if len(val_idx) < thresholds.MIN_SCORES:
        raise ValueError(f"only {len(val_idx)} validation windows; threshold calibration needs at least "
                         f"{thresholds.MIN_SCORES} (more training data or a larger validation fraction)")
    later_idx = np.arange(n_train_windows, len(everything))
    fit_set, val_set, later_set = everything.subset(fit_idx), everything.subset(val_idx), everything.subset(later_idx)

    model, history = fit(opts.model, fit_set.windows, val_set.windows, opts.fit)
    val_scores = keras_scores(model, val_set.windows)
    fit_scores = keras_scores(model, fit_set.windows)
    threshold = thresholds.calibrate(val_scores, opts.threshold_method, **opts.threshold_params)
    log.info("threshold (%s on %d validation windows): %.5g", threshold.method, len(val_scores), threshold.value)

    # ---- export every variant and check it
    held_out = WindowSet(np.concatenate([val_set.windows, later_set.windows]),
                         np.concatenate([val_set.ends, later_set.ends]), None)
    pick = _evenly(len(held_out), PARITY_MAX_WINDOWS)
    held = held_out.windows[pick]
    reference = keras_scores(model, held)
    clone = export_clone(model, opts.model)
    blobs, variants, variant_scores = {}, {}, {}
    for name in VARIANTS:
        blobs[name] = convert(clone, name, representative=fit_set.windows)
        variants[name], variant_scores[name] = evaluate(name, blobs[name], held, reference, threshold.value,
                                                        latency_windows=opts.latency_windows)
    served = opts.quantize
    check_parity(served, variants[served]["parity"], opts.min_agreement)

    # ---- scores of the served model over the whole recording, for the report and the manifest
    scorer = TFLiteModel(blobs[served], stateful=variants[served]["stateful"])
    all_scores = scorer.score(everything.windows)
    served_fit_scores = all_scores[fit_idx]

    model_id = _model_id(opts)
    now = datetime.now(UTC)
    version = f"{model_id}-{now.strftime('%Y%m%dT%H%M%SZ')}"
    variant_summary = {
        name: {k: v for k, v in facts.items() if k not in ("input", "output")} | {"file": f"variants/model.{name}.tflite"}
        for name, facts in variants.items()
    }
    served_facts = variants[served]
    split = {
        "start": None if opts.start is None else str(parse_time(opts.start)),
        "end": None if opts.end is None else str(parse_time(opts.end)),
        "train_until": None if opts.train_until is None else str(parse_time(opts.train_until)),
        "training_rows": int(n_train_rows),
        "fit_windows": len(fit_idx),
        "validation_windows": len(val_idx),
        "later_windows": len(later_idx),
        "parity_windows": len(pick),
    }
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "id": model_id,
            "version": version,
            "created": now.isoformat(timespec="seconds"),
            "architecture": opts.model.architecture,
            "config": opts.model.to_dict(),
            "training": opts.fit.to_dict() | {"epochs_run": history["epochs_run"], "best_epoch": history["best_epoch"],
                                              "best_val_loss": float(min(history.get("val_loss", [np.nan])))},
        },
        "data": {
            "digest": rec.digest(),
            "source": str(opts.data),
            "format": rec.format,
            "rows": rec.n_rows,
            "segments": len(rec.segments),
            "start": _time_str(everything.times, 0),
            "end": _time_str(everything.times, -1),
            "split": split,
        },
        "signal": {"channels": list(rec.channels), "units": rec.units, "sample_rate": rec.sample_rate},
        "preprocess": spec.to_dict(),
        "window": {"steps": spec.window, "hop": spec.hop, "samples": spec.window_samples,
                   "hop_samples": spec.hop_samples},
        "scaler": scaler.to_dict(),
        "score": {"kind": "mae", "description": "mean |reconstruction - input| over the window's T x F scaled values"},
        "threshold": threshold.to_dict() | {"calibrated_on": "keras validation scores"},
        "score_quantiles": {
            "training_keras": thresholds.score_quantiles(fit_scores),
            "training_served": thresholds.score_quantiles(served_fit_scores),
            "validation_keras": thresholds.score_quantiles(val_scores),
        },
        "tflite": {
            "file": "",
            "sha256": "",
            "quantization": served,
            "stateful": bool(served_facts["stateful"]),
            "input": served_facts["input"],
            "output": served_facts["output"],
            "ops": served_facts["ops"],
            "size_bytes": served_facts["size_bytes"],
        },
        "variants": variant_summary,
        "parity": served_facts["parity"] | {"variant": served, "min_agreement": opts.min_agreement,
                                            "reference": "keras"},
        "libraries": library_versions(),
    }

    with tempfile.TemporaryDirectory(prefix="trainer-report-") as tmp:
        report_dir = Path(tmp) / "report"
        groups = {"training": served_fit_scores, "validation": all_scores[val_idx], "later": all_scores[later_idx]}
        report = write_report(
            report_dir, history=history, scores=all_scores, times=everything.times, ends=everything.ends,
            n_train=n_train_windows, groups=groups, threshold=threshold.value,
            title=f"{model_id}: {served} model score over {Path(opts.data).name}",
            facts={"model_version": version, "variants": variant_summary, "split": split,
                   "threshold": threshold.to_dict()},
            persistence=opts.persistence,
        )
        manifest["report"] = {"dir": "report", "summary": report["summary"]}
        bundle = write_bundle(opts.out, manifest, blobs[served], variants=blobs, report_dir=report_dir)
    log.info("bundle %s written in %.1f s (serves %s)", bundle, time.monotonic() - t_start, served)
    return TrainResult(bundle, manifest, report, model)


def _time_str(times: np.ndarray | None, i: int) -> str | None:
    return None if times is None or len(times) == 0 else str(times[i])

