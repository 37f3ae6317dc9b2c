"""``trainer retrain``: a new model from the fleet's collected windows, proved against the one it replaces.

::

    DATASET ─► healthy windows of the current bundle's channels ─► by time: earlier 80 % train, latest 20 % held out
            └► alert windows (uploaded around alerts) ───────────────────────────────────────► held out
    (+ --data ORIGINAL: the original training data, before the collected windows)
       ─► trainer.pipeline.run with the current bundle's preprocessing, model and threshold settings
       ─► both bundles score the held-out windows with the gateway's own scorer
       ─► comparison: false alerts on normal windows, detections and score/threshold on alert windows,
          threshold, parity ─► report/comparison.{png,md} + manifest "retrain" ─► the new bundle (atomic)

The new bundle is refused (nothing written, exit 1) when it detects fewer of the alert windows than the
current model, unless ``force``: a retrained model that no longer sees the faults the fleet reported is
worse whatever its false-alert rate.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.contract import preprocess
from edge_agent.contract.bundle import Bundle, write_bundle
from edge_agent.contract.recordings import Recording, Segment, load
from edge_agent.scorer import Scorer
from trainer import dataset

log = logging.getLogger(__name__)


class RetrainRefused(ValueError):
    """The retrained model is worse on the alert windows (and ``force`` was not given)."""


@dataclass(frozen=True)
class RetrainOptions:
    dataset: Path
    current: Path
    out: Path
    select: dataset.DataFilter = field(default_factory=dataset.DataFilter)  # devices, time range, model version
    original: Path | None = None  # the original training data, trained on as well
    original_format: str = "auto"
    holdout: float = 0.2  # latest fraction of the healthy windows kept out of training, for the comparison
    epochs: int | None = None  # None: the current bundle's
    seed: int = 0
    force: bool = False


@dataclass
class RetrainResult:
    bundle: Path | None
    comparison: dict
    refused: bool


def _scores(bundle: Bundle, windows: list[np.ndarray]) -> np.ndarray:
    """One score per uploaded window (the highest of the model windows it holds; NaN if it holds none)."""
    scorer = Scorer(bundle)
    out = np.full(len(windows), np.nan)
    for i, samples in enumerate(windows):
        w = preprocess.windows(preprocess.steps(samples, bundle.spec), bundle.spec.window, bundle.spec.hop)
        if len(w):
            out[i] = scorer.score_windows(w).max()
    return out


#: Windows above the threshold among those uploaded during an alert that count as catching it (the default k of
#: the gateway's k-of-n debounce).
CATCH_WINDOWS = 3


def _caught(above: np.ndarray, during: np.ndarray, refs: list[str | None]) -> tuple[int, int]:
    """(alerts caught, alerts): an alert (its windows uploaded while it was active, grouped by ``alert_ref``; a
    window without a reference is an alert of its own) is caught when min(CATCH_WINDOWS, its windows) of them
    are above the threshold."""
    groups: dict[str, list[bool]] = {}
    for i, (a, d, r) in enumerate(zip(above, during, refs, strict=True)):
        if d:
            groups.setdefault(r or f"window-{i}", []).append(bool(a))
    caught = sum(sum(g) >= min(CATCH_WINDOWS, len(g)) for g in groups.values())
    return caught, len(groups)


def _figures(bundle: Bundle, normal: np.ndarray, alert: np.ndarray, during: np.ndarray,
             refs: list[str | None]) -> dict:
    t = bundle.threshold.value
    parity = bundle.manifest.get("parity", {})
    ok = np.isfinite(alert)
    n, a, d = normal[np.isfinite(normal)], alert[ok], alert[ok & during]
    return {
        "version": bundle.version,
        "threshold": t,
        "normal_windows": len(n),
        "false_alerts": int((n > t).sum()),
        "false_alert_rate": float((n > t).mean()) if len(n) else None,
        "normal_score_p50": float(np.median(n)) if len(n) else None,
        "normal_score_p99": float(np.quantile(n, 0.99)) if len(n) else None,
        "alert_windows": len(a),
        "alerts_detected": int((a > t).sum()),
        "alert_detection_rate": float((a > t).mean()) if len(a) else None,
        "alert_score_ratio_p50": float(np.median(a / t)) if len(a) else None,
        "during_alert_windows": len(d),
        "during_alerts_detected": int((d > t).sum()),
        **dict(zip(("alerts_caught", "alerts"), _caught(np.nan_to_num(alert, nan=-1.0) > t, during, refs),
                   strict=True)),
        "parity_agreement": parity.get("agreement"),
        "parity_max_rel_error": parity.get("max_rel_error"),
    }


def compare(current: Bundle, new: Bundle, normal: list[np.ndarray], alert: list[np.ndarray],
            alert_states: list[str] | None = None, alert_refs: list[str | None] | None = None) -> dict:
    """Both models on the same held-out windows. ``worse_on_alerts`` when the new one catches fewer of the alerts
    the fleet reported: an alert is caught when ``CATCH_WINDOWS`` of the windows uploaded while it was active (state
    warning or critical) are above the model's threshold. Context windows from before an alert (state normal, near
    the threshold by nature) and window counts are reported; they do not decide."""
    cur = {"normal": _scores(current, normal), "alert": _scores(current, alert)}
    nxt = {"normal": _scores(new, normal), "alert": _scores(new, alert)}
    during = np.array([s != "normal" for s in (alert_states or ["critical"] * len(alert))], bool)
    refs = alert_refs or [None] * len(alert)
    fc = _figures(current, cur["normal"], cur["alert"], during, refs)
    fn = _figures(new, nxt["normal"], nxt["alert"], during, refs)
    key = "alerts_caught"
    return {
        "current": fc,
        "new": fn,
        "gate": key,
        "worse_on_alerts": fn["alert_windows"] > 0 and fn[key] < fc[key],
        "scores": {"current": {k: v.tolist() for k, v in cur.items()}, "new": {k: v.tolist() for k, v in nxt.items()}},
    }


def table(comparison: dict) -> str:
    """The comparison as a Markdown table."""
    c, n = comparison["current"], comparison["new"]

    def fmt(v) -> str:
        return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = [("model version", "version"), ("threshold", "threshold"), ("held-out normal windows", "normal_windows"),
            ("false alerts on them", "false_alerts"), ("false-alert rate", "false_alert_rate"),
            ("normal score p50 / p99", None), ("alert windows", "alert_windows"),
            ("alert windows above threshold", "alerts_detected"), ("detection rate", "alert_detection_rate"),
            ("of them uploaded during the alert", "during_alert_windows"),
            ("above threshold", "during_alerts_detected"),
            (f"alerts caught ({CATCH_WINDOWS} windows above threshold): the gate", "alerts_caught"),
            ("alerts reported", "alerts"),
            ("alert score / threshold, median", "alert_score_ratio_p50"),
            ("parity with Keras (agreement)", "parity_agreement")]
    lines = ["| | current | new |", "|---|---|---|"]
    for label, key in rows:
        if key is None:
            lines.append(f"| {label} | {fmt(c['normal_score_p50'])} / {fmt(c['normal_score_p99'])} | "
                         f"{fmt(n['normal_score_p50'])} / {fmt(n['normal_score_p99'])} |")
        else:
            lines.append(f"| {label} | {fmt(c[key])} | {fmt(n[key])} |")
    verdict = "**worse on the alert windows**" if comparison["worse_on_alerts"] else "not worse on the alert windows"
    return "\n".join(lines) + f"\n\nVerdict: the new model is {verdict}.\n"


def plot(comparison: dict, path: Path) -> None:
    """Score / threshold of every held-out window, per model and group (log scale; 1 = threshold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    rng = np.random.default_rng(0)
    for ax, group in zip(axes, ("normal", "alert"), strict=True):
        for x, model in enumerate(("current", "new")):
            s = np.asarray(comparison["scores"][model][group], float) / comparison[model]["threshold"]
            s = s[np.isfinite(s) & (s > 0)]
            ax.scatter(x + rng.uniform(-0.15, 0.15, len(s)), s, s=8, alpha=0.5,
                       color="tab:blue" if group == "normal" else "tab:red")
            if len(s):
                ax.hlines(np.median(s), x - 0.25, x + 0.25, color="black", lw=2)
        ax.axhline(1.0, color="red", lw=1, ls="--")
        ax.annotate("threshold", xy=(0.5, 1.0), xycoords=("axes fraction", "data"), ha="center", va="bottom",
                    color="red")
        ax.set_xlim(-0.5, 1.5)
        ax.set_xticks([0, 1], [f"current\n{comparison['current']['version'][-16:]}",
                               f"new\n{comparison['new']['version'][-16:]}"])
        ax.set_yscale("log")
        ax.set_title(f"held-out {group} windows (n={comparison['new'][group + '_windows']})")
    axes[0].set_ylabel("score / threshold")
    fig.suptitle("Retrained vs current model" + ("  (NEW IS WORSE ON ALERTS)" if comparison["worse_on_alerts"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _training_recording(opts: RetrainOptions, current: Bundle, train: dataset.Windows) -> Recording:
    """The collected healthy windows (one segment each), after the original data when given."""
    channels = current.spec.channels
    segments = []
    rates = set(train.table.column("sample_rate").to_pylist())
    if opts.original is not None:
        original = load(opts.original, opts.original_format, channels=list(channels))
        if rates and original.sample_rate is not None and original.sample_rate not in rates:
            raise ValueError(f"{opts.original} has sample rate {original.sample_rate}, the collected windows "
                             f"{sorted(rates)}: they cannot be trained on together")
        segments += list(original.segments)
        if not rates:
            rates.add(original.sample_rate)
    starts = train.column("time_start").astype("datetime64[ms]")
    segments += [Segment(s, starts[i]) for i, s in enumerate(train.samples)]
    if len(rates) > 1:
        raise ValueError(f"the collected windows have several sample rates {sorted(rates)}: --select one device")
    return Recording(tuple(segments), channels, rates.pop() if rates else None, "g",
                     str(opts.dataset), "dataset")


def _method_params(bundle: Bundle) -> dict:
    """The current threshold method's own parameters (the manifest also records what it computed)."""
    import inspect

    from edge_agent.contract import threshold

    accepted = inspect.signature(getattr(threshold, bundle.threshold.method)).parameters
    return {k: v for k, v in bundle.threshold.params.items() if k in accepted and k != "scores"}


def _select_channels(w: dataset.Windows, channels: tuple[str, ...]) -> dataset.Windows:
    keep = [i for i, c in enumerate(w.table.column("channels").to_pylist()) if tuple(c) == channels]
    if len(keep) < len(w):
        log.warning("%d windows with other channels than the current model's %s left out", len(w) - len(keep),
                    list(channels))
    return dataset.Windows(w.table.take(keep), [w.samples[i] for i in keep])


def retrain(opts: RetrainOptions) -> RetrainResult:
    """Train, compare, and write ``opts.out`` unless refused. Raises RetrainRefused, ValueError."""
    from trainer.model import ModelConfig
    from trainer.pipeline import TrainOptions, run
    from trainer.train import FitConfig

    if not 0 < opts.holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {opts.holdout}")
    current = Bundle.load(opts.current)
    m, spec = current.manifest, current.spec
    base = opts.select
    healthy = _select_channels(dataset.read_windows(opts.dataset, dataset.DataFilter(
        devices=base.devices, gateways=base.gateways, start=base.start, end=base.end,
        model_version=base.model_version, healthy_only=True)), spec.channels)
    alerts = _select_channels(dataset.read_windows(opts.dataset, dataset.DataFilter(
        devices=base.devices, gateways=base.gateways, start=base.start, end=base.end, kinds=("alert",))),
        spec.channels)
    n_hold = int(round(len(healthy) * opts.holdout))
    if len(healthy) - n_hold < 1 and opts.original is None:
        raise ValueError(f"{opts.dataset}: {len(healthy)} healthy windows are too few to train on")
    train = dataset.Windows(healthy.table.slice(0, len(healthy) - n_hold), healthy.samples[:len(healthy) - n_hold])
    held = healthy.samples[len(healthy) - n_hold:]
    log.info("retraining on %d collected healthy windows%s; held out: %d healthy, %d alert windows", len(train),
             f" + {opts.original}" if opts.original else "", len(held), len(alerts))
    recording = _training_recording(opts, current, train)

    training = m["model"].get("training", {})
    cfg = m["model"].get("config", {})
    fit = FitConfig(epochs=opts.epochs or int(training.get("epochs", 150)),
                    batch_size=int(training.get("batch_size", 32)),
                    learning_rate=float(training.get("learning_rate", 2e-3)),
                    validation_fraction=float(training.get("validation_fraction", 0.2)),
                    patience=int(training.get("patience", 15)), seed=opts.seed)
    model = ModelConfig(architecture=m["model"]["architecture"], units=tuple(cfg.get("units", (32, 16))),
                        latent=int(cfg.get("latent", 8)), kernel=int(cfg.get("kernel", 3)))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{opts.out.name}.retrain-", dir=opts.out.parent))
    try:
        result = run(TrainOptions(
            data=opts.dataset, out=work / "bundle", recording=recording, mode=spec.mode, window=spec.window,
            hop=spec.hop, block=spec.block, features=spec.features, fft_bands=spec.fft_bands, model=model, fit=fit,
            quantize=current.quantization, threshold_method=current.threshold.method,
            threshold_params=_method_params(current), model_id=current.model_id,
            latency_windows=200,
        ))
        new = Bundle.load(result.bundle)
        comparison = compare(current, new, held, alerts.samples, alerts.table.column("state").to_pylist(),
                             alerts.table.column("alert_ref").to_pylist())
        report_md = table(comparison)
        log.info("comparison with %s:\n%s", current.version, report_md)
        if comparison["worse_on_alerts"] and not opts.force:
            raise RetrainRefused(
                f"the new model catches {comparison['new']['alerts_caught']} of the {comparison['new']['alerts']} "
                f"alerts the fleet reported, the current one {comparison['current']['alerts_caught']}: not written "
                f"(--force writes it anyway)\n{report_md}")
        report_dir = work / "report"
        shutil.copytree(new.path / "report", report_dir)
        plot(comparison, report_dir / "comparison.png")
        (report_dir / "comparison.md").write_text(f"# {new.version} vs {current.version}\n\n{report_md}")
        summary = {k: v for k, v in comparison.items() if k != "scores"}
        report_json = json.loads((report_dir / "report.json").read_text())
        (report_dir / "report.json").write_text(json.dumps(report_json | {"comparison": comparison}, indent=2))
        manifest = json.loads(json.dumps(new.manifest))
        manifest["retrain"] = {"replaces": current.version, "dataset": str(opts.dataset),
                               "select": str(opts.select), "original": None if opts.original is None else
                               str(opts.original), "trained_windows": len(train), "forced": bool(
                                   comparison["worse_on_alerts"] and opts.force)} | summary
        variants = {p.name.split(".")[1]: p.read_bytes() for p in (new.path / "variants").glob("model.*.tflite")}
        bundle = write_bundle(opts.out, manifest, new.model_path.read_bytes(), variants=variants,
                              report_dir=report_dir)
        return RetrainResult(bundle, comparison, False)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ CLI
def command():
    """The ``trainer retrain`` click command."""
    import click

    @click.command("retrain")
    @click.option("--dataset", "dataset_path", required=True, type=click.Path(exists=True, file_okay=False,
                                                                              path_type=Path),
                  help="The collected windows (trainer collect --out).")
    @click.option("--current", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
                  help="The bundle the gateways serve now.")
    @click.option("--out", required=True, type=click.Path(path_type=Path), help="The new bundle (written atomically).")
    @click.option("--data", "original", type=click.Path(exists=True, path_type=Path), default=None,
                  help="The original training data, trained on as well.")
    @click.option("--format", "original_format", default="auto", show_default=True, help="Format of --data.")
    @click.option("--select", multiple=True, help="Which collected windows: device=, gateway=, model_version=, "
                  "start=, end= (repeatable).")
    @click.option("--holdout", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
                  show_default=True, help="Latest fraction of the healthy windows kept for the comparison.")
    @click.option("--epochs", type=click.IntRange(min=1), default=None, help="Default: the current bundle's.")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--force", is_flag=True, help="Write the new bundle even if it is worse on the alert windows.")
    def retrain_command(dataset_path: Path, current: Path, out: Path, original: Path | None, original_format: str,
                        select: tuple[str, ...], holdout: float, epochs: int | None, seed: int, force: bool) -> None:
        """Retrain on the collected windows and compare with the current bundle; refuse a worse one."""
        import os

        from edge_agent.contract.errors import BundleError
        from edge_agent.contract.recordings import DataFormatError
        from trainer.export import ExportError

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            flt = dataset.parse_select(select)
            result = retrain(RetrainOptions(dataset=dataset_path, current=current, out=out, select=flt,
                                            original=original, original_format=original_format, holdout=holdout,
                                            epochs=epochs, seed=seed, force=force))
        except RetrainRefused as exc:
            click.echo(str(exc), err=True)
            raise SystemExit(1) from exc
        except (ValueError, BundleError, DataFormatError, ExportError) as exc:
            raise click.ClickException(f"retraining failed, {out} left unchanged: {exc}") from exc
        click.echo(table(result.comparison))
        click.echo(f"bundle: {result.bundle} (report/comparison.png, report/comparison.md)")

    return retrain_command
