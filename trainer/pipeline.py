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

from edge_agent.contract import explain, topics
from edge_agent.contract import threshold as thresholds
from edge_agent.contract.blind_spots import longest_flat_runs, span_floors, window_means
from edge_agent.contract.bundle import FLAT_RUNS_KEY, SCHEMA_VERSION, SPAN_MAX_KEY, WINDOW_MEANS_KEY, write_bundle
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
)
from trainer.model import ModelConfig, export_clone
from trainer.parity_sets import synthetic_anomalies
from trainer.report import PERSISTENCE, write_report
from trainer.split import parse_time, split_recording, trim_recording
from trainer.tflite_eval import parity
from trainer.train import (
    FitConfig,
    WindowSet,
    fit,
    fit_scaler,
    keras_scores,
    make_windows,
    split_validation_rows,
)

log = logging.getLogger(__name__)

#: Most held-out windows scored for parity (evenly spaced when there are more); synthetic ones come on top.
PARITY_MAX_WINDOWS = 3000
#: The bundle's threshold is at least this quantile of the training windows' own scores
#: (docs/central/train.md, "Threshold") ...
TRAINING_QUANTILE = 0.99
#: ... lowered so that this many isolated events (a spike, a glitch: each in every training window that covers
#: it) stay above the floor: they do not make the healthy period's own level (docs/central/train.md,
#: "Threshold": 1 lets one 3-row burst in NAB-like training data blind the model; 3 lets IMS test 1 bearing 4's
#: erratic days alert).
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
    group: str | None = None  # the kind of machine the model is for (manifest model.group; None: any sensor)
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
    """Train, export, verify and write the bundle to ``opts.out``. Raises ExportError/ValueError on failure.

    The options and the data are checked (loaded, split, windowed) before TensorFlow is imported: a wrong input
    is refused in about a second, not after TensorFlow's import."""
    t_start = time.monotonic()
    check_options(opts)
    rec = load_recording(opts)
    train_rec, n_train_rows = split_recording(rec, opts.train_until)
    recipe, spec = choose_representation(opts, rec, train_rec)
    win = build_windows(rec, train_rec, n_train_rows, spec, recipe.train_hop, opts.fit.validation_fraction)
    trained = train_model(opts, recipe, win)
    trained = dataclasses.replace(trained, threshold=calibrate_threshold(opts, win, trained))
    checks = parity_windows(trained.model, win, opts.fit.seed)
    exported = export_variants(opts, trained, win, checks)
    served = served_scores(exported, win)
    manifest = build_manifest(opts, rec, recipe, win, trained, checks, exported, served)
    bundle, report = write_outputs(opts, manifest, win, trained, exported, served)
    log.info("bundle %s written in %.1f s (serves %s)", bundle, time.monotonic() - t_start, exported.served)
    return TrainResult(bundle, manifest, report, trained.model)


def check_options(opts: TrainOptions) -> None:
    """Refuse option values no data can make right (ValueError), before anything is loaded."""
    if opts.quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"--quantize must be one of {list(QUANTIZE_CHOICES)}, got {opts.quantize!r}")
    if not 0 < opts.min_agreement <= 1:
        raise ValueError(f"--min-agreement must be in (0, 1], got {opts.min_agreement}")
    if opts.group is not None and not topics.is_id(opts.group):
        raise ValueError(f"--group {opts.group[:80]!r} is not an id: 1-64 letters, digits, '_' or '-' (no '/', '+' or "
                         "'#': it is used in topics and folder names), e.g. "
                         f"{topics.suggest_id(opts.group)!r}")


def choose_representation(opts: TrainOptions, rec: Recording,
                          train_rec: Recording) -> tuple[recipes.Recipe, PreprocessSpec]:
    """The recipe (from the data unless given: :mod:`trainer.recipe`) and the preprocessing it implies."""
    recipe = recipes.resolve(
        rec, train_rec, mode=opts.mode, window=opts.window, hop=opts.hop, block=opts.block, features=opts.features,
        fft_bands=opts.fft_bands, architecture=None if opts.model.architecture == "auto" else opts.model.architecture)
    log.info("representation: %s", recipe.describe())
    spec = PreprocessSpec(mode=recipe.mode, channels=rec.channels, window=recipe.window, hop=recipe.hop,
                          block=recipe.block, features=recipe.features, fft_bands=recipe.fft_bands,
                          sample_rate=rec.sample_rate, relative=recipe.relative if recipe.mode == "raw" else (),
                          relative_rows=recipe.relative_rows if recipe.mode == "raw" else 0.0)
    return recipe, spec


