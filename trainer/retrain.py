"""``trainer retrain``: a new model from the fleet's collected windows, proved against the one it replaces.

::

    DATASET ─► healthy windows of the current bundle's channels, less those near their device's alerts
                 ─► by time: earlier 80 % train, latest 20 % held out
            └► alert windows (uploaded around alerts) ───────────────────────────────────────► held out
    (+ --data ORIGINAL: the original training data, before the collected windows)
       ─► trainer.pipeline.run with the current bundle's preprocessing, model and threshold settings
       ─► both bundles score the held-out windows with the gateway's own scorer
       ─► comparison: false alerts on normal windows, detections and score/threshold on alert windows,
          threshold, parity ─► report/comparison.{png,md} + manifest "retrain" ─► the new bundle (atomic)

Healthy windows near an alert: a device's healthy windows (normal, drift, calibration) from ``alert_margin_s``
before the first window of each of its alerts to ``alert_margin_s`` after its last are neither trained on nor
held out as healthy. A gateway uploads a window as "normal" while its score is below the threshold, and a fault
develops below the threshold before it raises an alert: those windows hold the incipient fault, so training on
them teaches the model the fault as normal, and holding them out counts an early detection as a false alert.
After an alert the machine is not known to be repaired either. Past the margin the device's windows count
again: a false alert, or a repaired machine, must not silence a device's healthy data for ever (a false alert
from a new operating condition is what retraining should learn), and a fault that keeps developing raises
another alert whose margin covers the windows before it. The default, a day, is about how long a bearing's
incipient fault sits close below a threshold (days to weeks from first sign to failure); 0 keeps every window.

The gate: the new bundle is refused (nothing written, exit 1) when it catches fewer of the alerts the fleet
reported than the current model (``CATCH_WINDOWS`` windows above its threshold during the alert), unless
``force``: a retrained model that no longer sees the faults the fleet reported is worse whatever its false-alert
rate. The verdict names the gate and every compared figure that got worse (``FIGURES``), gate passed or not.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from edge_agent.contract import preprocess
from edge_agent.contract.bundle import Bundle, write_bundle
from edge_agent.contract.errors import AgentError
from edge_agent.contract.recordings import Recording, Segment, load
from edge_agent.scorer import Scorer
from trainer import dataset

if TYPE_CHECKING:
    from trainer.fanout import FanoutOptions

log = logging.getLogger(__name__)


class RetrainRefused(AgentError, ValueError):
    """The retrained model fails the gate (and ``force`` was not given): ``reason`` (one line), ``comparison``."""

    def __init__(self, reason: str, comparison: dict) -> None:
        super().__init__(f"{reason}\n{table(comparison)}")
        self.reason = reason
        self.comparison = comparison


#: Default of ``RetrainOptions.alert_margin_s``: a day (see the module docstring).
ALERT_MARGIN_S = 86_400.0


@dataclass(frozen=True)
class RetrainOptions:
    dataset: Path | dataset.Location  # a folder, or where trainer.dataset.location found s3://bucket/prefix
    current: Path
    out: Path
    select: dataset.DataFilter = field(default_factory=dataset.DataFilter)  # devices, time range, model version
    original: Path | None = None  # the original training data, trained on as well
    original_format: str = "auto"
    holdout: float = 0.2  # latest fraction of the healthy windows kept out of training, for the comparison
    alert_margin_s: float = ALERT_MARGIN_S  # a device's healthy windows this close to its alerts are left out
    epochs: int | None = None  # None: the current bundle's
    seed: int = 0
    force: bool = False
    # the kind of machine retrained (``--by group``): only its windows, the current bundle must be its model
    # (manifest model.group), and so is the new one. None: the current bundle's group, if any, is kept.
    group: str | None = None

    def selection(self) -> dataset.DataFilter:
        """``select``, narrowed to ``group`` when one is given."""
        return self.select if self.group is None else replace(self.select, groups=(self.group,))


@dataclass
class RetrainResult:
    bundle: Path | None
    comparison: dict
    refused: bool
    near_alerts: dict[str, int] = field(default_factory=dict)  # healthy windows left out, by device


def window_scores(bundle: Bundle, windows: list[np.ndarray]) -> np.ndarray:
    """One score per uploaded window (the highest of the model windows it holds; NaN if it holds none), with the
    gateway's own scorer (shared with ``trainer evaluate --answers``)."""
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


def count_caught(above: np.ndarray, during: np.ndarray, refs: list[str | None]) -> tuple[int, int]:
    """(alerts caught, alerts): an alert (its windows uploaded while it was active, grouped by ``alert_ref``; a
    window without a reference is an alert of its own) is caught when min(CATCH_WINDOWS, its windows) of them
    are above the threshold."""
    groups: dict[str, list[bool]] = {}
    for i, (a, d, r) in enumerate(zip(above, during, refs, strict=True)):
        if d:
            groups.setdefault(r or f"window-{i}", []).append(bool(a))
    caught = sum(sum(g) >= min(CATCH_WINDOWS, len(g)) for g in groups.values())
    return caught, len(groups)


