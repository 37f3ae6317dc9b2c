"""The evaluation harness: train with default options, replay through the gateway's pipeline, score.

For every case of a suite (a TOML file, see ``bench/evaluate_shared.toml``), or of a data folder it
discovers (NAB layout, tables with label columns)::

    trainer.pipeline.run (default options, training part only) ─► bundle
        ─► edge_agent.replay.replay (the code ``edge-agent replay`` runs: windower, TFLite scorer,
           per-device calibration when the case asks for it, alert state machine)
        ─► alert states per window ─► metrics by kind (trainer.evaluate.metrics, trainer.evaluate.nab)
        ─► baselines on the same windows (trainer.evaluate.baselines)
        ─► <out>/<case>.png, <out>/<case>.npz (the replayed windows: ends, times, scores, thresholds, states;
           points cases also row_truth and row_flags per row),
           <out>/results.json, <out>/report.md (one markdown table per kind + totals)

Case kinds:

* ``run-to-failure``: first persistent alert (fraction of life, hours before the end), alert episodes
  in the healthy part (before ``healthy_until``: a time, or a fraction of life), whether the alert
  stayed raised.
* ``windows`` (NAB layout): labelled windows hit by an alert raise, raises outside every window, NAB
  scores (standard, reward_low_FP_rate, reward_low_FN_rate).
* ``points`` (a label column, 0/1 per row; see ``trainer.evaluate.points``): train on the first ``train_rows``
  rows (the SKAB protocol: 400), judge every later row by the served alert state in force at it; precision,
  recall, F1, false-alarm and missed-alarm rate per file and over the files of a group joined, with the
  group's published ``reference`` rows.

Suite keys per case: ``name``, ``kind``, ``data`` (relative to ``--data``; a glob expands to one case per
file), ``train_data`` (another recording to train on: leave-one-out; default ``data``), ``train_fraction``
(train on this first fraction of the training recording's rows), ``train_until`` (a time) or ``train_rows``
(train on the first N rows; at most one of the three),
``calibrate`` (per-device calibration windows on the evaluated recording; 0: the bundle's threshold),
``channels``, ``format``, ``load`` (loader options, e.g. ``{date = "2012-01-01"}``), ``end`` (time: the end
of life), ``healthy_until`` / ``healthy_fraction``, ``labels`` (NAB windows json), ``label`` (points
column), ``group`` (for the totals), ``reference`` (points: published figures of other detectors, a list of
``{detector, f1, far_pct, mar_pct, source}``, shown, never recomputed). Nothing in this module knows a data set
by name.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import logging
import math
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.alerts import AlertPolicy
from edge_agent.contract.bundle import Bundle
from edge_agent.contract.recordings import Recording, load
from edge_agent.contract.recordings._text import LABEL_COLUMN_NAMES
from edge_agent.replay import replay
from trainer.evaluate import baselines, metrics, nab, points

log = logging.getLogger(__name__)

KINDS = ("run-to-failure", "windows", "points")
#: Windows a bundle trained on other machines scores on a new one before its threshold is set
#: (``edge-agent calibrate --windows``); docs/central/evaluate.md, "Defaults that keep a
#: healthy machine quiet", gives the why.
CALIBRATION_WINDOWS = 30
#: Points cases found by discovery train on the rows before the first labelled anomaly, at most this fraction.
POINTS_TRAIN_FRACTION = 0.4
#: Snapshot archives found by discovery train on their own healthy start (this fraction of the snapshots).
RUN_TO_FAILURE_TRAIN_FRACTION = 0.3
#: Windows cases (NAB layout) train on NAB's probationary part.
WINDOWS_TRAIN_FRACTION = nab.PROBATION
BASELINES = ("rms", "kurtosis", "tutorial")


@dataclass
class Case:
    """One recording to evaluate; see the module docstring for the keys."""

    name: str
    kind: str
    data: Path
    train_data: Path | None = None
    train_fraction: float | None = None
    train_until: str | None = None
    train_rows: int | None = None
    calibrate: int = 0
    channels: list | None = None
    format: str = "auto"
    load: dict = field(default_factory=dict)
    end: str | None = None
    healthy_until: str | None = None
    healthy_fraction: float | None = None
    labels: Path | None = None
    label_key: str | None = None
    label: str | None = None
    group: str = ""
    reference: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"case {self.name}: kind must be one of {KINDS}, not {self.kind!r}")
        given = [k for k in ("train_fraction", "train_until", "train_rows") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"case {self.name}: give one of train_fraction, train_until, train_rows, not {given}")
        if self.train_rows is not None and (isinstance(self.train_rows, bool) or not isinstance(self.train_rows, int)
                                            or self.train_rows < 1):
            raise ValueError(f"case {self.name}: train_rows must be a whole number of rows >= 1, got {self.train_rows!r}")
        if self.reference and self.kind != "points":
            raise ValueError(f"case {self.name}: reference rows are shown for points cases only, not {self.kind}")
        self.reference = points.check_reference(self.reference, f"case {self.name}")


# ---------------------------------------------------------------------------------------------- suites
def load_suite(path: Path, data_dir: Path) -> list[Case]:
    """Cases of a suite TOML (``[[case]]`` tables); ``data`` globs expand to one case per file."""
    doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    defaults = doc.get("defaults", {})
    cases = []
    for entry in doc.get("case", []):
        entry = defaults | entry
        pattern = str(data_dir / entry["data"])
        files = sorted(glob.glob(pattern)) if any(c in entry["data"] for c in "*?[") else [pattern]
        for f in files:
            e = dict(entry)
            rel = Path(f).relative_to(data_dir)
            name = e.pop("name", None)
            if len(files) > 1 or name is None:
                name = (f"{name}/" if name else "") + Path(f).stem
            labels = data_dir / e.pop("labels") if "labels" in e else None
            key = e.pop("label_key", None)
            if labels is not None and key is None:
                key = str(Path(f).relative_to(labels.parent)) if Path(f).is_relative_to(labels.parent) else rel.name
            unknown = set(e) - set(Case.__dataclass_fields__)
            if unknown:
                raise ValueError(f"{path}: case {name}: unknown keys {sorted(unknown)}")
            e.pop("data")
            train_data = data_dir / e.pop("train_data") if "train_data" in e else None
            cases.append(Case(name=name, kind=e.pop("kind"), data=Path(f), train_data=train_data, labels=labels,
                              label_key=key, **e))
    return cases


def discover(data_dir: Path) -> list[Case]:
    """Cases found in a folder without a suite: every series a NAB-style windows json names (``windows``,
    trained on NAB's probationary 15 %), every snapshot archive (``.npz``: ``run-to-failure``, trained on its
    first 30 %, healthy part = first half of life) and every table with a label column (``points``)."""
    cases: list[Case] = []
    named: set[Path] = set()
    for js in sorted(data_dir.rglob("*.json")):
        try:
            doc = json.loads(js.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(doc, dict) or not doc or not all(isinstance(v, list) for v in doc.values()):
            continue
        if not all(all(isinstance(w, list) and len(w) == 2 for w in v) for v in doc.values()):
            continue
        for key in sorted(doc):
            f = _find_series(data_dir, js.parent, key)
            if f is None or f in named:
                continue
            named.add(f)
            cases.append(Case(name=Path(key).stem, kind="windows", data=f, labels=js, label_key=key,
                              train_fraction=WINDOWS_TRAIN_FRACTION, group=js.stem))
    for f in sorted(data_dir.rglob("*.npz")):  # snapshot archives with times of day: one machine's life each
        with np.load(f, allow_pickle=False) as z:
            if "acc" not in z.files or "time_of_day" not in z.files:
                log.info("%s: not a snapshot archive with times of day; give it in a suite", f)
                continue
        cases.append(Case(name=str(f.relative_to(data_dir).with_suffix("")), kind="run-to-failure", data=f,
                          train_fraction=RUN_TO_FAILURE_TRAIN_FRACTION, healthy_fraction=0.5,
                          load={"date": "2000-01-01"}, group=_group(f, data_dir, "run to failure")))
    for f in sorted(set(data_dir.rglob("*.csv")) - named):
        header = f.open(encoding="utf-8", errors="replace").readline().lower()
        cells = {c.strip().strip('"') for c in header.replace(";", ",").replace("\t", ",").split(",")}
        if cells & LABEL_COLUMN_NAMES:
            cases.append(Case(name=str(f.relative_to(data_dir).with_suffix("")), kind="points", data=f,
                              group=_group(f, data_dir, "points")))
    return cases


def _group(f: Path, data_dir: Path, default: str) -> str:
    """A discovered recording's group: its folder under ``data_dir``, or ``default`` at the top."""
    folder = f.parent.relative_to(data_dir)
    return default if folder == Path(".") else str(folder)


