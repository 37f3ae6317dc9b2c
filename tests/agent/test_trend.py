"""The trend over weeks: minute and hour aggregates per sensor in a bounded SQLite file that survives restarts,
refuses files it does not own, and never stops scoring on a full disk (a real tmpfs)."""

from __future__ import annotations

import math
import sqlite3

import pytest

from edge_agent.trend import APPLICATION_ID, TrendError, TrendStore
from tests.fs import fill, tmpfs

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _feed(store: TrendStore, clock: Clock, device: str, minutes: int, per_minute: int = 6, score: float = 0.1,
          state: str = "normal", start: float | None = None) -> None:
    t = clock.t if start is None else start
    for m in range(minutes):
        for i in range(per_minute):
            clock.t = t + m * 60 + i * (60 / per_minute)
            store.add(device, clock.t, score, 0.5, state, rms=0.2, velocity=1.0, zone="A")
    clock.t = t + minutes * 60 + 60
    store.flush()


def test_minutes_aggregate_the_worst_and_the_mean_and_survive_a_restart(tmp_path) -> None:
    clock = Clock()
    path = tmp_path / "trend.sqlite"
    store = TrendStore(path, clock=clock).open()
    store.add("pump-1", T0 + 1, 0.1, 0.5, "normal", rms=0.2, velocity=2.0, zone="A")
    store.add("pump-1", T0 + 20, 0.9, 0.5, "warning", rms=0.4, velocity=5.0, zone="C")
    store.add_event("pump-1", T0 + 20, "raised", "warning", "3 of the last 5 windows above the threshold")
    store.add("pump-1", T0 + 40, math.inf, 0.5, "critical")  # an over-range span
    store.add("pump-1", T0 + 61, 0.2, 0.5, "normal")
    store.add("fan-2", T0 + 5, 0.3, 0.6, "normal")
    s = store.series("pump-1", "1h")  # the open minute is shown before it is written
    assert [r[0] for r in s["rows"]] == [T0, T0 + 60]
    first = dict(zip(s["columns"], s["rows"][0], strict=True))
    assert first["windows"] == 3 and first["score_max"] is None and first["over_range"] == 1
    assert first["score_mean"] == pytest.approx(0.5) and first["state"] == "critical" and first["zone"] == "C"
    assert first["rms_max"] == pytest.approx(0.4) and first["velocity_max"] == pytest.approx(5.0) and first["alerts"] == 1
    store.close()  # writes the open minutes
    reopened = TrendStore(path, clock=clock).open()
    s = reopened.series("pump-1", "1h")
    assert len(s["rows"]) == 2 and s["events"][0][1:3] == ["raised", "warning"]
    assert reopened.series("fan-2", "1h")["rows"][0][1] == 1
    assert reopened.counters.rows_written == 0
    assert "time_utc,windows,score_max" in reopened.csv("pump-1", "24h").splitlines()[0]
    with pytest.raises(ValueError, match="span must be one of"):
        reopened.series("pump-1", "1y")
    reopened.close()


def test_window_times_that_step_back_across_a_minute_lose_no_window(tmp_path) -> None:
    # a burst of frames re-anchors the sample clock, so window times can step back a little: around a minute's
    # turn they alternated between two minutes, and each return rewrote the earlier minute's row with a part of it
    # (an agent on a pty counted 11 of 192 windows)
    clock = Clock(T0 + 200)
    store = TrendStore(tmp_path / "trend.sqlite", clock=clock).open()
    times = [T0 + 50 + i for i in range(5)] + [T0 + 58, T0 + 61, T0 + 59, T0 + 62, T0 + 57.5, T0 + 63, T0 + 64]
    for t in times:
        store.add("pump-1", t, 0.1, 0.5, "normal")
    store.flush()
    rows = store.series("pump-1", "1h")["rows"]
    assert sum(r[1] for r in rows) == len(times), rows
    assert [r[0] for r in rows] == [T0, T0 + 60]
    store.add("pump-1", T0 - 3600, 0.1, 0.5, "normal")  # a clock stepped back an hour starts its own minute
    assert sum(r[1] for r in store.series("pump-1", "24h")["rows"]) == len(times) + 1
    store.close()