#: The figures the verdict compares besides the gate (label, key, whether higher is better): every one that got
#: worse is named, gate passed or not. Parity is compared too (the export refuses a bundle below its minimum; a
#: fall above it is still named).
FIGURES = (
    ("detection rate on alert windows", "alert_detection_rate", True),
    ("alert windows above threshold during the alerts", "during_alerts_detected", True),
    ("alert score / threshold (median)", "alert_score_ratio_p50", True),
    ("false alerts on held-out normal windows", "false_alerts", False),
    ("faults a technician confirmed, caught", "confirmed_caught", True),
    ("parity with Keras (agreement)", "parity_agreement", True),
)


#: The technicians' verdicts on alerts (upload schema 3 ``answer``): a false alarm's windows train as normal data,
#: a confirmed fault's are labelled anomalies in the comparison; ack and silence say nothing about the machine.
VERDICTS = ("confirmed", "false_alarm")


def alert_answers(table) -> dict[str, str]:
    """``{alert_ref: "confirmed" | "false_alarm"}``: each answered alert's verdict, the latest its windows carry
    (windows spooled after the answer carry it; ack and silence are no verdict). table: an alert windows' table
    with ``alert_ref`` and ``answer`` (struct kind, by, time; absent in datasets of earlier releases)."""
    if "answer" not in table.column_names:
        return {}
    latest: dict[str, tuple[str, str]] = {}
    for ref, a in zip(table.column("alert_ref").to_pylist(), table.column("answer").to_pylist(), strict=True):
        if ref and a and a.get("kind") in VERDICTS:
            when = str(a.get("time") or "")
            if ref not in latest or when >= latest[ref][0]:
                latest[ref] = (when, a["kind"])
    return {ref: kind for ref, (_, kind) in latest.items()}


def _figures(bundle: Bundle, normal: np.ndarray, alert: np.ndarray, during: np.ndarray,
             refs: list[str | None], confirmed: frozenset[str] = frozenset()) -> dict:
    t = bundle.threshold.value
    parity = bundle.manifest.get("parity", {})
    ok = np.isfinite(alert)
    n, a, d = normal[np.isfinite(normal)], alert[ok], alert[ok & during]
    above = np.nan_to_num(alert, nan=-1.0) > t
    mine = np.array([r in confirmed for r in refs], bool)  # windows of alerts a technician confirmed
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
        **dict(zip(("alerts_caught", "alerts"), count_caught(np.nan_to_num(alert, nan=-1.0) > t, during, refs),
                   strict=True)),
        **dict(zip(("confirmed_caught", "confirmed_faults"), count_caught(above[mine], during[mine],
                                                                     [r for r, m in zip(refs, mine, strict=True) if m]),
                   strict=True)),
        "parity_agreement": parity.get("agreement"),
        "parity_max_rel_error": parity.get("max_rel_error"),
    }


def compare(current: Bundle, new: Bundle, normal: list[np.ndarray], alert: list[np.ndarray],
            alert_states: list[str] | None = None, alert_refs: list[str | None] | None = None,
            confirmed: frozenset[str] = frozenset()) -> dict:
    """Both models on the same held-out windows. ``worse_on_alerts`` when the new one catches fewer of the alerts
    the fleet reported: an alert is caught when ``CATCH_WINDOWS`` of the windows uploaded while it was active (state
    warning or critical) are above the model's threshold. Context windows from before an alert (state normal, near
    the threshold by nature) and window counts are reported; they do not decide."""
    cur = {"normal": window_scores(current, normal), "alert": window_scores(current, alert)}
    nxt = {"normal": window_scores(new, normal), "alert": window_scores(new, alert)}
    during = np.array([s != "normal" for s in (alert_states or ["critical"] * len(alert))], bool)
    refs = alert_refs or [None] * len(alert)
    fc = _figures(current, cur["normal"], cur["alert"], during, refs, confirmed)
    fn = _figures(new, nxt["normal"], nxt["alert"], during, refs, confirmed)
    key = "alerts_caught"
    comparison = {
        "current": fc,
        "new": fn,
        "gate": key,
        "worse_on_alerts": fn["alert_windows"] > 0 and fn[key] < fc[key],
        "scores": {"current": {k: v.tolist() for k, v in cur.items()}, "new": {k: v.tolist() for k, v in nxt.items()}},
    }
    return comparison | {"verdict": verdict(comparison)}


