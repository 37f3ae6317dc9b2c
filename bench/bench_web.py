"""What the status page, /metrics and the history cost the gateway, per window and per request.

Usage: ``python bench/bench_web.py [--bundle bundles/ims-test2] [--sensors 4] [--points 600]``. Exports the
default IMS test-2 bundle first when it is missing (as ``bench_export.py`` does). An agent with ``--sensors``
sensors on that bundle (not streaming: the numbers depend on the number of sensors and history points, not on
the signal), every history full; its web server on a free loopback port, requests over real HTTP. Writes the
table to ``runs/bench_web.md`` too.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import sys
import time
import timeit
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_export import DEFAULT_ARGS, DEFAULT_BUNDLE, DEFAULT_DATA  # noqa: E402

from edge_agent import metrics  # noqa: E402
from edge_agent.agent import Agent  # noqa: E402
from edge_agent.alerts import WindowResult  # noqa: E402
from edge_agent.config import config_from_dict  # noqa: E402
from edge_agent.history import SensorHistory  # noqa: E402


def per_call_us(fn, n: int) -> float:
    return timeit.timeit(fn, number=n) / n * 1e6


def http_ms(port: int, path: str, n: int) -> tuple[float, float, int]:
    """(p50, p99 ms, body bytes) of ``n`` GETs on one connection each, as a browser or Prometheus makes them."""
    times, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        body = conn.getresponse().read()
        conn.close()
        times.append((time.perf_counter() - t0) * 1e3)
        size = len(body)
    p50, p99 = np.percentile(times, [50, 99])
    return float(p50), float(p99), size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    ap.add_argument("--sensors", type=int, default=4)
    ap.add_argument("--points", type=int, default=600, help="history buckets per sensor (the default keeps 600)")
    ap.add_argument("--n", type=int, default=200, help="requests per endpoint")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not (args.bundle / "manifest.json").is_file():
        print(f"{args.bundle} missing: exporting the default bundle first")
        from trainer.pipeline import TrainOptions, run

        run(TrainOptions(data=DEFAULT_DATA, out=args.bundle, **DEFAULT_ARGS))
    cfg = config_from_dict({
        "gateway": "bench", "status": {"file": None, "mqtt": False}, "http": {"port": 0},
        "sensors": [{"device": f"sensor-{i}", "source": {"kind": "serial", "serial": {"port": f"/dev/null-{i}"}},
                     "bundle": {"path": str(args.bundle)}} for i in range(args.sensors)]})
    agent = Agent(cfg)
    result = WindowResult("d", "v", 0.1, 0.2, 0.0, 0, {"rms_0": 0.1, "rms_1": 0.2, "peak_0": 1.0, "peak_1": 2.0})
    history = SensorHistory()
    record_us = per_call_us(lambda: history.record(result, "normal"), 200_000)
    clock = [0.0]
    for s in agent.sensors:
        s.history = SensorHistory(clock=lambda: clock[0])
    for i in range(args.points):
        clock[0] = float(i)
        for s in agent.sensors:
            s.history.record(result, "warning" if i % 50 == 0 else "normal")
    snapshot_us = per_call_us(lambda: agent._refresh_snapshot(time.monotonic()), 500)
    doc = agent.status()
    render_us = per_call_us(lambda: metrics.render(doc), 500)
    assert agent.web.start()
    try:
        api = http_ms(agent.web.port, "/api/status", args.n)
        met = http_ms(agent.web.port, "/metrics", args.n)
        page = http_ms(agent.web.port, "/", args.n)
    finally:
        agent.web.stop()
        agent.close()
    rows = [
        ("history.record, per scored window", f"{record_us:.2f} µs", "scoring thread"),
        (f"status snapshot, once a second ({args.sensors} sensors)", f"{snapshot_us / 1000:.3f} ms",
         f"scoring thread: {snapshot_us / 1e4:.3f} % of a core"),
        (f"metrics.render ({args.sensors} sensors)", f"{render_us / 1000:.3f} ms", "web thread"),
        (f"GET /api/status ({args.sensors} x {args.points} points), p50 / p99",
         f"{api[0]:.2f} / {api[1]:.2f} ms", f"{api[2] / 1024:.0f} KiB; every 2 s per open page"),
        ("GET /metrics, p50 / p99", f"{met[0]:.2f} / {met[1]:.2f} ms", f"{met[2] / 1024:.1f} KiB per scrape"),
        ("GET / (the page), p50 / p99", f"{page[0]:.2f} / {page[1]:.2f} ms", f"{page[2] / 1024:.1f} KiB"),
    ]
    table = ["| what | cost | where |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    print("\n".join(table))
    out = REPO / "runs" / "bench_web.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