@dataclass(frozen=True)
class RunWindows:
    """The windows of one run (T steps x F features each, scaled by ``scaler``, fitted on training rows only).

    everything: the served-hop windows of the whole recording, (W, ...), the first ``n_train_windows`` of them
    within the ``n_train_rows`` training rows; later: those after them, (L, ...), at ``later_idx`` (L,) of
    ``everything``. fit / validation: the dense training windows (hop ``train_hop``, labelled anomalies left out),
    split by time, (Nf, T, F) / (Nv, T, F); ``left_out`` of them contained a label.
    """

    spec: PreprocessSpec
    scaler: object
    everything: WindowSet
    n_train_rows: int
    n_train_windows: int
    later_idx: np.ndarray
    later: WindowSet
    fit: WindowSet
    validation: WindowSet
    train_hop: int
    left_out: int


def build_windows(rec: Recording, train_rec: Recording, n_train_rows: int, spec: PreprocessSpec, train_hop: int,
                  validation_fraction: float) -> RunWindows:
    """Scale, window and split (see :class:`RunWindows`). ValueError: no windows, segments out of time order,
    or too few validation windows to calibrate a threshold on."""
    scaler = fit_scaler(train_rec, spec)
    everything = make_windows(rec, spec, scaler)  # the windows the gateway scores (served hop)
    if len(everything) == 0:
        longest = max(seg.n_rows for seg in rec.segments) // spec.block
        raise ValueError(f"{rec.source}: no windows: the longest segment has {longest} steps ({spec.block} rows each) "
                         f"but a window needs {spec.window}; give more rows or a smaller --window")
    is_train = everything.ends <= n_train_rows
    n_train_windows = int(is_train.sum())
    if not is_train[:n_train_windows].all():
        raise ValueError("segments are not in time order; cannot split training windows from later ones")
    later_idx = np.arange(n_train_windows, len(everything))

    dense = make_windows(train_rec, dataclasses.replace(spec, hop=train_hop), scaler)
    marked = labelled_windows(train_rec, dense.ends, spec.window_samples)
    if marked.any():
        log.info("leaving %d training windows that contain labelled anomalies out of training", int(marked.sum()))
        dense = dense.subset(np.flatnonzero(~marked))
    fit_idx, val_idx = split_validation_rows(dense.ends, spec.window_samples, validation_fraction,
                                             min_validation=2 * thresholds.MIN_SCORES)
    if len(val_idx) < thresholds.MIN_SCORES:
        raise ValueError(f"only {len(val_idx)} validation windows; threshold calibration needs at least "
                         f"{thresholds.MIN_SCORES} (more training data or a larger validation fraction)")
    return RunWindows(spec, scaler, everything, int(n_train_rows), n_train_windows, later_idx,
                      everything.subset(later_idx), dense.subset(fit_idx), dense.subset(val_idx), train_hop,
                      int(marked.sum()))


@dataclass(frozen=True)
class Trained:
    """The fitted Keras model, its history, its scores of the fit (Nf,) and validation (Nv,) windows, and the
    threshold (None until :func:`calibrate_threshold`)."""

    model: object
    config: ModelConfig
    history: dict
    fit_scores: np.ndarray
    val_scores: np.ndarray
    threshold: thresholds.ThresholdResult | None = None


def train_model(opts: TrainOptions, recipe: recipes.Recipe, win: RunWindows) -> Trained:
    """Fit the recipe's architecture on ``win.fit`` (early stopping on ``win.validation``) and score both."""
    config = dataclasses.replace(opts.model, architecture=recipe.architecture)
    model, history = fit(config, win.fit.windows, win.validation.windows, opts.fit)
    return Trained(model, config, history, keras_scores(model, win.fit.windows),
                   keras_scores(model, win.validation.windows))


