"""The status page's picture (README.md, docs/maintenance/status-page.md): three sensors streaming in real
time, one of them failing.

    python scripts/status_page_screenshot.py [--bundle DIR] [--seconds 150] [--out docs/figures/status-page.png]

1. a bundle (``--bundle``, or one trained here like the tests' bundle: firmware_sim's healthy IMS-like bearing,
   20 kHz x 4 channels, features mode, Conv1D, int8);
2. an agent with three serial sensors on pseudo-terminals and its status page on a free loopback port;
3. firmware_sim streams in real time: ``pump-1`` degrades (healthy until 60 % of the run, then an outer-race
   defect), ``pump-2`` stays healthy, ``fan-3`` stays healthy over a noisy link (flipped bytes, lost frames);
4. headless Chromium (Debian's package) opens the page and saves a screenshot at the end.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # firmware_sim.browser, when run as a script


def train(root: Path) -> Path:
    """A small real bundle (the tests' recipe)."""
    import numpy as np

    from firmware_sim import signals
    from trainer.model import ModelConfig
    from trainer.pipeline import TrainOptions, run
    from trainer.train import FitConfig

    healthy = signals.generate(signals.make_source("bearing", state="healthy", preset="ims", seed=1), 20_000 * 30)
    np.save(root / "healthy.npy", healthy)
    opts = TrainOptions(
        data=root / "healthy.npy", out=root / "bundle", format="npy", mode="features", window=8, hop=2, block=1024,
        features=("rms", "peak", "kurtosis", "crest"), model=ModelConfig(architecture="conv1d", units=(16, 8), latent=4),
        fit=FitConfig(epochs=30, batch_size=16, patience=5), quantize="int8", latency_windows=50, model_id="ims-conv",
    )
    return run(opts).bundle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="bundle directory (default: train one, ~30 s)")
    ap.add_argument("--seconds", type=float, default=150.0, help="length of the real-time run")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "status-page.png")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from edge_agent.agent import Agent
    from edge_agent.config import load_config
    from firmware_sim import signals
    from firmware_sim.browser import chromium
    from firmware_sim.faults import FaultInjector
    from firmware_sim.link import PtyLink
    from firmware_sim.stream import StreamConfig, Streamer

    work = Path(tempfile.mkdtemp(prefix="status-page-"))
    bundle = args.bundle or train(work)
    sensors = {  # device: (state, faults)
        "pump-1": ("degrading", {}),
        "pump-2": ("healthy", {}),
        "fan-3": ("healthy", {"flip": 0.004, "drop": 0.002}),
    }
    missing = work / "press-4-bundle"  # a sensor whose bundle was never deployed: it waits, the others run
    links = {d: PtyLink(work / f"tty-{d}", write_timeout=10) for d in sensors}
    text = (f'gateway = "hall-3"\n[http]\nport = 0\n[status]\nevery_s = 2.0\nfile = "{work}/status.json"\nmqtt = false\n'
            f'[bundle]\npath = "{bundle}"\n[alerts]\ncooldown_s = 60.0\n[alerts.sinks]\nlog = false\n')
    for d, link in links.items():
        text += f'\n[[sensors]]\ndevice = "{d}"\n[sensors.source]\nkind = "serial"\n[sensors.source.serial]\nport = "{link.path}"\n'
    text += (f'\n[[sensors]]\ndevice = "press-4"\n[sensors.source]\nkind = "serial"\n[sensors.source.serial]\n'
             f'port = "{work}/tty-press-4"\n[sensors.bundle]\npath = "{missing}"\n')
    (work / "gateway.toml").write_text(text)
    agent = Agent(load_config(work / "gateway.toml"))
    stop = threading.Event()
    agent.start()  # the parts are up before the test acts
    runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    runner.start()
    streams = []
    for i, (d, (state, faults)) in enumerate(sensors.items()):
        source = signals.make_source("bearing", state=state, preset="ims", seed=10 + i, life_s=args.seconds)
        streamer = Streamer(source, links[d], StreamConfig(frame_samples=1024, speed=1.0),
                            FaultInjector(faults, seed=i, full_scale=source.full_scale))
        t = threading.Thread(target=streamer.run, args=(int(source.sample_rate * args.seconds), stop), daemon=True)
        t.start()
        streams.append(t)
    try:
        deadline = time.monotonic() + 10
        while agent.web.port is None and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"status page: {agent.web.url} (streaming {args.seconds:g} s in real time)", flush=True)
        for t in streams:
            t.join(args.seconds + 30)
        time.sleep(2.5)  # one more snapshot and poll after the last frame
        with chromium(1400, 1560) as browser:
            browser.get(agent.web.url)
            deadline = time.monotonic() + 20
            while not browser.find_elements("css selector", "section.card svg.chart polyline.score"):
                if time.monotonic() > deadline:
                    raise SystemExit("the page drew no chart")
                time.sleep(0.2)
            time.sleep(0.5)
            height = browser.execute_script("return document.documentElement.scrollHeight")
            browser.set_window_size(1400, height + 20)
            time.sleep(0.5)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(args.out))
        status = agent.status()
    finally:
        stop.set()
        runner.join(20)
        for link in links.values():
            link.close()
    print(f"wrote {args.out}")
    for d, s in status["sensors"].items():
        print(f"  {d}: {s.get('alert_state', s['state'])}, {s.get('windows_scored', 0)} windows, "
              f"{s.get('alerts', 0)} alert events, crc_errors {s['crc_errors']}, gaps {s.get('gaps', 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