def _find_series(data_dir: Path, label_dir: Path, key: str) -> Path | None:
    for base in (label_dir, data_dir, data_dir / "data", label_dir.parent / "data"):
        if (base / key).is_file():
            return base / key
    hits = [p for p in data_dir.rglob(Path(key).name) if fnmatch.fnmatch(str(p), f"*{key}")]
    return hits[0] if len(hits) == 1 else None


# ---------------------------------------------------------------------------------------------- running
@dataclass
class Outcome:
    case: Case
    rows: dict  # arrays of the replayed windows: ends, times, scores, thresholds, states, events
    figures: dict  # metric name -> value, for ours and each baseline ({"ae": {...}, "rms": {...}, ...})
    manifest: dict
    seconds: float


def _cut_time(rec: Recording, fraction: float) -> str:
    times = rec.times()
    if times is None:
        raise ValueError(f"{rec.source}: no time base; give train_until or a loader date")
    t = times[min(len(times) - 1, max(1, int(fraction * len(times))))]
    return str(np.datetime64(t, "ms"))


def _load(case: Case, path: Path) -> Recording:
    rec = load(path, case.format, **case.load)
    if case.channels:
        rec = rec.select_channels(case.channels)
    if case.end:
        rec, _ = rec.split_at(np.datetime64(case.end, "ms"))
    return rec