def calibrate_threshold(opts: TrainOptions, win: RunWindows, trained: Trained) -> thresholds.ThresholdResult:
    """The threshold method on the validation scores, raised to the training floor
    (:func:`training_floor_quantile`) so the healthy period the model learned raises no alerts itself."""
    val_scores, fit_scores = trained.val_scores, trained.fit_scores
    threshold = thresholds.calibrate(val_scores, opts.threshold_method, **opts.threshold_params)
    log.info("threshold (%s on %d validation windows): %.5g", threshold.method, len(val_scores), threshold.value)
    if np.median(val_scores) > np.quantile(fit_scores, 0.99):
        log.warning("the validation windows (the last %d %% of the training rows) score above 99 %% of the windows "
                    "fitted before them (median %.4g vs q0.99 %.4g): the end of the training period is not like its "
                    "start (a machine already degrading?); the threshold calibrated on it will be high. Train on the "
                    "healthy part only (--train-until)", round(100 * opts.fit.validation_fraction),
                    float(np.median(val_scores)), float(np.quantile(fit_scores, 0.99)))
    train_scores = np.concatenate([fit_scores, val_scores])
    q = training_floor_quantile(len(train_scores), win.spec.window, win.train_hop)
    floor = float(np.quantile(train_scores, q))
    if floor > threshold.value:
        log.info("threshold raised to %.5g, the %.3g quantile of the training windows' own scores", floor, q)
        threshold = thresholds.with_floor(threshold, floor, f"training windows' q{q:.3g}")
    return threshold


@dataclass(frozen=True)
class ParityWindows:
    """Windows on both sides of the threshold, (P, T, F): ``n_held`` held-out ones (validation and later, at most
    ``PARITY_MAX_WINDOWS``), then ``n_synthetic`` synthetic anomalies (``kinds``); ``reference``: Keras's (P,)
    scores; ``groups``: group name -> (n,) indices into ``windows``."""

    windows: np.ndarray
    reference: np.ndarray
    groups: dict[str, np.ndarray]
    kinds: list[str]
    n_held: int
    n_synthetic: int


def parity_windows(model, win: RunWindows, seed: int) -> ParityWindows:
    """The windows every exported variant is compared with Keras on (:mod:`trainer.parity_sets`)."""
    held_out = np.concatenate([win.validation.windows, win.later.windows])
    held = held_out[_evenly(len(held_out), PARITY_MAX_WINDOWS)]
    synthetic, kinds = synthetic_anomalies(win.validation.windows, win.spec, win.scaler, seed=seed)
    windows = np.concatenate([held, synthetic])
    groups = {"held_out": np.arange(len(held)), "synthetic": len(held) + np.arange(len(synthetic))}
    return ParityWindows(windows, keras_scores(model, windows), groups, list(kinds), len(held), len(synthetic))


@dataclass(frozen=True)
class Exported:
    """Every exported variant (name -> .tflite bytes, name -> facts: ops, size, latency, parity), the one served
    and why (``choice``: requested, served, reason, checks)."""

    blobs: dict[str, bytes]
    variants: dict[str, dict]
    served: str
    choice: dict


def export_variants(opts: TrainOptions, trained: Trained, win: RunWindows, checks: ParityWindows) -> Exported:
    """float32 and int8 always; 16x8 when asked for, or when ``--quantize auto`` does not serve int8. The served
    variant (auto: :func:`trainer.export.choose_variant`; explicit: as given) must pass the parity gate
    (ExportError)."""
    clone = export_clone(trained.model, trained.config)
    threshold = trained.threshold.value
    blobs, variants = {}, {}

    def export(name: str) -> None:
        blobs[name] = convert(clone, name, representative=win.fit.windows)
        variants[name], scores = evaluate(name, blobs[name], checks.windows, checks.reference, threshold,
                                          latency_windows=opts.latency_windows)
        variants[name]["parity_groups"] = {
            g: parity(checks.reference[idx], scores[idx], threshold) for g, idx in checks.groups.items() if len(idx)}

    for name in ("float32", "int8", *(["16x8"] if opts.quantize == "16x8" else [])):
        export(name)
    if opts.quantize == "auto":
        choice = choose_variant(variants, threshold, opts.min_agreement)
        if choice["served"] != "int8":
            export("16x8")
            choice = choose_variant(variants, threshold, opts.min_agreement)
        served = choice["served"]
        check_parity(served, variants[served], opts.min_agreement)  # float32 too must agree
    else:
        check_parity(opts.quantize, variants[opts.quantize], opts.min_agreement)
        served = opts.quantize
        choice = {"served": served, "reason": f"--quantize {served} (passes parity)", "checks": {}}
    log.info("serving %s: %s", served, choice["reason"])
    return Exported(blobs, variants, served, {"requested": opts.quantize} | choice)


