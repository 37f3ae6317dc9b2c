"""The whole central-retraining run: data -> windows -> model -> threshold -> TFLite -> checked bundle.

::

    load ─► split at --train-until ─► representation (trainer.recipe: from the data unless given)
         ─► scaler (training rows only) ─► dense training windows (hop train_hop, labelled anomalies left out)
         ─► fit (time-ordered validation) ─► threshold on validation scores
         ─► float32 + int8 (+ 16x8) TFLite ─► ops / size / latency / parity per variant, on windows on both
            sides of the threshold (held-out, later/failing, synthetic anomalies: trainer.parity_sets)
         ─► served variant: --quantize auto picks it (trainer.export.choose_variant), an explicit one is gated
         ─► report/ ─► write_bundle (atomic)

Nothing is written to ``out`` unless every check passes, so a failed run leaves the previous
bundle in place.
"""

from __future__ import annotations

import dataclasses
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
from edge_agent.contract.recordings import Recording, detect_format, load
from edge_agent.scorer import TFLiteModel
from trainer import recipe as recipes
from trainer.export import (
    QUANTIZE_CHOICES,
    check_parity,
    choose_variant,
    convert,
    evaluate,
    quiet_tensorflow,
)
from trainer.model import ModelConfig, export_clone
from trainer.parity_sets import synthetic_anomalies
from trainer.report import PERSISTENCE, write_report
from trainer.split import parse_time, split_recording, trim_recording
from trainer.tflite_eval import parity
from trainer.train import FitConfig, fit, fit_scaler, keras_scores, make_windows, split_validation_rows

log = logging.getLogger(__name__)