def _seconds(iso: list[str], ends: np.ndarray, rate: float | None) -> np.ndarray:
    if iso and all(iso):
        return np.array(iso, dtype="datetime64[ms]").astype(np.int64) / 1000.0
    return ends / rate if rate else ends.astype(np.float64)


def train_bundle(case: Case, out: Path, train_options: dict) -> dict:
    """Train a bundle for ``case`` with default options (plus ``train_options``) into ``out``; its manifest."""
    from trainer.pipeline import TrainOptions, run

    source = case.train_data or case.data
    until = case.train_until
    if case.train_rows is not None:
        until = points.train_cut(_load(case, source), case.train_rows)
    if until is None:
        fraction = case.train_fraction
        if fraction is None and case.kind == "points":
            fraction = _healthy_fraction(_load(case, source), case.label)
        until = _cut_time(_load(case, source), fraction if fraction is not None else 0.3)
    opts = TrainOptions(data=source, out=out, format=case.format, channels=tuple(case.channels) if case.channels else None,
                        train_until=until, end=case.end if case.train_data is None else None,
                        load_options=dict(case.load), model_id=case.name.replace("/", "-"), **train_options)
    return run(opts).manifest


def _healthy_fraction(rec: Recording, label: str | None) -> float:
    if rec.labels() is None:
        return POINTS_TRAIN_FRACTION
    marked = np.flatnonzero(points.truth_of(rec, label))
    first = marked[0] / rec.n_rows if marked.size else 1.0
    return float(min(POINTS_TRAIN_FRACTION, max(0.1, first)))


