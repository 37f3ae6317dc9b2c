"""The spool against people and programs: an operator's real `sqlite3` shell holding a write transaction,
a spool_path naming someone else's file, a second agent, real corruption."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.config import load_config
from edge_agent.contract.errors import UploadError
from edge_agent.spool import Spool
from tests.agent.pipeline_helpers import agent_config

SQLITE3 = shutil.which("sqlite3")


class Shell:
    """An operator's ``sqlite3`` shell on the spool file (the real CLI, statements typed one by one)."""

    def __init__(self, path: Path) -> None:
        if SQLITE3 is None:
            if os.environ.get("CI"):
                pytest.fail("the sqlite3 CLI is missing: .ci/run should have installed it")
            pytest.skip("the sqlite3 CLI is not installed (apt-get install sqlite3)")
        self.p = subprocess.Popen([SQLITE3, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        self.n = 0

    def run(self, sql: str) -> list[str]:
        """Type ``sql`` and wait for its output."""
        self.n += 1
        self.p.stdin.write(f"{sql}\nSELECT 'done-{self.n}';\n")
        self.p.stdin.flush()
        out = []
        while (line := self.p.stdout.readline().strip()) != f"done-{self.n}":
            assert line or self.p.poll() is None, out
            out.append(line)
        return out

    def quit(self) -> None:
        self.p.stdin.write(".quit\n")
        self.p.stdin.close()
        self.p.wait(10)


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(("-wal", "-shm")))


def test_a_write_transaction_in_the_sqlite3_shell_is_waited_for_never_taken_for_corruption(tmp_path):
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, 100_000, 100).open()
    ids = [spool.put("t", b"rec-%d" % i) for i in range(3)]
    shell = Shell(path)
    try:
        shell.run("BEGIN EXCLUSIVE;")
        t0 = time.monotonic()
        assert spool.put("t", b"rec-3") == 0  # waits in memory, in order
        assert time.monotonic() - t0 < 2.0  # the scoring thread is not held up
        assert spool.waiting == 1 and len(spool) == 4 and spool.counters.lock_waits >= 1
        assert [r.payload for r in spool.peek(10)] == [b"rec-0", b"rec-1", b"rec-2"]  # readers are not blocked
        assert spool.flush() == 1
        assert shell.run("SELECT COUNT(*) FROM records;") == ["3"]
        shell.run("COMMIT;")
    finally:
        shell.quit()
    assert spool.flush() == 0 and spool.waiting == 0
    recs = spool.peek(10)
    assert [r.payload for r in recs] == [b"rec-0", b"rec-1", b"rec-2", b"rec-3"] and recs[3].id > ids[-1]
    assert spool.counters.quarantined == 0 and _files(tmp_path) == ["spool.sqlite", "spool.sqlite.lock"]
    spool.close()


def test_a_spool_locked_at_start_is_opened_later_and_keeps_its_records(tmp_path, caplog):
    path = tmp_path / "spool.sqlite"
    with Spool(path, 100_000, 100) as spool:
        for i in range(3):
            spool.put("t", b"rec-%d" % i)
    shell = Shell(path)
    try:  # the operator leaves WAL and holds an exclusive lock: not even reads get through
        assert shell.run("PRAGMA journal_mode=DELETE;") == ["delete"]
        shell.run("BEGIN EXCLUSIVE;")
        with caplog.at_level(logging.WARNING, logger="edge_agent.spool"):
            spool = Spool(path, 100_000, 100).open()
        assert spool.counters.quarantined == 0 and spool.recovered_from is None and spool.counters.lock_waits >= 1
        assert any("locked by another program" in r.getMessage() for r in caplog.records)
        assert spool.put("t", b"rec-3") == 0
        with pytest.raises(UploadError, match="locked"):
            spool.peek(1)
        shell.run("COMMIT;")
    finally:
        shell.quit()
    assert spool.flush() == 0
    assert [r.payload for r in spool.peek(10)] == [b"rec-0", b"rec-1", b"rec-2", b"rec-3"]
    spool.close()
    assert _files(tmp_path) == ["spool.sqlite", "spool.sqlite.lock"]


