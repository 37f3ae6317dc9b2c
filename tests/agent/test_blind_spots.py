"""What the score cannot show (edge_agent.blind_spots): a frozen channel and a machine that matches too well. Real
bundles trained by the trainer, the gateway's own pipeline; the health side (stuck over a real pty) is in
test_health.py."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from edge_agent import metrics
from edge_agent.alerts import AlertPolicy
from edge_agent.blind_spots import (
    LEVEL_MARGIN,
    STUCK_FACTOR,
    STUCK_MIN_WINDOWS,
    TOO_GOOD_MARGIN,
    LevelWatch,
    TooGoodWatch,
    stuck_limits,
)
from edge_agent.contract.blind_spots import FlatRuns, longest_flat_runs, span_floors, window_means
from edge_agent.contract.bundle import FLAT_RUNS_KEY, MANIFEST_FILE, SPAN_MAX_KEY, WINDOW_MEANS_KEY, Bundle
from edge_agent.contract.errors import BundleError
from edge_agent.contract.frames import Frame
from edge_agent.pipeline import Pipeline
from edge_agent.status import fields_of
from tests.agent.pipeline_helpers import copy_bundle, rewrite_bundle, running_machine


def _pipeline(bundle: Bundle, events: list, scores: list | None = None, rate: float = 1.0) -> Pipeline:
    def on_window(w, result, event):
        if scores is not None:
            scores.append(result.score)
        if event is not None:
            events.append(event)

    return Pipeline(bundle, device="press-2", threshold=bundle.threshold.value, policy=AlertPolicy(),
                    sample_rate=rate, on_window=on_window)


def _push(p: Pipeline, x: np.ndarray, seq0: int = 0, n: int = 96) -> int:
    for a in range(0, len(x), n):
        p.push(Frame(seq0 + a, 0, np.ascontiguousarray(x[a:a + n])))
    return seq0 + len(x)


def test_runs_followed_frame_by_frame_are_the_runs_of_the_whole_recording():
    rng = np.random.default_rng(3)
    x = np.round(np.cumsum(rng.standard_normal((5000, 3)), axis=0) / 4).astype(np.float32)  # a coarse, slow signal
    x[1200:1900, 1] = 7.0  # a frozen stretch of 700 samples
    x[3000, 2] = np.nan  # a NaN ends a run and starts none
    longest, changed = longest_flat_runs([x], 3)
    runs = FlatRuns(3)
    seen = np.zeros(3, np.int64)
    cuts = np.sort(rng.choice(np.arange(1, len(x)), 60, replace=False))
    for part in np.split(x, cuts):
        seen = np.maximum(seen, runs.push(part))
    assert seen.tolist() == longest and longest[1] >= 700 and changed == [True, True, True]
    flat = np.zeros((100, 2), np.float32)
    flat[50:, 1] = 1.0
    assert longest_flat_runs([flat, flat[:10]], 2) == ([100, 50], [False, True])  # runs never span two segments


def test_stuck_limits_follow_the_training_runs_and_a_constant_channel_is_never_judged():
    limits = stuck_limits((1, 69, 604), (True, True, False), window_samples=50)
    assert limits.tolist() == [int(STUCK_MIN_WINDOWS * 50) + 1, int(STUCK_FACTOR * 69) + 1, 0]


def test_a_fresh_bundle_carries_the_facts_of_its_training_data(agent_bundle):
    m = json.loads((agent_bundle / MANIFEST_FILE).read_text())
    facts = m["signal"][FLAT_RUNS_KEY]
    assert facts["changed"] == [True] * 4 and all(1 <= n < 10 for n in facts["longest"])  # vibration never repeats
    spans = m["score_quantiles"][SPAN_MAX_KEY]
    assert spans["windows"][:3] == [1, 2, 4] and spans["lowest"] == sorted(spans["lowest"])
    assert 0 < spans["lowest"][0] <= m["score_quantiles"]["training_served"]["q0.5"]


def test_a_machine_gone_quiet_is_too_good_raises_through_the_debounce_and_clears(noise_bundle):
    bundle = Bundle.load(noise_bundle)
    events, scores = [], []
    p = _pipeline(bundle, events, scores)
    seq = _push(p, running_machine(1440, seed=2))  # 24 minutes of the machine running: nothing to report
    assert p.counters.too_good_windows == 0 and events == []
    seq = _push(p, running_machine(480, seed=3, quiet=slice(0, 480)), seq)  # it stops: only the slow swing is left
    raised = [e for e in events if e.kind == "raised"]
    assert len(raised) == 1 and p.state == "warning", [(e.kind, e.reason) for e in events]
    e = raised[0]
    assert e.reason.startswith("too good:") and "an expected pattern did not happen" in e.reason
    assert e.score in scores and e.score < e.stats["too_good_limit"] < TOO_GOOD_MARGIN * bundle.threshold.value
    assert e.stats["too_good_span"] >= 1 and e.window_count >= p.alerts.policy.k
    assert p.counters.too_good_windows >= 100  # every quiet window but the first few that still held noise
    _push(p, running_machine(720, seed=4), seq)  # it runs again
    assert [x.kind for x in events] == ["raised", "cleared"] and p.state == "normal"
    doc = {"sensors": {"press-2": fields_of(p.counters)}}
    assert f'edge_agent_too_good_windows_total{{sensor="press-2"}} {p.counters.too_good_windows}' in metrics.render(doc)


def test_a_device_calibration_caps_the_too_good_limits_with_its_own_windows():
    watch = TooGoodWatch(((1, 0.2), (2, 0.3), (4, 0.01)), threshold=1.0)  # span 4 sits below the judged floor
    assert watch.spans.tolist() == [1, 2]
    assert watch.update(0.09, threshold=1.0) == (1, 0.09, pytest.approx(0.1))  # below half the healthy floor
    assert watch.update(0.15, threshold=1.0) is None
    assert watch.update(0.15, threshold=2.0) == (1, 0.15, pytest.approx(0.2))  # a device threshold twice as high
    watch.reset()
    watch.calibrated(np.array([0.12, 0.15, 0.13, 0.14]))  # a quieter machine: its own floor rules
    assert watch.update(0.07, threshold=2.0) is None
    assert watch.update(0.05, threshold=2.0) == (1, 0.05, pytest.approx(0.06))


def test_a_bundle_written_before_the_checks_loads_serves_and_says_so_once(tmp_path, agent_bundle, degrading_samples,
                                                                         caplog):
    old = copy_bundle(agent_bundle, tmp_path / "old")

    def strip(m):
        del m["signal"][FLAT_RUNS_KEY], m["score_quantiles"][SPAN_MAX_KEY]

    rewrite_bundle(old, manifest_edit=strip)
    bundle = Bundle.load(old)
    assert bundle.flat_runs is None and bundle.span_floors == ()
    events: list = []
    with caplog.at_level(logging.INFO, logger="edge_agent.pipeline"):
        p = _pipeline(bundle, events, rate=20_000.0)
        frozen = degrading_samples[:40_000].copy()
        frozen[:, 1] = 0.25  # stuck for 2 s: nothing to judge it by
        _push(p, frozen, n=1024)
    notes = [r.getMessage() for r in caplog.records]
    assert sum("no signal.flat_runs" in n and "retrain" in n for n in notes) == 1
    assert sum("no score_quantiles.healthy_served_span_max" in n for n in notes) == 1
    assert p.counters.windows_scored > 0 and p.stuck() == [] and p.counters.stuck_episodes == 0
    assert p.counters.too_good_windows == 0


@pytest.mark.parametrize(("key", "value", "says"), [
    (FLAT_RUNS_KEY, {"longest": [1, 2], "changed": [True, True]}, "signal.flat_runs.longest must list 4"),
    (FLAT_RUNS_KEY, {"longest": [1, 1, 1, 1], "changed": [1, 1, 1, 1]}, "signal.flat_runs.changed must list 4 booleans"),
    (FLAT_RUNS_KEY, [3], "must be an object"),
    (SPAN_MAX_KEY, {"windows": [1, 2], "lowest": [0.1]}, "score_quantiles.healthy_served_span_max must be an object"),
    (SPAN_MAX_KEY, {"windows": [0], "lowest": [0.1]}, "whole numbers of windows >= 1"),
    (SPAN_MAX_KEY, {"windows": [1], "lowest": [-1.0]}, "scores >= 0"),
    (WINDOW_MEANS_KEY, {"window": 10, "channels": [7], "mean": [0.0], "sd": [1.0], "max_z": [2.0]},
     "signal.window_means.channels must list distinct channel indices 0..3"),
    (WINDOW_MEANS_KEY, {"window": 10, "channels": [0], "mean": [0.0], "sd": [0.0], "max_z": [2.0]},
     "signal.window_means.sd must hold 1 spreads > 1e-12 x"),
    (WINDOW_MEANS_KEY, {"window": 0, "channels": [0], "mean": [0.0], "sd": [1.0], "max_z": [2.0]},
     "signal.window_means.window is 0, the bundle's windows are"),
    (WINDOW_MEANS_KEY, {"window": 10, "channels": [[0]], "mean": [0.0], "sd": [1.0], "max_z": [2.0]},
     "channels must list distinct channel indices"),
    (WINDOW_MEANS_KEY, {"window": 10, "channels": [0], "mean": ["0.0"], "sd": [1.0], "max_z": [2.0]},
     "signal.window_means.mean must hold 1 finite numbers"),
    (WINDOW_MEANS_KEY, [1, 2], "must be an object with 'window'"),
])
def test_malformed_blind_spot_facts_refuse_the_bundle(tmp_path, agent_bundle, key, value, says):
    bad = copy_bundle(agent_bundle, tmp_path / "bad")

    def edit(m):
        v = value
        if key == WINDOW_MEANS_KEY and isinstance(v, dict) and v.get("window") == 10:
            v = v | {"window": m["window"]["samples"]}  # the bundle's own window: the field under test is another
        (m["signal"] if key in (FLAT_RUNS_KEY, WINDOW_MEANS_KEY) else m["score_quantiles"])[key] = v

    rewrite_bundle(bad, manifest_edit=edit)
    with pytest.raises(BundleError, match=says.replace(".", r"\.")):
        Bundle.load(bad)


def test_span_floors_are_the_lowest_highest_score_of_each_span():
    s = np.array([5.0, 1.0, 1.0, 4.0, 1.0, 1.0, 1.0, 6.0, 2.0, 3.0])
    assert span_floors(s) == {"windows": [1, 2, 4], "lowest": [1.0, 1.0, 4.0]}
    assert span_floors(np.array([1.0])) == {"windows": [], "lowest": []}


def test_a_level_shift_the_score_cannot_see_raises_through_the_debounce_names_the_channel_and_clears(noise_bundle):
    # one channel of noise (sd 1) under a slow swing; its level moves by 1.5 noise widths: the autoencoder, scoring the
    # window's shape, stays below its threshold; the window means stray past any training window's (the swing makes
    # the margin come and go, so the alert may clear and raise again while the shift lasts)
    bundle = Bundle.load(noise_bundle)
    facts = bundle.window_means
    assert facts is not None and facts.window == bundle.spec.window and facts.channels == (0,)
    assert 1.0 < float(facts.max_z[0]) < 6.0
    events, scores = [], []
    p = _pipeline(bundle, events, scores)
    seq = _push(p, running_machine(1440, seed=2))
    assert p.counters.level_windows == 0 and events == []
    seq = _push(p, running_machine(720, seed=3) + np.float32(1.5), seq)
    assert events and events[0].kind == "raised", [(e.kind, e.reason) for e in events]
    assert "off their level (channel ch0: the mean of the last 24 rows" in events[0].reason, events[0].reason
    assert "training spreads above its training mean" in events[0].reason and "level shift" in events[0].reason
    assert p.counters.level_windows >= 10
    _push(p, running_machine(720, seed=4), seq)  # back to its level
    assert events[-1].kind == "cleared" and p.state == "normal"
    doc = {"sensors": {"press-2": fields_of(p.counters)}}
    assert f'edge_agent_level_windows_total{{sensor="press-2"}} {p.counters.level_windows}' in metrics.render(doc)
    p2 = _pipeline(bundle, [], None)  # the same shift without the check: the score alone raises nothing
    p2.level_watch = LevelWatch(None, ("ch0",))
    _push(p2, running_machine(720, seed=3) + np.float32(1.5), _push(p2, running_machine(1440, seed=2)))
    assert p2.alerts.events == 0


def test_the_level_check_reads_the_training_windows_and_judges_only_what_it_was_given():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 3))
    x[:, 2] = 5.0  # a constant channel: nothing to judge it by
    facts = window_means([x[:200], x[200:]], 10, [0, 2])  # channel 1 left out (judged against its recent level)
    assert facts["window"] == 10 and facts["channels"] == [0]
    means = np.concatenate([np.convolve(x[:200, 0], np.ones(10) / 10, "valid"),
                            np.convolve(x[200:, 0], np.ones(10) / 10, "valid")])  # windows never span two segments
    assert facts["mean"][0] == pytest.approx(means.mean()) and facts["sd"][0] == pytest.approx(means.std())
    assert facts["max_z"][0] == pytest.approx(np.abs(means - means.mean()).max() / means.std())
    assert window_means([x[:5]], 10, [0]) is None and window_means([x], 10, []) is None
    from edge_agent.contract.bundle import WindowMeanFacts
    watch = LevelWatch(WindowMeanFacts(10, (0,), np.array([0.0]), np.array([0.3]), np.array([3.0])), ("flow", "b", "c"))
    quiet = watch.check(np.zeros((10, 3), np.float32))
    assert quiet.ratio == 0.0 and quiet.channel == "flow"
    low = watch.check(np.full((10, 3), -3.0, np.float32))  # 10 spreads below; the farthest training window: 3
    assert low.ratio == pytest.approx(10.0 / (LEVEL_MARGIN * 3.0)) and "below its training mean" in low.describe()
    nan = np.zeros((10, 3), np.float32)
    nan[3, 0] = np.nan
    assert watch.check(nan) is None and watch.check(np.zeros((4, 3), np.float32)) is None
    assert LevelWatch(None, ("flow",)).check(np.zeros((10, 1), np.float32)) is None


def test_a_coarse_channel_one_step_off_is_not_a_shift_and_a_calibrated_device_judges_by_its_threshold(noise_bundle):
    # a setpoint that moved one resolution step once in 500 rows: its spread of window means would be tiny; floored
    # at the step, one step off for a whole window is one spread, not a hundred (a critical alert, found by a probe)
    x = np.full((2000, 1), 100.0)
    x[::500] = 100.01
    facts = window_means([x], 10, [0])
    assert facts["sd"][0] == pytest.approx(0.01)
    from edge_agent.contract.bundle import WindowMeanFacts
    watch = LevelWatch(WindowMeanFacts(10, (0,), *(np.array([facts[k][0]]) for k in ("mean", "sd", "max_z"))), ("sp",))
    assert watch.check(np.full((10, 1), 100.01, np.float32)).ratio < 1.0
    assert watch.check(np.full((10, 1), 100.05, np.float32)).ratio > 1.0
    bundle = Bundle.load(noise_bundle)
    p = Pipeline(bundle, device="press-2", threshold=bundle.threshold.value * 1.3, policy=AlertPolicy(), sample_rate=1.0)
    assert p.level_watch.facts is None  # a device threshold: its level may sit elsewhere
