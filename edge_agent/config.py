"""The agent's one configuration file: TOML, read into frozen dataclasses and validated strictly.

Unknown keys, wrong types and out-of-range values are a :class:`ConfigError` naming the key path,
e.g. ``alerts.k: must be 1..n (n = 5), got 7``. Validation happens once, at start
(``edge-agent validate-config FILE`` runs only this step).

Layout (see ``examples/agent.toml``)::

    device = "pump-7"                  # id used in topics, alerts, calibration
    [source]      kind = "serial" | "mqtt", queue_frames, sample_rate (Hz, used when the bundle has none)
    [source.serial] port, format = "binary" | "csv", baudrate, channels (csv only, optional)
    [source.mqtt]   topic_device (defaults to device), qos
    [mqtt]        the broker for the MQTT source, alerts, status and uploads
    [bundle]      path, watch_s (0 = no hot swap), num_threads
    [alerts]      k, n, clear_ratio, clear_windows, cooldown_s, critical_ratio
    [alerts.sinks] log, jsonl, mqtt, command, command_timeout_s
    [uploads]     enabled, every_s, only_normal, spool_path, spool_max_bytes, spool_max_records, batch
    [status]      every_s, file, mqtt
    [calibration] path
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.contract import wire
from edge_agent.contract.errors import ConfigError


def _rng(lo: float | None = None, hi: float | None = None, choices: tuple | None = None) -> dict:
    return {"lo": lo, "hi": hi, "choices": choices}


@dataclass(frozen=True)
class SerialSource:
    port: str = field(metadata=_rng())  # "/dev/ttyUSB0", "/dev/pts/3", "loop://", any pyserial URL
    format: str = field(default="binary", metadata=_rng(choices=("binary", "csv")))
    baudrate: int = field(default=921_600, metadata=_rng(50, 20_000_000))
    channels: int | None = field(default=None, metadata=_rng(1, wire.MAX_CHANNELS))
    read_timeout_s: float = field(default=0.05, metadata=_rng(0.001, 5.0))
    reopen_max_s: float = field(default=5.0, metadata=_rng(0.1, 300.0))


@dataclass(frozen=True)
class MqttSource:
    topic_device: str | None = field(default=None, metadata=_rng())  # whose vib/<device>/samples; default: device
    qos: int = field(default=1, metadata=_rng(0, 2))


@dataclass(frozen=True)
class Source:
    kind: str = field(metadata=_rng(choices=("serial", "mqtt")))
    serial: SerialSource | None = None
    mqtt: MqttSource | None = None
    queue_frames: int = field(default=1024, metadata=_rng(8, 1_000_000))
    sample_rate: float | None = field(default=None, metadata=_rng(0.001, 10_000_000.0))  # Hz, if the bundle has none


@dataclass(frozen=True)
class Mqtt:
    host: str = "127.0.0.1"
    port: int = field(default=1883, metadata=_rng(1, 65535))
    username: str | None = None
    password: str | None = None
    keepalive: int = field(default=30, metadata=_rng(5, 3600))
    client_id: str | None = None  # default: edge-agent-<device>


@dataclass(frozen=True)
class BundleSection:
    path: str
    watch_s: float = field(default=5.0, metadata=_rng(0.0, 86_400.0))
    num_threads: int = field(default=1, metadata=_rng(1, 64))


@dataclass(frozen=True)
class Sinks:
    log: bool = True
    jsonl: str | None = None
    mqtt: bool = False
    command: tuple[str, ...] | None = None
    command_timeout_s: float = field(default=5.0, metadata=_rng(0.1, 600.0))


@dataclass(frozen=True)
class Alerts:
    k: int = field(default=3, metadata=_rng(1, 1000))
    n: int = field(default=5, metadata=_rng(1, 1000))
    clear_ratio: float = field(default=0.8, metadata=_rng(0.01, 1.0))
    clear_windows: int = field(default=5, metadata=_rng(1, 100_000))
    cooldown_s: float = field(default=60.0, metadata=_rng(0.0, 86_400.0))
    critical_ratio: float = field(default=2.0, metadata=_rng(1.0, 1000.0))
    sinks: Sinks = field(default_factory=Sinks)


@dataclass(frozen=True)
class Uploads:
    enabled: bool = False
    every_s: float = field(default=600.0, metadata=_rng(1.0, 7 * 86_400.0))
    only_normal: bool = True
    spool_path: str = "spool.sqlite"
    spool_max_bytes: int = field(default=64 * 1024 * 1024, metadata=_rng(1024, 1 << 40))
    spool_max_records: int = field(default=10_000, metadata=_rng(1, 100_000_000))
    batch: int = field(default=50, metadata=_rng(1, 10_000))


@dataclass(frozen=True)
class Status:
    every_s: float = field(default=10.0, metadata=_rng(0.1, 86_400.0))
    file: str | None = "edge-agent-status.json"
    mqtt: bool = True


@dataclass(frozen=True)
class Calibration:
    path: str = "calibration.json"


@dataclass(frozen=True)
class AgentConfig:
    device: str
    source: Source
    bundle: BundleSection
    mqtt: Mqtt | None = None
    alerts: Alerts = field(default_factory=Alerts)
    uploads: Uploads = field(default_factory=Uploads)
    status: Status = field(default_factory=Status)
    calibration: Calibration = field(default_factory=Calibration)
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    def resolve(self, path: str | Path) -> Path:
        """A path from the file, relative to the config file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def client_id(self) -> str:
        return (self.mqtt.client_id if self.mqtt and self.mqtt.client_id else None) or f"edge-agent-{self.device}"


