"""`trainer retrain`: trains on the collected windows through trainer.pipeline.run (less a device's windows near
its alerts), compares with the current bundle on held-out normal and alert windows, and refuses a model that misses
the fleet's alerts; the verdict names the gate and every figure that got worse."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest

from edge_agent.contract.bundle import Bundle
from edge_agent.contract.upload_record import decode_record, encode_record
from firmware_sim import signals
from tests.agent.pipeline_helpers import RATE
from trainer import dataset
from trainer.retrain import FIGURES, RetrainOptions, RetrainRefused, near_alerts, retrain, verdict

WINDOW = 8 * 1024  # the agent bundle's window: 8 blocks of 1024 samples


def collected(root: Path, bundle: Path, *, normal_state: str, n_normal: int, n_alert: int, n_near: int = 0,
              group: str | None = None, devices: tuple[str, str] = ("pump-1", "pump-2")) -> Path:
    """A dataset as the fleet would upload it: pump-1's ``n_normal`` windows labelled normal (of ``normal_state``
    signal) from 10:00, pump-2's ``n_alert`` windows of a broken bearing uploaded during one alert at 12:00, and
    pump-2's ``n_near`` windows of its incipient fault uploaded as normal (below the threshold) in the hour before.
    ``devices`` renames pump-1 and pump-2, ``group`` is their sensors' group (added to ``root`` if it exists)."""
    version = Bundle.load(bundle).version
    writer = dataset.DatasetWriter(root)
    first, second = devices
    for device, label, state, n, seed, hour in ((first, "normal", normal_state, n_normal, 11, 10),
                                                (second, "alert", "broken", n_alert, 12, 12),
                                                (second, "normal", "degrading", n_near, 13, 11)):
        if not n:
            continue
        life_s = n * WINDOW / RATE / 0.85  # degrading: healthy, then incipient over the last third (severity <= 0.2)
        x = signals.generate(signals.make_source("bearing", state=state, preset="ims", seed=seed, life_s=life_s),
                             n * WINDOW)
        for i in range(n):
            writer.add(decode_record(encode_record(
                device=device, model_id="test-conv", model_version=version, seq_end=(i + 1) * WINDOW,
                time_end=f"2026-11-22T{hour:02d}:{i // 60:02d}:{i % 60:02d}", sample_rate=RATE,
                channels=["ch0", "ch1", "ch2", "ch3"], score=0.1 if label == "normal" else 9.0, threshold=1.0,
                state="normal" if label == "normal" else "critical", kind=label,
                alert_ref="alert-1" if label == "alert" else None, group=group,
                samples=x[i * WINDOW:(i + 1) * WINDOW])))
    writer.flush()
    return root


@pytest.mark.slow
def test_retrain_compares_with_the_current_model_and_writes_the_comparison(agent_bundle: Path, tmp_path: Path):
    data = collected(tmp_path / "ds", agent_bundle, normal_state="healthy", n_normal=100, n_alert=12, n_near=10)
    out = tmp_path / "new"
    result = retrain(RetrainOptions(dataset=data, current=agent_bundle, out=out, epochs=12))
    c = result.comparison
    assert not c["worse_on_alerts"] and result.bundle == out.resolve()
    assert result.near_alerts == {"pump-2": 10}, "pump-2's windows of the hour before its alert are not healthy"
    assert c["new"]["normal_windows"] == c["current"]["normal_windows"] == 20  # the latest 20 % of pump-1's held out
    assert c["new"]["alert_windows"] == 12 and c["current"]["alerts_detected"] == 12
    assert c["new"]["alerts_detected"] >= c["current"]["alerts_detected"]
    new = Bundle.load(out)
    current = Bundle.load(agent_bundle)
    assert new.model_id == current.model_id and new.version != current.version
    assert replace(new.spec, sample_rate=None) == current.spec, "same preprocessing: the gateway's windows fit"
    assert new.spec.sample_rate == RATE, "the collected windows state their rate"
    r = new.manifest["retrain"]
    assert r["replaces"] == current.version and r["trained_windows"] == 80 and not r["forced"]
    assert r["left_out_near_alerts"] == {"pump-2": 10} and r["alert_margin_s"] == 86_400
    assert (out / "report" / "comparison.png").stat().st_size > 10_000
    md = (out / "report" / "comparison.md").read_text()
    assert "| false alerts on them |" in md
    assert "Gate: alerts caught (3 windows above threshold during each reported alert): current 1, new 1 of 1 → " \
           "passes." in md and "Verdict: the new model passes the gate" in md
    assert "comparison" in json.loads((out / "report" / "report.json").read_text())


