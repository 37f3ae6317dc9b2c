"""``edge-agent``: run the gateway agent, check its config, calibrate, show status, replay recordings.

    edge-agent run --config agent.toml
    edge-agent validate-config --config agent.toml                        (or validate-config agent.toml)
    edge-agent calibrate --config agent.toml [--sensor DEVICE] --windows 200      (or --clear)
    edge-agent status [--config agent.toml | --file status.json] [--sensor DEVICE] [--json]
    edge-agent deploy NEW_BUNDLE (--to DIR | --config agent.toml [--sensor DEVICE])
    edge-agent replay --bundle DIR --data PATH [--format F] [--calibrate N] --out scores.csv
    edge-agent doctor --config agent.toml [--listen-s 5] [--json]       exit 0 ok, 1 warnings, 2 failures
    edge-agent install [--apply] [--root DIR] [--config FILE] [--state-dir DIR]   systemd service (dry run by default)
    edge-agent --log-format json run ...                                one JSON object per log line

Never imports TensorFlow (nor ``trainer``): ``replay`` reads recordings with ``edge_agent.contract.recordings``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import click

from edge_agent.contract import rollout as rollout_contract
from edge_agent.contract.errors import AgentError, BundleError, ConfigError
from edge_agent.shutdown import stop_on_signals

log = logging.getLogger(__name__)


def _setup_logging(verbose: int, fmt: str | None = None, cfg=None) -> None:
    """-v/-vv win; else the config's ``[logging] level`` for commands given one (``run``), else warnings only.
    The format: ``--log-format``, else ``[logging] format``, else text."""
    from edge_agent import logs

    default = cfg.logging.level if cfg is not None else "warning"
    level = {0: default, 1: "info"}.get(verbose, "debug")
    logs.setup(level, fmt or (cfg.logging.format if cfg is not None else "text"))


def _load(config: Path):
    from edge_agent.config import load_config

    try:
        return load_config(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug logging (stderr).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="One line per event: text, or one JSON object per line (default: [logging] format, else text).")
@click.pass_context
def main(ctx: click.Context, verbose: int, log_format: str | None) -> None:
    """Vibration anomaly detection on the gateway (TFLite, no TensorFlow)."""
    ctx.obj = {"verbose": verbose, "log_format": log_format}
    _setup_logging(verbose, log_format)


@main.command("validate-config")
@click.argument("config_arg", metavar="[FILE]", required=False, type=click.Path(path_type=Path))
@click.option("--config", "config", type=click.Path(path_type=Path),
              help="Agent config (TOML); the same as giving FILE, as the other commands take it.")
def validate_config(config_arg: Path | None, config: Path | None) -> None:
    """Check a config file and every bundle it names: exit 0 if the agent can run on them, else 1 with the reasons.

    The file: --config FILE (as run, doctor and status take it) or FILE; the two are equivalent.
    """
    from edge_agent import calibration
    from edge_agent.config import check_path
    from edge_agent.contract.bundle import Bundle

    if config is not None and config_arg is not None and config != config_arg:
        raise click.UsageError(f"two configs given ({config_arg} and --config {config}): give one")
    config = config or config_arg
    if config is None:
        raise click.UsageError("give the config: edge-agent validate-config --config FILE (or FILE)")
    cfg = _load(config)
    problems, lines = [], []
    for i, s in enumerate(cfg.sensors):
        where = "" if len(cfg.sensors) == 1 else f"sensors[{i}]."
        key = f"{where}bundle.path"
        try:  # the agent runs on without its calibration (bundle threshold, counted); say so here
            check_path(f"{where}calibration.path", cfg.resolve(s.calibration.path))
            calibration.load(cfg.resolve(s.calibration.path))
        except ConfigError as exc:
            msg = str(exc) if str(exc).startswith(f"{where}calibration.path") else f"{where}calibration.path: {exc}"
            problems.append(f"{config}: {msg} (the agent would ignore it and use the bundle threshold)")
        path = Path(os.path.normpath(cfg.resolve(s.bundle.path)))
        try:
            bundle = Bundle.load(path)
        except BundleError as exc:
            problems.append(f"{config}: {key}: {exc}")
            continue
        why = rollout_contract.group_refusal(s.device, s.group, bundle.group, f"{bundle.model_id} {bundle.version}",
                                             deploying=True)
        if why:  # the agent would refuse it, as a rollout of it
            problems.append(f"{config}: {key}: {path}: {why}")
            continue
        lines.append(f"  {s.device}: source {s.source.kind}, bundle {path}: {bundle.model_id} {bundle.version}, "
                     f"{bundle.quantization}")
    if cfg.uploads_enabled:
        from edge_agent.contract.errors import UploadError
        from edge_agent.spool import check_spool_path

        try:
            check_spool_path(cfg.resolve(cfg.uploads.spool_path))
        except UploadError as exc:
            problems.append(f"{config}: uploads.spool_path: {exc}")
    if cfg.status.trend_file:  # the agent runs on without a trend it may not use: a warning, as run says it
        from edge_agent.trend import TrendError, check_trend_path

        try:
            check_trend_path(cfg.resolve(cfg.status.trend_file))
        except TrendError as exc:
            click.echo(f"warning: status.trend_file: {exc}", err=True)
    if cfg.answers_enabled:
        from edge_agent.answers import check_answers_path

        try:
            check_answers_path(cfg.resolve(cfg.answers.file))
        except AgentError as exc:
            click.echo(f"warning: answers.file: {exc}", err=True)
    if problems:
        raise click.ClickException("\n".join(problems))
    click.echo(f"{config}: ok (gateway {cfg.gateway}, {len(cfg.sensors)} sensor{'s' if len(cfg.sensors) > 1 else ''})")
    for line in lines:
        click.echo(line)
    _secret_warnings(cfg)


def _secret_warnings(cfg) -> None:
    """Warn (stderr) about a secret the config names that cannot be read or that others can read."""
    from edge_agent.config import http_write_token, mqtt_password, secret_file_warnings

    try:
        mqtt_password(cfg)
    except ConfigError as exc:
        click.echo(f"warning: {exc}", err=True)
    try:
        http_write_token(cfg)
    except ConfigError as exc:
        click.echo(f"warning: {exc}", err=True)
    for warning in secret_file_warnings(cfg):
        click.echo(f"warning: {warning}", err=True)


@main.command()
@click.option("--config", "config", required=True, type=click.Path(path_type=Path), help="Agent config (TOML).")
def run(config: Path) -> None:
    """Run the agent until SIGINT/SIGTERM; alerts are printed to stdout as they are raised."""
    from edge_agent.agent import Agent

    cfg = _load(config)
    opts = click.get_current_context().find_root().obj or {}
    _setup_logging(opts.get("verbose", 0), opts.get("log_format"), cfg)
    stop = threading.Event()

    def on_event(event) -> None:
        d = event.to_dict()
        if d["kind"] == "health":
            click.echo(f"HEALTH {d['state']} device={d['device']} condition={d['condition']}: {d['reason']}")
            sys.stdout.flush()
            return
        score = "inf" if d["score"] is None else f"{d['score']:.6g}"
        click.echo(
            f"ALERT {d['kind']} {d['severity']} device={d['device']} score={score} "
            f"threshold={d['threshold']:.6g} seq_end={d['seq_end']} model={d['model_version']}",
        )
        sys.stdout.flush()

    stop_on_signals(stop)  # before start: a SIGTERM from now on closes what start acquired
    try:
        agent = Agent(cfg, on_event=on_event).start()
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    for sensor in agent.sensors:
        p = sensor.pipeline
        click.echo(f"edge-agent: device {sensor.device}, " + (
            f"model {p.bundle.version}, threshold {p.threshold:.6g} ({sensor.threshold_source})" if p is not None
            else "no model yet"))
    sys.stdout.flush()
    agent.run(stop)
    status = agent.status()
    click.echo("edge-agent stopped: " + json.dumps({k: status[k] for k in (
        "sensors_total", "samples_in", "windows_scored", "alerts")} | {
        dev: {k: d.get(k) for k in ("windows_scored", "alerts", "frames_dropped", "crc_errors", "gaps",
                                    "inference_ms_p50", "inference_ms_p99")} for dev, d in status["sensors"].items()}))


@main.command()
@click.option("--config", "config", required=True, type=click.Path(path_type=Path))
@click.option("--sensor", "device", default=None, help="Device id of the sensor (needed when there are several).")
@click.option("--windows", "n_windows", type=click.IntRange(10, 1_000_000), default=200, show_default=True,
              help="Healthy windows to score from the live source.")
@click.option("--timeout-s", type=click.FloatRange(1), default=600.0, show_default=True)
@click.option("--clear", is_flag=True, help="Remove this device's threshold (the bundle default applies again).")
def calibrate(config: Path, device: str | None, n_windows: int, timeout_s: float, clear: bool) -> None:
    """Set a sensor's threshold from N live windows (assumed healthy), with the bundle's method."""
    from edge_agent import calibration
    from edge_agent.agent import calibrate_sensor

    cfg = _load(config)
    try:
        scfg = cfg.sensor(device)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    path = cfg.resolve(scfg.calibration.path)
    if clear:
        try:
            click.echo(f"calibration {'cleared' if calibration.clear(path) else 'was not set'}: {path}")
        except ConfigError as exc:
            raise click.ClickException(f"calibration.path: {exc}") from None
        return
    try:
        record, scored = calibrate_sensor(cfg, scfg.device, n_windows, timeout_s)
    except (AgentError, ValueError) as exc:
        raise click.ClickException(f"calibration failed: {exc}") from None
    if record is None:
        raise click.ClickException(f"only {scored} of {n_windows} windows arrived in {timeout_s:g} s; nothing saved")
    if not calibration.save(path, record):
        raise click.ClickException(f"calibration.path: cannot write {path} (see the log); nothing saved")
    click.echo(f"device {scfg.device}: threshold {record.value:.6g} ({record.method}, {record.n} windows) "
               f"saved to {path}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Path(path_type=Path), help="The bundle directory an agent serves.")
@click.option("--config", "config", type=click.Path(path_type=Path), help="Deploy to the bundle.path of this config.")
@click.option("--sensor", "device", default=None, help="With --config: the sensor whose bundle.path is meant.")
def deploy(bundle: Path, to: Path | None, config: Path | None, device: str | None) -> None:
    """Install BUNDLE where a running agent picks it up, atomically.

    BUNDLE is checked as the agent would (manifest, digest, tensors), copied into a temporary sibling of
    the target, checked again there, and renamed into place; the bundle it replaces stays as
    DIR.previous (roll back with mv). Never copy files over a served bundle one by one.
    With --config, a bundle made for a group (model.group) is refused for a sensor of another group.
    """
    from edge_agent.contract.bundle import PREVIOUS_SUFFIX, Bundle, deploy_bundle
    from edge_agent.contract.rollout import group_refusal

    if (to is None) == (config is None):
        raise click.UsageError("give the target: --to DIR, or --config FILE (with --sensor when it has several)")
    if config is not None:
        cfg = _load(config)
        if device is None and len({cfg.resolve(s.bundle.path).resolve() for s in cfg.sensors}) == 1:
            device = cfg.sensors[0].device
        try:
            to = cfg.resolve(cfg.sensor(device).bundle.path)
        except ConfigError as exc:
            raise click.ClickException(f"{exc}, with --sensor") from None
        try:
            new = Bundle.load(bundle)
        except BundleError as exc:
            raise click.ClickException(f"not deployed: {exc}") from None
        for s in cfg.sensors:  # every sensor that serves this path (they may share one)
            if cfg.resolve(s.bundle.path).resolve() == Path(to).resolve():
                refusal = group_refusal(s.device, s.group, new.group, f"{new.model_id} {new.version}", deploying=True)
                if refusal:
                    raise click.ClickException(f"not deployed: {refusal}")
    to = Path(os.path.normpath(to))
    replaces = to.exists()
    try:
        installed = deploy_bundle(bundle, to)
    except BundleError as exc:
        raise click.ClickException(f"not deployed: {exc}") from None
    previous = to.with_name(to.name + PREVIOUS_SUFFIX)
    click.echo(f"deployed {installed.model_id} {installed.version} ({installed.quantization}) to {to}"
               + (f"; the bundle it replaced is in {previous}" if replaces else ""))


@main.command()
@click.option("--config", "config", required=True, type=click.Path(path_type=Path), help="The agent's config.")
@click.option("--sensor", "device", default=None, help="The sensor whose bundle is rolled back (when several).")
@click.option("--reason", default="by hand", show_default=True, help="Recorded in the rollout state.")
def rollback(config: Path, device: str | None, reason: str) -> None:
    """Serve the previous bundle again (the one the last deploy or rollout replaced).

    BUNDLE.previous goes back into the sensor's bundle path (the rolled-back bundle is kept as
    BUNDLE.rolled-back); a running agent's watcher serves it within bundle.watch_s, and a rollout that was
    rolled back is not applied again from its retained message.
    """
    from edge_agent.rollout import rollback_files

    cfg = _load(config)
    try:
        path = cfg.resolve(cfg.sensor(device).bundle.path)
        version = rollback_files(path, reason)
    except (ConfigError, BundleError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{path}: now {version} (the rolled-back bundle is in {path.name}.rolled-back)")


#: Columns of ``edge-agent status``'s sensor table.
STATUS_COLUMNS = ("state", "health", "alert_state", "threshold", "last_score", "windows_scored", "alerts", "samples_in",
                  "frames_dropped", "gaps", "crc_errors", "bad_payloads", "inference_ms_p99", "model_version")


@main.command("broker-acl")
@click.option("--config", "config", required=True, type=click.Path(path_type=Path), help="The agent's config.")
@click.option("--side", type=click.Choice(["local", "central"]), default="local", show_default=True,
              help="local: the ACL of the broker on this gateway; central: this gateway's lines of the central "
                   "broker's ACL.")
@click.option("--services", is_flag=True, help="central: add the collectors' and the publisher's lines.")
def broker_acl(config: Path, side: str, services: bool) -> None:
    """Print the mosquitto ACL (acl_file) that lets every client act only for the devices it owns."""
    from edge_agent import acl

    cfg = _load(config)
    click.echo(acl.local(cfg) if side == "local" else acl.central(cfg, services), nl=False)


def _status_config() -> Path:
    """The config ``status`` reads without --config/--file: ./agent.toml, else the one ``edge-agent install`` set up
    (the unit's --config, default /etc/edge-agent/agent.toml); which one is said on stderr."""
    from edge_agent.install import installed_config

    here, installed = Path("agent.toml"), installed_config()
    for path, what in ((here, "in this directory"), (installed, "the installed service's config")):
        try:
            path.stat()
        except PermissionError:
            raise click.ClickException(f"{path} ({what}): this user may not read it (the installed config is for root "
                                       "and the edge-agent group): sudo edge-agent status") from None
        except OSError:
            continue
        click.echo(f"status: reading {path.absolute()} ({what})", err=True)
        return path
    raise click.ClickException(f"no config found: looked for {here.absolute()} and {installed} (the installed "
                               "service's); give --config FILE or --file STATUS.json")


@main.command()
@click.option("--config", "config", type=click.Path(path_type=Path),
              help="Read the status file named in this config (default: ./agent.toml, else the installed config, "
                   "/etc/edge-agent/agent.toml).")
@click.option("--file", "file", type=click.Path(path_type=Path), help="Status file to print.")
@click.option("--sensor", "device", default=None, help="Print every field of this sensor.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole status document as JSON.")
def status(config: Path | None, file: Path | None, device: str | None, as_json: bool) -> None:
    """Print the running agent's status: the gateway, then one row per sensor (or every field of one)."""
    if file is None:
        cfg = _load(config or _status_config())
        if not cfg.status.file:
            raise click.ClickException(f"{cfg.path}: status.file is not set")
        file = cfg.resolve(cfg.status.file)
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise click.ClickException(f"{file}: no status file (is the agent running?)") from None
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{file}: unreadable status: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sensors"), dict):
        raise click.ClickException(f"{file}: not an edge-agent status document")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    sensors = doc["sensors"]
    if device is not None:
        if device not in sensors:
            raise click.ClickException(f"no sensor {device!r} in {file} (sensors: {', '.join(sensors)})")
        _print_fields(sensors[device])
        return
    _print_fields({k: v for k, v in doc.items() if k != "sensors"})
    rows = [("device", *STATUS_COLUMNS)] + [
        (dev, *(_cell(d.get(c)) for c in STATUS_COLUMNS)) for dev, d in sensors.items()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    click.echo("")
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def _cell(value) -> str:
    if isinstance(value, dict) and "state" in value:  # health: its state (the reason is in --sensor DEV)
        return str(value["state"])
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _print_fields(doc: dict) -> None:
    width = max(map(len, doc)) if doc else 0
    for key, value in doc.items():
        click.echo(f"{key:<{width}}  {json.dumps(value) if isinstance(value, dict) else value}")


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
    policy = AlertPolicy() if config is None else _load(config).sensor(None).alerts
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
               f"threshold {result.threshold:.6g} ({result.threshold_source}); alerts {result.counters['alerts']} "
               f"({result.counters['too_good_windows']} windows too good); channels frozen "
               f"{result.counters['stuck_episodes']} times; wrote {out}")


@main.command()
@click.option("--config", "config", required=True, type=click.Path(path_type=Path), help="Agent config (TOML).")
@click.option("--listen-s", type=click.FloatRange(0.5, 600), default=5.0, show_default=True,
              help="How long to watch each sensor's data.")
@click.option("--timeout-s", type=click.FloatRange(0.5, 600), default=10.0, show_default=True,
              help="How long to wait for the broker.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(config: Path, listen_s: float, timeout_s: float, as_json: bool) -> None:
    """Check a gateway end to end; exit 0 all ok, 1 warnings only, 2 a failure."""
    from edge_agent import doctor as dr

    try:
        cfg = _load(config)
    except click.ClickException as exc:
        checks = [dr.Check("gateway", "config", dr.FAIL, exc.message)]
    else:
        checks = dr.run(cfg, listen_s=listen_s, timeout_s=timeout_s)
    click.echo(dr.as_json(checks) if as_json else dr.table(checks))
    sys.exit(dr.EXIT[dr.verdict(checks)])


@main.command()
@click.option("--apply", "apply_", is_flag=True, help="Make the changes (default: print them and change nothing).")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=Path("/"), show_default=True,
              help="Install under this directory instead of / (an image being prepared, a test).")
@click.option("--config", "config", type=click.Path(path_type=Path), default=Path("/etc/edge-agent/agent.toml"),
              show_default=True, help="Where the service reads its config (a skeleton is written if none is there).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path("/var/lib/edge-agent"), show_default=True,
              help="The service's own writable directory.")
@click.option("--executable", type=click.Path(path_type=Path), default=None,
              help="The edge-agent program the unit runs (default: this one).")
@click.option("--user", default="edge-agent", show_default=True, help="System user (and group) the agent runs as.")
def install(apply_: bool, root: Path, config: Path, state_dir: Path, executable: Path | None, user: str) -> None:
    """Install the agent as a systemd service run by its own unprivileged user (dry run unless --apply)."""
    from edge_agent import install as inst

    for name, p in (("--config", config), ("--state-dir", state_dir), ("--executable", executable)):
        if p is not None and not p.is_absolute():
            raise click.BadParameter("must be an absolute path (as the service sees it)", param_hint=name)
    lay = inst.Layout(executable=executable or inst.default_executable(), config=config, state_dir=state_dir,
                      user=user, systemd_version=inst.systemd_version())
    root = root.resolve()
    if lay.executable.is_relative_to("/home") or lay.executable.is_relative_to("/root"):
        click.echo(f"warning: {lay.executable} is under a home directory, which the unit hides (ProtectHome=yes): "
                   "install the agent's venv under /opt (python3 -m venv /opt/edge-agent)", err=True)
    steps = inst.plan(lay, root)
    where = "" if root == Path("/") else f" under {root}"
    click.echo(f"edge-agent install{where}: {'applying' if apply_ else 'dry run, nothing is changed'}")
    for step in steps:
        click.echo(f"  {step.what}")
        if apply_:
            try:
                step.run(root)
            except PermissionError as exc:
                raise click.ClickException(f"{exc}: installing needs root (sudo edge-agent install --apply)") from None
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                raise click.ClickException(f"{step.what.split()[0]} failed: {exc}") from None
    if not apply_:
        click.echo("run again with --apply to make these changes")
        return
    click.echo(f"next: edit {config}, install each sensor's bundle with\n"
               f"  edge-agent deploy BUNDLE --config {config} --sensor DEVICE\n"
               f"  edge-agent doctor --config {config}\n  systemctl start {lay.unit.name}")


if __name__ == "__main__":
    main()