#: Most held-out windows scored for parity (evenly spaced when there are more); synthetic ones come on top.
PARITY_MAX_WINDOWS = 3000
#: The bundle's threshold is at least this quantile of the training windows' own scores (README, "Threshold") ...
TRAINING_QUANTILE = 0.99
#: ... lowered so that this many isolated events (a spike, a glitch: each in every training window that covers
#: it) stay above the floor: they do not make the healthy period's own level (README, "Threshold": 1 lets one
#: 3-row burst in NAB-like training data blind the model; 3 lets IMS test 1 bearing 4's erratic days alert).
ISOLATED_EVENTS = 2


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``trainer train`` needs. ``None`` (and ``architecture="auto"``) means: chosen from the data
    by :mod:`trainer.recipe`; anything given explicitly is used as given."""

    data: Path
    out: Path
    format: str = "auto"
    channels: tuple[str, ...] | None = None
    train_until: str | None = None
    start: str | None = None
    end: str | None = None
    mode: str | None = None
    window: int | None = None
    hop: int | None = None
    block: int | None = None
    features: tuple[str, ...] | None = None
    fft_bands: tuple[tuple[float, float], ...] | None = None
    model: ModelConfig = field(default_factory=lambda: ModelConfig(architecture="auto"))
    fit: FitConfig = field(default_factory=FitConfig)
    quantize: str = "auto"
    threshold_method: str = thresholds.DEFAULT_METHOD
    threshold_params: dict = field(default_factory=dict)
    min_agreement: float = 0.99
    model_id: str | None = None
    latency_windows: int = 1000
    persistence: int = PERSISTENCE
    load_options: dict = field(default_factory=dict)
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


def _model_id(opts: TrainOptions, architecture: str) -> str:
    if opts.model_id:
        return opts.model_id
    stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(opts.data).stem if Path(opts.data).is_file() else Path(opts.data).name)
    return f"{stem.strip('-').lower() or 'model'}-{architecture}"


def _evenly(n: int, most: int) -> np.ndarray:
    return np.arange(n) if n <= most else np.linspace(0, n - 1, most).round().astype(np.int64)


def load_recording(opts: TrainOptions) -> Recording:
    """The recording ``opts`` names (or carries), trimmed to ``--start`` / ``--end``."""
    load_opts = dict(opts.load_options)
    if opts.channels:
        load_opts["channels"] = list(opts.channels)
    fmt = detect_format(opts.data) if opts.format == "auto" and opts.recording is None else opts.format
    if fmt == "uploads":  # retrain only on windows the gateway scored as normal
        load_opts["healthy_only"] = True
    rec = opts.recording if opts.recording is not None else load(opts.data, fmt, **load_opts)
    log.info("loaded %r", rec)
    rec = trim_recording(rec, opts.start, opts.end)
    if rec.n_rows == 0:
        raise ValueError(f"{opts.data}: no data rows")
    return rec


def training_floor_quantile(n_windows: int, window: int, hop: int) -> float:
    """The quantile of the training windows' scores the threshold may not be below: 0.99, lowered so that the
    windows of ``ISOLATED_EVENTS`` short events (``ceil(window / hop)`` windows each) stay above it."""
    per_event = -(-window // hop)
    return float(min(TRAINING_QUANTILE, max(0.5, 1.0 - ISOLATED_EVENTS * per_event / max(n_windows, 1))))


def labelled_windows(rec: Recording, ends: np.ndarray, window_rows: int) -> np.ndarray:
    """(W,) bool: the windows ending at ``ends`` (rows, exclusive) that contain a row any label marks (> 0)."""
    labels = rec.labels()
    if labels is None or len(ends) == 0:
        return np.zeros(len(ends), bool)
    marked = np.concatenate([[0], np.cumsum((labels > 0).any(axis=1))])
    return marked[ends] - marked[np.maximum(ends - window_rows, 0)] > 0


def run(opts: TrainOptions) -> TrainResult:
    """Train, export, verify and write the bundle to ``opts.out``. Raises ExportError/ValueError on failure."""
    quiet_tensorflow()
    t_start = time.monotonic()
    if opts.quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"--quantize must be one of {list(QUANTIZE_CHOICES)}, got {opts.quantize!r}")
    if not 0 < opts.min_agreement <= 1:
        raise ValueError(f"--min-agreement must be in (0, 1], got {opts.min_agreement}")
    rec = load_recording(opts)
    train_rec, n_train_rows = split_recording(rec, opts.train_until)
    recipe = recipes.resolve(
        rec, train_rec, mode=opts.mode, window=opts.window, hop=opts.hop, block=opts.block, features=opts.features,
        fft_bands=opts.fft_bands, architecture=None if opts.model.architecture == "auto" else opts.model.architecture)
    log.info("representation: %s", recipe.describe())
    model_config = dataclasses.replace(opts.model, architecture=recipe.architecture)
    spec = PreprocessSpec(mode=recipe.mode, channels=rec.channels, window=recipe.window, hop=recipe.hop,
                          block=recipe.block, features=recipe.features, fft_bands=recipe.fft_bands,
                          sample_rate=rec.sample_rate)

    scaler = fit_scaler(train_rec, spec)
    everything = make_windows(rec, spec, scaler)  # the windows the gateway scores (served hop)
    if len(everything) == 0:
        longest = max(seg.n_rows for seg in rec.segments) // spec.block
        raise ValueError(f"no windows: the longest segment has {longest} steps but a window needs {spec.window}")
    is_train = everything.ends <= n_train_rows
    n_train_windows = int(is_train.sum())
    if not is_train[:n_train_windows].all():
        raise ValueError("segments are not in time order; cannot split training windows from later ones")
    later_idx = np.arange(n_train_windows, len(everything))
    later_set = everything.subset(later_idx)

    dense = make_windows(train_rec, dataclasses.replace(spec, hop=recipe.train_hop), scaler)
    marked = labelled_windows(train_rec, dense.ends, spec.window_samples)
    if marked.any():
        log.info("leaving %d training windows that contain labelled anomalies out of training", int(marked.sum()))
        dense = dense.subset(np.flatnonzero(~marked))
    fit_idx, val_idx = split_validation_rows(dense.ends, spec.window_samples, opts.fit.validation_fraction,
                                             min_validation=2 * thresholds.MIN_SCORES)
    if len(val_idx) < thresholds.MIN_SCORES:
        raise ValueError(f"only {len(val_idx)} validation windows; threshold calibration needs at least "
                         f"{thresholds.MIN_SCORES} (more training data or a larger validation fraction)")
    fit_set, val_set = dense.subset(fit_idx), dense.subset(val_idx)

    model, history = fit(model_config, fit_set.windows, val_set.windows, opts.fit)
    val_scores = keras_scores(model, val_set.windows)
    fit_scores = keras_scores(model, fit_set.windows)
    threshold = thresholds.calibrate(val_scores, opts.threshold_method, **opts.threshold_params)
    log.info("threshold (%s on %d validation windows): %.5g", threshold.method, len(val_scores), threshold.value)
    if np.median(val_scores) > np.quantile(fit_scores, 0.99):
        log.warning("the validation windows (the last %d %% of the training rows) score above 99 %% of the windows "
                    "fitted before them (median %.4g vs q0.99 %.4g): the end of the training period is not like its "
                    "start (a machine already degrading?); the threshold calibrated on it will be high. Train on the "
                    "healthy part only (--train-until)", round(100 * opts.fit.validation_fraction),
                    float(np.median(val_scores)), float(np.quantile(fit_scores, 0.99)))
    train_scores = np.concatenate([fit_scores, val_scores])
    q = training_floor_quantile(len(train_scores), spec.window, recipe.train_hop)
    floor = float(np.quantile(train_scores, q))
    if floor > threshold.value:  # the healthy period the model learned must not raise alerts itself
        log.info("threshold raised to %.5g, the %.3g quantile of the training windows' own scores", floor, q)
        threshold = thresholds.with_floor(threshold, floor, f"training windows' q{q:.3g}")

    # ---- parity windows on both sides of the threshold
    held_out = np.concatenate([val_set.windows, later_set.windows])
    held = held_out[_evenly(len(held_out), PARITY_MAX_WINDOWS)]
    synthetic, synthetic_kinds = synthetic_anomalies(val_set.windows, spec, scaler, seed=opts.fit.seed)
    parity_windows = np.concatenate([held, synthetic])
    groups = {"held_out": np.arange(len(held)), "synthetic": len(held) + np.arange(len(synthetic))}
    reference = keras_scores(model, parity_windows)

    # ---- export every variant, check it, choose the served one
    clone = export_clone(model, model_config)
    blobs, variants, variant_scores = {}, {}, {}

    def export(name: str) -> None:
        blobs[name] = convert(clone, name, representative=fit_set.windows)
        variants[name], variant_scores[name] = evaluate(name, blobs[name], parity_windows, reference, threshold.value,
                                                        latency_windows=opts.latency_windows)
        variants[name]["parity_groups"] = {
            g: parity(reference[idx], variant_scores[name][idx], threshold.value) for g, idx in groups.items() if len(idx)}

    # float32 and int8 always; 16x8 when asked for, or when auto does not serve int8
    for name in ("float32", "int8", *(["16x8"] if opts.quantize == "16x8" else [])):
        export(name)
    if opts.quantize == "auto":
        choice = choose_variant(variants, threshold.value, opts.min_agreement)
        if choice["served"] != "int8":
            export("16x8")
            choice = choose_variant(variants, threshold.value, opts.min_agreement)
        served = choice["served"]
        check_parity(served, variants[served], opts.min_agreement)  # float32 too must agree
    else:
        check_parity(opts.quantize, variants[opts.quantize], opts.min_agreement)
        served = opts.quantize
        choice = {"served": served, "reason": f"--quantize {served} (passes parity)", "checks": {}}
    choice = {"requested": opts.quantize} | choice
    log.info("serving %s: %s", served, choice["reason"])

    # ---- scores of the served model over the whole recording, for the report and the manifest
    scorer = TFLiteModel(blobs[served], stateful=variants[served]["stateful"])
    all_scores = scorer.score(everything.windows)
    served_val_scores = scorer.score(val_set.windows)
    served_fit_scores = scorer.score(fit_set.windows[_evenly(len(fit_set), 5000)])  # drift's reference (drift.py)

    model_id = _model_id(opts, recipe.architecture)
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
        "train_hop": recipe.train_hop,
        "fit_windows": len(fit_idx),
        "validation_windows": len(val_idx),
        "labelled_windows_left_out": int(marked.sum()),
        "training_windows_served_hop": n_train_windows,
        "later_windows": len(later_idx),
        "parity_windows": {"held_out": len(held), "synthetic": len(synthetic)},
    }
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "id": model_id,
            "version": version,
            "created": now.isoformat(timespec="seconds"),
            "architecture": model_config.architecture,
            "config": model_config.to_dict(),
            "training": opts.fit.to_dict() | {"epochs_run": history["epochs_run"], "best_epoch": history["best_epoch"],
                                              "best_val_loss": float(min(history.get("val_loss", [np.nan])))},
        },
        "data": {
            "digest": rec.digest(),
            "source": str(opts.data),
            "format": rec.format,
            "rows": rec.n_rows,
            "segments": len(rec.segments),
            "labels": list(rec.label_names),
            "start": _time_str(everything.times, 0),
            "end": _time_str(everything.times, -1),
            "split": split,
        },
        "signal": {"channels": list(rec.channels), "units": rec.units, "sample_rate": rec.sample_rate},
        "recipe": recipe.to_dict(),
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
            "validation_served": thresholds.score_quantiles(served_val_scores),
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
        "quantization": choice,
        "variants": variant_summary,
        "parity": served_facts["parity"] | {"variant": served, "min_agreement": opts.min_agreement,
                                            "reference": "keras", "groups": served_facts["parity_groups"],
                                            "synthetic_kinds": sorted({k.split(":")[0] for k in synthetic_kinds})},
        "libraries": library_versions(),
    }

    with tempfile.TemporaryDirectory(prefix="trainer-report-") as tmp:
        report_dir = Path(tmp) / "report"
        groups_report = {"training": all_scores[:n_train_windows], "validation": served_val_scores,
                         "later": all_scores[later_idx]}
        report = write_report(
            report_dir, history=history, scores=all_scores, times=everything.times, ends=everything.ends,
            n_train=n_train_windows, groups=groups_report, threshold=threshold.value,
            title=f"{model_id}: {served} model score over {Path(opts.data).name}",
            facts={"model_version": version, "variants": variant_summary, "split": split,
                   "threshold": threshold.to_dict(), "recipe": recipe.to_dict(), "quantization": choice},
            persistence=opts.persistence,
        )
        manifest["report"] = {"dir": "report", "summary": report["summary"]}
        bundle = write_bundle(opts.out, manifest, blobs[served], variants=blobs, report_dir=report_dir)
    log.info("bundle %s written in %.1f s (serves %s)", bundle, time.monotonic() - t_start, served)
    return TrainResult(bundle, manifest, report, model)


def _time_str(times: np.ndarray | None, i: int) -> str | None:
    return None if times is None or len(times) == 0 else str(times[i])

