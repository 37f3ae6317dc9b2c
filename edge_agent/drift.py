"""Score drift: is the machine still the one the model was trained on?

The bundle's manifest holds quantiles of the training score distribution (``score_quantiles.training_served``:
q0.5, q0.9, q0.95, q0.99, q0.995, q0.999, q1.0 of the served model). They cut the score axis into bins whose
expected shares are known (50 %, 40 %, 5 %, ...). Over the last ``windows`` scores the population stability
index compares the observed shares with those::

    PSI = Σ_bins (observed - expected) · ln(observed / expected)

Rule of thumb (credit scoring, where PSI comes from): < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 a
different population. Above ``psi_limit`` (default 0.25) for the whole window the sensor reports
``drift.state = "drifting"`` and a health notice "retraining due", and keeps more normal windows for the
retraining it asks for. An alert is not drift: windows scored during an alert are left out.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import numpy as np

from edge_agent.settings import setting
from edge_agent.status import DriftStatus, fields_of

#: Share of training scores above the highest training score: not zero (a new window may be the highest),
#: small enough that scores beyond it weigh in the PSI.
TAIL = 0.0005
EPS = 1e-4


@dataclass(frozen=True)
class DriftPolicy:
    """``[drift]`` of the config: when the recent scores count as drifting from the training scores."""

    windows: int = setting(500, lo=50, hi=1_000_000, doc="recent scores compared with the training distribution")
    psi_limit: float = setting(0.25, lo=0.01, hi=10.0, doc="drifting above this population stability index")
    every: int = setting(50, internal=True, doc="recompute every this many windows")


def reference(manifest: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """(bin edges (K,), expected shares (K+1,)) from the manifest's training score quantiles, or None."""
    q = (manifest.get("score_quantiles") or {}).get("training_served") or {}
    try:
        pairs = sorted((float(k[1:]), float(v)) for k, v in q.items() if k.startswith("q"))
    except (TypeError, ValueError):
        return None
    pairs = [(p, v) for p, v in pairs if 0 < p <= 1 and math.isfinite(v)]
    if len(pairs) < 3:
        return None
    probs = np.array([p for p, _ in pairs])
    edges = np.maximum.accumulate(np.array([v for _, v in pairs]))
    shares = np.diff(np.concatenate([[0.0], probs, [1.0]]))
    shares[-1] = max(shares[-1], TAIL)
    shares = np.maximum(shares, EPS)
    return edges, shares / shares.sum()


def psi(scores: np.ndarray, edges: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index of ``scores`` (N,) against the binned reference."""
    counts = np.bincount(np.searchsorted(edges, scores, side="right"), minlength=len(expected))
    observed = np.maximum(counts / max(len(scores), 1), EPS)
    return float(np.sum((observed - expected) * np.log(observed / expected)))


class DriftMonitor:
    """Tracks one sensor's recent scores; ``update`` once per scored window (scoring thread)."""

    def __init__(self, manifest: dict, policy: DriftPolicy = DriftPolicy()) -> None:
        self.policy = policy
        self.ref = reference(manifest)
        self._scores: collections.deque[float] = collections.deque(maxlen=policy.windows)
        self._since = 0
        self.value: float | None = None
        self.drifting = False
        self.events = 0  # times it started drifting

    def reset(self, manifest: dict) -> None:
        """A new model: its own training distribution, scores start over."""
        self.ref = reference(manifest)
        self._scores.clear()
        self._since = 0
        self.value, self.drifting = None, False

    def update(self, score: float, alerting: bool) -> bool:
        """Add a score; returns True when the sensor just started drifting."""
        if self.ref is None or alerting or not math.isfinite(score):
            return False
        self._scores.append(score)
        self._since += 1
        if len(self._scores) < self.policy.windows or self._since < self.policy.every:
            return False
        self._since = 0
        self.value = psi(np.fromiter(self._scores, float), *self.ref)
        was, self.drifting = self.drifting, self.value > self.policy.psi_limit
        if self.drifting and not was:
            self.events += 1
            return True
        return False

    def status(self) -> dict:
        return fields_of(DriftStatus(
            state="unknown" if self.ref is None else "drifting" if self.drifting else
            "collecting" if self.value is None else "stable",
            psi=None if self.value is None else round(self.value, 4), windows=len(self._scores),
            limit=self.policy.psi_limit, events=self.events))
