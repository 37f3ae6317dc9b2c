"""``edge-agent``: run the gateway agent, check its config, calibrate, show status, replay recordings.

    edge-agent run --config agent.toml
    edge-agent validate-config agent.toml
    edge-agent calibrate --config agent.toml --windows 200      (or --clear)
    edge-agent status [--config agent.toml | --file status.json]
    edge-agent replay --bundle DIR --data PATH [--format F] [--calibrate N] --out scores.csv

Never imports TensorFlow: ``replay`` reads recordings with ``edge_agent.contract.recordings`` (numpy only), imported lazily.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

import click

from edge_agent.contract.errors import AgentError, BundleError, ConfigError

log = logging.getLogger(__name__)


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("paho").setLevel(logging.WARNING)


def _load(config: Path):
    from edge_agent.config import load_config

    try:
        return load_config(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug logging (stderr).")
def main(verbose: int) -> None:
    """Vibration anomaly detection on the gateway (TFLite, no TensorFlow)."""
    _setup_logging(verbose)


@main.command("validate-config")
@click.argument("config", type=click.Path(path_type=Path))
def validate_config(config: Path) -> None:
    """Check a config file and the bundle it names: exit 0 if the agent can run on them, else 1 with the reason."""
    from edge_agent.contract.bundle import Bundle

    cfg = _load(config)
    bundle_path = cfg.resolve(cfg.bundle.path)
    try:
        bundle = Bundle.load(bundle_path)
    except BundleError as exc:
        raise click.ClickException(f"{config}: bundle.path: {exc}") from None
    click.echo(f"{config}: ok (device {cfg.device}, source {cfg.source.kind}, bundle {bundle_path}: "
               f"{bundle.model_id} {bundle.version}, {bundle.quantization})")


@main.command()
@click.option("--config", "config", required=True, type=click.Path(path_type=Path), help="Agent config (TOML).")
def run(config: Path) -> None:
    """Run the agent until SIGINT/SIGTERM; alerts are printed to stdout as they are raised."""
    from edge_agent.runtime import Agent

    cfg = _load(config)
    stop = threading.Event()

    def on_event(event) -> None:
        d = event.to_dict()
        click.echo(
            f"ALERT {d['kind']} {d['severity']} device={d['device']} score={d['score']:.6g} "
            f"threshold={d['threshold']:.6g} seq_end={d['seq_end']} model={d['model_version']}",
        )
        sys.stdout.flush()

    try:
        agent = Agent(cfg, on_event=on_event)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"edge-agent: device {cfg.device}, model {agent.pipeline.bundle.version}, "
               f"threshold {agent.pipeline.threshold:.6g} ({agent.threshold_source})")
    sys.stdout.flush()
    agent.run(stop)
    status = agent.status()
    click.echo("edge-agent stopped: " + json.dumps({k: status[k] for k in (
        "samples_in", "windows_scored", "alerts", "frames_dropped", "crc_errors", "gaps", "inference_ms_p50",
        "inference_ms_p99")}))


@main.command()
@click.option("--config", "config", required=True, type=click.Path(path_type=Path))
@click.option("--windows", "n_windows", type=click.IntRange(10, 1_000_000), default=200, show_default=True,
              help="Healthy windows to score from the live source.")
@click.option("--timeout-s", type=click.FloatRange(1), default=600.0, show_default=True)
@click.option("--clear", is_flag=True, help="Remove this device's threshold (the bundle default applies again).")
def calibrate(config: Path, n_windows: int, timeout_s: float, clear: bool) -> None:
    """Set this device's threshold from N live windows (assumed healthy), with the bundle's method."""
    from edge_agent import calibration
    from edge_agent.runtime import collect_scores

    cfg = _load(config)
    path = cfg.resolve(cfg.calibration.path)
    if clear:
        click.echo(f"calibration {'cleared' if calibration.clear(path) else 'was not set'}: {path}")
        return
    try:
        bundle, scores = collect_scores(cfg, n_windows, timeout_s)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    if len(scores) < n_windows:
        raise click.ClickException(f"only {len(scores)} of {n_windows} windows arrived in {timeout_s:g} s; nothing saved")
    try:
        record = calibration.compute(scores, bundle, cfg.device)
    except ValueError as exc:
        raise click.ClickException(f"calibration failed: {exc}") from None
    calibration.save(path, record)
    click.echo(f"device {cfg.device}: threshold {record.value:.6g} ({record.method}, {record.n} windows; "
               f"bundle default {bundle.threshold.value:.6g}) saved to {path}")


@main.command()
@click.option("--config", "config", type=click.Path(path_type=Path), help="Read the status file named in the config.")
@click.option("--file", "file", type=click.Path(path_type=Path), help="Status file to print.")
def status(config: Path | None, file: Path | None) -> None:
    """Print the running agent's status (samples, drops, CRC errors, gaps, windows, latency, alerts, model)."""
    if file is None:
        if config is None:
            config = Path("agent.toml")
        cfg = _load(config)
        if not cfg.status.file:
            raise click.ClickException(f"{config}: status.file is not set")
        file = cfg.resolve(cfg.status.file)
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise click.ClickException(f"{file}: no status file (is the agent running?)") from None
    except ValueError as exc:
        raise click.ClickException(f"{file}: unreadable status: {exc}") from None
    width = max(map(len, doc)) if doc else 0
    for key, value in doc.items():
        click.echo(f"{key:<{width}}  {value}")


@main.command()
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--data", "data", required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--format", "fmt", default="auto", show_default=True, help="edge_agent.contract.recordings format (auto, ims, csv, npy, ...).")
@click.option("--channels", default=None, help="Comma-separated channel names or indices to use.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Load at most this many files/snapshots.")
@click.option("--calibrate", "n_cal", type=click.IntRange(0), default=0, show_default=True,
              help="The first N windows set the threshold (bundle method) before alerting.")
@click.option("--config", "config", type=click.Path(path_type=Path), help="Take the alert policy from this config.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="scores CSV, one row per window.")
def replay(bundle_dir: Path, data: Path, fmt: str, channels: str | None, limit: int | None, n_cal: int,
           config: Path | None, out: Path) -> None:
    """Run the gateway pipeline on a recording as fast as it can; write one row per window."""
    from edge_agent import replay as rp
    from edge_agent.alerts import AlertPolicy
    from edge_agent.contract.bundle import Bundle

    try:
        from edge_agent.contract import recordings as tdata  # numpy-only loaders, no TensorFlow
    except ImportError as exc:
        raise click.ClickException(f"replay needs the recording loaders (edge_agent.contract.recordings): {exc}") from None
    try:
        bundle = Bundle.load(bundle_dir)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    policy = AlertPolicy()
    if config is not None:
        from edge_agent.runtime import policy_of

        policy = policy_of(_load(config))
    opts: dict = {}
    if channels:
        opts["channels"] = [int(c) if c.strip().lstrip("-").isdigit() else c.strip() for c in channels.split(",")]
    if limit:
        opts["limit"] = limit
    try:
        recording = tdata.load(data, fmt, **opts)
        result = rp.replay(bundle, recording, policy=policy, calibrate=n_cal)
    except (ValueError, TypeError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    rp.write_csv(out, result.rows)
    speed = f", {result.speed:.0f}x real time" if result.speed else ""
    click.echo(f"{len(result.rows)} windows from {result.samples} samples in {result.seconds:.2f} s{speed}; "
               f"threshold {result.threshold:.6g} ({result.threshold_source}); alerts {result.counters['alerts']}; "
               f"wrote {out}")


if __name__ == "__main__":
    main()
