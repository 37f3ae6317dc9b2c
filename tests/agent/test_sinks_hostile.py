"""Alert sinks when the world is hostile: a real full file system, a program that floods its stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.sinks import STDERR_TAIL, AlertDispatcher, CommandSink, JsonlSink, LogSink
from tests.agent.test_sinks import handled, make_event
from tests.fs import fill, tmpfs
from tests.waiting import wait_for


@pytest.fixture
def small_fs(tmp_path: Path):
    """A real 64 KiB tmpfs (tests/fs.py)."""
    with tmpfs(tmp_path / "small-fs", "64k") as mnt:
        yield mnt


def test_alerts_held_back_by_a_full_disk_are_written_in_order_when_space_returns(small_fs: Path) -> None:
    path = small_fs / "alerts.jsonl"
    sink = JsonlSink(path, max_pending=100)
    sink.start()
    dispatcher = AlertDispatcher([LogSink(), sink])
    events = [make_event(seq_end=640 + i) for i in range(40)]
    for e in events[:3]:
        dispatcher.emit(e)
    filler = fill(small_fs)  # the file's last page still takes a few lines, then a line is cut short
    for e in events[3:30]:
        dispatcher.emit(e)
    status = dispatcher.status()["1:JsonlSink"]
    written = status["delivered"]
    assert 3 <= written < 30 and status == {"delivered": written, "failed": 30 - written, "pending": 30 - written,
                                            "dropped": 0, "silenced": 0}
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == written + 1  # the line cut short by the full disk left nothing
    sink.retry()  # still full: nothing changes, nothing raises
    assert dispatcher.status()["1:JsonlSink"]["pending"] == 30 - written
    filler.unlink()
    sink.retry()  # the agent's status tick
    for e in events[30:]:
        dispatcher.emit(e)
    sink.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["seq_end"] for r in rows] == [e.seq_end for e in events]
    status = dispatcher.status()["1:JsonlSink"]
    assert status == {"delivered": 40, "failed": 30 - written, "pending": 0, "dropped": 0, "silenced": 0}
    assert dispatcher.status()["0:LogSink"]["delivered"] == 40


def test_a_full_queue_drops_the_oldest_waiting_alerts_and_counts_them(small_fs: Path) -> None:
    path = small_fs / "alerts.jsonl"
    sink = JsonlSink(path, max_pending=5)
    sink.start()
    filler = fill(small_fs)
    events = [make_event(seq_end=i) for i in range(8)]
    for e in events:
        sink.emit(e)
    c = sink.counters
    assert (c.delivered, c.failed, c.pending, c.dropped) == (0, 8, 5, 3)
    filler.unlink()
    sink.close()
    assert [json.loads(x)["seq_end"] for x in path.read_text().splitlines()] == [3, 4, 5, 6, 7]
    c = sink.counters
    assert c.delivered + c.pending + c.dropped == len(events)


def test_alerts_file_moved_away_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    with JsonlSink(path) as sink:
        sink.emit(make_event(seq_end=1))
        path.rename(tmp_path / "alerts.jsonl.1")  # logrotate
        sink.emit(make_event(seq_end=2))
    assert [json.loads(x)["seq_end"] for x in path.read_text().splitlines()] == [2]


FLOOD = (
    "import sys\n"
    "block = b'x' * (1 << 20)\n"
    "for _ in range(300):\n"
    "    sys.stderr.buffer.write(block)\n"
    "sys.stderr.buffer.write(b'\\nrelay 3 did not answer\\n')\n"
    "sys.exit(2)\n"
)
RUN_SINK = (
    "import json, re, sys\n"
    "from edge_agent.sinks import CommandSink\n"
    "from tests.agent.test_sinks import make_event\n"
    "sink = CommandSink([sys.executable, sys.argv[1]], timeout_s=120)\nsink.start()\n"
    "sink.emit(make_event())\n"
    "from tests.waiting import wait_for\n"
    "assert wait_for(lambda: sink.ran + sink.failed + sink.timed_out == 1, 120) and sink.wait_idle(120)\n"
    "sink.close()\n"
    "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())  # peak RSS of this image\n"
    "print(json.dumps({'maxrss_mb': int(hwm[1]) / 1024,\n"
    "                  'failed': sink.failed, 'tail': sink.last_stderr.decode()}))\n"
)


def test_a_program_flooding_its_stderr_costs_the_agent_no_memory(tmp_path: Path) -> None:
    script = tmp_path / "flood.py"
    script.write_text(FLOOD)
    done = subprocess.run([sys.executable, "-c", RUN_SINK, str(script)], capture_output=True, text=True,
                          timeout=180, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["maxrss_mb"] < 150, result["maxrss_mb"]  # the 300 MB written to stderr were never held
    assert result["failed"] == 1
    assert len(result["tail"]) <= STDERR_TAIL and result["tail"].endswith("relay 3 did not answer\n")


def test_health_events_reach_the_command_with_their_own_environment(tmp_path: Path) -> None:
    from edge_agent.advice import AdviceTexts, Advisor
    from edge_agent.health import HealthEvent

    out = tmp_path / "env.json"
    code = ("import json, os, sys; json.dump({'stdin': json.load(sys.stdin), 'env': {k: v for k, v in os.environ.items()"
            f" if k.startswith(('EDGE_ALERT', 'EDGE_HEALTH'))}}}}, open({str(out)!r}, 'w'))")
    sink = CommandSink([sys.executable, "-c", code], timeout_s=30)
    sink.start()
    try:
        # through the sensor's dispatcher, as the agent sends it: with what to do and where
        AlertDispatcher([sink], Advisor(asset="Cooling pump 7")).emit(
            HealthEvent("fault", "no_data", "pump-7", "no data for 61 s", 1.7e9, 1.7e9 + 61))
        assert wait_for(lambda: handled(sink) == 1, 30) and sink.wait_idle(30)
    finally:
        sink.close()
    got = json.loads(out.read_text())
    assert got["env"] == {"EDGE_ALERT_KIND": "health", "EDGE_ALERT_SEVERITY": "fault", "EDGE_ALERT_SCORE": "",
                          "EDGE_ALERT_DEVICE": "pump-7", "EDGE_HEALTH_CONDITION": "no_data",
                          "EDGE_ALERT_ADVICE": AdviceTexts().no_data, "EDGE_ALERT_ASSET": "Cooling pump 7",
                          "EDGE_ALERT_LOCATION": ""}
    assert got["stdin"]["advice_key"] == "no_data" and got["stdin"]["asset"] == "Cooling pump 7"
    assert got["stdin"]["reason"] == "no data for 61 s" and got["stdin"]["kind"] == "health"
    assert sink.counters.delivered == 1
