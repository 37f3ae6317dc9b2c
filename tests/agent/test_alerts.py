"""Alert state machine: debounce, hysteresis, recovery, cooldown, severity, event fields."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.alerts import AlertEvent, AlertPolicy, AlertStateMachine, WindowResult

THR = 1.0
HIGH = 1.5  # above threshold, below critical (2.0)
CRIT = 2.5  # above critical
MID = 0.9  # between clear level (0.8) and threshold
LOW = 0.1  # below clear level


class FakeClock:
    """A monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Feeder:
    def __init__(self, policy: AlertPolicy | None = None) -> None:
        self.clock = FakeClock()
        self.sm = AlertStateMachine(policy or AlertPolicy(), clock=self.clock)
        self.seq = 0
        self.events: list[AlertEvent] = []

    def feed(self, *scores: float, threshold: float = THR) -> list[AlertEvent]:
        out = []
        for s in scores:
            self.seq += 64
            ev = self.sm.update(
                WindowResult(
                    device="dev1",
                    model_version="m-7",
                    score=s,
                    threshold=threshold,
                    time=1.7e9 + self.seq / 1000,
                    seq_end=self.seq,
                    stats={"rms_0": 0.5, "peak_0": 2.0},
                )
            )
            if ev is not None:
                out.append(ev)
        self.events += out
        return out


def test_k_minus_one_hits_never_raise() -> None:
    f = Feeder()
    for _ in range(20):
        assert f.feed(HIGH, HIGH, LOW, LOW, LOW) == []
    assert f.sm.state == "normal"


def test_k_hits_within_n_raise_on_the_kth() -> None:
    f = Feeder()
    assert f.feed(HIGH, LOW, HIGH) == []
    ev = f.feed(LOW, HIGH)
    assert [e.kind for e in ev] == ["raised"]
    assert ev[0].window_count == 3
    assert f.sm.state == "warning"


def test_scattered_hits_outside_n_do_not_add_up() -> None:
    f = Feeder()
    # hits 3 windows apart: at most 2 in any 5 consecutive windows
    for _ in range(10):
        assert f.feed(HIGH, LOW, LOW) == []
    assert f.sm.state == "normal"


def test_threshold_itself_is_not_above() -> None:
    f = Feeder()
    assert f.feed(THR, THR, THR, THR, THR) == []


def test_hysteresis_scores_between_clear_level_and_threshold_keep_the_alert() -> None:
    f = Feeder(AlertPolicy(settle_windows=0))
    f.feed(HIGH, HIGH, HIGH)
    assert f.sm.state == "warning"
    assert f.feed(*([MID] * 50)) == []
    assert f.sm.state == "warning"


def test_recovery_after_clear_windows_consecutive_clear_windows() -> None:
    f = Feeder()
    f.feed(HIGH, HIGH, HIGH)
    assert f.feed(LOW, LOW, LOW, LOW, MID) == []  # run broken by MID
    assert f.feed(LOW, LOW, LOW, LOW) == []
    ev = f.feed(LOW)
    assert [e.kind for e in ev] == ["cleared"]
    assert ev[0].severity == "normal"
    assert f.sm.state == "normal"


def test_cooldown_suppresses_reraise_until_it_expires() -> None:
    f = Feeder(AlertPolicy(cooldown_s=60.0))
    f.feed(HIGH, HIGH, HIGH)
    f.feed(*([LOW] * 5))
    assert f.sm.state == "normal" and f.sm.in_cooldown
    f.clock.now += 59.0
    assert f.feed(HIGH, HIGH, HIGH, HIGH) == []
    assert f.sm.state == "normal"
    f.clock.now += 2.0
    ev = f.feed(HIGH)
    assert [e.kind for e in ev] == ["raised"]
    assert ev[0].window_count == 5


def test_cooldown_zero_allows_immediate_reraise() -> None:
    f = Feeder(AlertPolicy(cooldown_s=0.0))
    f.feed(HIGH, HIGH, HIGH, *([LOW] * 5))
    assert [e.kind for e in f.feed(HIGH, HIGH, HIGH)] == ["raised"]


def test_severity_critical_at_raise_when_k_windows_are_critical() -> None:
    f = Feeder()
    ev = f.feed(CRIT, CRIT, CRIT)
    assert [(e.kind, e.severity) for e in ev] == [("raised", "critical")]
    assert f.sm.state == "critical"