def evaluate_case(case: Case, work: Path, train_options: dict | None = None, policy: AlertPolicy | None = None,
                  with_baselines: bool = True) -> Outcome:
    """Train, replay and score one case (bundle kept under ``work/bundles/<name>``)."""
    t0 = time.monotonic()
    bundle_dir = work / "bundles" / case.name.replace("/", "-")
    manifest = train_bundle(case, bundle_dir, train_options or {})
    bundle = Bundle.load(bundle_dir)
    rec = _load(case, case.data)
    policy = policy or AlertPolicy()
    result = replay(bundle, rec, policy=policy, calibrate=case.calibrate)
    ends = np.array([r.index_end for r in result.rows], np.int64)
    rows = {
        "ends": ends,
        "times": _seconds([r.time_end for r in result.rows], ends, rec.sample_rate),
        "scores": np.array([r.score for r in result.rows]),
        "thresholds": np.array([np.nan if r.threshold is None else r.threshold for r in result.rows]),
        "states": np.array([r.state for r in result.rows]),
        "events": np.array([r.event for r in result.rows]),
    }
    states = {"ae": rows["states"]}
    if with_baselines:
        states |= _baselines(case, bundle, rec, rows, manifest)
    skip = manifest["data"]["split"]["training_rows"] if case.train_data is None else 0
    if case.kind == "points":
        if case.train_rows is not None and case.train_data is None:
            points.check_training_rows(rec, case.train_rows, skip)
        rows["row_truth"] = points.truth_of(rec, case.label)
        rows["row_flags"] = metrics.point_flags(ends, rows["states"], rec.n_rows)
        rows["clear_level"] = rows["thresholds"] * policy.clear_ratio  # an alert clears below it (hysteresis)
    figures = {name: _figures(case, rec, rows, s, skip) for name, s in states.items()}
    figures["ae"]["threshold"] = float(result.threshold)
    figures["ae"]["served"] = manifest["tflite"]["quantization"]
    figures["ae"]["quantization_reason"] = manifest["quantization"]["reason"]
    figures["ae"]["parity_agreement"] = manifest["parity"]["agreement"]
    figures["ae"]["representation"] = f"{manifest['recipe']['mode']} w{manifest['window']['steps']}" \
                                      f"/h{manifest['window']['hop']} {manifest['model']['architecture']}"
    return Outcome(case, rows, figures, manifest, time.monotonic() - t0)


def _baselines(case: Case, bundle: Bundle, rec: Recording, rows: dict, manifest: dict) -> dict[str, np.ndarray]:
    length = bundle.spec.window_samples
    stats = baselines.window_stats(rec, rows["ends"], length)
    out = {}
    for name in ("rms", "kurtosis"):
        _, out[name] = baselines.zscore_baseline(stats[name], rows["times"])
    train_rec = _load(case, case.train_data or case.data)
    until = manifest["data"]["split"]["train_until"]
    if until:
        train_rec, _ = train_rec.split_at(np.datetime64(until.replace(" ", "T"), "ms"))
    step = length if bundle.spec.mode == "features" else 1  # tables: every window of the training rows
    train_ends = _window_ends(train_rec, length, step)
    if len(train_ends) >= 20:
        train_stats = baselines.window_stats(train_rec, train_ends, length)
        _, out["tutorial"], _ = baselines.tutorial_baseline(train_stats["mean_abs"], stats["mean_abs"], rows["times"])
    return out


def _window_ends(rec: Recording, length: int, step: int) -> np.ndarray:
    """Ends of windows of ``length`` rows every ``step`` rows inside each segment (over the concatenation)."""
    ends, offset = [], 0
    for seg in rec.segments:
        ends.extend(offset + np.arange(length, seg.n_rows + 1, step))
        offset += seg.n_rows
    return np.array(ends, np.int64)