@dataclass(frozen=True)
class ServedScores:
    """The served variant's scores: every served-hop window (W,), the validation windows (Nv,), and at most 5000
    fit windows evenly spaced (drift's reference, edge_agent/drift.py)."""

    all: np.ndarray
    validation: np.ndarray
    fit_sample: np.ndarray
    validation_features: np.ndarray  # (Nv, F) per-feature errors (contract.explain): the healthy levels


def served_scores(exported: Exported, win: RunWindows) -> ServedScores:
    """Score the recording with the served variant, for the report and the manifest."""
    scorer = TFLiteModel(exported.blobs[exported.served], stateful=exported.variants[exported.served]["stateful"])
    features = np.stack([explain.feature_errors(w, scorer.reconstruct(w)) for w in win.validation.windows])
    return ServedScores(scorer.score(win.everything.windows), scorer.score(win.validation.windows),
                        scorer.score(win.fit.windows[_evenly(len(win.fit), 5000)]), features)


def _model_version(opts: TrainOptions, architecture: str) -> tuple[str, str, datetime]:
    """(model id, version: id + UTC time, that time)."""
    model_id = _model_id(opts, architecture)
    now = datetime.now(UTC)
    return model_id, f"{model_id}-{now.strftime('%Y%m%dT%H%M%SZ')}", now


def _split_facts(opts: TrainOptions, win: RunWindows, checks: ParityWindows) -> dict:
    """The manifest's ``data.split``: the time limits given and how many windows each part had."""
    return {
        "start": None if opts.start is None else str(parse_time(opts.start)),
        "end": None if opts.end is None else str(parse_time(opts.end)),
        "train_until": None if opts.train_until is None else str(parse_time(opts.train_until)),
        "training_rows": win.n_train_rows,
        "train_hop": win.train_hop,
        "fit_windows": len(win.fit),
        "validation_windows": len(win.validation),
        "labelled_windows_left_out": win.left_out,
        "training_windows_served_hop": win.n_train_windows,
        "later_windows": len(win.later_idx),
        "parity_windows": {"held_out": checks.n_held, "synthetic": checks.n_synthetic},
    }


def _variant_summary(exported: Exported) -> dict:
    """Each variant's facts for the manifest (tensor details only for the served one) and its file."""
    return {name: {k: v for k, v in facts.items() if k not in ("input", "output")}
            | {"file": f"variants/model.{name}.tflite"} for name, facts in exported.variants.items()}