def test_severity_warning_when_only_some_windows_are_critical() -> None:
    f = Feeder()
    ev = f.feed(CRIT, HIGH, HIGH)
    assert [(e.kind, e.severity) for e in ev] == [("raised", "warning")]


def test_escalation_warning_to_critical_is_debounced() -> None:
    f = Feeder()
    f.feed(HIGH, HIGH, HIGH)
    assert f.feed(CRIT, HIGH, HIGH, CRIT, HIGH, HIGH) == []  # never 3 critical in 5
    ev = f.feed(CRIT, CRIT, CRIT)
    assert [(e.kind, e.severity) for e in ev] == [("escalated", "critical")]
    # no de-escalation, no repeated escalation
    assert f.feed(HIGH, HIGH, CRIT, CRIT, CRIT) == []
    assert f.sm.state == "critical"
    assert [e.kind for e in f.feed(*([LOW] * 5))] == ["cleared"]


def test_event_fields_and_to_dict_is_json() -> None:
    f = Feeder()
    f.feed(LOW, HIGH, HIGH)
    (raised,) = f.feed(2.0 - 1e-9)
    assert raised.device == "dev1" and raised.model_version == "m-7"
    assert raised.score == pytest.approx(2.0 - 1e-9) and raised.threshold == THR
    assert raised.seq_end == f.seq and raised.started_at == raised.time
    assert raised.stats == {"rms_0": 0.5, "peak_0": 2.0}
    assert raised.window_count == 3
    f.feed(*([LOW] * 4))
    (cleared,) = f.feed(LOW)
    assert cleared.started_at == raised.started_at and cleared.time > raised.time
    d = json.loads(json.dumps(cleared.to_dict()))
    assert d["kind"] == "cleared" and d["severity"] == "normal" and d["started_at"] == raised.time
    assert set(d) == {
        "kind", "severity", "device", "model_version", "score", "threshold", "time", "seq_end", "stats",
        "window_count", "started_at", "reason", "baseline", "stage", "explanation", "condition",
    }
    assert d["stage"] == "" and "below 0.8 x the threshold" in d["reason"]
    assert raised.stage == "changed" and "3 of the last 5 windows above the threshold" in raised.reason


def test_an_alert_clears_when_the_process_settles_at_a_new_lower_level() -> None:
    """A valve reopened: the scores fall from the event's level to a steady level near the threshold (the
    process settles elsewhere than its training state). The alert clears as settled and the new level is
    the baseline, so it does not re-raise; an event above the settled level raises again."""
    f = Feeder()
    f.feed(3.0, 3.0, 3.0)
    assert f.sm.state == "critical"
    f.feed(3.2, 2.9, 3.1)
    (cleared,) = f.feed(1.1, 1.2, 1.15, 1.2, 1.1)
    assert cleared.kind == "cleared" and cleared.reason.startswith("settled at a new level")
    assert cleared.baseline == pytest.approx(1.2 * 1.2)
    assert f.sm.settled == 1 and f.sm.baseline == pytest.approx(1.44)
    f.clock.now += 120.0  # past the cooldown
    assert f.feed(*([1.2] * 30)) == []  # the settled level is not an alert
    (raised,) = f.feed(3.0, 3.0, 3.0)  # a new event above it is
    assert raised.kind == "raised" and raised.baseline == pytest.approx(1.44)


def test_a_level_that_stays_near_the_alerts_own_level_or_rises_never_settles() -> None:
    f = Feeder()
    f.feed(HIGH, HIGH, HIGH)
    assert f.feed(*([1.4, 1.5, 1.45] * 20)) == []  # a plateau: the anomaly goes on
    assert f.sm.state == "warning"
    g = Feeder()
    g.feed(CRIT, CRIT, CRIT)
    assert g.feed(*([1.0 + 0.01 * i for i in range(60)])) == []  # low but rising: not settled
    assert g.sm.state == "critical"
    h = Feeder()
    h.feed(9.0, 9.0, 9.0)
    assert h.feed(*([2.5] * 30)) == []  # far below the alert's level but still >= critical: not a new normal
    assert h.sm.state == "critical"


def test_the_baseline_ends_when_the_scores_come_back_below_the_clear_level() -> None:
    f = Feeder()
    f.feed(3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 1.1, 1.1, 1.1, 1.1, 1.1)
    assert f.sm.baseline > 1.0
    f.feed(*([LOW] * 4))
    assert f.sm.baseline > 1.0
    f.feed(LOW)
    assert f.sm.baseline == 1.0
    f.clock.now += 120.0
    assert [e.kind for e in f.feed(HIGH, HIGH, HIGH)] == ["raised"]  # judged against the bundle threshold again