@pytest.mark.slow
def test_retrain_refuses_a_model_that_misses_the_alerts(agent_bundle: Path, tmp_path: Path) -> None:
    # a gateway whose "normal" windows were of a failing machine: the new model learns the fault as normal
    data = collected(tmp_path / "ds", agent_bundle, normal_state="broken", n_normal=60, n_alert=12)
    out = tmp_path / "new"
    with pytest.raises(RetrainRefused, match="alert windows") as info:
        retrain(RetrainOptions(dataset=data, current=agent_bundle, out=out, epochs=12))
    assert "| alert windows above threshold | 12 |" in str(info.value)
    assert info.value.reason.startswith("the new model catches 0 of the 1 alerts") and "\n" not in info.value.reason
    assert "→ fails." in str(info.value) and "**fails the gate** (alerts caught 1 → 0 of 1, which must not fall)" in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".new*")), "nothing written, no leftovers"
    forced = retrain(RetrainOptions(dataset=data, current=agent_bundle, out=out, epochs=12, force=True))
    assert forced.comparison["worse_on_alerts"] and Bundle.load(out).manifest["retrain"]["forced"]


def _times(*hms: str) -> pa.Array:
    return pa.array([datetime.fromisoformat(f"2026-11-22T{t}+00:00") for t in hms], pa.timestamp("us", tz="UTC"))


def test_healthy_windows_near_a_devices_alerts_are_left_out() -> None:
    # pump-2 raised one alert (its windows 12:00:00 .. 12:00:30) and one window without a reference at 18:00:00
    alerts = pa.table({"device": ["pump-2"] * 3, "alert_ref": ["a1", "a1", None],
                       "time_end": _times("12:00:30", "12:00:00", "18:00:00")})
    healthy = pa.table({"device": ["pump-2"] * 6 + ["pump-1"],
                        "time_end": _times("10:59:59", "11:00:00", "12:00:10", "13:00:30", "13:00:31", "17:00:00",
                                           "12:00:10")})
    near = near_alerts(healthy, alerts, 3600)
    # from an hour before the alert's first window to an hour after its last; the lone window is an alert of its
    # own; another device's windows are not touched
    assert near.tolist() == [False, True, True, True, False, True, False]
    assert not near_alerts(healthy, alerts, 0).any(), "a margin of 0 keeps every window"
    assert not near_alerts(healthy, alerts.slice(0, 0), 3600).any()


def _figures(caught: int, detection: float, during: int, ratio: float, false_alerts: int, confirmed: int = 0,
             parity: float | None = 1.0) -> dict:
    return {"alerts_caught": caught, "alerts": 1, "alert_windows": 10, "alert_detection_rate": detection,
            "during_alerts_detected": during, "alert_score_ratio_p50": ratio, "false_alerts": false_alerts,
            "confirmed_caught": confirmed, "parity_agreement": parity}


def test_the_verdict_names_the_gate_and_every_figure_that_fell() -> None:
    worse = {"current": _figures(1, 0.8, 6, 1.5, 0), "new": _figures(1, 0.6, 6, 1.2, 2), "worse_on_alerts": False}
    text = verdict(worse)
    assert text.splitlines()[0] == ("Gate: alerts caught (3 windows above threshold during each reported alert): "
                                    "current 1, new 1 of 1 → passes.")
    assert ("Verdict: the new model passes the gate (alerts caught 1 → 1 of 1, which must not fall), but detection "
            "rate on alert windows "
            "fell 0.8 → 0.6; alert score / threshold (median) fell 1.5 → 1.2; false alerts on held-out normal "
            "windows rose 0 → 2.") in text
    assert "not worse" not in text and "windows above threshold during the alerts" not in text, "6 → 6 is no change"

    better = {"current": _figures(1, 0.6, 5, 1.2, 1), "new": _figures(1, 1.0, 6, 1.20001, 0),
              "worse_on_alerts": False}
    assert verdict(better).splitlines()[1] == (
        "Verdict: the new model passes the gate (alerts caught 1 → 1 of 1, which must not fall); none of the 6 figures "
        "compared got worse (better: detection rate on alert windows rose 0.6 → 1; alert windows above threshold during the alerts rose 5 → 6; "
        "false alerts on held-out normal windows fell 1 → 0).")

    refused = {"current": _figures(1, 0.8, 6, 1.5, 0), "new": _figures(0, 0.8, 2, 1.5, 0), "worse_on_alerts": True}
    assert verdict(refused).splitlines() == [
        "Gate: alerts caught (3 windows above threshold during each reported alert): current 1, new 0 of 1 → fails.",
        "Verdict: the new model **fails the gate** (alerts caught 1 → 0 of 1, which must not fall); also alert windows "
        "above threshold during the alerts fell 6 → 2."]