def _figures(case: Case, rec: Recording, rows: dict, states: np.ndarray, training_rows: int) -> dict:
    """Metrics of one detector's alert states; ``training_rows``: rows the model was trained on (not
    counted in point metrics)."""
    times = rows["times"]
    scored = states != "calibrating"
    if case.kind == "run-to-failure":
        if case.healthy_until:
            healthy = float(np.datetime64(case.healthy_until, "ms").astype(np.int64)) / 1000.0
        else:
            healthy = times[0] + (case.healthy_fraction if case.healthy_fraction is not None else 0.5) * (times[-1] - times[0])
        return metrics.run_to_failure(states, times, healthy)
    raises = [int(rows["ends"][i]) - 1 for i in range(len(states)) if _raised(states, i)]
    if case.kind == "windows":
        row_times = rec.times().astype("datetime64[ms]")
        limits = json.loads(case.labels.read_text(encoding="utf-8")).get(case.label_key or "", [])
        windows = nab.rows_of(row_times, [(np.datetime64(a.replace(" ", "T")[:23], "ms"),
                                           np.datetime64(b.replace(" ", "T")[:23], "ms")) for a, b in limits])
        probation = nab.probationary_rows(rec.n_rows)
        out = metrics.window_hits(raises, windows, after_row=probation)
        for profile in nab.PROFILES:
            s = nab.score(rec.n_rows, windows, raises, profile)
            out[f"nab_{profile}"] = s.raw
            out[f"nab_{profile}_null"], out[f"nab_{profile}_perfect"] = s.null, s.perfect
        return out
    flags = metrics.point_flags(rows["ends"], states, rec.n_rows)
    first_scored = int(rows["ends"][np.flatnonzero(scored)[0]]) if scored.any() else rec.n_rows
    return points.figures(flags, rows["row_truth"], max(first_scored - 1, training_rows))


def _raised(states: np.ndarray, i: int) -> bool:
    active = states[i] in metrics.ACTIVE
    return active and (i == 0 or states[i - 1] not in metrics.ACTIVE)


