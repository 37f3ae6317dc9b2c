"""``firmware-sim``: the sensor-firmware stand-in on the command line.

    firmware-sim run --signal bearing --preset ims --link serial --rate 20000 --duration 60
    firmware-sim run --signal lorenz --link mqtt --broker 127.0.0.1:1883 --device pump-1 --rate 100
    firmware-sim run --signal lorenz --link mqtt --payload json-per-sample --fields x,y,z --topic iot-2/evt/status/fmt/json
    firmware-sim generate --signal lorenz --state healthy --samples 30000 --out healthy.npy
    firmware-sim generate --signal bearing --preset ims --override noise_g=0.074 --samples 600000 --out bench.npy
    firmware-sim generate --signal replay --data tests/fixtures/data/femto_Bearing1_2 --samples 5000 --out f.csv
    firmware-sim run --signal replay --data data/nab/art_daily_small_noise.csv --rate 10 --link mqtt

Replay reads its data with ``edge_agent.contract.recordings.load`` (``generate --format`` / ``run --data-format``,
default auto); the rate and channel names come from the recording, ``--rate`` overrides the rate
and is required for recordings without one (NAB, ims-avg, csv, npy). Malformed data end the
command with ``Error: path:line:column: message`` and exit status 1.

``main()`` parses the options; ``run_stream`` and ``generate_file`` do the work.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import click
import numpy as np

from edge_agent.contract.errors import ConfigError
from edge_agent.contract.json_mapping import TIME_UNITS, JsonMapping
from edge_agent.mqtt_client import broker_options, credentials, host_port
from firmware_sim import signals
from firmware_sim.faults import FAULTS, FaultInjector, parse_faults
from firmware_sim.link import MqttLink, PtyLink, SerialUrlLink
from firmware_sim.stream import FORMATS, JSON_SHAPES, StreamConfig, Streamer, StreamReport, default_fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSpec:
    signal: str = "bearing"
    preset: str = "ims"
    state: str = "healthy"
    life_s: float | None = None
    data: str | None = None
    loop: bool = False
    rate: float | None = None
    seed: int = 0
    data_format: str = "auto"
    overrides: dict = field(default_factory=dict)  # bearing: BearingPreset fields (signals.parse_overrides)


@dataclass(frozen=True)
class RunSpec:
    source: SourceSpec
    link: str = "serial"
    port: str | None = None
    link_path: str | None = None
    broker: str = "127.0.0.1:1883"
    device: str = "sim-1"
    qos: int = 1
    stream: StreamConfig = field(default_factory=StreamConfig)
    duration_s: float = 10.0
    faults: dict[str, float] = field(default_factory=dict)
    auto_frame: bool = False  # frame = 50 ms of samples, 1..256
    topic: str | None = None  # mqtt: instead of vib/<device>/samples
    mapping: dict = field(default_factory=dict)  # json-* formats: JsonMapping arguments (fields default by channel)
    connection: dict = field(default_factory=dict)  # mqtt: MqttConnection username, password, tls



def build_source(spec: SourceSpec, default_life_s: float) -> signals.Source:
    life = spec.life_s if spec.life_s is not None else default_life_s
    return signals.make_source(
        spec.signal,
        state=spec.state,
        preset=spec.preset,
        life_s=life,
        seed=spec.seed,
        sample_rate=spec.rate,
        data=spec.data,
        loop=spec.loop,
        data_format=spec.data_format,
        overrides=spec.overrides,
    )


def _open_link(spec: RunSpec):
    if spec.link == "mqtt":
        host, port = host_port(spec.broker)
        return MqttLink(host, port, spec.device, qos=spec.qos, topic=spec.topic, connection=spec.connection)
    if spec.port:
        return SerialUrlLink(spec.port)
    return PtyLink(spec.link_path)


def run_stream(spec: RunSpec, stop: threading.Event | None = None) -> StreamReport:
    """Stream for ``duration_s`` seconds of sensor time; prints the link path and progress."""
    source = build_source(spec.source, default_life_s=spec.duration_s)
    n = int(round(spec.duration_s * source.sample_rate))
    faults = FaultInjector(spec.faults, seed=spec.source.seed, full_scale=source.full_scale)
    cfg = spec.stream
    if spec.auto_frame:
        cfg = replace(cfg, frame_samples=int(min(256, max(1, source.sample_rate // 20))))
    if cfg.fmt in JSON_SHAPES:
        kwargs = dict(spec.mapping)
        if not kwargs.get("values"):
            kwargs["fields"] = kwargs.get("fields") or default_fields(source.n_channels)
        cfg = replace(cfg, mapping=JsonMapping(**kwargs))
    with _open_link(spec) as link:
        click.echo(f"firmware-sim: {spec.link} link on {link.path}", err=False)
        sys.stdout.flush()
        streamer = Streamer(source, link, cfg, faults)

        def progress(done: int, elapsed: float) -> None:
            click.echo(f"  {done}/{n} samples, {done / elapsed:.0f} samples/s", err=True)

        report = streamer.run(n, stop=stop, progress=progress)
    return report


def generate_file(source: signals.Source, n_samples: int, out: Path) -> np.ndarray:
    """Write ``n_samples`` rows to ``out``: ``.npy`` float32 (n, C) or CSV with a header
    (a replay's channel names, else x,y,z for 3 channels or ch0, ch1, ...)."""
    data = signals.generate(source, n_samples)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, data)
    elif out.suffix == ".csv":
        names = getattr(source, "channels", None)  # a replay keeps the recording's channel names
        if names is None or len(names) != data.shape[1]:
            names = ["x", "y", "z"] if data.shape[1] == 3 else [f"ch{i}" for i in range(data.shape[1])]
        np.savetxt(out, data, delimiter=",", header=",".join(names), comments="", fmt="%.9g")
    else:
        raise click.BadParameter(f"output must end in .npy or .csv, got {out.name}", param_hint="--out")
    return data


