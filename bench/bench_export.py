"""Size, per-window latency and parity of the exported variants of the default bundle.

Usage: ``python bench/bench_export.py [--bundle bundles/ims-test2] [--n 2000] [--quantize int8|16x8|auto]``.
Exports the default IMS test-2 bundle first when it is missing (``--quantize 16x8`` exports all three
variants: float32, int8 and 16x8). Latency is one thread, per window, median
and p99 over ``--n`` windows of the real recording: ``invoke`` is the interpreter call alone,
``score`` adds quantize, dequantize and the MAE through ``edge_agent.scorer.TFLiteModel`` (what the
gateway pays per window; measured in the runtime the agent picks).
Runtimes: ai-edge-litert, and tflite-runtime when it is installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from edge_agent.contract.bundle import Bundle
from edge_agent.contract.preprocess import model_inputs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "bundles" / "ims-test2"
DEFAULT_DATA = REPO / "data" / "ims_bearing" / "averaged" / "2nd_test_resmaple_10minutes.csv"
DEFAULT_ARGS = dict(format="ims-avg", start="2004-02-12T11:32:39", end="2004-02-19T06:12:39",
                    train_until="2004-02-15T12:52:39", window=10, hop=1, quantize="int8")


def runtimes() -> dict:
    """name -> Interpreter class, for every installed light runtime."""
    found = {}
    try:
        from ai_edge_litert.interpreter import Interpreter
        found["ai-edge-litert"] = Interpreter
    except ModuleNotFoundError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter as TfliteRuntimeInterpreter
        found["tflite-runtime"] = TfliteRuntimeInterpreter
    except (ModuleNotFoundError, ImportError):
        pass
    return found


def measure(runtime: str, interpreter_cls, model_path: Path, windows: np.ndarray, n: int) -> dict:
    """Invoke latency in this runtime; full score latency through edge_agent.scorer when it is the agent's runtime."""
    from edge_agent.contract.interpreter import interpreter_class
    from edge_agent.scorer import TFLiteModel
    from trainer.tflite_eval import latency

    interpreter = interpreter_cls(model_path=str(model_path), num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    x = np.zeros(inp["shape"], inp["dtype"])
    times = np.empty(n)
    for i in range(n):
        interpreter.set_tensor(inp["index"], x)
        t0 = time.perf_counter()
        interpreter.invoke()
        times[i] = time.perf_counter() - t0
    out = {"invoke_p50_us": float(np.median(times) * 1e6), "invoke_p99_us": float(np.percentile(times, 99) * 1e6),
           "score_p50_us": float("nan"), "score_p99_us": float("nan")}
    if interpreter_class()[1] == runtime:
        score = latency(TFLiteModel(model_path, num_threads=1), windows, n=n)
        out["score_p50_us"], out["score_p99_us"] = score["p50_us"], score["p99_us"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=2000, help="windows per latency measurement")
    parser.add_argument("--quantize", default=DEFAULT_ARGS["quantize"], choices=("int8", "16x8", "float32", "auto"),
                        help="served variant when the bundle is exported here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not (args.bundle / "manifest.json").is_file():
        print(f"{args.bundle} missing: exporting the default bundle first")
        from trainer.pipeline import TrainOptions, run

        run(TrainOptions(data=args.data, out=args.bundle, **(DEFAULT_ARGS | {"quantize": args.quantize})))
    bundle = Bundle.load(args.bundle)
    from edge_agent.contract.recordings import load
    from trainer.split import trim_recording

    m = bundle.manifest
    split = m["data"]["split"]
    rec = trim_recording(load(args.data, m["data"]["format"]), split.get("start"), split.get("end"))
    windows = np.concatenate([model_inputs(seg.data, bundle.spec, bundle.scaler) for seg in rec.segments])
    print(f"bundle {args.bundle}  model {bundle.version}  serves {bundle.quantization}")
    print(f"windows {windows.shape[1]} x {windows.shape[2]} (T x F), {len(windows)} from {args.data.name}; "
          f"latency: 1 thread, {args.n} windows, median / p99")
    header = (f"{'variant':8s} {'runtime':15s} {'size KB':>8s} {'invoke p50':>11s} {'p99':>8s} {'score p50':>10s} "
              f"{'p99':>8s}   {'max abs err':>11s} {'max rel err':>11s} {'spearman':>8s} {'agreement':>9s}")
    print(header)
    print("-" * len(header))
    results = {}
    for name, facts in m["variants"].items():
        path = args.bundle / facts["file"]
        p = facts["parity"]
        for runtime, cls in runtimes().items():
            try:
                lat = measure(runtime, cls, path, windows, args.n)
            except (ValueError, RuntimeError) as exc:
                print(f"{name:8s} {runtime:15s} cannot run: {exc}")
                continue
            results[f"{name}/{runtime}"] = lat
            print(f"{name:8s} {runtime:15s} {path.stat().st_size / 1024:8.1f} {lat['invoke_p50_us']:9.1f}µs "
                  f"{lat['invoke_p99_us']:6.1f}µs {lat['score_p50_us']:8.1f}µs {lat['score_p99_us']:6.1f}µs   "
                  f"{p['max_abs_error']:11.2e} {p['max_rel_error']:11.2e} {p['spearman']:8.4f} {p['agreement']:9.4f}")
    print(f"parity: Keras vs TFLite on {m['parity']['n_windows']} held-out and synthetic anomalous windows, threshold "
          f"{bundle.threshold.value:.5g} ({bundle.threshold.method})")
    summary = m.get("report", {}).get("summary", {})
    if summary:
        print("report:", json.dumps({k: summary[k] for k in ("training_windows_above_threshold",
                                                             "first_persistent_crossing")}))


if __name__ == "__main__":
    main()