# ---------------------------------------------------------------------------------------------- report
def plot_case(outcome: Outcome, path: Path) -> None:
    """Score timeline of one case: score, threshold, alert states, truth, baseline first alerts (PNG); points
    cases: :func:`trainer.evaluate.points.plot`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case, rows = outcome.case, outcome.rows
    if case.kind == "points":
        points.plot(case.name, rows, outcome.figures["ae"], path)
        return
    x = rows["times"].astype("datetime64[s]").astype(object) if rows["times"][0] > 1e8 else rows["times"]
    fig, ax = plt.subplots(figsize=(12, 4), dpi=90)
    score = rows["scores"]
    ax.plot(x, score, lw=0.8, color="tab:blue", label="score")
    ax.step(x, rows["thresholds"], where="post", color="tab:red", lw=1.0, label="threshold")
    for state, color, label in (("warning", "gold", "changed (warning)"), ("critical", "tomato", "degrading (critical)"),
                                ("calibrating", "lightgrey", "calibrating")):
        mask = rows["states"] == state
        if mask.any():
            ax.fill_between(x, 0, 1, where=mask, transform=ax.get_xaxis_transform(), color=color, alpha=0.35,
                            step="post", label=label)
    if np.all(score[np.isfinite(score)] > 0):
        ax.set_yscale("log")
    title = f"{case.name} ({case.kind})"
    ae = outcome.figures["ae"]
    if case.kind == "run-to-failure":
        title += (f": first persistent alert {_fmt(ae['first_alert_life'], '.0%')} of life, {_fmt(ae['lead_h'], '.1f')} h "
                  f"before the end; degrading from {_fmt(ae.get('first_degrading_life'), '.0%')}")
        if case.healthy_until:
            ax.axvline(_x(np.datetime64(case.healthy_until, "s"), rows), color="k", ls="--", lw=1, label="degradation")
    elif case.kind == "windows":
        title += f": {ae['hit']}/{ae['windows']} windows hit, {ae['outside']} alerts outside"
        limits = json.loads(case.labels.read_text(encoding="utf-8")).get(case.label_key or "", [])
        for k, (a, b) in enumerate(limits):
            ax.axvspan(_x(np.datetime64(a.replace(" ", "T")[:19], "s"), rows), _x(np.datetime64(b.replace(" ", "T")[:19], "s"), rows),
                       color="tab:green", alpha=0.2, label="labelled window" if k == 0 else None)
    for k, (name, figs) in enumerate((n, f) for n, f in outcome.figures.items() if n != "ae"):
        first = figs.get("first_alert_life")
        if first is not None:
            t = rows["times"][0] + first * (rows["times"][-1] - rows["times"][0])
            ax.axvline(_x(np.datetime64(int(t), "s"), rows) if rows["times"][0] > 1e8 else t, color=f"C{k + 3}",
                       ls=":", lw=1.2, label=f"{name} baseline alert")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("reconstruction error")
    ax.legend(loc="upper left", fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _x(t: np.datetime64, rows: dict):
    return t.astype("datetime64[s]").astype(object) if rows["times"][0] > 1e8 else float(t.astype(np.int64))


def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def markdown(outcomes: list[Outcome]) -> str:
    """One markdown table per kind (a row per recording, then totals per group)."""
    out = []
    rtf = [o for o in outcomes if o.case.kind == "run-to-failure"]
    if rtf:
        out += ["### Run to failure", "",
                "| recording | representation | served | first persistent alert, *changed* (life / h before end) | first *degrading* (life / h before end) | alert episodes in healthy part | stayed raised | RMS baseline | kurtosis baseline | tutorial baseline |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for o in rtf:
            ae = o.figures["ae"]
            base = [_rtf_cell(o.figures.get(b)) for b in BASELINES]
            out.append(f"| {o.case.name} | {ae['representation']} | {ae['served']} | {_fmt(ae['first_alert_life'], '.0%')} / "
                       f"{_fmt(ae['lead_h'], '.1f')} h | {_fmt(ae.get('first_degrading_life'), '.0%')} / "
                       f"{_fmt(ae.get('degrading_lead_h'), '.1f')} h | {ae['episodes_healthy']} | {'yes' if ae['stayed_raised'] else 'no'} | "
                       + " | ".join(base) + " |")
        out.append("")
        out += ["| group | detector | alarmed | recordings with an alert in the healthy part | recordings *degrading* in the healthy part | median lead (h) | median *degrading* lead (h) |",
                "|---|---|---|---|---|---|---|"]
        for group in sorted({o.case.group for o in rtf}):
            members = [o for o in rtf if o.case.group == group]
            for det in ("ae", *BASELINES):
                figs = [o.figures[det] for o in members if det in o.figures]
                if not figs:
                    continue
                leads = [f["lead_h"] or 0.0 for f in figs]
                degrading = [f.get("degrading_lead_h") or 0.0 for f in figs]
                out.append(f"| {group or '-'} | {det} | {sum(f['alarmed'] for f in figs)}/{len(figs)} | "
                           f"{sum(f['episodes_healthy'] > 0 for f in figs)} | {sum(bool(f.get('degrading_healthy')) for f in figs)} | "
                           f"{np.median(leads):.2f} | {np.median(degrading):.2f} |")
        out.append("")
    win = [o for o in outcomes if o.case.kind == "windows"]
    if win:
        out += ["### Labelled anomaly windows (NAB layout)", "",
                "| series | representation | served | windows hit | alerts outside windows | NAB standard | low FP | low FN | RMS baseline hit / outside |",
                "|---|---|---|---|---|---|---|---|---|"]
        for o in win:
            ae, rms = o.figures["ae"], o.figures.get("rms")
            out.append(f"| {o.case.name} | {ae['representation']} | {ae['served']} | {ae['hit']}/{ae['windows']} | {ae['outside']} | "
                       f"{ae['nab_standard']:.2f} | {ae['nab_reward_low_FP_rate']:.2f} | {ae['nab_reward_low_FN_rate']:.2f} | "
                       + (f"{rms['hit']}/{rms['windows']} / {rms['outside']}" if rms else "-") + " |")
        out += ["", "| group | detector | windows hit | alerts outside (total / worst series) | series without windows that alerted | NAB standard | low FP | low FN |",
                "|---|---|---|---|---|---|---|---|"]
        for group in sorted({o.case.group for o in win}):
            members = [o for o in win if o.case.group == group]
            for det in ("ae", *BASELINES):
                figs = [o.figures[det] for o in members if det in o.figures]
                if not figs:
                    continue
                norm = [_normalised(figs, p) for p in nab.PROFILES]
                out.append(f"| {group or '-'} | {det} | {sum(f['hit'] for f in figs)}/{sum(f['windows'] for f in figs)} | "
                           f"{sum(f['outside'] for f in figs)} / {max(f['outside'] for f in figs)} | "
                           f"{sum(1 for f in figs if f['windows'] == 0 and f['outside'] > 0)} | "
                           + " | ".join(_fmt(v, '.1f') for v in norm) + " |")
        out.append("")
    pts = [o for o in outcomes if o.case.kind == "points"]
    if pts:
        out += points.markdown(pts, ("ae", *BASELINES))
    return "\n".join(out)


def _rtf_cell(f: dict | None) -> str:
    if not f:
        return "-"
    return f"{_fmt(f['first_alert_life'], '.0%')} / {_fmt(f['lead_h'], '.1f')} h, {f['episodes_healthy']} early"


def _normalised(figs: list[dict], profile: str) -> float | None:
    return nab.normalised([nab.NabScore(f[f"nab_{profile}"], f[f"nab_{profile}_null"], f[f"nab_{profile}_perfect"], 0, 0, 0)
                           for f in figs])


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def run_suite(cases: list[Case], out: Path, train_options: dict | None = None, with_baselines: bool = True,
              policy: AlertPolicy | None = None) -> list[Outcome]:
    """Evaluate every case (progress logged), write PNGs, ``results.json`` and ``report.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    outcomes = []
    work = Path(tempfile.mkdtemp(prefix="evaluate-", dir=out))
    for i, case in enumerate(cases, 1):
        log.info("[%d/%d] %s (%s)", i, len(cases), case.name, case.kind)
        try:
            o = evaluate_case(case, work, train_options, policy, with_baselines)
        except Exception as exc:  # a failed case is a result too: the default export must not fail
            log.error("%s failed: %s", case.name, exc)
            outcomes.append(Outcome(case, {}, {"ae": {"error": f"{type(exc).__name__}: {exc}"}}, {}, 0.0))
            continue
        stem = case.name.replace("/", "-")
        plot_case(o, out / f"{stem}.png")
        np.savez_compressed(out / f"{stem}.npz", **{k: v for k, v in o.rows.items()})  # for offline re-analysis
        outcomes.append(o)
        log.info("[%d/%d] %s done in %.0f s: %s", i, len(cases), case.name, o.seconds,
                 {k: v for k, v in o.figures["ae"].items() if not isinstance(v, str)})
    good = [o for o in outcomes if o.rows]
    (out / "report.md").write_text(markdown(good) + _failures(outcomes), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(_jsonable([
        {"case": o.case.name, "kind": o.case.kind, "group": o.case.group, "figures": o.figures, "seconds": o.seconds,
         "quantization": o.manifest.get("quantization"), "recipe": o.manifest.get("recipe")} for o in outcomes]),
        indent=1), encoding="utf-8")
    return outcomes


def _failures(outcomes: list[Outcome]) -> str:
    bad = [o for o in outcomes if not o.rows]
    return "" if not bad else "\n### Failed cases\n\n" + "\n".join(f"* {o.case.name}: {o.figures['ae']['error']}" for o in bad) + "\n"


__all__ = ["Case", "Outcome", "discover", "evaluate_case", "load_suite", "markdown", "run_suite"]
