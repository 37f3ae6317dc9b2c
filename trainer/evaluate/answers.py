"""``trainer evaluate --answers``: bundles scored against the technicians' answers in a collected dataset.

::

    DATASET (trainer collect --out; a folder or s3://) ─► --select (device, gateway, group, model version, time)
      ├► alert windows ─► answered alerts: "confirmed" / "false_alarm" (retrain.alert_answers: an alert's latest
      │                   verdict; ack and silence are none) ─► each bundle's score of every window
      │                   (retrain.window_scores: the gateway's own scorer) ─► caught / raised
      │                   (retrain.count_caught: CATCH_WINDOWS windows above the bundle's threshold while it was active)
      └► healthy windows (kind normal, drift or calibration, state normal), less those near an alert not answered
         "false alarm" (retrain.near_alerts) ─► windows above each bundle's threshold
    ─► OUT/answers.md (one column per bundle), answers.json, answers.png

The figures are retrain's, counted the same way, so that ``trainer evaluate --answers`` says beforehand what
``trainer retrain`` would compare: a confirmed fault is *caught* when the bundle would have raised it, a false
alarm is *raised* when the bundle would still have raised it.

Healthy windows are taken by the gateway's state (normal), not by its score: the windows a gateway scored below
its threshold are, for the bundle it served, below it by construction, and filtering on that score would give that
bundle a false-alert rate of zero. Windows of a device near one of its alerts (``ALERT_MARGIN_S`` before the
alert's first window to as long after its last) are left out as not known healthy, as retrain does, unless the
alert was answered "false alarm".
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from edge_agent.contract.answer import RECORD_KINDS
from edge_agent.contract.bundle import Bundle
from trainer import dataset
from trainer.retrain import (
    ALERT_MARGIN_S,
    CATCH_WINDOWS,
    VERDICTS,
    alert_answers,
    count_caught,
    fmt_figure,
    near_alerts,
    window_scores,
)

log = logging.getLogger(__name__)

#: The files written to ``--out``.
REPORT_FILE, RESULTS_FILE, PLOT_FILE = "answers.md", "answers.json", "answers.png"

#: How a technician's answer reaches a dataset: said in the error for a dataset without any.
HOW_ANSWERS_ARRIVE = (
    "a technician answers an alert on the gateway (the status page's Confirmed fault / False alarm buttons, Home "
    "Assistant's buttons, or the MQTT command vib/<device>/answer/set; docs: maintenance/answering), the alert's next "
    "uploaded windows carry the answer (upload schema 3), and trainer collect stores them")


@dataclass(frozen=True)
class AnswersOptions:
    dataset: Path | str | dataset.Location  # a folder, s3://bucket/prefix, or a Location (endpoint resolved)
    bundles: tuple[Path, ...]
    out: Path
    select: dataset.DataFilter = field(default_factory=dataset.DataFilter)  # kinds and healthy_only are not used
    alert_margin_s: float = ALERT_MARGIN_S


@dataclass(frozen=True)
class Answered:
    """The answered alerts' windows (``samples``: (n_rows, C) float32 each, in time order) with, per window, its
    alert's ``ref``, whether the alert was active (``during``: state warning or critical; the context uploaded before
    it is not), and per alert its ``verdict``, ``device`` and who answered (``by``)."""

    samples: list[np.ndarray]
    refs: list[str]
    during: np.ndarray
    verdict: dict[str, str]
    device: dict[str, str]
    by: dict[str, str | None]
    unanswered: int  # alerts in the selection without a verdict


def _answered(table: pa.Table, samples: list[np.ndarray]) -> Answered:
    verdict = alert_answers(table)
    refs = table.column("alert_ref").to_pylist()
    keep = [i for i, r in enumerate(refs) if r in verdict]
    states = table.column("state").to_pylist()
    devices = table.column("device").to_pylist()
    answers = table.column("answer").to_pylist() if "answer" in table.column_names else [None] * len(refs)
    by: dict[str, str | None] = {}
    for r, a in zip(refs, answers, strict=True):
        if r in verdict and a and a.get("kind") == verdict[r]:
            by[r] = a.get("by")
    all_refs = {r or f"window-{i}" for i, r in enumerate(refs)}
    return Answered([samples[i] for i in keep], [refs[i] for i in keep],
                    np.array([states[i] != "normal" for i in keep], bool), verdict,
                    {refs[i]: devices[i] for i in keep}, {r: by.get(r) for r in verdict},
                    len(all_refs) - len(verdict))


def _no_answers(where: str, table: pa.Table) -> ValueError:
    alerts = len({r for r in table.column("alert_ref").to_pylist() if r})
    kinds = sorted({a["kind"] if a["kind"] in RECORD_KINDS else "invalid"  # forged: the collector refuses them
                    for a in (table.column("answer").to_pylist() if "answer" in table.column_names else []) if a})
    had = (f"its {alerts} alert(s) carry only {', '.join(kinds)} (no verdict)" if kinds else
           f"none of its {alerts} alert(s) was answered" if alerts else "it holds no alert windows")
    return ValueError(f"{where}: no technician's answer (confirmed fault or false alarm) in the selected windows: {had}."
                      f" Answers get there when {HOW_ANSWERS_ARRIVE}; datasets collected before upload schema 3 hold "
                      "none")


def _shape(table: pa.Table, samples: list[np.ndarray]) -> set[tuple[tuple[str, ...], float | None]]:
    return {(tuple(c), r) for c, r in zip(table.column("channels").to_pylist(), table.column("sample_rate").to_pylist(),
                                          strict=True)} if len(samples) else set()


def check_bundle(bundle: Bundle, where: str, channels: tuple[str, ...], rate: float | None,
                 shortest: int) -> None:
    """ValueError naming the bundle and the dataset when the bundle cannot score the dataset's windows: other
    channels, another sample rate (when the bundle states one: ``signal.sample_rate``, else its preprocessing's, as
    the gateway takes it), or uploaded windows shorter than its window."""
    spec = bundle.spec
    stated = bundle.manifest["signal"].get("sample_rate") or spec.sample_rate  # the gateway's windower takes this
    wants = (f"its model reads channels {list(spec.channels)}"
             + (f" at {stated:g} Hz" if stated else "")
             + f" in windows of {spec.window_samples} samples")
    has = (f"the selected windows of {where} have channels {list(channels)}"
           + (f" at {rate:g} Hz" if rate else "") + f", the shortest {shortest} samples")
    bad = []
    if tuple(spec.channels) != tuple(channels):
        bad.append("channels")
    if stated and rate and float(stated) != float(rate):
        bad.append("sample rate")
    if shortest < spec.window_samples:
        bad.append("window length")
    if bad:
        raise ValueError(f"{bundle.path}: does not fit the windows ({', '.join(bad)}): {wants}; {has}. Score it against the "
                         "sensors it is for (--select device=... or group=...), or give the bundle of these sensors")


def _ratio(scores: np.ndarray, threshold: float) -> np.ndarray:
    return scores[np.isfinite(scores)] / threshold


def _median(x: np.ndarray) -> float | None:
    return float(np.median(x)) if len(x) else None


def figures(bundle: Bundle, ans: Answered, alert_scores: np.ndarray, normal_scores: np.ndarray) -> dict:
    """One bundle's figures (``alert_scores``: one per answered-alert window, ``normal_scores``: one per healthy
    window; NaN where a window holds no model window)."""
    t = bundle.threshold.value
    above = np.nan_to_num(alert_scores, nan=-1.0) > t
    out: dict = {"version": bundle.version, "threshold": t}
    for verdict, caught_key, total_key, ratio_key in (
            ("confirmed", "confirmed_caught", "confirmed_faults", "confirmed_ratio_p50"),
            ("false_alarm", "false_alarms_raised", "false_alarms", "false_alarm_ratio_p50")):
        mine = np.array([ans.verdict[r] == verdict for r in ans.refs], bool)
        caught, total = count_caught(above[mine], ans.during[mine], [r for r, m in zip(ans.refs, mine, strict=True)
                                                                     if m])
        out[caught_key], out[total_key] = caught, total
        out[ratio_key] = _median(_ratio(alert_scores[mine & ans.during], t))
    raised = out["confirmed_caught"] + out["false_alarms_raised"]
    out["precision"] = out["confirmed_caught"] / raised if raised else None
    out["recall"] = out["confirmed_caught"] / out["confirmed_faults"] if out["confirmed_faults"] else None
    n = normal_scores[np.isfinite(normal_scores)]
    out["normal_windows"] = len(n)
    out["false_alerts"] = int((n > t).sum())
    out["false_alert_rate"] = float((n > t).mean()) if len(n) else None
    out["normal_ratio_p50"] = _median(n / t)
    per_alert = []
    for ref in ans.verdict:
        idx = [i for i, r in enumerate(ans.refs) if r == ref and ans.during[i]]
        ratios = np.sort(_ratio(alert_scores[idx], t))[::-1]
        k = min(CATCH_WINDOWS, len(idx))
        per_alert.append({
            "alert_ref": ref, "device": ans.device[ref], "answer": ans.verdict[ref], "by": ans.by[ref],
            "windows": len(idx), "windows_above": int(above[idx].sum()),
            "max_ratio": float(ratios[0]) if len(ratios) else None,
            # the ratio that decides: the alert is caught when its k-th highest window is above the threshold
            "deciding_ratio": float(ratios[k - 1]) if k and len(ratios) >= k else None,
            "caught": bool(k) and int(above[idx].sum()) >= k})
    out["alerts"] = per_alert
    return out


@dataclass
class AnswersResult:
    """``results`` (what answers.json holds) and the paths written."""

    results: dict
    report: Path
    json: Path
    plot: Path


def evaluate_answers(opts: AnswersOptions) -> AnswersResult:
    """Score ``opts.bundles`` against the answered alerts of ``opts.dataset`` and write ``opts.out``.

    Raises DataFormatError (not a dataset, a store out of reach), ValueError (no answers in the selection, windows
    of several channel sets or rates, a bundle that does not fit the windows), BundleError (not a bundle)."""
    if not opts.bundles:
        raise ValueError("no bundle to evaluate: give one or more --bundle")
    if opts.select.kinds:
        raise ValueError(f"--select kind={','.join(opts.select.kinds)}: not for --answers, which reads the alert "
                         "windows and the healthy ones")
    loc = dataset.require_dataset(opts.dataset)
    bundles = [Bundle.load(b) for b in opts.bundles]
    s = opts.select
    base = dict(devices=s.devices, gateways=s.gateways, groups=s.groups, start=s.start, end=s.end,
                model_version=s.model_version)
    alerts = dataset.read_windows(loc, dataset.DataFilter(**base, kinds=("alert",)))
    ans = _answered(alerts.table, alerts.samples)
    if not ans.verdict:
        raise _no_answers(loc.uri, alerts.table)
    healthy = dataset.read_windows(loc, dataset.DataFilter(**base, kinds=dataset.HEALTHY_KINDS))
    keep = np.array([st == "normal" for st in healthy.table.column("state").to_pylist()], bool)
    others = dataset.read_table(loc, dataset.DataFilter(devices=s.devices, kinds=("alert",)),
                                columns=["device", "alert_ref"])
    false_refs = {r for r, k in ans.verdict.items() if k == "false_alarm"}
    others = others.filter(pa.array([r not in false_refs for r in others.column("alert_ref").to_pylist()],
                                    pa.bool_()))
    near = near_alerts(healthy.table, others, opts.alert_margin_s) & keep
    keep &= ~near
    idx = np.flatnonzero(keep)
    normal = dataset.Windows(healthy.table.take(pa.array(idx, pa.int64())), [healthy.samples[i] for i in idx])
    answered_rows = [i for i, r in enumerate(alerts.table.column("alert_ref").to_pylist()) if r in ans.verdict]
    shapes = _shape(alerts.table.take(pa.array(answered_rows, pa.int64())), ans.samples) | _shape(normal.table,
                                                                                                  normal.samples)
    if len(shapes) > 1:
        listed = "; ".join(f"{list(c)} at {r} Hz" for c, r in sorted(shapes, key=str))
        raise ValueError(f"{loc.uri}: the selected windows have {len(shapes)} channel sets or sample rates ({listed}): "
                         "a bundle reads one; --select device=... or group=... the sensors of one kind")
    (channels, rate), = shapes
    shortest = min(len(x) for x in ans.samples + normal.samples)
    for b in bundles:
        check_bundle(b, loc.uri, channels, rate, shortest)
    log.info("%s: %d answered alerts (%d windows), %d healthy windows (%d left out near alerts); scoring %d bundles",
             loc.uri, len(ans.verdict), len(ans.samples), len(normal), int(near.sum()), len(bundles))
    columns = []
    for path, b in zip(opts.bundles, bundles, strict=True):
        f = figures(b, ans, window_scores(b, ans.samples), window_scores(b, normal.samples))
        columns.append({"bundle": str(path)} | f)
    results = {
        "dataset": loc.uri, "select": describe(s), "catch_windows": CATCH_WINDOWS, "alert_margin_s": opts.alert_margin_s,
        "answered_alerts": {v: sum(k == v for k in ans.verdict.values()) for v in VERDICTS},
        "unanswered_alerts": ans.unanswered, "normal_windows_near_alerts": int(near.sum()),
        "bundles": columns}
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    paths = AnswersResult(results, out / REPORT_FILE, out / RESULTS_FILE, out / PLOT_FILE)
    paths.json.write_text(json.dumps(results, indent=2) + "\n")
    paths.report.write_text(f"# Bundles against the technicians' answers\n\n{table(results)}")
    plot(results, paths.plot)
    return paths


def describe(select: dataset.DataFilter) -> str:
    """The selection as ``--select`` takes it (``all windows`` when nothing is selected)."""
    items = [f"{k}={','.join(v)}" for k, v in (("device", select.devices), ("gateway", select.gateways),
                                                ("group", select.groups)) if v]
    items += [f"{k}={v}" for k, v in (("model_version", select.model_version), ("start", select.start),
                                       ("end", select.end)) if v is not None]
    return " ".join(items) or "all windows"


#: The table's rows: (label, key or None for a row made of several keys).
ROWS = (
    ("model version", "version"),
    ("threshold", "threshold"),
    ("confirmed faults", "confirmed_faults"),
    (f"confirmed faults caught ({CATCH_WINDOWS} windows above threshold)", "confirmed_caught"),
    ("false alarms", "false_alarms"),
    ("false alarms it would still raise", "false_alarms_raised"),
    ("precision on answered alerts", "precision"),
    ("normal windows", "normal_windows"),
    ("normal windows above threshold", "false_alerts"),
    ("false-alert rate (normal windows)", "false_alert_rate"),
    ("score / threshold, median: confirmed", "confirmed_ratio_p50"),
    ("score / threshold, median: false alarm", "false_alarm_ratio_p50"),
    ("score / threshold, median: normal", "normal_ratio_p50"),
)


def table(results: dict) -> str:
    """The figures as a Markdown table (one column per bundle), then one line on the data."""
    cols = results["bundles"]
    lines = ["| | " + " | ".join(c["bundle"] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for label, key in ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt_figure(c[key]) for c in cols) + " |")
    a = results["answered_alerts"]
    return ("\n".join(lines) + f"\n\n{results['dataset']} ({results['select']}): {a['confirmed']} confirmed fault(s), "
            f"{a['false_alarm']} false alarm(s), {results['unanswered_alerts']} alert(s) without a verdict (not "
            f"counted); {results['normal_windows_near_alerts']} healthy window(s) near alerts left out.\n")


def plot(results: dict, path: Path) -> None:
    """Per answered alert, each bundle's deciding score / threshold (filled: its CATCH_WINDOWS-th highest window
    while the alert was active; above 1 = the bundle would raise it) and its highest (hollow), coloured by the
    technician's answer (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = results["bundles"]
    alerts = cols[0]["alerts"]
    colour = {"confirmed": "tab:red", "false_alarm": "tab:green"}
    markers = "osD^v<>p"
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(alerts) + 4.5), 4.2))
    width = 0.6 / max(1, len(cols))
    for j, c in enumerate(cols):
        m = markers[j % len(markers)]
        for x, a in enumerate(c["alerts"]):
            dx = x - 0.3 + width * (j + 0.5)
            if a["deciding_ratio"] is not None:
                ax.scatter(dx, a["deciding_ratio"], marker=m, color=colour[a["answer"]], s=40, zorder=3)
            if a["max_ratio"] is not None:
                ax.scatter(dx, a["max_ratio"], marker=m, facecolors="none", edgecolors=colour[a["answer"]], s=40,
                           zorder=3)
        name = "/".join(Path(c["bundle"]).parts[-2:])
        ax.scatter([], [], marker=m, color="grey", label=f"{name[-30:]}\n{c['version'][-26:]}")
    for answer, label in (("confirmed", "confirmed fault"), ("false_alarm", "false alarm")):
        ax.scatter([], [], marker="s", color=colour[answer], label=label)
    ax.scatter([], [], marker="o", color="grey", label=f"filled: deciding window\n({CATCH_WINDOWS} above 1: raised)")
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="grey", label="hollow: highest window")
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.annotate("threshold", xy=(0.01, 1.0), xycoords=("axes fraction", "data"), ha="left", va="bottom")
    ax.set_xticks(range(len(alerts)), [f"{a['device']}\n{a['alert_ref'][-14:]}" for a in alerts], fontsize=8)
    ax.set_xlim(-0.6, len(alerts) - 0.4)
    ax.set_yscale("log")
    ax.set_ylabel("score / threshold while the alert was active")
    ax.set_title("Answered alerts: would each bundle raise them?")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
