"""What a sensor keeps for retraining (WindowKeeper), the byte budget of a metered link, and score drift."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.drift import DriftMonitor, DriftPolicy, psi, reference
from edge_agent.uploader import ByteBudget, KeepPolicy, Kept, WindowKeeper


def window(i: int, state: str = "normal", score: float = 0.1) -> Kept:
    return Kept("normal", np.full((4, 1), i, np.float32), score, 0.5, state, 1000.0 + i, i, "v1")


def feed(keeper: WindowKeeper, n: int, start: int = 0, *, events: dict | None = None, state=lambda i: "normal",
         calibrating=lambda i: False, drifting=lambda i: False, dt: float = 1.0) -> list[Kept]:
    out = []
    for i in range(start, start + n):
        out += keeper.window(window(i, state(i)), event_kind=(events or {}).get(i), calibrating=calibrating(i),
                             drifting=drifting(i), now=i * dt)
    return out


def test_alert_context_before_and_after_each_alert() -> None:
    keeper = WindowKeeper(KeepPolicy(every_s=1e9, context_before=3, context_after=2), seed=1)
    kept = feed(keeper, 30, events={10: "raised", 12: "escalated", 25: "cleared"},
                state=lambda i: "warning" if 10 <= i < 25 else "normal")
    alert = [k for k in kept if k.kind == "alert"]
    seqs = [k.seq_end for k in alert]
    assert seqs == [8, 9, 10, 11, 12, 13, 14], "3 before the raise (its own window among them), 2 after, no repeats"
    refs = {k.seq_end: k.alert_ref for k in alert}
    assert len(set(refs.values())) == 1, "the raise and its escalation are one alert: one reference"
    assert keeper.kept["alert"] == 7 and keeper.kept["normal"] == 1, "the first healthy window goes at once"
    again = feed(keeper, 20, 30, events={40: "raised"}, state=lambda i: "warning" if i >= 40 else "normal")
    assert {k.alert_ref for k in again if k.kind == "alert"} - set(refs.values()), "a new alert, a new reference"


def test_reservoir_samples_the_whole_period_and_faster_while_drifting() -> None:
    keeper = WindowKeeper(KeepPolicy(every_s=100, drift_every_s=10), seed=3)
    kept = feed(keeper, 1000)
    normal = [k.seq_end for k in kept if k.kind == "normal"]
    assert normal[0] == 0 and len(normal) == 10, "the first at once, then one per 100 s period"
    offsets = np.array(normal[1:]) % 100
    assert offsets.std() > 15, f"drawn across each period, not always its first window: {offsets}"
    keeper = WindowKeeper(KeepPolicy(every_s=100, drift_every_s=10), seed=3)
    drift = [k for k in feed(keeper, 1000, drifting=lambda i: i >= 500) if k.kind == "drift"]
    assert 45 <= len(drift) <= 50
    keeper = WindowKeeper(KeepPolicy(every_s=100), seed=3)
    assert not [k for k in feed(keeper, 1000, state=lambda i: "critical") if k.kind == "normal"], \
        "no 'normal' window while an alert is active"


def test_calibration_windows_are_all_kept() -> None:
    keeper = WindowKeeper(KeepPolicy(every_s=1e9), seed=0)
    kept = feed(keeper, 50, calibrating=lambda i: i < 20)
    assert [k.seq_end for k in kept if k.kind == "calibration"] == list(range(20))


def test_byte_budget_paces_a_metered_link() -> None:
    t = [0.0]
    budget = ByteBudget(3600 * 1000, burst_s=10, clock=lambda: t[0])  # 1000 B/s, bursts of 10 kB
    assert budget.take(6000) and budget.take(4000) and not budget.take(1000)
    assert budget.wait_s(1000) == pytest.approx(1.0)
    t[0] = 1.0
    assert budget.take(1000) and not budget.take(1)
    t[0] = 100.0
    assert budget.take(50_000), "a record larger than the burst goes when the bucket is full"
    assert not budget.take(1) and budget.wait_s(1) == pytest.approx(40.001, rel=1e-3)
    sent, t[0] = 0, 200.0
    while t[0] < 3800.0:  # an hour of offers: about the budget goes out
        sent += 1000 if budget.take(1000) else 0
        t[0] += 0.1
    assert 3.4e6 < sent < 3.7e6


def test_drift_psi_against_the_training_quantiles() -> None:
    rng = np.random.default_rng(0)
    train = rng.gamma(4.0, 0.025, 20_000)
    qs = (0.5, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)
    manifest = {"score_quantiles": {"training_served": {f"q{q:g}": float(np.quantile(train, q)) for q in qs}}}
    edges, expected = reference(manifest)
    assert expected.sum() == pytest.approx(1.0) and expected[0] == pytest.approx(0.5, abs=0.01)
    assert psi(rng.gamma(4.0, 0.025, 500), edges, expected) < 0.1, "the same machine is stable"
    assert psi(rng.gamma(4.0, 0.025, 500) * 1.4, edges, expected) > 0.25, "40 % higher scores are drift"

    monitor = DriftMonitor(manifest, DriftPolicy(windows=200, every=20))
    started = [monitor.update(s, alerting=False) for s in rng.gamma(4.0, 0.025, 400)]
    assert not any(started) and monitor.status()["state"] == "stable"
    for s in rng.gamma(4.0, 0.025, 400) * 3:
        monitor.update(s, alerting=True)  # an alert is not drift
    assert monitor.status()["state"] == "stable"
    started = [monitor.update(s, alerting=False) for s in rng.gamma(4.0, 0.025, 400) * 1.5]
    assert sum(started) == 1 and monitor.status()["state"] == "drifting" and monitor.events == 1
    assert DriftMonitor({}).status()["state"] == "unknown", "a manifest without quantiles: no verdict"


def test_drift_raises_and_clears_a_retraining_notice_through_the_sinks(tmp_path, agent_bundle) -> None:
    """The "retraining due" notice goes where the alerts go: a JSONL line raised, then cleared."""
    import json

    from edge_agent.alerts import AlertPolicy, WindowResult
    from edge_agent.contract.bundle import Bundle
    from edge_agent.fleet import RETRAINING_DUE, SensorFleet
    from edge_agent.pipeline import Pipeline
    from edge_agent.sinks import AlertDispatcher, JsonlSink
    from edge_agent.windows import Window

    bundle = Bundle.load(agent_bundle)
    pipeline = Pipeline(bundle, device="pump-7", threshold=1e9, policy=AlertPolicy())  # never alerting
    fleet = SensorFleet("pump-7", "gw", keep=None, drift=DriftPolicy(windows=200, every=20), rollout=None,
                        manifest=bundle.manifest)
    sink = JsonlSink(tmp_path / "alerts.jsonl")
    sink.start()
    fleet.on_notice = AlertDispatcher([sink]).emit
    train = bundle.manifest["score_quantiles"]["training_served"]
    rng = np.random.default_rng(1)
    probs = [0.5, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0]
    healthy = np.interp(rng.uniform(0, 1, 400), [0.0, *probs],  # drawn from the training score distribution
                        [train["q0.5"] * 0.8, *(train[f"q{p:g}"] for p in probs)])
    window = Window(np.zeros((bundle.spec.window, bundle.spec.n_features), np.float32))

    def feed(scores):
        for i, s in enumerate(scores):
            fleet.on_window(pipeline, window, WindowResult("pump-7", bundle.version, float(s), 1e9, 1e9 + i, i), None)

    feed(healthy)
    assert not (tmp_path / "alerts.jsonl").read_text()
    feed(healthy * 3)  # the same machine, scores three times the training median: drift
    feed(healthy)  # back to normal
    sink.close()
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(x["kind"], x["state"], x["notice"]) for x in lines] == [
        ("notice", "raised", RETRAINING_DUE), ("notice", "cleared", RETRAINING_DUE)]
    assert "PSI" in lines[0]["reason"] and lines[0]["device"] == "pump-7"