# ---------------------------------------------------------------------------------------- loading
def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a TOML config file; ConfigError names the file and the bad key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return config_from_dict(data, base_dir=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_from_dict(data: dict, base_dir: Path = Path(".")) -> AgentConfig:
    """Validate a parsed config (a dict as TOML gives it)."""
    cfg = _build(AgentConfig, data, "")
    cfg = dataclasses.replace(cfg, base_dir=base_dir)
    _check_semantics(cfg)
    return cfg


def _check_semantics(cfg: AgentConfig) -> None:
    """Rules across keys."""
    try:
        wire.check_device_id(cfg.device)
    except ConfigError as exc:
        raise ConfigError(f"device: {exc}") from None
    a = cfg.alerts
    if a.k > a.n:
        raise ConfigError(f"alerts.k: must be 1..n (n = {a.n}), got {a.k}")
    src = cfg.source
    if src.kind == "serial" and src.serial is None:
        raise ConfigError("source.serial: required when source.kind = 'serial'")
    if src.kind == "mqtt":
        if cfg.mqtt is None:
            raise ConfigError("mqtt: a [mqtt] broker section is required when source.kind = 'mqtt'")
        if src.mqtt is not None and src.mqtt.topic_device is not None:
            try:
                wire.check_device_id(src.mqtt.topic_device)
            except ConfigError as exc:
                raise ConfigError(f"source.mqtt.topic_device: {exc}") from None
    if src.kind != "serial" and src.serial is not None:
        raise ConfigError(f"source.serial: given but source.kind = {src.kind!r}")
    if src.kind != "mqtt" and src.mqtt is not None:
        raise ConfigError(f"source.mqtt: given but source.kind = {src.kind!r}")
    if src.serial is not None and src.serial.format == "binary" and src.serial.channels is not None:
        raise ConfigError("source.serial.channels: only for format = 'csv' (binary frames carry their channel count)")
    for key, needs in (("alerts.sinks.mqtt", a.sinks.mqtt), ("uploads.enabled", cfg.uploads.enabled)):
        if needs and cfg.mqtt is None:
            raise ConfigError(f"{key}: needs a [mqtt] broker section")
    if a.sinks.command is not None and not a.sinks.command:
        raise ConfigError("alerts.sinks.command: must be a non-empty list of strings (program and arguments)")


def _build(cls: type, data: object, where: str):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and bad values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: required")
            continue
        kwargs[name] = _value(hints[name], data[name], key, f.metadata)
    return cls(**kwargs)


def _value(tp, value: object, key: str, meta) -> object:
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    if value is None and optional:
        return None
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: must be a list of strings, got {value!r}")
        return tuple(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        value = float(value)
    elif tp is str and (not isinstance(value, str) or not value):
        raise ConfigError(f"{key}: must be a non-empty string, got {value!r}")
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(map(repr, choices))}, got {value!r}")
    if lo is not None and not (lo <= value <= hi):  # type: ignore[operator]
        raise ConfigError(f"{key}: must be {lo:g}..{hi:g}, got {value!r}")
    return value
