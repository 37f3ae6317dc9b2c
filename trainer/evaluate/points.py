"""Point-labelled recordings (case kind ``points``): a 0/1 label per row, judged row by row.

The benchmark protocol of pump testbeds such as SKAB: each file on its own; the first ``train_rows`` rows train
(scaler, model and threshold, with the trainer's default options); every later row is *judged* anomalous or
normal and compared with its label; the counts of all files of a group are added before the rates are taken.

Row judgement (:func:`trainer.evaluate.metrics.point_flags`): a row is flagged when the served alert state in
force at it is active (``warning`` or ``critical``), i.e. the state the gateway's alert state machine (k of n
windows, hysteresis, clear windows, cooldown) was in after the latest scored window whose last row is at or
before it. That is what an operator watching the gateway sees at that row's time: a row is flagged from the
window that raised the alert until the window that cleared it.

Figures (the SKAB definitions, ``waico/SKAB`` ``core/metrics.py``, metric ``binary``; TP/FP/FN/TN summed over the
files first)::

    precision = TP / (TP + FP)      recall = TP / (TP + FN)      F1 = 2 TP / (2 TP + FP + FN)
    FAR (false-alarm rate)  = FP / (FP + TN)     flagged normal rows / normal rows
    MAR (missed-alarm rate) = FN / (FN + TP)     unflagged anomalous rows / anomalous rows

over the judged rows (the protocol). SKAB's published notebooks (e.g. ``notebooks/Conv_AE.ipynb``) compare each
detector's predictions with the labels of the *whole* file, its training rows included (where a detector
rarely flags anything, so they add true negatives); the same counts over whole files are kept as ``all_rows``
for a like-for-like comparison with the published leaderboard, whose figures are shown as reference rows
(``reference`` in the suite: published, not recomputed).
"""

from __future__ import annotations

import numpy as np

from edge_agent.contract.recordings import Recording
from trainer.evaluate import metrics

COUNTS = ("tp", "fp", "fn", "tn")
#: Keys of one ``reference`` entry of a suite case (a published detector's figures, percentages as printed).
REFERENCE_KEYS = {"detector": str, "f1": float, "far_pct": float, "mar_pct": float, "source": str}


def train_cut(rec: Recording, train_rows: int) -> str:
    """The ``train_until`` time that leaves exactly the first ``train_rows`` rows of ``rec`` for training: the
    time of the first judged row (ISO-8601, ms)."""
    times = rec.times()
    if times is None:
        raise ValueError(f"{rec.source}: no row times, so the first {train_rows} rows cannot be cut by time; "
                         "give the table a time column")
    if not 0 < train_rows < len(times):
        raise ValueError(f"{rec.source}: train_rows = {train_rows}, but the file has {len(times)} rows; "
                         f"it needs more than {train_rows} rows to leave some to judge")
    return str(np.datetime64(times[train_rows], "ms"))


def check_training_rows(rec: Recording, train_rows: int, trained: int) -> None:
    """The trainer's split must have kept exactly ``train_rows`` rows (it cuts by time; repeated or unordered
    row times around the cut would move it)."""
    if trained != train_rows:
        raise ValueError(f"{rec.source}: the trainer kept {trained} training rows, not the first {train_rows}: "
                         f"the row times around row {train_rows} repeat or go backwards")


def truth_of(rec: Recording, label: str | None) -> np.ndarray:
    """(n_rows,) bool: rows labelled anomalous in the ``label`` column (default ``anomaly``, else the first)."""
    labels = rec.labels()
    if labels is None:
        raise ValueError(f"{rec.source}: no label column (e.g. 'anomaly', 0/1 per row) for a points case")
    names = [n.lower() for n in rec.label_names]
    if label and label.lower() not in names:
        raise ValueError(f"{rec.source}: no label column {label!r}; it has {list(rec.label_names)}")
    col = names.index(label.lower()) if label else names.index("anomaly") if "anomaly" in names else 0
    return labels[:, col] > 0