def fmt_figure(v) -> str:
    """A figure as the tables show it: 4 significant digits, "–" for none."""
    return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def verdict(comparison: dict) -> str:
    """Two lines: the gate (its rule, both figures, passes or fails), then the verdict, which names the rule it
    applied and every figure of ``FIGURES`` that got worse (as shown in the table, 4 significant digits) and those
    that got better. It says that nothing got worse only when every figure it could compare held or improved, and
    says which could not be compared; a fall in the gated figure fails the gate whatever ``worse_on_alerts`` says."""
    c, n = comparison["current"], comparison["new"]
    worse, better, compared, missing = [], [], 0, []
    for label, key, higher_is_better in FIGURES:
        if c.get(key) is None or n.get(key) is None:
            missing.append(label)
            continue
        compared += 1
        a, b = (float(f"{v:.4g}") for v in (c[key], n[key]))
        if a != b:
            change = f"{label} {'rose' if b > a else 'fell'} {fmt_figure(c[key])} → {fmt_figure(n[key])}"
            (better if (b > a) == higher_is_better else worse).append(change)
    fails = bool(comparison["worse_on_alerts"]) or n["alerts_caught"] < c["alerts_caught"]
    rule = f"alerts caught ({CATCH_WINDOWS} windows above threshold during each reported alert)"
    caught = f"alerts caught {c['alerts_caught']} → {n['alerts_caught']} of {n['alerts']}, which must not fall"
    if not n["alerts"]:
        gate = f"Gate: {rule}: no alerts reported, nothing to check → passes."
    else:
        gate = (f"Gate: {rule}: current {c['alerts_caught']}, new {n['alerts_caught']} of {n['alerts']} → "
                f"{'fails' if fails else 'passes'}.")
    if fails:
        text = f"the new model **fails the gate** ({caught})" + (f"; also {'; '.join(worse)}" if worse else "")
    elif worse:
        text = f"the new model passes the gate ({caught}), but {'; '.join(worse)}"
    elif compared:
        text = f"the new model passes the gate ({caught}); none of the {compared} figures compared got worse"
    else:
        text = f"the new model passes the gate ({caught}); no other figure could be compared"
    if better:
        text += f" (better: {'; '.join(better)})"
    if missing and compared:
        text += f"; not compared (no figure for a model): {', '.join(missing)}"
    return f"{gate}\nVerdict: {text}."


def table(comparison: dict) -> str:
    """The comparison as a Markdown table, then the gate and the verdict."""
    c, n = comparison["current"], comparison["new"]
    rows = [("model version", "version"), ("threshold", "threshold"), ("held-out normal windows", "normal_windows"),
            ("false alerts on them", "false_alerts"), ("false-alert rate", "false_alert_rate"),
            ("normal score p50 / p99", None), ("alert windows", "alert_windows"),
            ("alert windows above threshold", "alerts_detected"), ("detection rate", "alert_detection_rate"),
            ("faults a technician confirmed, caught", "confirmed_caught"),
            ("of them uploaded during the alert", "during_alert_windows"),
            ("above threshold", "during_alerts_detected"),
            (f"alerts caught ({CATCH_WINDOWS} windows above threshold): the gate", "alerts_caught"),
            ("alerts reported", "alerts"),
            ("alert score / threshold, median", "alert_score_ratio_p50"),
            ("parity with Keras (agreement)", "parity_agreement")]
    lines = ["| | current | new |", "|---|---|---|"]
    for label, key in rows:
        if key is None:
            lines.append(f"| {label} | {fmt_figure(c['normal_score_p50'])} / {fmt_figure(c['normal_score_p99'])} | "
                         f"{fmt_figure(n['normal_score_p50'])} / {fmt_figure(n['normal_score_p99'])} |")
        else:
            lines.append(f"| {label} | {fmt_figure(c[key])} | {fmt_figure(n[key])} |")
    return "\n".join(lines) + f"\n\n{verdict(comparison)}\n"


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
    fig.suptitle("Retrained vs current model" + ("  (NEW FAILS THE GATE)" if comparison["worse_on_alerts"] else ""))
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
    return dataset.Windows(w.table.take(pa.array(keep, pa.int64())), [w.samples[i] for i in keep])


def near_alerts(healthy: pa.Table, alerts: pa.Table, margin_s: float) -> np.ndarray:
    """Which rows of ``healthy`` (columns device, time_end) lie within ``margin_s`` of one of their device's alerts
    (rows of ``alerts``: device, alert_ref, time_end): from ``margin_s`` before the first window of an alert (its
    windows share an ``alert_ref``; a window without one is an alert of its own) to ``margin_s`` after its last."""
    near = np.zeros(healthy.num_rows, bool)
    if not margin_s > 0 or not healthy.num_rows or not alerts.num_rows:
        return near
    spans: dict[tuple[str, str], tuple[np.datetime64, np.datetime64]] = {}
    times = alerts.column("time_end").to_numpy().astype("datetime64[us]")
    for i, (device, ref) in enumerate(zip(alerts.column("device").to_pylist(), alerts.column("alert_ref").to_pylist(),
                                          strict=True)):
        key = (device, ref or f"window-{i}")
        lo, hi = spans.get(key, (times[i], times[i]))
        spans[key] = (min(lo, times[i]), max(hi, times[i]))
    margin = np.timedelta64(int(round(margin_s * 1e6)), "us")
    devices = np.asarray(healthy.column("device").to_pylist(), object)
    t = healthy.column("time_end").to_numpy().astype("datetime64[us]")
    for (device, _), (lo, hi) in spans.items():
        near |= (devices == device) & (t >= lo - margin) & (t <= hi + margin)
    return near


