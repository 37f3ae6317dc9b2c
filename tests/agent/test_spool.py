"""Spool: FIFO order, persistence across restarts, bounded size with oldest-first eviction (hostile files and
locks: test_spool_hostile.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edge_agent.contract.errors import UploadError
from edge_agent.spool import Spool


def test_put_peek_ack_in_fifo_order(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db", max_bytes=10_000, max_records=100) as spool:
        ids = [spool.put("vib/d/upload", b"rec-%d" % i) for i in range(5)]
        assert ids == sorted(ids) and len(set(ids)) == 5
        assert len(spool) == 5 and spool.bytes == sum(len(b"rec-%d" % i) for i in range(5))
        recs = spool.peek(3)
        assert [r.payload for r in recs] == [b"rec-0", b"rec-1", b"rec-2"]
        assert all(r.topic == "vib/d/upload" and r.attempts == 0 for r in recs)
        assert spool.ack([recs[0].id, recs[1].id, 999_999]) == 2
        assert [r.payload for r in spool.peek(10)] == [b"rec-2", b"rec-3", b"rec-4"]
        spool.mark_attempt([ids[2]])
        assert spool.peek(1)[0].attempts == 1
        assert len(spool) == 3 and spool.bytes == 15


def test_pending_records_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "spool.db"
    with Spool(path, max_bytes=10_000, max_records=100) as spool:
        ids = [spool.put("t", bytes([i]) * 10) for i in range(4)]
        spool.ack(ids[:1])
    with Spool(path, max_bytes=10_000, max_records=100) as spool:
        assert len(spool) == 3 and spool.bytes == 30
        assert [r.id for r in spool.peek(10)] == ids[1:]
        spool.ack(ids[1:])
        assert len(spool) == 0
    with Spool(path, max_bytes=10_000, max_records=100) as spool:
        assert spool.put("t", b"x") > ids[-1]  # ids are never reused, so order holds across restarts


def test_full_by_count_evicts_the_oldest(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db", max_bytes=10_000, max_records=5) as spool:
        ids = [spool.put("t", b"%d" % i) for i in range(8)]
        assert len(spool) == 5 and spool.counters.evicted == 3
        assert [r.id for r in spool.peek(10)] == ids[3:]


def test_full_by_bytes_evicts_the_oldest(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db", max_bytes=100, max_records=1000) as spool:
        ids = [spool.put("t", bytes(30)) for _ in range(5)]
        assert spool.bytes == 90 and len(spool) == 3
        assert spool.counters.evicted == 2 and spool.counters.evicted_bytes == 60
        assert [r.id for r in spool.peek(10)] == ids[2:]
        spool.put("t", bytes(100))  # exactly the limit: everything older goes
        assert len(spool) == 1 and spool.bytes == 100 and spool.counters.evicted == 5


def test_bad_records_are_refused_and_lose_nothing(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db", max_bytes=100, max_records=10) as spool:
        spool.put("t", b"keep")
        with pytest.raises(UploadError, match="exceeds the spool size"):
            spool.put("t", bytes(101))
        with pytest.raises(UploadError, match="topic"):
            spool.put("", b"x")
        assert [r.payload for r in spool.peek(10)] == [b"keep"] and spool.counters.evicted == 0


def test_concurrent_puts_from_several_threads(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db", max_bytes=1_000_000, max_records=10_000) as spool:
        got: list[int] = []
        lock = threading.Lock()

        def worker(k: int) -> None:
            for i in range(50):
                rid = spool.put("t", b"%d-%d" % (k, i))
                with lock:
                    got.append(rid)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(set(got)) == 200 and len(spool) == 200
