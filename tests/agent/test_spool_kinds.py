"""The spool by kind: most important records go first, least important are evicted first, receipts confirm."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from edge_agent import spool as spool_module
from edge_agent.spool import Spool


def test_alerts_go_first_and_are_evicted_last(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.sqlite", max_bytes=10_000, max_records=8) as spool:
        for i, kind in enumerate(["normal", "alert", "normal", "calibration", "drift", "alert", "normal", "normal"]):
            spool.put("vib/d/upload", bytes([i]) * 100, kind, f"id{i}")
        assert [r.kind for r in spool.peek(8)] == ["alert", "alert", "calibration", "drift"] + ["normal"] * 4
        assert [r.upload_id for r in spool.peek(3)] == ["id1", "id5", "id3"], "oldest first within a kind"
        for i in range(3):  # full: each new alert evicts the oldest normal window
            spool.put("vib/d/upload", b"a" * 100, "alert", f"new{i}")
        assert spool.counters.evicted_by_kind == {"normal": 3, "drift": 0, "calibration": 0, "alert": 0}
        assert [r.upload_id for r in spool.peek(8) if r.kind == "normal"] == ["id7"]
        for i in range(3):
            spool.put("vib/d/upload", b"a" * 100, "alert", f"more{i}")
        assert [r.kind for r in spool.peek(8)] == ["alert"] * 8, "the last normal, then drift, then calibration"
        assert spool.counters.evicted_by_kind == {"normal": 4, "drift": 1, "calibration": 1, "alert": 0}
        spool.put("vib/d/upload", b"n" * 100, "normal", "late")  # a normal window never evicts a more important one
        assert "late" not in [r.upload_id for r in spool.peek(8)] and spool.counters.evicted_by_kind["normal"] == 5
        big = b"x" * 9_000  # bytes bound: one big alert evicts what it takes, least important first
        spool.put("vib/d/upload", big, "alert", "big")
        assert spool.bytes <= 10_000 and "big" in [r.upload_id for r in spool.peek(8)]
        assert spool.counters.evicted_by_kind["alert"] == 1 and "id1" not in [r.upload_id for r in spool.peek(8)], \
            "alerts go last, and then the oldest first"


def test_receipts_keep_sent_records_until_confirmed(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.sqlite") as spool:
        for i in range(5):
            spool.put("vib/d/upload", b"p", "normal", f"u{i}")
        first = spool.peek(3)
        assert spool.mark_sent(r.id for r in first) == 3 and spool.awaiting_receipt() == 3
        assert [r.upload_id for r in spool.peek(10)] == ["u3", "u4"], "sent records wait for their receipt"
        assert spool.confirm(["u0", "u2", "u0", "unknown"]) == 2 and len(spool) == 3
        time.sleep(0.05)
        assert [r.upload_id for r in spool.peek(10, resend_after_s=0.01)] == ["u1", "u3", "u4"], \
            "a sent record without a receipt goes again after the timeout"


class _Clock:
    """The spool's ``time`` module with a wall clock the test sets (every other function is the real one)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str):
        return getattr(time, name)


def test_resending_without_a_receipt_backs_off(tmp_path: Path, monkeypatch) -> None:
    clock = _Clock(1_800_000_000.0)
    monkeypatch.setattr(spool_module, "time", clock)
    timeout = 60.0
    with Spool(tmp_path / "s.sqlite") as spool:
        spool.put("vib/d/upload", b"p", "normal", "u0")
        for attempt in range(3):
            (rec,) = spool.peek(10, resend_after_s=timeout)
            spool.mark_attempt([rec.id])
            spool.mark_sent([rec.id])
            sent, wait = clock.now, timeout * 2 ** attempt  # each resend waits twice as long as the one before
            clock.now = sent + wait - 1.0
            assert spool.peek(10, resend_after_s=timeout) == [], f"attempt {attempt + 1}: resent before {wait:g} s"
            clock.now = sent + wait + 1.0
            assert len(spool.peek(10, resend_after_s=timeout)) == 1, f"attempt {attempt + 1}: not due after {wait:g} s"


def test_a_spool_of_the_first_release_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, topic TEXT NOT NULL,"
               " payload BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0)")
    db.execute("INSERT INTO records (created, topic, payload) VALUES (1.0, 'vib/d/upload', x'01')")
    db.commit()
    db.close()
    with Spool(path) as spool:
        (rec,) = spool.peek(5)
        assert (rec.kind, rec.upload_id, rec.payload) == ("normal", None, b"\x01")
        spool.put("vib/d/upload", b"\x02", "alert", "a1")
        assert [r.kind for r in spool.peek(5)] == ["alert", "normal"]


def test_records_sent_before_the_clock_stepped_back_are_due_at_once(tmp_path):
    """Issue 14 caveat: after the wall clock jumped back two days, records stamped "sent in the future" were not
    resent for about two days. A real spool marked sent now, read by a process whose clock is two days behind
    (libfaketime)."""
    import glob
    import os
    import subprocess
    import sys

    lib = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    assert lib, "libfaketime is missing: `make setup` installs the Debian package faketime"
    path = tmp_path / "spool.sqlite"
    spool = Spool(path).open()
    for i in range(3):
        spool.put("vib/pump-1/upload", b"x" * 100, "normal", f"id-{i}")
    spool.mark_sent([r.id for r in spool.peek(10)])
    assert spool.peek(10, resend_after_s=300) == [], "sent just now: not due before the receipt timeout"
    spool.close()
    code = ("import sys; from edge_agent.spool import Spool; s = Spool(sys.argv[1]).open(); "
            "print(len(s.peek(10, resend_after_s=300))); s.close()")
    env = os.environ | {"LD_PRELOAD": lib[0], "FAKETIME": "-2d", "FAKETIME_DONT_RESET": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3", "the clock stepped back: every record sent 'in the future' is due at once"
