"""Benchmark: ``trainer dataset summary`` (``trainer.dataset.summarize``) on a fleet-sized dataset.

Generates a dataset of ``--windows`` windows (default 1,000,000) over ``--devices`` devices x ``--days`` days, written
as ``--files-per-partition`` Parquet files per device and day through the collectors' own write path
(``trainer.dataset.write_part``: zstd, dictionaries, byte-stream-split samples, atomic), into a temp folder (and,
with ``--s3``, into a bucket of a SeaweedFS started on loopback). Kinds as a fleet uploads them: 90 % normal, 5 %
alert (windows of 10-window alerts), 3 % drift, 2 % calibration; 1 % of the windows stored twice (a collector
crash between write and acknowledgement), one alert in ten answered. Then times the summary (listing + one scan of
the small columns; never the samples) twice, checks its counts against what was generated, and, where DuckDB is
installed, times the same counts with DuckDB's ``read_parquet`` over the local files, as a reference.

The samples are small (``--rows`` x 2 float32 per window): the summary reads no samples, so their size changes the
bytes on disk, not the work. Not part of CI; figures go to stdout (and ``--out`` as JSON).

    python bench/bench_dataset_summary.py [--windows 1000000] [--files-per-partition 5] [--s3] [--compact] [--out FILE]

``--compact`` then merges each device's files of a day into one (``trainer dataset compact``) and times the summary
again: the reading cost is per file, and collectors write one file per device, day and flush.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from trainer import dataset  # noqa: E402

ALERT_RUN = 10  # windows per alert


def part_table(rng: np.random.Generator, device_i: int, day: int, n: int, rows: int,
               ids: np.ndarray) -> tuple[pa.Table, dict]:
    """``n`` windows of one device and day as a ``FILE_SCHEMA`` table, and what it holds (kinds, alerts, answers)."""
    draw = rng.random(n)
    kind = np.where(draw < 0.90, "normal", np.where(draw < 0.95, "alert", np.where(draw < 0.98, "drift",
                                                                                    "calibration")))
    alert_i = np.cumsum(kind == "alert") // ALERT_RUN  # consecutive alert windows share a reference
    ref = np.where(kind == "alert", np.char.add(f"d{device_i}-{day}-", alert_i.astype(str)), None)
    answered = (kind == "alert") & (alert_i % 10 == 0)
    t_end = np.datetime64(f"2026-11-{day:02d}T00:00:00", "us") + np.arange(n) * 250_000  # 4 windows a second
    t_end = t_end.astype("datetime64[us]")
    samples = rng.normal(size=n * rows * 2).astype(np.float32)
    offsets = np.arange(0, n * rows * 2 + 1, rows * 2, dtype=np.int32)
    chans = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
                                     pa.array(np.tile(["x", "y"], n)))
    answer_type = dataset.FILE_SCHEMA.field("answer").type
    answers = [{"kind": "confirmed" if (i // 10) % 2 else "false_alarm", "by": "bench",
                "time": "2026-11-30T00:00:00+00:00"} if a else None for i, a in zip(alert_i, answered, strict=True)]
    cols = {
        "id": pa.array(ids), "gateway": pa.array(np.full(n, f"gw-{device_i // 4}")),
        "model_id": pa.array(np.full(n, "pump-model")), "model_version": pa.array(np.full(n, "v3")),
        "kind": pa.array(kind), "state": pa.array(np.where(kind == "alert", "critical", "normal")),
        "score": pa.array(rng.random(n)), "threshold": pa.array(np.full(n, 0.9)),
        "alert_ref": pa.array(ref, pa.string()),
        "time_start": pa.array(t_end - np.timedelta64(1, "s"), dataset.TIME), "time_end": pa.array(t_end, dataset.TIME),
        "seq_end": pa.array(np.arange(n, dtype=np.int64) * rows), "sample_rate": pa.array(np.full(n, 1000.0)),
        "units": pa.array(np.full(n, "g")), "channels": chans, "n_rows": pa.array(np.full(n, rows, np.int32)),
        "samples": pa.ListArray.from_arrays(pa.array(offsets), pa.array(samples)),
        "received": pa.array(t_end, dataset.TIME), "schema": pa.array(np.full(n, 3, np.int8)),
        "digest": pa.array(np.full(n, "0123456789abcdef")), "group": pa.array(np.full(n, "pumps")),
        "answer": pa.array(answers, answer_type),
    }
    table = pa.Table.from_arrays([cols[f.name] for f in dataset.FILE_SCHEMA], schema=dataset.FILE_SCHEMA)
    facts = {"kinds": {k: int((kind == k).sum()) for k in ("normal", "alert", "drift", "calibration")},
             "alert_refs": set(ref[kind == "alert"].tolist()),
             "answered_refs": {(r, a["kind"]) for r, a in zip(ref, answers, strict=True) if a is not None}}
    return table, facts


def generate(loc: dataset.Location, args, seed: int = 0) -> dict:
    """Write the dataset (files written by 8 threads, as 8 collectors would); returns what it holds and what writing
    cost."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(8)
    writes = []
    rng = np.random.default_rng(seed)
    partitions = args.devices * args.days
    per_part = args.windows // partitions
    per_file = max(1, per_part // args.files_per_partition)
    expect = {"windows": 0, "kinds": {}, "alerts": 0, "answers": {}, "files": 0, "duplicate_rows": 0}
    t0 = time.perf_counter()
    serial = 0
    for d in range(args.devices):
        device = f"pump-{d:04d}"
        for day in range(1, args.days + 1):
            date = f"2026-11-{day:02d}"
            n = per_part
            ids = np.char.add(f"{d:04d}{day:02d}-", np.arange(serial, serial + n).astype(str))
            serial += n
            table, facts = part_table(rng, d, day, n, args.rows, ids)
            expect["windows"] += n
            for k, v in facts["kinds"].items():
                expect["kinds"][k] = expect["kinds"].get(k, 0) + v
            expect["alerts"] += len(facts["alert_refs"])
            for _, kind in facts["answered_refs"]:
                expect["answers"][kind] = expect["answers"].get(kind, 0) + 1
            for f, start in enumerate(range(0, n, per_file)):
                piece = table.slice(start, per_file)
                if f == 0 and piece.num_rows > 10:  # 1 % stored twice: a copy in another file
                    dup = piece.slice(0, max(1, per_file // 100))
                    writes.append(pool.submit(dataset.write_part, loc, device, date, dup, "crash", f + 1))
                    expect["files"] += 1
                    expect["duplicate_rows"] += dup.num_rows
                writes.append(pool.submit(dataset.write_part, loc, device, date, piece, f"w{f % 4}", f + 1))
                expect["files"] += 1
            if len(writes) > 256:
                for w in writes:
                    w.result()
                writes.clear()
    for w in writes:
        w.result()
    pool.shutdown()
    expect["write_s"] = time.perf_counter() - t0
    return expect


def check(summary: dataset.Summary, expect: dict) -> list[str]:
    """What the summary got wrong (empty: nothing)."""
    got_kinds: dict[str, int] = {}
    got_answers: dict[str, int] = {}
    for r in summary.rows:
        for k, v in r.kinds.items():
            got_kinds[k] = got_kinds.get(k, 0) + v
        for k, v in r.answers.items():
            got_answers[k] = got_answers.get(k, 0) + v
    wrong = []
    for what, got, want in (("windows", summary.windows, expect["windows"]), ("kinds", got_kinds, expect["kinds"]),
                            ("alerts", sum(r.alerts for r in summary.rows), expect["alerts"]),
                            ("answers", got_answers, expect["answers"]), ("files", summary.files, expect["files"]),
                            ("unreadable", summary.unreadable, 0)):
        if got != want:
            wrong.append(f"{what}: got {got}, expected {want}")
    return wrong


def duckdb_reference(root: Path) -> float | None:
    """Seconds for DuckDB to count the same (windows by device, day and kind, distinct ids) over the local files."""
    try:
        import duckdb
    except ModuleNotFoundError:
        return None
    t0 = time.perf_counter()
    duckdb.sql(f"""SELECT device, date, kind, count(*) FROM (
                     SELECT DISTINCT device, date, id, kind FROM read_parquet('{root}/device=*/date=*/*.parquet',
                     hive_partitioning = true)) GROUP BY ALL""").fetchall()
    return time.perf_counter() - t0


def timed_summaries(where, expect: dict, label: str, runs: int = 2) -> list[dict]:
    out = []
    for run in range(runs):
        t0 = time.perf_counter()
        s = dataset.summarize(where)
        seconds = time.perf_counter() - t0
        wrong = check(s, expect)
        if wrong:
            raise SystemExit(f"{label}: the summary is wrong: {'; '.join(wrong)}")
        out.append({"where": label, "run": run + 1, "seconds": round(seconds, 3), "rows": s.windows,
                    "stored_rows": expect["windows"] + expect["duplicate_rows"], "files": s.files,
                    "files_per_s": round(s.files / seconds), "rows_per_s": round(s.windows / seconds),
                    "partitions": len(s.rows), "bytes": sum(r.bytes for r in s.rows)})
        print(f"  {label} run {run + 1}: {seconds:.2f} s, {s.files} files ({s.files / seconds:,.0f} files/s), "
              f"{s.windows:,} windows ({s.windows / seconds:,.0f} windows/s), {len(s.rows)} device-days", flush=True)
    return out


def compact_and_summarize(where, expect: dict, label: str) -> dict:
    """``trainer dataset compact`` (every day), then the summary again on the compacted files."""
    stats = dataset.compact(where, before="9999-12-31")
    print(f"  {label} compact: {stats.files_before} files -> {stats.files_after} in {stats.seconds:.1f} s, "
          f"{stats.copies} copies dropped", flush=True)
    after = dict(expect, files=stats.files_after + expect["files"] - stats.files_before, duplicate_rows=0)
    return {"files_before": stats.files_before, "files_after": stats.files_after,
            "seconds": round(stats.seconds, 2), "copies": stats.copies,
            "runs": timed_summaries(where, after, f"{label} compacted")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=1_000_000)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--files-per-partition", type=int, default=5)
    ap.add_argument("--rows", type=int, default=16, help="samples per window and channel (2 channels)")
    ap.add_argument("--s3", action="store_true", help="also on a SeaweedFS on loopback (firmware_sim.objectstore)")
    ap.add_argument("--compact", action="store_true", help="then compact (trainer dataset compact) and summarize again")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp folder, removed)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-summary-", dir=args.dir))
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                                f"pyarrow {pa.__version__}", "args": {k: str(v) for k, v in vars(args).items()},
                     "runs": []}
    server = None
    try:
        local = dataset.location(work / "dataset")
        print(f"writing {args.windows:,} windows ({args.devices} devices x {args.days} days x "
              f"{args.files_per_partition} files) to {local.uri}", flush=True)
        expect = generate(local, args)
        print(f"  wrote {expect['files']} files in {expect['write_s']:.1f} s "
              f"({expect['files'] / expect['write_s']:,.0f} files/s)", flush=True)
        results["local_write"] = {"files": expect["files"], "seconds": round(expect["write_s"], 2)}
        results["runs"] += timed_summaries(local, expect, "local")
        ref = duckdb_reference(Path(local.path))
        if ref is not None:
            print(f"  DuckDB read_parquet reference (distinct windows by device, day, kind): {ref:.2f} s", flush=True)
            results["duckdb_local_s"] = round(ref, 3)
        if args.compact:
            results["compact"] = compact_and_summarize(local, expect, "local")
        if args.s3:
            from firmware_sim.objectstore import S3Server

            server = S3Server(work / "s3")
            server.start()
            os.environ.update(server.env())
            remote = dataset.location(server.create_bucket("bench-summary") + "/dataset")
            print(f"writing the same to {remote.uri} on {server.endpoint}", flush=True)
            expect_s3 = generate(remote, args)
            print(f"  wrote {expect_s3['files']} objects in {expect_s3['write_s']:.1f} s "
                  f"({expect_s3['files'] / expect_s3['write_s']:,.0f} objects/s)", flush=True)
            results["s3_write"] = {"files": expect_s3["files"], "seconds": round(expect_s3["write_s"], 2)}
            results["runs"] += timed_summaries(remote, expect_s3, "s3")
            if args.compact:
                results["compact_s3"] = compact_and_summarize(remote, expect_s3, "s3")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