@pytest.mark.parametrize("label,key,higher_is_better", FIGURES)
def test_the_verdict_never_says_nothing_got_worse_when_a_figure_fell(label: str, key: str,
                                                                     higher_is_better: bool) -> None:
    # issue 18: "not worse" in a run where the alert-window detection rate fell from 0.8 to 0.6
    current, new = _figures(1, 0.8, 6, 1.5, 1, confirmed=2, parity=0.999), _figures(1, 0.8, 6, 1.5, 1, confirmed=2,
                                                                                    parity=0.999)
    new[key] = current[key] * (0.5 if higher_is_better else 2)
    text = verdict({"current": current, "new": new, "worse_on_alerts": False})
    assert f"but {label} {'fell' if higher_is_better else 'rose'} " in text
    assert "not worse" not in text and "got worse" not in text and "no compared figure" not in text


def test_the_verdict_fails_the_gate_when_the_gated_figure_fell_whatever_the_flag_says() -> None:
    # a comparison whose flag disagrees with its figures (an older manifest, a hand-made one): the figures decide
    text = verdict({"current": _figures(2, 0.8, 6, 1.5, 0), "new": _figures(1, 0.8, 6, 1.5, 0),
                    "worse_on_alerts": False})
    assert "→ fails." in text and "**fails the gate** (alerts caught 2 → 1 of 1, which must not fall)" in text
    assert "passes" not in text


def test_the_verdict_says_which_figures_it_could_not_compare() -> None:
    text = verdict({"current": _figures(1, 0.8, 6, 1.5, 0, parity=None), "new": _figures(1, 0.8, 6, 1.5, 0),
                    "worse_on_alerts": False})
    assert text.endswith("none of the 5 figures compared got worse; not compared (no figure for a model): parity with "
                         "Keras (agreement).")


def _answer_alert(root: Path, kind: str) -> None:
    """Re-upload the alert's last windows as the gateway does after a technician's answer (schema 3 ``answer``)."""
    from trainer.dataset import read_windows

    w = read_windows(root, dataset.DataFilter(kinds=("alert",)))
    writer = dataset.DatasetWriter(root)
    for i in range(len(w) - 2, len(w)):  # windows spooled after the answer carry it
        row = {k: v[0] for k, v in w.table.slice(i, 1).to_pydict().items()}
        writer.add(decode_record(encode_record(
            device=row["device"], model_id="test-conv", model_version=row["model_version"],
            seq_end=int(row["seq_end"]) + 10 * WINDOW, time_end=f"2026-11-22T12:30:{i:02d}", sample_rate=RATE,
            channels=list(row["channels"]), score=9.0, threshold=1.0, state="critical", kind="alert",
            alert_ref="alert-1", samples=w.samples[i],
            answer={"kind": kind, "by": "J. Smith", "time": "2026-11-22T12:31:00Z"})))
    writer.flush()


@pytest.mark.parametrize("kind", ["false_alarm", "confirmed", "ack"])
def test_technicians_answers_decide_what_retraining_does_with_an_alerts_windows(agent_bundle: Path, tmp_path: Path,
                                                                               kind: str) -> None:
    """False alarm: the alert's windows train as normal data, and the healthy windows near it are healthy again;
    confirmed: the alert is a labelled fault in the comparison; ack: no verdict, as without an answer."""
    from trainer.retrain import alert_answers, split_collected

    root = collected(tmp_path / "ds", agent_bundle, normal_state="healthy", n_normal=20, n_alert=6, n_near=4)
    _answer_alert(root, kind)
    opts = RetrainOptions(dataset=root, current=agent_bundle, out=tmp_path / "new")
    split = split_collected(opts, Bundle.load(agent_bundle).spec.channels)
    alerts_table = dataset.read_table(root, dataset.DataFilter(kinds=("alert",)))
    if kind == "false_alarm":
        assert alert_answers(alerts_table) == {"alert-1": "false_alarm"}
        assert split.false_alarm_windows == 8 and len(split.alerts) == 0 and split.left_out == {}
        assert len(split.train) == 24 - round(24 * 0.2) + 8  # the healthy less the held-out 20 % (none left out
        # near a false alarm), and the alert's windows
    elif kind == "confirmed":
        assert split.confirmed == frozenset({"alert-1"}) and split.false_alarm_windows == 0
        assert len(split.alerts) == 8 and split.left_out == {"pump-2": 4}
    else:
        assert alert_answers(alerts_table) == {} and split.confirmed == frozenset()
        assert len(split.alerts) == 8 and split.left_out == {"pump-2": 4}