@pytest.mark.parametrize("what", ["an alert log", "another program's database", "a directory"])
def test_a_path_that_is_not_a_spool_is_refused_and_left_alone(tmp_path, what):
    path = tmp_path / "thing"
    if what == "an alert log":
        path.write_text(json.dumps({"kind": "raised"}) + "\n")
    elif what == "a directory":
        path.mkdir()
        (path / "model.tflite").write_bytes(b"TFL3")
    else:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, something TEXT)")
        db.execute("INSERT INTO records (something) VALUES ('theirs')")
        db.commit()
        db.close()
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    with pytest.raises(UploadError, match="not an SQLite database|another program|is a directory"):
        Spool(path, 1000, 10).open()
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    assert after == before


def test_real_corruption_is_quarantined_counted_and_a_fresh_spool_started(tmp_path, caplog):
    path = tmp_path / "spool.sqlite"
    with Spool(path, 10_000_000, 1000) as spool:
        for i in range(200):
            spool.put("t", bytes([i]) * 1000)
    with open(path, "r+b") as f:  # a bad sector in the middle of the records
        f.seek(3 * 4096)
        f.write(os.urandom(2 * 4096))
    with caplog.at_level(logging.ERROR, logger="edge_agent.spool"), Spool(path, 1000, 10) as spool:
        assert spool.counters.quarantined == 1 and spool.recovered_from is not None and spool.recovered_from.exists()
        assert len(spool) == 0
        spool.put("t", b"fresh")
        assert [r.payload for r in spool.peek(1)] == [b"fresh"]
    assert any("is corrupt" in r.getMessage() for r in caplog.records)
    with Spool(path, 1000, 10) as spool:
        assert spool.recovered_from is None and spool.counters.quarantined == 0 and len(spool) == 1


HOLD = ("import sys\nfrom edge_agent.spool import Spool\nspool = Spool(sys.argv[1]).open()\nprint('held', flush=True)\n"
        "sys.stdin.read()\n")


def test_two_agents_on_one_spool_are_refused_and_a_dead_holder_is_taken_over(tmp_path, caplog):
    path = tmp_path / "spool.sqlite"
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(UploadError, match=f"in use by another edge-agent \\(pid {other.pid}"):
            Spool(path).open()
        other.send_signal(signal.SIGKILL)  # it dies without cleaning up: its lock file stays, its flock does not
        other.wait(10)
    finally:
        other.kill()
    assert (path.with_name("spool.sqlite.lock")).read_text().strip() == str(other.pid)
    with caplog.at_level(logging.INFO, logger="edge_agent.spool"), Spool(path) as spool:
        spool.put("t", b"mine")
    assert any(f"lock of pid {other.pid}" in r.getMessage() for r in caplog.records)


def test_the_agent_names_uploads_spool_path_when_it_is_refused(tmp_path, agent_bundle):
    notes = tmp_path / "notes.txt"
    notes.write_text("the operator's notes\n")
    cfg = agent_config(tmp_path, agent_bundle, mqtt={"host": "127.0.0.1", "port": 1},
                       uploads={"enabled": True, "spool_path": str(notes)})
    check = CliRunner().invoke(main, ["validate-config", str(cfg)])
    assert check.exit_code == 1 and "uploads.spool_path" in check.output and "not an SQLite database" in check.output
    with pytest.raises(UploadError, match="uploads.spool_path: .*not an SQLite database"):
        Agent(load_config(cfg)).start()
    assert notes.read_text() == "the operator's notes\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "agent.toml", "notes.txt"]
    cfg = agent_config(tmp_path, agent_bundle, mqtt={"host": "127.0.0.1", "port": 1},
                       uploads={"enabled": True, "spool_path": str(tmp_path / "spool.sqlite")})
    first = Agent(load_config(cfg)).start()
    try:
        with pytest.raises(UploadError, match=f"uploads.spool_path: .*in use by another edge-agent \\(pid {os.getpid()}"):
            Agent(load_config(cfg)).start()
    finally:
        first.close()
    Agent(load_config(cfg)).start().close()  # released at close