def build_manifest(opts: TrainOptions, rec: Recording, recipe: recipes.Recipe, win: RunWindows, trained: Trained,
                   checks: ParityWindows, exported: Exported, served: ServedScores) -> dict:
    """The bundle's manifest (``edge_agent.contract.bundle``; ``tflite.file``/``sha256`` filled in by
    ``write_bundle``, ``report`` by :func:`write_outputs`)."""
    model_id, version, now = _model_version(opts, recipe.architecture)
    history, facts, served_name = trained.history, exported.variants[exported.served], exported.served
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "id": model_id,
            "version": version,
            "created": now.isoformat(timespec="seconds"),
            "architecture": trained.config.architecture,
            **({"group": opts.group} if opts.group else {}),
            "config": trained.config.to_dict(),
            "training": opts.fit.to_dict() | {"epochs_run": history["epochs_run"], "best_epoch": history["best_epoch"],
                                              "best_val_loss": float(min(history.get("val_loss", [np.nan])))},
        },
        "data": {
            "digest": rec.digest(), "source": str(opts.data), "format": rec.format, "rows": rec.n_rows,
            "segments": len(rec.segments), "labels": list(rec.label_names),
            "start": _time_str(win.everything.times, 0), "end": _time_str(win.everything.times, -1),
            "split": _split_facts(opts, win, checks),
        },
        "signal": {"channels": list(rec.channels), "units": rec.units, "sample_rate": rec.sample_rate,
                   FLAT_RUNS_KEY: _flat_runs(rec, win.n_train_rows),
                   **_window_means(rec, win)},
        "recipe": recipe.to_dict(),
        "preprocess": win.spec.to_dict(),
        "window": {"steps": win.spec.window, "hop": win.spec.hop, "samples": win.spec.window_samples,
                   "hop_samples": win.spec.hop_samples},
        "scaler": win.scaler.to_dict(),
        "score": {"kind": "mae", "description": "mean |reconstruction - input| over the window's T x F scaled values"},
        "threshold": trained.threshold.to_dict() | {"calibrated_on": "keras validation scores"},
        explain.MANIFEST_KEY: {"healthy": explain.healthy_levels(served.validation_features),
                               "on": f"median per-feature error of the {len(served.validation)} validation windows, "
                                     "served model"},
        "score_quantiles": {
            "training_keras": thresholds.score_quantiles(trained.fit_scores),
            "training_served": thresholds.score_quantiles(served.fit_sample),
            "validation_keras": thresholds.score_quantiles(trained.val_scores),
            "validation_served": thresholds.score_quantiles(served.validation),
            SPAN_MAX_KEY: span_floors(served.all[:win.n_train_windows]),
        },
        "tflite": {"file": "", "sha256": "", "quantization": served_name, "stateful": bool(facts["stateful"]),
                   "input": facts["input"], "output": facts["output"], "ops": facts["ops"],
                   "size_bytes": facts["size_bytes"]},
        "quantization": exported.choice,
        "variants": _variant_summary(exported),
        "parity": facts["parity"] | {"variant": served_name, "min_agreement": opts.min_agreement,
                                     "reference": "keras", "groups": facts["parity_groups"],
                                     "synthetic_kinds": sorted({k.split(":")[0] for k in checks.kinds})},
        "libraries": library_versions(),
    }


def _flat_runs(rec: Recording, n_train_rows: int) -> dict:
    """The manifest's ``signal.flat_runs``: per channel, the longest run of identical consecutive raw values in the
    training rows and whether the channel ever changed there (``edge_agent.blind_spots``: the stuck-channel check)."""
    longest, changed = longest_flat_runs((seg.data for seg in rec.head(n_train_rows).segments), rec.n_channels)
    return {"longest": longest, "changed": changed}


def _window_means(rec: Recording, win: RunWindows) -> dict:
    """The manifest's ``signal.window_means`` in raw mode (``edge_agent.blind_spots``: the level check): per channel
    not judged against its recent level, the means of a served window's rows over the training rows; {} otherwise."""
    spec = win.spec
    if spec.mode != "raw" or spec.block != 1:
        return {}
    chans = [i for i, c in enumerate(rec.channels) if c not in spec.relative]
    facts = window_means((seg.data for seg in rec.head(win.n_train_rows).segments), spec.window, chans)
    return {WINDOW_MEANS_KEY: facts} if facts else {}


def write_outputs(opts: TrainOptions, manifest: dict, win: RunWindows, trained: Trained, exported: Exported,
                  served: ServedScores) -> tuple[Path, dict]:
    """Write the report (trainer.report), add its summary to ``manifest``, then the bundle (atomically): (bundle
    path, report)."""
    n_train = win.n_train_windows
    with tempfile.TemporaryDirectory(prefix="trainer-report-") as tmp:
        report_dir = Path(tmp) / "report"
        report = write_report(
            report_dir, history=trained.history, scores=served.all, times=win.everything.times,
            ends=win.everything.ends, n_train=n_train, threshold=trained.threshold.value,
            groups={"training": served.all[:n_train], "validation": served.validation,
                    "later": served.all[win.later_idx]},
            title=f"{manifest['model']['id']}: {exported.served} model score over {Path(opts.data).name}",
            facts={"model_version": manifest["model"]["version"], "variants": manifest["variants"],
                   "split": manifest["data"]["split"], "threshold": trained.threshold.to_dict(),
                   "recipe": manifest["recipe"], "quantization": exported.choice},
            persistence=opts.persistence,
        )
        manifest["report"] = {"dir": "report", "summary": report["summary"]}
        bundle = write_bundle(opts.out, manifest, exported.blobs[exported.served], variants=exported.blobs,
                              report_dir=report_dir)
    return bundle, report


def _time_str(times: np.ndarray | None, i: int) -> str | None:
    return None if times is None or len(times) == 0 else str(times[i])