def figures(flags: np.ndarray, truth: np.ndarray, judged_from: int) -> dict:
    """Point metrics of one detector on one file: rows ``judged_from:`` (the protocol), and ``all_rows``
    (the counts over the whole file, as SKAB's notebooks count). flags, truth: (n_rows,) bool."""
    out = metrics.point_metrics(flags[judged_from:], truth[judged_from:])
    whole = metrics.point_metrics(flags, truth)
    out["rows"] = int(len(truth) - judged_from)
    out["judged_from"] = int(judged_from)
    out["all_rows"] = {k: whole[k] for k in COUNTS}
    return out


def rates(tp: int, fp: int, fn: int, tn: int) -> dict:
    """precision, recall, F1, FAR and MAR of summed counts (0 where a denominator is 0)."""
    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "far": fp / (fp + tn) if fp + tn else 0.0,
        "mar": fn / (fn + tp) if fn + tp else 0.0,
    }


def joined(figs: list[dict], whole_files: bool = False) -> dict:
    """The figures of several files joined: their counts added, then the rates (``whole_files``: the
    ``all_rows`` counts)."""
    counts = [f["all_rows"] if whole_files else f for f in figs]
    return rates(*(int(sum(c[k] for c in counts)) for k in COUNTS)) | {"files": len(figs)}


def check_reference(entries, where: str) -> list[dict]:
    """A suite case's ``reference`` list, checked: each entry a table with ``detector``, ``f1`` (0..1),
    ``far_pct`` and ``mar_pct`` (0..100, as published) and ``source`` (where the figures come from)."""
    if not isinstance(entries, list):
        raise ValueError(f"{where}: reference must be a list of tables, got {type(entries).__name__}")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or set(e) != set(REFERENCE_KEYS):
            got = sorted(e) if isinstance(e, dict) else type(e).__name__
            raise ValueError(f"{where}: reference {i + 1} must have exactly the keys {sorted(REFERENCE_KEYS)}, got {got}")
        for key, kind in REFERENCE_KEYS.items():
            v = e[key]
            ok = isinstance(v, str) if kind is str else isinstance(v, int | float) and not isinstance(v, bool)
            if not ok:
                raise ValueError(f"{where}: reference {i + 1} ({e.get('detector')}): {key} must be a {kind.__name__}, "
                                 f"got {v!r}")
        if not (0.0 <= e["f1"] <= 1.0 and 0.0 <= e["far_pct"] <= 100.0 and 0.0 <= e["mar_pct"] <= 100.0):
            raise ValueError(f"{where}: reference {i + 1} ({e['detector']}): f1 must be in 0..1 and far_pct, mar_pct "
                             f"in 0..100 (percent, as published), got {e['f1']}, {e['far_pct']}, {e['mar_pct']}")
        out.append(dict(e))
    return out


def spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last + 1) row indices of every run of True in ``mask``."""
    m = np.asarray(mask, np.int8)
    edges = np.diff(np.concatenate([[0], m, [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


# ---------------------------------------------------------------------------------------------- report
def plot(name: str, rows: dict, ae: dict, path) -> None:
    """Timeline of one file (PNG): the served score of each window at its last row against the threshold,
    the alert policy's clear level, labelled anomaly rows shaded, training rows greyed, alert raises and clears
    marked; below, each judged row as a true alarm, a false alarm or a missed row. rows: the harness's replayed
    windows (W,) plus ``row_truth`` and ``row_flags`` (n_rows,) and ``clear_level`` (W,)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, flags = rows["row_truth"].astype(bool), rows["row_flags"].astype(bool)
    start, n = int(ae["judged_from"]), len(truth)
    x = rows["ends"] - 1  # a window's score is plotted at its last row
    fig, (ax, strip) = plt.subplots(2, 1, figsize=(12, 4.6), dpi=90, sharex=True,
                                    gridspec_kw={"height_ratios": [5, 1]})
    ax.axvspan(0, start, color="lightgrey", alpha=0.5, label=f"training rows (first {start})")
    for k, (a, b) in enumerate(spans(truth)):
        ax.axvspan(a, b, color="tab:green", alpha=0.18, label="labelled anomaly" if k == 0 else None)
    score = rows["scores"]
    ax.plot(x, score, lw=0.9, color="tab:blue", label="score")
    ax.step(x, rows["thresholds"], where="post", color="tab:red", lw=1.0, label="threshold")
    if "clear_level" in rows:
        ax.step(x, rows["clear_level"], where="post", color="tab:red", lw=0.8, ls=":",
                label="clear level (alert clears after windows below it)")
    raised = np.flatnonzero(rows["events"] == "raised")
    cleared = np.flatnonzero(rows["events"] == "cleared")
    if raised.size:
        ax.plot(x[raised], score[raised], "v", color="darkred", ms=7, label="alert raised")
    if cleared.size:
        ax.plot(x[cleared], score[cleared], "^", color="tab:green", ms=7, label="alert cleared")
    finite = score[np.isfinite(score)]
    if finite.size and np.all(finite > 0):
        ax.set_yscale("log")
    ax.set_ylabel("reconstruction error")
    ax.set_title(f"{name}: F1 {ae['f1']:.2f}, FAR {ae['far']:.1%} (flagged normal rows / normal rows), "
                 f"MAR {ae['mar']:.1%}, over rows {start}-{n - 1}", fontsize=9)
    ax.legend(loc="upper left", fontsize=7, ncol=2)
    judged = np.arange(n) >= start
    for mask, color, label in ((flags & truth & judged, "tab:green", "true alarm"),
                               (flags & ~truth & judged, "tab:red", "false alarm"),
                               (~flags & truth & judged, "orange", "missed")):
        for k, (a, b) in enumerate(spans(mask)):
            strip.axvspan(a, b, color=color, label=label if k == 0 else None)
    strip.set_yticks([])
    strip.set_xlim(0, n)
    strip.set_xlabel("row")
    strip.legend(loc="upper left", fontsize=7, ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def markdown(outcomes: list, detectors: tuple[str, ...]) -> list[str]:
    """Report lines for the ``points`` outcomes (harness ``Outcome``): a row per file, then per group the
    files joined for each detector, then the group's published reference rows."""
    out = ["### Point labels", "",
           "| recording | representation | served | judged rows | precision | recall | F1 | false-alarm rate | missed-alarm rate | RMS baseline F1 / FAR |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        ae, rms = o.figures["ae"], o.figures.get("rms")
        out.append(f"| {o.case.name} | {ae['representation']} | {ae['served']} | {ae['judged_from']}-{ae['judged_from'] + ae['rows'] - 1} | "
                   f"{ae['precision']:.2f} | {ae['recall']:.2f} | {ae['f1']:.2f} | {ae['far']:.1%} | {ae['mar']:.1%} | "
                   + (f"{rms['f1']:.2f} / {rms['far']:.1%}" if rms else "-") + " |")
    out += ["", "Files joined (counts added, then the rates); the last column counts whole files, training rows included, "
            "as SKAB's published notebooks do:", "",
            "| group | detector | files | precision | recall | F1 | false-alarm rate | missed-alarm rate | whole files: F1 / FAR / MAR |",
            "|---|---|---|---|---|---|---|---|---|"]
    for group in sorted({o.case.group for o in outcomes}):
        members = [o for o in outcomes if o.case.group == group]
        for det in detectors:
            figs = [o.figures[det] for o in members if det in o.figures]
            if figs:
                t, w = joined(figs), joined(figs, whole_files=True)
                out.append(f"| {group or '-'} | {det} | {t['files']} | {t['precision']:.3f} | {t['recall']:.3f} | {t['f1']:.3f} | "
                           f"{t['far']:.1%} | {t['mar']:.1%} | {w['f1']:.3f} / {w['far']:.1%} / {w['mar']:.1%} |")
        seen = set()
        for ref in (r for o in members for r in o.case.reference):
            if ref["detector"] not in seen:
                seen.add(ref["detector"])
                out.append(f"| {group or '-'} | {ref['detector']} ({ref['source']}) | - | - | - | {ref['f1']:.2f} | "
                           f"{ref['far_pct']:.2f}% | {ref['mar_pct']:.2f}% | - |")
    out.append("")
    return out


__all__ = ["check_reference", "check_training_rows", "figures", "joined", "markdown", "plot", "rates", "spans",
           "train_cut", "truth_of"]