def retrain(opts: RetrainOptions) -> RetrainResult:
    """Train, compare, and write ``opts.out`` unless refused. Raises RetrainRefused, ValueError."""
    from trainer.pipeline import run

    if not 0 < opts.holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {opts.holdout}")
    if not opts.alert_margin_s >= 0:
        raise ValueError(f"alert margin must be >= 0 s, got {opts.alert_margin_s}")
    current = Bundle.load(opts.current)
    if opts.group is not None and current.group != opts.group:
        raise ValueError(f"{opts.current}: its model is for group {current.group!r} (manifest model.group), not "
                         f"{opts.group!r}: a group is gated against the bundle its gateways serve")
    split = split_collected(opts, current.spec.channels)
    recording = _training_recording(opts, current, split.train)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{opts.out.name}.retrain-", dir=opts.out.parent))
    try:
        result = run(_train_options(opts, current, recording, work / "bundle"))
        new = Bundle.load(result.bundle)
        comparison = compare(current, new, split.held, split.alerts.samples,
                             split.alerts.table.column("state").to_pylist(),
                             split.alerts.table.column("alert_ref").to_pylist(), split.confirmed)
        comparison["false_alarm_windows_trained"] = split.false_alarm_windows
        log.info("comparison with %s:\n%s", current.version, table(comparison))
        if comparison["worse_on_alerts"] and not opts.force:
            reason = (f"the new model catches {comparison['new']['alerts_caught']} of the "
                      f"{comparison['new']['alerts']} alerts the fleet reported, the current one "
                      f"{comparison['current']['alerts_caught']}: not written (--force writes it anyway)")
            log.warning("refused: %s", reason)
            raise RetrainRefused(reason, comparison)
        bundle = _write_retrained(opts, current, new, comparison, work / "report", len(split.train), split.left_out)
        return RetrainResult(bundle, comparison, False, split.left_out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class CollectedSplit:
    """The collected windows of the current model's channels: ``train`` (the earlier healthy ones), ``held``
    (the latest ``holdout`` fraction of them: one (L, C) sample array each), ``alerts`` (every alert window, held
    out), and the healthy windows left out near their device's alerts (device -> count)."""

    train: dataset.Windows
    held: list[np.ndarray]
    alerts: dataset.Windows
    left_out: dict[str, int]
    false_alarm_windows: int = 0  # alert windows a technician answered "false alarm": trained on as normal
    confirmed: frozenset[str] = frozenset()  # alert_refs a technician confirmed as faults


def split_collected(opts: RetrainOptions, channels: tuple[str, ...]) -> CollectedSplit:
    """Read the selected windows and split them (module docstring). ValueError: too few to train on."""
    base = opts.selection()
    healthy = _select_channels(dataset.read_windows(opts.dataset, dataset.DataFilter(
        devices=base.devices, gateways=base.gateways, groups=base.groups, start=base.start, end=base.end,
        model_version=base.model_version, healthy_only=True)), channels)
    alerts = _select_channels(dataset.read_windows(opts.dataset, dataset.DataFilter(
        devices=base.devices, gateways=base.gateways, groups=base.groups, start=base.start, end=base.end,
        kinds=("alert",))), channels)
    # the technicians' answers: a false alarm's windows are the machine's normal operation
    answers = alert_answers(alerts.table)
    false_refs = {r for r, k in answers.items() if k == "false_alarm"}
    refs = alerts.table.column("alert_ref").to_pylist()
    false_idx = [i for i, r in enumerate(refs) if r in false_refs]
    false_alarm = dataset.Windows(alerts.table.take(pa.array(false_idx, pa.int64())),
                                  [alerts.samples[i] for i in false_idx])
    if false_idx:
        keep_idx = [i for i, r in enumerate(refs) if r not in false_refs]
        alerts = dataset.Windows(alerts.table.take(pa.array(keep_idx, pa.int64())),
                                 [alerts.samples[i] for i in keep_idx])
        log.info("%d windows of %d alerts answered 'false alarm' train as normal data", len(false_idx),
                 len(false_refs))
    # the selected devices' alerts at any time and whichever model raised them: a fault is the machine's (a
    # false alarm is not: the windows near it are healthy)
    all_alerts = dataset.read_table(opts.dataset, dataset.DataFilter(devices=base.devices, kinds=("alert",)),
                                    columns=["device", "alert_ref"])
    if false_refs:
        all_alerts = all_alerts.filter(pa.array([r not in false_refs for r in all_alerts.column("alert_ref")
                                                 .to_pylist()], pa.bool_()))
    near = near_alerts(healthy.table, all_alerts, opts.alert_margin_s)
    left_out: dict[str, int] = {}
    for device in np.asarray(healthy.table.column("device").to_pylist(), object)[near]:
        left_out[device] = left_out.get(device, 0) + 1
    if left_out:
        log.info("left out as not known healthy (within %g s of their device's alerts): %s", opts.alert_margin_s,
                 ", ".join(f"{n} windows of {d}" for d, n in sorted(left_out.items())))
        keep = np.flatnonzero(~near)
        healthy = dataset.Windows(healthy.table.take(keep), [healthy.samples[i] for i in keep])
    n_train = len(healthy) - int(round(len(healthy) * opts.holdout))
    if n_train < 1 and opts.original is None:
        of = f" of group {opts.group}" if opts.group is not None else ""
        raise ValueError(f"{opts.dataset}: {len(healthy)} healthy windows{of} are too few to train on")
    train = dataset.Windows(healthy.table.slice(0, n_train), healthy.samples[:n_train])
    if len(false_alarm):
        train = dataset.Windows(pa.concat_tables([train.table, false_alarm.table.select(train.table.column_names)]),
                                train.samples + false_alarm.samples)
    held = healthy.samples[n_train:]
    confirmed = frozenset(r for r, k in answers.items() if k == "confirmed")
    log.info("retraining on %d collected healthy windows%s; held out: %d healthy, %d alert windows (%d alerts "
             "confirmed as faults)", len(train), f" + {opts.original}" if opts.original else "", len(held),
             len(alerts), len(confirmed))
    return CollectedSplit(train, held, alerts, left_out, len(false_alarm), confirmed)


def _train_options(opts: RetrainOptions, current: Bundle, recording: Recording, out: Path):
    """``trainer.pipeline.TrainOptions`` that repeat the current bundle's preprocessing, model, training and
    threshold settings on ``recording``."""
    from trainer.model import ModelConfig
    from trainer.pipeline import TrainOptions
    from trainer.train import FitConfig

    m, spec = current.manifest, current.spec
    training, cfg = m["model"].get("training", {}), m["model"].get("config", {})
    fit = FitConfig(epochs=opts.epochs or int(training.get("epochs", 150)),
                    batch_size=int(training.get("batch_size", 32)),
                    learning_rate=float(training.get("learning_rate", 2e-3)),
                    validation_fraction=float(training.get("validation_fraction", 0.2)),
                    patience=int(training.get("patience", 15)), seed=opts.seed)
    model = ModelConfig(architecture=m["model"]["architecture"], units=tuple(cfg.get("units", (32, 16))),
                        latent=int(cfg.get("latent", 8)), kernel=int(cfg.get("kernel", 3)))
    return TrainOptions(
        data=str(opts.dataset), out=out, recording=recording, mode=spec.mode, window=spec.window,
        hop=spec.hop, block=spec.block, features=spec.features, fft_bands=spec.fft_bands, model=model, fit=fit,
        quantize=current.quantization, threshold_method=current.threshold.method,
        threshold_params=_method_params(current), model_id=current.model_id, group=current.group,
        latency_windows=200,
    )


def _write_retrained(opts: RetrainOptions, current: Bundle, new: Bundle, comparison: dict, report_dir: Path,
                     trained_windows: int, left_out: dict[str, int]) -> Path:
    """The new bundle with the comparison in its report (comparison.png, comparison.md, report.json) and
    manifest (``retrain``), written atomically to ``opts.out``."""
    shutil.copytree(new.path / "report", report_dir)
    plot(comparison, report_dir / "comparison.png")
    (report_dir / "comparison.md").write_text(f"# {new.version} vs {current.version}\n\n{table(comparison)}")
    summary = {k: v for k, v in comparison.items() if k != "scores"}
    report_json = json.loads((report_dir / "report.json").read_text())
    (report_dir / "report.json").write_text(json.dumps(report_json | {"comparison": comparison}, indent=2))
    manifest = json.loads(json.dumps(new.manifest))
    manifest["retrain"] = {"replaces": current.version, "dataset": str(opts.dataset),
                           "select": str(opts.selection()), "original": None if opts.original is None else
                           str(opts.original), "trained_windows": trained_windows, "alert_margin_s":
                           opts.alert_margin_s, "left_out_near_alerts": left_out, "forced": bool(
                               comparison["worse_on_alerts"] and opts.force)} | summary
    variants = {p.name.split(".")[1]: p.read_bytes() for p in (new.path / "variants").glob("model.*.tflite")}
    return write_bundle(opts.out, manifest, new.model_path.read_bytes(), variants=variants, report_dir=report_dir)


# ------------------------------------------------------------------------------------- one model per group
#: The summary of a ``--by group`` run, in ``--out`` beside the group bundles. Its name, and the per-group report
#: files' (``<group>.retrain.md``, ``<group>.retrain.log``), hold a dot: never a group id, never a group's folder.
SUMMARY_FILE = "retrain.json"
STATUSES = ("accepted", "refused", "failed")


@dataclass
class GroupOutcome:
    """One group's retrain: ``status`` accepted (its bundle written to ``bundle``), refused (the gate; ``reason`` is
    its one line) or failed (``reason`` is the error); ``comparison`` (plain data, as ``compare``; None when it
    failed before comparing), ``log`` (its log records as text), ``seconds``, ``forced`` (written with force
    although it fails the gate), ``peak_rss_mib`` and ``where`` (the process that ran it)."""

    group: str
    status: str
    bundle: Path | None = None
    reason: str | None = None
    comparison: dict | None = None
    log: str = ""
    seconds: float | None = None
    forced: bool = False
    peak_rss_mib: float | None = None
    where: str | None = None  # the process that ran it ("pid N"), or the Ray mode when its task was lost

    def line(self) -> str:
        """The one-line summary."""
        if self.status == "accepted":
            return f"group {self.group}: accepted → {self.bundle}" + (
                " (written with --force although it fails the gate)" if self.forced else "")
        return f"group {self.group}: {self.status}: {self.reason}"

    def report(self) -> str:
        """``<group>.retrain.md``: the outcome, then the comparison table and verdict when there is one."""
        text = f"# Retrain of group {self.group}: {self.status}\n\n{self.line()}\n"
        if self.comparison is not None:
            text += f"\n{table(self.comparison)}"
        return text


@dataclass
class GroupsResult:
    """``outcomes`` by group (in the order run), how they ran (``mode``: serial, local Ray, Ray at ADDRESS;
    ``notice``: why serially, if it had to), ``startup_s`` (Ray started or joined), ``wall_s`` (the whole fan-out),
    ``summary`` (the path of ``SUMMARY_FILE``)."""

    outcomes: dict[str, GroupOutcome]
    mode: str
    notice: str | None
    startup_s: float
    wall_s: float
    summary: Path | None = None

    @property
    def exit_code(self) -> int:
        """0 when every group was accepted, 1 when one was refused or failed."""
        return 0 if all(o.status == "accepted" for o in self.outcomes.values()) else 1


def dataset_groups(where: Path | str | dataset.Location, select: dataset.DataFilter | None = None
                   ) -> tuple[dict[str, int], int]:
    """({group: windows}, windows without a group) of the selected windows. A group that is no id (a file put in
    the dataset by hand or by another writer: the collector refuses such records) is no group: its windows are
    left out with a warning naming a few, so they neither block the real groups nor name a folder."""
    from edge_agent.contract import topics

    base = select or dataset.DataFilter()
    t = dataset.read_table(where, dataset.DataFilter(devices=base.devices, gateways=base.gateways,
                                                     start=base.start, end=base.end), columns=["group"])
    counts: dict[str, int] = {}
    bad: dict[str, int] = {}
    none = 0
    for g in t.column("group").to_pylist():
        if g is None:
            none += 1
        elif topics.is_id(g):
            counts[g] = counts.get(g, 0) + 1
        else:
            bad[g] = bad.get(g, 0) + 1
    if bad:
        log.warning("%d windows of %s carry a group that is no id (1-64 letters, digits, '_' or '-'), left out of "
                    "every group's retrain: %s", sum(bad.values()), where,
                    ", ".join(ascii(g[:40]) for g in list(bad)[:5]) + (" ..." if len(bad) > 5 else ""))
    return dict(sorted(counts.items())), none


def group_bundles(current: Path) -> dict[str, Path]:
    """{group: folder} of ``current``'s group folders (``current/<group>/``; folders starting with "." are skipped).
    ValueError: a folder named by no id."""
    from edge_agent.contract import topics

    if not current.is_dir():
        raise ValueError(f"--current {current}: not a folder (with --by group it holds one bundle per group, "
                         "<group>/)")
    found = {}
    for p in sorted(current.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        if not topics.is_id(p.name):
            raise ValueError(f"{p}: a group's folder must be named by the group, an id (1-64 letters, digits, '_' or "
                             f"'-'; no '/', '+' or '#': it is used in topics), not {p.name[:80]!r}: rename it, e.g. "
                             f"{topics.suggest_id(p.name)!r}")
        found[p.name] = p
    return found


def plan_groups(opts: RetrainOptions, groups: Sequence[str] | None = None) -> list[str]:
    """The groups to retrain (``groups``, else every group of the selected windows), each checked: an id, with
    windows in the dataset, and a bundle ``opts.current/<group>/`` whose manifest says ``model.group = <group>``.
    ValueError (BundleError: a folder that is not a bundle) naming the group, folder or dataset."""
    from edge_agent.contract import topics

    for g in groups or ():
        if not topics.is_id(g):
            raise ValueError(f"--groups {g[:80]!r} is not a group id (1-64 letters, digits, '_' or '-'; no '/', '+' or "
                             f"'#'), e.g. {topics.suggest_id(g)!r}")
    bundles = group_bundles(opts.current)
    counts, none = dataset_groups(opts.dataset, opts.select)
    if not counts:
        raise ValueError(f"{opts.dataset}: none of its {none} selected windows carries a group: their sensors have "
                         "no group in the gateway config (or were uploaded before upload schema 3); set [[sensors]] "
                         "group = ... on the gateways, or retrain without --by group")
    if none:
        log.warning("%d windows carry no group: left out of every group's retrain", none)
    chosen = list(dict.fromkeys(groups)) if groups else list(counts)
    absent = [g for g in chosen if g not in counts]
    if absent:
        raise ValueError(f"--groups: no records of group {', '.join(absent)} in {opts.dataset} (its groups: "
                         f"{', '.join(counts)})")
    missing = [g for g in chosen if g not in bundles]
    if missing:
        raise ValueError("; ".join(
            f"records of group {g}, but {opts.current} has no {g}/ bundle: no gateway serves a model for it — "
            f"train one with `trainer train --group {g}` or leave it out with --groups" for g in missing))
    for g in chosen:
        served = Bundle.load(bundles[g]).group
        if served != g:
            said = "has no model.group (a model for any sensor)" if served is None else f"says model.group {served!r}"
            raise ValueError(f"{bundles[g]}: its manifest {said}, but it is in the folder of group {g!r}: move it to "
                             f"the folder of its group, or train the group's model with `trainer train --group {g}`")
    return chosen


def _plain(value):
    """``value`` as JSON-able plain data (numpy scalars and arrays become numbers and lists)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _limit_threads(cpus: int) -> None:
    """TensorFlow held to the CPUs Ray assigned to the task (else each task would use every core of the node)."""
    from trainer import tfenv

    tf = tfenv.tensorflow()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
    except RuntimeError:  # initialised by an earlier task of this worker: the same limit holds
        pass


def group_job(group: str, payload: dict) -> dict:
    """One group's training, comparison and parity (a Ray task, or in-process): ``retrain`` on ``payload``'s
    options (dataset as a URI and its endpoint, resolved here: credentials come from the worker's environment,
    never through Ray). Returns plain data; a refusal is a result, any other error propagates (``fanout`` makes it
    the group's failure)."""
    from trainer import fanout

    cpus = fanout.assigned_cpus()
    if cpus is not None:
        _limit_threads(cpus)
    opts: RetrainOptions = payload["options"]
    opts = replace(opts, dataset=dataset.location(opts.dataset, payload["endpoint"]))
    log.info("group %s: retraining on %s against %s", group, opts.dataset, opts.current)
    try:
        result = retrain(opts)
    except RetrainRefused as exc:
        return {"status": "refused", "reason": exc.reason, "comparison": _plain(exc.comparison)}
    forced = bool(result.comparison["worse_on_alerts"])
    return {"status": "accepted", "bundle": str(result.bundle), "comparison": _plain(result.comparison),
            "near_alerts": result.near_alerts, "forced": forced}


def retrain_groups(opts: RetrainOptions, groups: Sequence[str] | None = None, fan: FanoutOptions | None = None,
                   notify: Callable[[str], None] | None = None) -> GroupsResult:
    """One candidate per group (``trainer retrain --by group``): ``opts.current`` holds one bundle per group
    (``<group>/``), ``opts.out`` gets ``<group>/`` for each accepted candidate, ``<group>.retrain.md`` (outcome,
    table, verdict) and ``<group>.retrain.log`` for every group, and ``SUMMARY_FILE``. Each group is ``retrain``
    with ``opts`` narrowed to its windows and gated against its own bundle, as a Ray task (``fan``; serially
    without Ray or with ``fan.serial``, ``notify`` told so). A group refused or failed is its outcome; the others
    go on. Raises DataFormatError (not a dataset), ValueError/BundleError for bad inputs (``plan_groups``), before
    anything runs; RuntimeError when Ray cannot be started or reached."""
    from trainer import fanout

    loc = dataset.require_dataset(opts.dataset)  # DataFormatError: not a dataset, a bucket that does not exist
    opts = replace(opts, dataset=loc)
    chosen = plan_groups(opts, groups)
    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    original = None if opts.original is None else opts.original.resolve()  # Ray workers run in folders of their own
    jobs = {g: {"options": replace(opts, dataset=loc.uri, current=(opts.current / g).resolve(), out=out / g, group=g,
                                   original=original), "endpoint": loc.endpoint} for g in chosen}
    log.info("retraining %d groups (%s) of %s", len(chosen), ", ".join(chosen), loc.uri)
    ran = fanout.run(group_job, jobs, fan, notify)
    outcomes = {}
    for g, r in ran.results.items():
        if r["ok"]:
            v = r["value"]
            outcomes[g] = GroupOutcome(g, v["status"], Path(v["bundle"]) if v.get("bundle") else None, v.get("reason"),
                                       v.get("comparison"), r["log"], r["seconds"], bool(v.get("forced")),
                                       r["peak_rss_mib"], r["where"])
        else:
            outcomes[g] = GroupOutcome(g, "failed", None, r["error"], None, r["log"], r["seconds"],
                                       peak_rss_mib=r["peak_rss_mib"], where=r["where"])
    for g, o in outcomes.items():
        (out / f"{g}.retrain.md").write_text(o.report())
        (out / f"{g}.retrain.log").write_text(o.log)
    summary = out / SUMMARY_FILE
    summary.write_text(json.dumps({
        "dataset": loc.uri, "current": str(opts.current), "mode": ran.mode, "notice": ran.notice,
        "startup_s": ran.startup_s, "wall_s": ran.wall_s,
        "groups": {g: {"status": o.status, "bundle": None if o.bundle is None else str(o.bundle), "reason": o.reason,
                       "forced": o.forced, "seconds": o.seconds, "peak_rss_mib": o.peak_rss_mib, "where": o.where,
                       "comparison": None if o.comparison is None else
                       {k: v for k, v in o.comparison.items() if k != "scores"}}
                   for g, o in outcomes.items()}}, indent=2))
    return GroupsResult(outcomes, ran.mode, ran.notice, ran.startup_s, ran.wall_s, summary)


# ------------------------------------------------------------------------------------------------ CLI
def _groups_option(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(g.strip() for g in value.split(",") if g.strip())


def command():
    """The ``trainer retrain`` click command."""
    import click

    from trainer.cli import DatasetArg, endpoint_option

    @click.command("retrain", epilog="Exit status: 0 when the new bundle (with --by group: every group's) was "
                   "written; 1 when the gate refused it (with --by group: when any group was refused or failed; the "
                   "others are still written), or on bad input; 2: a usage error.")
    @click.option("--dataset", "dataset_path", required=True, type=DatasetArg(file_okay=False),
                  help="The collected windows (trainer collect --out): a folder or s3://bucket/prefix.")
    @endpoint_option()
    @click.option("--current", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
                  help="The bundle the gateways serve now (with --by group: a folder of them, one per group, "
                  "CURRENT/<group>/).")
    @click.option("--out", required=True, type=click.Path(path_type=Path),
                  help="The new bundle, written atomically (with --by group: a folder that gets OUT/<group>/ per "
                  "accepted group, <group>.retrain.md and .log per group, and retrain.json).")
    @click.option("--by", "by", type=click.Choice(["group"]), default=None,
                  help="One model per group (the sensors' kind of machine): each group's windows, gated against "
                  "its own bundle; fanned out on Ray.")
    @click.option("--groups", "groups", default=None, metavar="A,B",
                  help="With --by group: only these groups (default: every group in the dataset).")
    @click.option("--ray-address", default=None, metavar="ADDRESS",
                  help="With --by group: an existing Ray cluster (ray://host:10001 or host:6379); default: a local "
                  "Ray on this machine's CPUs. Paths must be the same on every node (or the dataset on S3).")
    @click.option("--serial", is_flag=True, help="With --by group: without Ray, one group after the other here.")
    @click.option("--task-cpus", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                  help="With --by group: CPUs each group's Ray task asks for (TensorFlow is held to them).")
    @click.option("--task-memory-gib", type=click.FloatRange(min=0.25), default=2.0, show_default=True,
                  help="With --by group: memory each group's Ray task reserves (GiB; measured peak 0.93).")
    @click.option("--data", "original", type=click.Path(exists=True, path_type=Path), default=None,
                  help="The original training data, trained on as well.")
    @click.option("--format", "original_format", default="auto", show_default=True, help="Format of --data.")
    @click.option("--select", multiple=True, help="Which collected windows: device=, gateway=, group=, "
                  "model_version=, start=, end= (repeatable).")
    @click.option("--holdout", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
                  show_default=True, help="Latest fraction of the healthy windows kept for the comparison.")
    @click.option("--alert-margin-s", type=click.FloatRange(min=0), default=ALERT_MARGIN_S, show_default=True,
                  help="A device's healthy windows from this long before each of its alerts to this long after it "
                  "are neither trained on nor held out (0: keep them).")
    @click.option("--epochs", type=click.IntRange(min=1), default=None, help="Default: the current bundle's.")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--force", is_flag=True, help="Write the new bundle even if it fails the gate.")
    @click.pass_context
    def retrain_command(ctx: click.Context, dataset_path: Path | str, endpoint: str | None, current: Path, out: Path,
                        by: str | None, groups: str | None, ray_address: str | None, serial: bool, task_cpus: float,
                        task_memory_gib: float, original: Path | None, original_format: str, select: tuple[str, ...],
                        holdout: float, alert_margin_s: float, epochs: int | None, seed: int, force: bool) -> None:
        """Retrain on the collected windows and compare with the current bundle; refuse a worse one."""
        from edge_agent.contract.errors import BundleError
        from edge_agent.contract.recordings import DataFormatError
        from trainer.export import ExportError

        if by is None:
            given = [name for name, on in (("--groups", groups is not None), ("--ray-address", ray_address),
                                           ("--serial", serial)) if on]
            if given:
                raise click.UsageError(f"{', '.join(given)} only with --by group")
        try:
            flt = dataset.parse_select(select)
            collected = dataset.require_dataset(dataset_path, endpoint)
            opts = RetrainOptions(dataset=collected, current=current, out=out, select=flt, original=original,
                                  original_format=original_format, holdout=holdout, alert_margin_s=alert_margin_s,
                                  epochs=epochs, seed=seed, force=force)
            if by == "group":
                from trainer.fanout import FanoutOptions, TaskResources

                fan = FanoutOptions(address=ray_address, serial=serial, resources=TaskResources(
                    num_cpus=task_cpus, memory=int(task_memory_gib * (1 << 30))))
                ran = retrain_groups(opts, _groups_option(groups), fan, notify=click.echo)
            else:
                result = retrain(opts)
        except RetrainRefused as exc:  # exit 1; the table, then the reason as the last line (errors: "Error: ...")
            click.echo(table(exc.comparison))
            click.echo(f"refused: {exc.reason}")
            raise SystemExit(1) from exc
        except (ValueError, BundleError, DataFormatError, ExportError, RuntimeError) as exc:
            raise click.ClickException(f"retraining failed, {out} left unchanged: {exc}") from exc
        if by == "group":
            _echo_groups(click, ran)
            ctx.exit(ran.exit_code)
        if result.near_alerts:
            click.echo(f"left out as not known healthy (within {alert_margin_s:g} s of their device's alerts): "
                       + ", ".join(f"{n} windows of {d}" for d, n in sorted(result.near_alerts.items())))
        click.echo(table(result.comparison))
        if result.comparison["worse_on_alerts"]:
            click.echo("written with --force although it fails the gate")
        click.echo(f"bundle: {result.bundle} (report/comparison.png, report/comparison.md)")

    return retrain_command


def _echo_groups(click, ran: GroupsResult) -> None:
    """Each group's table and verdict (or its error), then one summary line per group, last."""
    for o in ran.outcomes.values():
        click.echo(f"## group {o.group}: {o.status}\n")
        if o.comparison is not None:
            click.echo(table(o.comparison))
        if o.status == "failed":
            click.echo(f"{o.reason}\n(its log, with the traceback: {ran.summary.parent / (o.group + '.retrain.log')})\n")
    took = f"{ran.wall_s:.0f} s" + (f", {ran.startup_s:.0f} s of it starting Ray" if ran.startup_s >= 1 else "")
    click.echo(f"{len(ran.outcomes)} groups on {ran.mode} in {took}; reports and logs: {ran.summary.parent}/"
               f"<group>.retrain.md, .log, {SUMMARY_FILE}")
    for o in ran.outcomes.values():
        click.echo(o.line())
