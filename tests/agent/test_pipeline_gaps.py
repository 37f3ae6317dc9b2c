"""A lossy link or a saturating sensor must not silence alerts; NaN input is counted, not alerted on."""

from __future__ import annotations

import numpy as np

from edge_agent.alerts import AlertPolicy
from edge_agent.contract.binary import FrameDecoder, encode_frame, int16_scale
from edge_agent.contract.bundle import Bundle
from edge_agent.contract.frames import Frame
from edge_agent.pipeline import Pipeline
from tests.agent.pipeline_helpers import ONSET_S, RATE


def test_alert_is_raised_when_gaps_leave_fewer_than_k_windows_between_them(agent_bundle, degrading_samples):
    bundle = Bundle.load(agent_bundle)
    spec = bundle.spec
    policy = AlertPolicy(k=3, n=5)
    # every gap restarts window assembly (no bridging): the debounce must still carry across the gaps
    pipeline = Pipeline(bundle, device="dev", threshold=bundle.threshold.value, policy=policy, bridge_fraction=0.0)
    events = []
    # After the fault onset, stretches of one window each (fewer than k) separated by 100 lost samples.
    failing = degrading_samples[int(RATE * (ONSET_S + 3)) :]
    stretch = spec.window_samples
    pos, windows = 0, 0
    while pos + stretch <= len(failing):
        before = pipeline.counters.alert_events
        windows += pipeline.push(Frame(pos, 0, np.ascontiguousarray(failing[pos : pos + stretch])))
        if pipeline.counters.alert_events > before:
            events.append(pipeline.alerts.state)
        pos += stretch + 100
    assert pipeline.windower.counters.gaps >= 5
    assert windows == pipeline.windower.counters.gaps + 1
    assert pipeline.alerts.state in ("warning", "critical"), "the failing machine must be alerted on"
    assert events, "an alert event was emitted"


def _stream(pipeline: Pipeline, x: np.ndarray, seq0: int, frame: int = 256, sample_type: str = "float32") -> int:
    """Push ``x`` through the real wire codec (int16 frames saturate at the IMS full scale of 10 g)."""
    decoder = FrameDecoder()
    scale = int16_scale(10.0) if sample_type == "int16" else None
    for pos in range(0, len(x) - frame + 1, frame):
        payload = encode_frame(seq0 + pos, x[pos : pos + frame], sample_type=sample_type, scale=scale)
        for f in decoder.feed(payload):
            pipeline.push(f)
    return seq0 + len(x) // frame * frame


def test_a_sensor_saturating_continuously_raises_a_critical_alert(agent_bundle, degrading_samples):
    """Saturated samples are never scored, but a machine shaking beyond the sensor's range must not go quiet."""
    bundle = Bundle.load(agent_bundle)
    pipeline = Pipeline(bundle, device="dev", threshold=bundle.threshold.value, policy=AlertPolicy(k=3, n=5))
    events = []
    pipeline.on_window = lambda _w, _r, event: event and events.append(event)
    healthy = np.ascontiguousarray(degrading_samples[: RATE * 2])
    seq = _stream(pipeline, healthy, 0, sample_type="int16")
    assert pipeline.counters.windows_scored > 0 and pipeline.alerts.state == "normal"
    scored = pipeline.counters.windows_scored
    shaking = np.clip(healthy * 50.0, -40.0, 40.0)  # far beyond the 10 g full scale: int16 codes saturate
    _stream(pipeline, shaking, seq, sample_type="int16")
    counters = pipeline.windower.counters
    assert counters.samples_over_range > 0 and counters.samples_over_range <= counters.samples_invalid
    assert pipeline.counters.windows_scored == scored, "no window containing saturated samples is scored"
    assert pipeline.counters.over_range_spans >= 3
    assert [e.kind for e in events] == ["raised"] and events[0].severity == "critical"
    assert events[0].stats["over_range_fraction"] > 0


def test_sporadic_clipping_and_missing_readings_are_counted_but_page_no_one(agent_bundle, degrading_samples):
    """One clipped value now and then (and int16 'no reading' codes) restart windows but are not an alarm."""
    bundle = Bundle.load(agent_bundle)
    pipeline = Pipeline(bundle, device="dev", threshold=bundle.threshold.value, policy=AlertPolicy(k=3, n=5))
    healthy = np.array(degrading_samples[: RATE * 8])
    healthy[:: bundle.spec.window_samples // 2, 0] = 40.0  # one clipped value twice per window: int16 saturates
    healthy[bundle.spec.window_samples // 4 :: bundle.spec.window_samples // 2, 1] = np.nan  # sent as -32768
    _stream(pipeline, healthy, 0, sample_type="int16")
    counters = pipeline.windower.counters
    assert counters.samples_over_range > 10 and counters.samples_invalid > counters.samples_over_range
    assert pipeline.counters.over_range_spans == 0
    assert pipeline.alerts.state == "normal" and pipeline.counters.alert_events == 0


def test_a_sensor_sending_nan_is_counted_but_does_not_page_anyone(agent_bundle, degrading_samples):
    bundle = Bundle.load(agent_bundle)
    pipeline = Pipeline(bundle, device="dev", threshold=bundle.threshold.value, policy=AlertPolicy(k=3, n=5))
    nans = np.full((RATE * 2, 4), np.nan, np.float32)
    _stream(pipeline, nans, 0)
    assert pipeline.windower.counters.samples_invalid == len(nans) // 256 * 256
    assert pipeline.windower.counters.samples_over_range == 0
    assert pipeline.counters.windows_scored == 0 and pipeline.counters.over_range_spans == 0
    assert pipeline.alerts.state == "normal"


def test_stream_warnings_name_the_sensor(agent_bundle, degrading_samples, caplog):
    """On a gateway with many sensors a warning that does not say whose stream it is cannot be acted on."""
    import logging

    bundle = Bundle.load(agent_bundle)
    pipeline = Pipeline(bundle, device="pump-9", threshold=bundle.threshold.value, policy=AlertPolicy())
    x = np.ascontiguousarray(degrading_samples[:4096])
    bad = x.copy()
    bad[10] = np.nan
    with caplog.at_level(logging.WARNING, logger="edge_agent.windows"):
        pipeline.push(Frame(0, 0, x[:1024]))
        pipeline.push(Frame(5000, 0, x[1024:2048]))  # 3976 samples never arrived
        pipeline.push(Frame(6024, 0, np.ascontiguousarray(bad[:1024])))
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("sensor pump-9: sequence gap") for m in lines), lines
    assert any(m.startswith("sensor pump-9: 1 invalid samples") for m in lines), lines