def _overrides(ctx, param, items: tuple[str, ...]) -> dict:
    """``--override NAME=VALUE ...`` -> BearingPreset overrides (another signal refuses them when built)."""
    try:
        return signals.parse_overrides(items)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--override") from None


def _source_options(*format_flags: str):
    """The source options; ``format_flags`` name the replay data-format option."""
    options = [
        click.option(
            "--signal", type=click.Choice(["lorenz", "bearing", "replay"]), default="bearing", show_default=True
        ),
        click.option("--preset", type=click.Choice(sorted(signals.PRESETS)), default="ims", show_default=True),
        click.option("--state", type=click.Choice(signals.STATES), default="healthy", show_default=True),
        click.option("--life", "life_s", type=click.FloatRange(min=0, min_open=True), help="seconds to failure"),
        click.option("--data", type=click.Path(exists=True), help="replay: file or folder"),
        click.option("--loop/--no-loop", default=False, help="replay: start again at the end"),
        click.option(
            *format_flags,
            "data_format",
            type=click.Choice(signals.REPLAY_FORMATS),
            default="auto",
            show_default=True,
            help="replay: data format, as the trainer's --format",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--override", "overrides", multiple=True, metavar="NAME=VALUE", callback=_overrides,
            help="bearing: a preset parameter, e.g. noise_g=0.08 or rpm=1500 (repeatable; see signals.BearingPreset)",
        ),
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug")
def main(verbose: int) -> None:
    """Sensor-firmware simulator: streams realistic vibration data over serial or MQTT."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("paho").setLevel(max(level, logging.WARNING))


@main.command()
@_source_options("--data-format")
@click.option("--link", type=click.Choice(["serial", "mqtt"]), default="serial", show_default=True)
@click.option("--port", help="serial: a port or pyserial URL; default: a new pseudo-terminal")
@click.option("--link-path", type=click.Path(), help="serial pty: keep a symlink to the pty here")
@broker_options()
@click.option("--device", default="sim-1", show_default=True, help="device id in the topic")
@click.option("--qos", type=click.IntRange(0, 2), default=1, show_default=True)
@click.option(
    "--format", "--payload", "fmt", type=click.Choice(FORMATS), default="binary", show_default=True,
    help="serial: binary|csv; mqtt: binary|json (the wire JSON) or a sensor's own JSON: json-per-sample "
    "(one {\"x\":..,\"y\":..,\"z\":..} message per sample), json-columns, json-records, json-rows (--values)",
)
@click.option("--topic", help="mqtt: publish here instead of vib/<device>/samples")
@click.option("--fields", help="json-*: channel field names or paths, comma-separated (default x,y,z / ch0,ch1,..)")
@click.option("--values", "values_path", help="json-per-sample|json-rows: one list of values at this path instead")
@click.option("--seq-field", help="json-*: write the sample index in this field (default: none, as the IBM tutorial)")
@click.option("--time-field", help="json-*: write the sample time in this field")
@click.option("--time-unit", type=click.Choice(TIME_UNITS), default="s", show_default=True)
@click.option("--sample-type", type=click.Choice(["int16", "float32"]), default="int16", show_default=True)
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Hz (default: the signal's own)")
@click.option("--frame-samples", type=click.IntRange(1, 4096), help="default: 50 ms of samples, at most 256")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True)
@click.option("--speed", type=click.FloatRange(min=0), default=1.0, show_default=True, help="0: as fast as possible")
@click.option(
    "--fault", "faults", multiple=True, metavar="NAME=RATE", help="; ".join(f"{k}: {v}" for k, v in FAULTS.items())
)
@click.option("--json-summary", is_flag=True, help="print the final summary as JSON")
def run(
    signal, preset, state, life_s, data, loop, data_format, seed, overrides, link, port, link_path, broker, device, qos, fmt,
    topic, fields, values_path, seq_field, time_field, time_unit, sample_type, rate, frame_samples, duration, speed,
    faults, json_summary, **auth,
) -> None:  # fmt: skip
    """Stream samples in real time over a serial link or MQTT."""
    if signal == "replay" and not data:
        raise click.BadParameter("replay needs --data", param_hint="--data")
    if fmt == "csv" and link == "mqtt":
        raise click.BadParameter("MQTT payloads are binary or json", param_hint="--format")
    if fmt.startswith("json") and link == "serial":
        raise click.BadParameter("serial links carry binary or csv", param_hint="--format")
    mapping = {"fields": tuple(f.strip() for f in fields.split(",")) if fields else (), "values": values_path,
               "seq_field": seq_field, "time_field": time_field, "time_unit": time_unit}
    if fmt in JSON_SHAPES:
        try:  # checked now (any channel names), so that a bad option is an error before anything streams
            JsonMapping(**{**mapping, "fields": mapping["fields"] or (() if values_path else ("x",))})
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint=f"--{str(exc).split(':')[0].replace('_', '-')}") from None
    elif fields or values_path or seq_field or time_field:
        raise click.BadParameter(f"only with a sensor's own JSON ({', '.join(JSON_SHAPES)})", param_hint="--fields")
    if topic is not None and link != "mqtt":
        raise click.BadParameter("only with --link mqtt", param_hint="--topic")
    try:
        fault_rates = parse_faults(faults)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault") from None
    try:
        connection = credentials(**auth) if link == "mqtt" else {}
    except (ValueError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="--password-file") from None
    spec = RunSpec(
        source=SourceSpec(signal, preset, state, life_s, data, loop, rate, seed, data_format, overrides),
        link=link,
        port=port,
        link_path=link_path,
        broker=broker,
        device=device,
        qos=qos,
        stream=StreamConfig(fmt=fmt, sample_type=sample_type, frame_samples=frame_samples or 256, speed=speed),
        auto_frame=frame_samples is None,
        duration_s=duration,
        faults=fault_rates,
        topic=topic,
        mapping={k: v for k, v in mapping.items() if v},
        connection=connection,
    )
    try:
        report = run_stream(spec)
    except (ConnectionError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    summary = report.summary()
    if json_summary:
        click.echo(json.dumps(summary))
        return
    configured = "max" if math.isinf(report.configured_rate) else f"{report.configured_rate:.0f}"
    click.echo(
        f"sent {report.ledger.samples_sent} of {report.samples} samples in {report.elapsed_s:.2f} s: "
        f"configured {configured} Hz, achieved {report.achieved_rate:.0f} Hz"
    )
    injected = {k: v for k, v in summary.items() if v and k not in ("samples", "elapsed_s", "frames_sent",
                "samples_sent", "bytes_sent", "configured_rate_hz", "achieved_rate_hz")}  # fmt: skip
    injected.pop("overflow_bytes", None)
    click.echo("faults injected: " + (", ".join(f"{k}={v}" for k, v in injected.items()) or "none"))
    if report.overflow_bytes:
        click.echo(f"link overflow (receiver not keeping up or absent): {report.overflow_bytes} bytes dropped")


@main.command()
@_source_options("--format", "--data-format")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Hz (default: the signal's own)")
@click.option("--samples", "n_samples", type=click.IntRange(min=1), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help=".npy or .csv")
def generate(signal, preset, state, life_s, data, loop, data_format, seed, overrides, rate, n_samples, out) -> None:
    """Write a data set (samples x channels) for training or inspection."""
    if signal == "replay" and not data:
        raise click.BadParameter("replay needs --data", param_hint="--data")
    spec = SourceSpec(signal, preset, state, life_s, data, loop, rate, seed, data_format, overrides)
    try:
        # degrading without --life: over the whole file (a replay has no life)
        life = 0.0 if signal == "replay" else n_samples / (rate or signals.default_rate(signal, preset))
        source = build_source(spec, default_life_s=life)
        arr = generate_file(source, n_samples, out)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out}: {arr.shape[0]} samples x {arr.shape[1]} channels at {source.sample_rate:g} Hz")


if __name__ == "__main__":
    main()