def test_a_rising_alert_escalates_to_degrading_with_its_evidence() -> None:
    """Wear: the scores keep rising during the alert without reaching the critical level in k of n."""
    f = Feeder(AlertPolicy(critical_ratio=10.0))
    f.feed(1.1, 1.1, 1.1)
    scores = [1.1 + 0.05 * i for i in range(40)]
    events = f.feed(*scores)
    assert [(e.kind, e.severity, e.stage) for e in events] == [("escalated", "critical", "degrading")]
    assert events[0].reason.startswith("rising: the last 10 windows score")
    flat = Feeder(AlertPolicy(critical_ratio=10.0))
    flat.feed(*([1.6] * 60))  # a step that stays: changed, not degrading
    assert flat.sm.state == "warning"


def test_invalid_windows_are_counted_and_ignored() -> None:
    f = Feeder()
    f.feed(HIGH, HIGH)
    assert f.feed(math.nan, -math.inf) == []
    assert f.feed(HIGH, threshold=0.0) == [] and f.feed(HIGH, threshold=math.nan) == []
    assert f.sm.invalid == 4
    assert [e.kind for e in f.feed(HIGH)] == ["raised"]  # the two earlier hits still count


def test_an_infinite_score_is_a_critical_hit() -> None:
    """+inf is the pipeline's verdict on saturated / over-range input: beyond every level, never ignored."""
    f = Feeder()
    events = f.feed(math.inf, math.inf, math.inf)
    assert [(e.kind, e.severity) for e in events] == [("raised", "critical")]
    assert f.sm.invalid == 0
    assert events[0].to_dict()["score"] is None  # JSON has no infinity


def test_reset_clears_history_but_keeps_the_active_alert() -> None:
    f = Feeder()
    f.feed(HIGH, HIGH)
    f.sm.reset()
    assert f.feed(HIGH, HIGH) == []  # only 2 hits since the reset
    f.feed(HIGH)
    assert f.sm.state == "warning"
    f.feed(LOW, LOW, LOW, LOW)
    f.sm.reset()  # breaks the clear run
    assert f.feed(LOW, LOW, LOW, LOW) == []
    assert f.sm.state == "warning"
    assert [e.kind for e in f.feed(LOW)] == ["cleared"]


@pytest.mark.parametrize(
    "kwargs",
    [{"k": 0}, {"k": 6, "n": 5}, {"clear_ratio": 0.0}, {"clear_ratio": 1.5}, {"clear_windows": 0},
     {"cooldown_s": -1.0}, {"critical_ratio": 0.5}, {"settle_windows": -1}, {"settle_ratio": 0.0},
     {"settle_margin": 0.5}, {"trend_growth": 0.9}],
)
def test_policy_rejects_out_of_range_values(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="must be"):
        AlertPolicy(**kwargs)


policies = st.builds(
    AlertPolicy,
    k=st.integers(1, 4),
    n=st.just(4),
    clear_ratio=st.sampled_from([0.5, 0.8, 1.0]),
    clear_windows=st.integers(1, 4),
    cooldown_s=st.sampled_from([0.0, 5.0]),
    critical_ratio=st.sampled_from([1.0, 2.0]),
)
steps = st.lists(
    st.tuples(st.sampled_from([0.0, 0.5, 0.85, 1.0, 1.5, 2.0, 3.0, math.nan]), st.sampled_from([0.0, 1.0, 3.0])),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(policy=policies, steps=steps, reset_every=st.integers(0, 10))
def test_property_events_are_consistent_with_state(policy: AlertPolicy, steps: list, reset_every: int) -> None:
    f = Feeder(policy)
    active = False
    severity = "normal"
    for i, (score, dt) in enumerate(steps):
        if reset_every and i % reset_every == 0:
            f.sm.reset()
        f.clock.now += dt
        before = f.sm.state
        evs = f.feed(score)
        assert len(evs) <= 1
        if not evs:
            assert f.sm.state == before
            continue
        (ev,) = evs
        if ev.kind == "raised":
            assert not active, "raised twice without a clear"
            active, severity = True, ev.severity
            assert ev.severity in ("warning", "critical") and ev.window_count >= policy.k
        elif ev.kind == "escalated":
            assert active and severity == "warning" and ev.severity == "critical"
            severity = "critical"
        else:
            assert active, "cleared without raised"
            assert ev.severity == "normal"
            active, severity = False, "normal"
        assert f.sm.state == severity