def test_old_minutes_roll_up_into_hours_and_the_30_day_chart_reads_both(tmp_path) -> None:
    clock = Clock()
    store = TrendStore(tmp_path / "trend.sqlite", minute_days=1.0, clock=clock).open()
    _feed(store, clock, "pump-1", 3 * 60, per_minute=2, score=0.1)  # three hours
    clock.t = T0 + 2 * 86400  # two days later the first three hours are hours
    _feed(store, clock, "pump-1", 10, per_minute=2, score=0.3, state="warning")
    db = sqlite3.connect(tmp_path / "trend.sqlite")
    assert db.execute("SELECT COUNT(*) FROM hours").fetchone() == (3,)
    assert db.execute("SELECT MIN(t) FROM minutes").fetchone()[0] >= T0 + 86400
    db.close()
    month = store.series("pump-1", "30d")
    assert month["step_s"] == 3600 and [r[1] for r in month["rows"]] == [120, 120, 120, 20]
    assert month["rows"][-1][8] == "warning"
    store.close()


def test_the_file_stays_within_its_byte_bound_keeping_the_newest_rows(tmp_path) -> None:
    clock = Clock()
    store = TrendStore(tmp_path / "trend.sqlite", max_bytes=256 * 1024, clock=clock).open()
    for day in range(6):
        for device in ("a", "b", "c", "d"):
            _feed(store, clock, device, 1440, per_minute=1, start=T0 + day * 86400)
    assert store.counters.bytes <= 256 * 1024
    newest = store.series("d", "1h")["rows"]
    assert newest and newest[-1][0] >= T0 + 5 * 86400 + 1380 * 60
    store.close()


def test_a_file_that_is_not_the_trends_is_refused_and_left_untouched(tmp_path) -> None:
    other = tmp_path / "alerts.jsonl"
    other.write_text('{"kind": "raised"}\n')
    with pytest.raises(TrendError, match="holds something else.*status.trend_path"):
        TrendStore(other).open()
    assert other.read_text() == '{"kind": "raised"}\n'
    foreign = tmp_path / "other.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE accounts (id INTEGER)")
    db.commit()
    db.close()
    before = foreign.read_bytes()
    with pytest.raises(TrendError, match="not touched"):
        TrendStore(foreign).open()
    assert foreign.read_bytes() == before
    store = TrendStore(tmp_path / "t.sqlite").open()
    with pytest.raises(Exception, match="in use by another edge-agent"):
        TrendStore(tmp_path / "t.sqlite").open()
    store.close()


def test_a_corrupt_trend_file_of_ours_is_moved_aside_and_a_new_one_started(tmp_path) -> None:
    path = tmp_path / "trend.sqlite"
    TrendStore(path).open().close()
    data = bytearray(path.read_bytes())
    assert int.from_bytes(data[68:72], "big") == APPLICATION_ID
    data[100:] = b"\xff" * (len(data) - 100)
    path.write_bytes(bytes(data))
    clock = Clock()
    store = TrendStore(path, clock=clock).open()
    assert store.counters.quarantined == 1
    assert list(tmp_path.glob("trend.sqlite.corrupt-*"))
    _feed(store, clock, "pump-1", 2)
    assert len(store.series("pump-1", "1h")["rows"]) == 2
    store.close()


def test_a_full_disk_keeps_rows_in_memory_and_writes_them_when_space_returns(tmp_path) -> None:
    with tmpfs(tmp_path / "disk", "256k") as disk:
        clock = Clock()
        store = TrendStore(disk / "trend.sqlite", clock=clock).open()
        _feed(store, clock, "pump-1", 2)
        filler = fill(disk)
        _feed(store, clock, "pump-1", 30)
        assert store.counters.write_errors >= 1
        assert len(store.series("pump-1", "1h")["rows"]) == 32  # nothing lost: waiting rows are shown too
        filler.unlink()
        _feed(store, clock, "pump-1", 1)
        store.close()
        reopened = TrendStore(disk / "trend.sqlite", clock=clock).open()
        assert len(reopened.series("pump-1", "1h")["rows"]) == 33
        reopened.close()


def test_validate_config_warns_about_a_trend_file_that_is_not_the_agents(tmp_path, agent_bundle) -> None:
    from click.testing import CliRunner

    from edge_agent.cli import main
    from tests.agent.pipeline_helpers import agent_config

    notes = tmp_path / "notes.txt"
    notes.write_text("the operator's notes\n")
    cfg = agent_config(tmp_path, agent_bundle, status={"trend_file": str(notes)})
    result = CliRunner().invoke(main, ["validate-config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "warning: status.trend_file: trend file" in result.output and "not touched" in result.output
    assert notes.read_text() == "the operator's notes\n"
