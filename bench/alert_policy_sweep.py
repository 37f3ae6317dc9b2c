"""Re-run the gateway's alert state machine over the windows a ``make evaluate`` run replayed.

The scores of a replay do not depend on the alert policy or on the per-device threshold, so the windows that
``trainer evaluate`` keeps (``<out>/<case>.npz``) answer "what if" questions without retraining: k of n, the
per-device calibration length, a threshold margin. Metrics are the harness's own.

Usage: ``python bench/alert_policy_sweep.py [--run runs/evaluate] [--suite bench/evaluate_shared.toml]
[--data ../shared/data]``; prints one markdown row per policy.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from edge_agent.alerts import AlertPolicy, AlertStateMachine, WindowResult
from edge_agent.contract import threshold as thresholds
from edge_agent.contract.recordings import load
from trainer.evaluate import metrics, nab
from trainer.evaluate.harness import Case, load_suite

REPO = Path(__file__).resolve().parents[1]


def states_of(rows: dict, threshold: float, policy: AlertPolicy, first: int) -> np.ndarray:
    """Alert states (W,) of replayed windows under ``policy``; windows before ``first`` calibrate."""
    now = [0.0]
    machine = AlertStateMachine(policy, clock=lambda: now[0])
    out = []
    for i, (score, t) in enumerate(zip(rows["scores"], rows["times"], strict=True)):
        if i < first:
            out.append("calibrating")
            continue
        now[0] = float(t)
        machine.update(WindowResult("sweep", "sweep", float(score), float(threshold), now[0], i))
        out.append(machine.state)
    return np.array(out)


def figures(case: Case, rows: dict, states: np.ndarray, cache: dict) -> dict:
    if case.kind == "run-to-failure":
        t = rows["times"]
        healthy = (float(np.datetime64(case.healthy_until, "ms").astype(np.int64)) / 1000 if case.healthy_until
                   else t[0] + (case.healthy_fraction or 0.5) * (t[-1] - t[0]))
        return metrics.run_to_failure(states, t, healthy)
    if case.name not in cache:
        rec = load(case.data, case.format, **case.load)
        cache[case.name] = (rec.n_rows, rec.times().astype("datetime64[ms]"))
    n_rows, times = cache[case.name]
    limits = json.loads(case.labels.read_text(encoding="utf-8")).get(case.label_key or "", [])
    windows = nab.rows_of(times, [(np.datetime64(a.replace(" ", "T")[:23], "ms"), np.datetime64(b.replace(" ", "T")[:23], "ms"))
                                  for a, b in limits])
    active = np.isin(states, metrics.ACTIVE)
    raises = [int(rows["ends"][i]) - 1 for i in np.flatnonzero(active & ~np.concatenate([[False], active[:-1]]))]
    out = metrics.window_hits(raises, windows, nab.probationary_rows(n_rows))
    out["nab"] = nab.score(n_rows, windows, raises)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "evaluate")
    ap.add_argument("--suite", type=Path, default=REPO / "bench" / "evaluate_shared.toml")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    cases = {c.name.replace("/", "-"): c for c in load_suite(args.suite, args.data) if c.kind != "points"}  # its table has no point-label columns
    runs = {name: dict(np.load(args.run / f"{name}.npz")) for name in cases if (args.run / f"{name}.npz").is_file()}
    cache: dict = {}
    print("| k of n | calibration windows | threshold x | FEMTO alarmed | FEMTO with an alert before half life | "
          "FEMTO median lead (h) | IMS alerts before degradation | IMS lead (h) | NAB windows hit | NAB alerts outside | "
          "NAB standard |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (k, n), cal, margin in itertools.product([(3, 5), (4, 6), (5, 8), (3, 3)], [20, 30, 50], [1.0, 1.25]):
        policy = AlertPolicy(k=k, n=n)
        got = {}
        for name, rows in runs.items():
            case = cases[name]
            if case.calibrate:
                thr, first = thresholds.calibrate(rows["scores"][:cal], "mean_std").value * margin, cal
            else:
                thr, first = float(np.nanmax(rows["thresholds"])) * margin, 0
            got[name] = (case, figures(case, rows, states_of(rows, thr, policy, first), cache))
        rtf = {g: [f for c, f in got.values() if c.kind == "run-to-failure" and c.group == g] for g in ("FEMTO learning set", "IMS")}
        win = [f for c, f in got.values() if c.kind == "windows"]
        femto, ims = rtf["FEMTO learning set"], rtf["IMS"]
        ims_leads = ", ".join(format(f["lead_h"] or 0, ".0f") for f in ims)
        print(f"| {k}/{n} | {cal} | {margin:g} | {sum(f['alarmed'] for f in femto)}/{len(femto)} | "
              f"{sum(f['episodes_healthy'] > 0 for f in femto)} | {np.median([f['lead_h'] or 0 for f in femto]):.2f} | "
              f"{sum(f['episodes_healthy'] for f in ims)} | {ims_leads} | "
              f"{sum(f['hit'] for f in win)}/{sum(f['windows'] for f in win)} | {sum(f['outside'] for f in win)} | "
              f"{nab.normalised([f['nab'] for f in win]):.1f} |")


if __name__ == "__main__":
    main()
