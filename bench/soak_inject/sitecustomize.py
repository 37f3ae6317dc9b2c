"""Loaded into the soak's agent only (bench/soak.py puts this folder on its PYTHONPATH for --probe / --leak).

Nothing here is the agent's: it is how the soak looks inside the agent's memory, and how it tests itself.

* ``SOAK_PROBE=FILE``: every 10 s one JSON line: RSS split by kind (``/proc/self/smaps_rollup``), glibc's heap
  (``mallinfo2``: ``used`` is what is allocated now, ``arena`` what the heap holds: RSS follows the latter,
  a leak shows in the former), SQLite's own allocations (``sqlite3_memory_used``, process-wide), Python's
  allocated blocks, threads and open file descriptors. Costs the agent next to nothing.
* ``SOAK_PROBE_TRACEMALLOC=1``: also the bytes of live Python allocations (tracemalloc: about twice the
  agent's CPU); ``SOAK_PROBE_SNAPSHOTS=T1,T2``: snapshots at those seconds, and at T2 the 25 call sites whose
  live allocations grew most in between. A snapshot of this agent's ~0.2 M blocks costs it tens of MB of RSS
  for as long as it is kept: a diagnosis, never a measurement of RSS.
* ``SOAK_LEAK_MB_PER_MIN=X``: a deliberate leak (X MB a minute, in small written chunks, kept in a list), so
  that a soak can show that its verdict catches one (``bench/soak.py --leak X``).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time


def _smaps() -> dict:
    out = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":").lower()] = int(parts[1])
    except OSError:
        pass
    return {k: out[k] for k in ("rss", "anonymous", "pss_anon", "pss_file", "pss_shmem") if k in out}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + "/"


def _probe(path: str, every_s: float, trace: bool, snapshots: list[float]) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        libc = None
    try:
        sqlite = ctypes.CDLL("libsqlite3.so.0")  # the copy _sqlite3 loaded: the same process-wide counters
        sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    except OSError:
        sqlite = None
    if trace:
        import tracemalloc

        tracemalloc.start(6 if snapshots else 1)
    t0, base = time.monotonic(), None
    while True:
        time.sleep(every_s)
        row: dict = {"t_s": round(time.monotonic() - t0, 1), "kb": _smaps(), "py_blocks": sys.getallocatedblocks(),
                     "threads": threading.active_count(), "fds": len(os.listdir("/proc/self/fd"))}
        if libc is not None:
            m = libc.mallinfo2()
            row["malloc_kb"] = {"arena": m.arena // 1024, "mmap": m.hblkhd // 1024, "used": m.uordblks // 1024,
                                "free": m.fordblks // 1024}
        if sqlite is not None:
            row["sqlite_kb"] = sqlite.sqlite3_memory_used() // 1024
        if trace:
            row["traced_kb"] = tracemalloc.get_traced_memory()[0] // 1024
            if snapshots and row["t_s"] >= snapshots[0]:
                snapshots.pop(0)
                snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__),
                                                                   tracemalloc.Filter(False, __file__)])
                if base is None:
                    base = snap
                else:
                    row["growth_since_first_snapshot"] = [
                        {"kb": round(d.size_diff / 1024, 1), "blocks": d.count_diff,
                         "at": [f"{fr.filename.rsplit('site-packages/', 1)[-1].replace(str(REPO), '')}:{fr.lineno}"
                                for fr in d.traceback][:6]}
                        for d in snap.compare_to(base, "traceback")[:25]]
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _leak(mb_per_min: float) -> None:
    kept = []
    chunk = max(1, int(mb_per_min * 1e6 / 60))  # one chunk a second, written so that it is resident
    while True:
        time.sleep(1.0)
        kept.append(b"\x5a" * chunk)


if os.environ.get("SOAK_PROBE"):
    threading.Thread(target=_probe, args=(os.environ["SOAK_PROBE"], float(os.environ.get("SOAK_PROBE_EVERY_S", "10")),
                                          os.environ.get("SOAK_PROBE_TRACEMALLOC") == "1",
                                          [float(x) for x in os.environ.get("SOAK_PROBE_SNAPSHOTS", "").split(",") if x]),
                     name="soak-probe", daemon=True).start()
if float(os.environ.get("SOAK_LEAK_MB_PER_MIN") or 0) > 0:
    threading.Thread(target=_leak, args=(float(os.environ["SOAK_LEAK_MB_PER_MIN"]),), name="soak-leak",
                     daemon=True).start()
