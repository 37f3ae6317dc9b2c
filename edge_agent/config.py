"""The agent's one configuration file: TOML, read into frozen dataclasses and validated strictly.

Unknown keys, wrong types, out-of-range values and clashes between sensors are a :class:`ConfigError`
naming the key path, e.g. ``sensors[2].alerts.k: must be 1..n (n = 5), got 7``. Validation happens once,
at start (``edge-agent validate-config FILE`` runs only this step and loads every bundle).

One sensor (the first releases' layout, still valid)::

    device = "pump-7"
    asset = "cooling pump 7, drive end"          # optional, like location
    [source] [bundle] [alerts] [uploads] [status] [calibration] [health] [advice] [mqtt]

Many sensors: top-level sections are every sensor's defaults, each ``[[sensors]]`` table overrides them::

    gateway = "hall-3"                 # id of this gateway (default: the host name; one sensor: its device)
    [mqtt]        the one broker connection: MQTT sources, alerts, status, uploads (last will)
    [status]      every_s, file, mqtt
    [uploads]     the gateway's spool: spool_path, spool_max_bytes, spool_max_records, batch, max_bytes_per_hour,
                  uplink_topic, receipts, receipt_timeout_s (and the sensors' defaults below)
    [rollout]     public_keys, shadow_windows, max_alert_rate_increase, probation_windows (signed rollouts)
    [http]        enabled, listen, port: the local status page and the Prometheus /metrics endpoint
    [homeassistant] enabled, discovery_prefix: Home Assistant MQTT discovery of every sensor
    [answers]     file, mqtt: technicians' answers to alerts (acknowledge, confirmed, false alarm, silence)
    [alerts] [bundle] [source] [calibration] [health] [advice] [severity] [bearing]   defaults for every sensor
    [[sensors]]   device, asset, location, group, [sensors.source], [sensors.bundle], [sensors.alerts], [sensors.uploads],
                  [sensors.calibration] (default path calibration/<device>.json), [sensors.health], [sensors.advice]

Per sensor::

    [source]      kind = "serial" | "mqtt", queue_frames, sample_rate (Hz, used when the bundle has none), burst,
                  intake_cpu (share of a core reading it may use: a sensor that floods is paused, not the others);
                  queue_frames counts frames (messages), 1024 by default: a sensor that sends one sample per
                  message at 1 kHz fills it in one second of a stalled scorer, so give it rate x 10 or more (and
                  its broker's max_queued_messages as much)
    [source.serial] port, format = "binary" | "csv", baudrate, channels (csv only), read_timeout_s, reopen_max_s
    [source.mqtt]   topic_device (defaults to device) or topic (any topic), qos, payload = "wire" | "json";
                    json: fields (or values, channels), records, seq_field, time_field, time_unit, scale,
                    max_payload_bytes (see ``JsonMapping``)
    [bundle]      path, watch_s (0 = no hot swap), num_threads
    [alerts]      k, n, clear_ratio, clear_windows, cooldown_s, critical_ratio, settle_windows, settle_ratio,
                  settle_margin, trend_windows, trend_growth
    [alerts.sinks] log, jsonl, mqtt, command, command_timeout_s, command_env
    [uploads]     enabled, every_s, only_normal, drift_every_s, context_before, context_after, calibration
    [drift]       enabled, windows, psi_limit
    [calibration] path, windows
    [health]      no_window_s, no_data_s, bridge_fraction, coverage_s, min_coverage
    [advice]      what to do, one text per alert kind and health condition (``edge_agent.advice``): changed,
                  degrading, over_range, no_data, ... (unknown keys refused)
    [severity]    units (g, m/s2), machine_group, foundation, band_low_hz, zone_*_mm_s, average_s: vibration
                  velocity and its ISO 10816-3 zone (``edge_agent.severity``)
    [bearing]     shaft_rpm | shaft_hz and the geometry or the four defect frequencies: bearing diagnosis at alerts
                  (``edge_agent.diagnosis``; off when absent)
    asset, location   what the sensor is mounted on and where: on the page, in Home Assistant, in every alert
    group             the sensor's kind of machine (an id): in its upload records, for training per kind of machine

Gateway only::

    [mqtt]        host, port, username, password_file | password_env (never a clear-text password), keepalive,
                  client_id; [mqtt.tls] ca_file, cert_file, key_file
    [logging]     format = "text" | "json", level
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.advice import MAX_NAME, AdviceTexts, Advisor, check_text
from edge_agent.alerts import AlertPolicy
from edge_agent.contract import topics
from edge_agent.contract.errors import ConfigError, SignatureError
from edge_agent.contract.frames import MAX_CHANNELS
from edge_agent.contract.json_mapping import TIME_UNITS, JsonMapping, PayloadDecoder
from edge_agent.diagnosis import BearingGeometry
from edge_agent.drift import DriftPolicy
from edge_agent.rollout import RolloutPolicy
from edge_agent.settings import setting
from edge_agent.severity import SeverityPolicy
from edge_agent.uploader import KeepPolicy


def _rng(lo: float | None = None, hi: float | None = None, choices: tuple | None = None) -> dict:
    return {"lo": lo, "hi": hi, "choices": choices}


@dataclass(frozen=True)
class SerialSection:
    port: str = field(metadata=_rng())  # "/dev/ttyUSB0", "/dev/pts/3", "loop://", any pyserial URL
    format: str = field(default="binary", metadata=_rng(choices=("binary", "csv")))
    baudrate: int = field(default=921_600, metadata=_rng(50, 20_000_000))
    channels: int | None = field(default=None, metadata=_rng(1, MAX_CHANNELS))
    read_timeout_s: float = field(default=0.05, metadata=_rng(0.001, 5.0))
    reopen_max_s: float = field(default=5.0, metadata=_rng(0.1, 300.0))


#: ``[source.mqtt]`` keys of a JSON payload mapping (``payload = "json"``), as ``JsonMapping`` names them.
MAPPING_KEYS = ("fields", "values", "records", "channels", "seq_field", "time_field", "time_unit", "scale")


@dataclass(frozen=True)
class MqttSection:
    """Where an MQTT sensor publishes and what its payloads look like (``payload = "json"``: ``JsonMapping``)."""

    topic_device: str | None = field(default=None, metadata=_rng())  # whose vib/<device>/samples; default: device
    topic: str | None = field(default=None, metadata=_rng())  # any topic instead (no wildcards)
    qos: int = field(default=1, metadata=_rng(0, 2))
    payload: str = field(default="wire", metadata=_rng(choices=("wire", "json")))
    fields: tuple[str, ...] | None = None
    values: str | None = None
    records: str | None = None
    channels: int | None = field(default=None, metadata=_rng(1, MAX_CHANNELS))
    seq_field: str | None = None
    time_field: str | None = None
    time_unit: str | None = field(default=None, metadata=_rng(choices=TIME_UNITS))
    scale: float | None = None
    max_payload_bytes: int | None = field(default=None, metadata=_rng(1024, 256 * 1024 * 1024))

    def samples_topic(self, device: str) -> str:
        """The topic this sensor's samples arrive on."""
        return self.topic or topics.samples_topic(self.topic_device or device)

    def mapping(self) -> JsonMapping | None:
        """The declared JSON mapping (None: the wire payloads). ConfigError naming the key at fault."""
        if self.payload != "json":
            return None
        kwargs = {k: getattr(self, k) for k in MAPPING_KEYS if getattr(self, k) is not None}
        return JsonMapping(**kwargs)

    def decoder(self) -> PayloadDecoder:
        """A new payload decoder for this source (it numbers samples itself when the mapping has no seq_field)."""
        return PayloadDecoder(self.mapping(), self.max_payload_bytes)


@dataclass(frozen=True)
class Source:
    kind: str = field(metadata=_rng(choices=("serial", "mqtt")))
    serial: SerialSection | None = None
    mqtt: MqttSection | None = None
    queue_frames: int = field(default=1024, metadata=_rng(8, 1_000_000))
    sample_rate: float | None = field(default=None, metadata=_rng(0.001, 10_000_000.0))  # Hz, if the bundle has none
    burst: bool | None = None  # sends snapshots (sequence may restart per burst); unset: recognised when it happens
    intake_cpu: float = field(default=0.1, metadata=_rng(0.01, 1.0))  # share of a core its reading may use


@dataclass(frozen=True)
class MqttTls:
    """``[mqtt.tls]``: paths (relative to the config file) of the broker's CA and this gateway's certificate."""

    ca_file: str | None = None  # CA that signed the broker's certificate; none: the system's CAs
    cert_file: str | None = None  # client certificate (brokers with require_certificate), with key_file
    key_file: str | None = None


@dataclass(frozen=True)
class Mqtt:
    """``[mqtt]``. The password is never in the config: ``password_file`` (a file holding it, first line) or
    ``password_env`` (an environment variable); a clear-text ``password`` key is refused."""

    host: str = "127.0.0.1"
    port: int = field(default=1883, metadata=_rng(1, 65535))
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    keepalive: int = field(default=30, metadata=_rng(5, 3600))
    client_id: str | None = None  # default: edge-agent-<device>
    tls: MqttTls | None = None


@dataclass(frozen=True)
class Logging:
    """``[logging]``: ``format`` text (one line per event) or json (one JSON object per line); ``level``."""

    format: str = field(default="text", metadata=_rng(choices=("text", "json")))
    level: str = field(default="info", metadata=_rng(choices=("debug", "info", "warning", "error")))


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
    command_env: tuple[str, ...] = ()  # more of the agent's environment variables the command may see (never secrets)


@dataclass(frozen=True)
class Alerts(AlertPolicy):
    """``[alerts]``: the alert policy (``alerts.AlertPolicy``, its settings declared there once) and its sinks."""

    sinks: Sinks = field(default_factory=Sinks)


@dataclass(frozen=True)
class Uploads:
    """The gateway's upload spool (the per-sensor policy is ``SensorUploads``)."""

    spool_path: str = "spool.sqlite"
    spool_max_bytes: int = field(default=64 * 1024 * 1024, metadata=_rng(1024, 1 << 40))
    spool_max_records: int = field(default=10_000, metadata=_rng(1, 100_000_000))
    batch: int = field(default=50, metadata=_rng(1, 10_000))
    max_bytes_per_hour: int = field(default=0, metadata=_rng(0, 1 << 40))  # metered link: upload budget (0: none)
    uplink_topic: str | None = None  # the bridge's notification topic: hold uploads while it reads 0
    receipts: bool = True  # keep a record until a collector's receipt names it (trainer collect sends them)
    receipt_timeout_s: float = field(default=300.0, metadata=_rng(5.0, 7 * 86_400.0))  # then send it again
    receipt_keys: tuple[str, ...] = ()  # the collectors' public keys (`trainer keygen`; `trainer collect --key`)


@dataclass(frozen=True)
class Status:
    every_s: float = field(default=10.0, metadata=_rng(0.1, 86_400.0))
    file: str | None = "edge-agent-status.json"
    mqtt: bool = True
    trend_file: str | None = setting("edge-agent-trend.sqlite", doc="the trend over weeks (per-minute, then hourly "
                                     "aggregates of every sensor; edge_agent.trend): the page's 1 h / 24 h / 30 d "
                                     "charts and /api/sensors/<device>/trend(.csv); unset: no trend")
    trend_max_bytes: int = setting(32 * 1024 * 1024, lo=64 * 1024, hi=1 << 40, doc="the trend file's bound: "
                                   "beyond it the oldest hours go (32 MB keep about a year of 16 sensors)")


@dataclass(frozen=True)
class Http:
    """The gateway's read-only web endpoint: the status page (``/``) and Prometheus metrics (``/metrics``).

    On by default, on the loopback interface only: a technician on the gateway (or through an SSH tunnel)
    and a Prometheus on the same host see it without any set-up, and nothing is reachable from the network
    until ``listen`` says so. A port already taken is logged and counted; the agent keeps scoring.
    """

    enabled: bool = True
    listen: str = field(default="127.0.0.1", metadata=_rng())  # an IP address: 127.0.0.1, ::1, 0.0.0.0, ...
    port: int = field(default=9847, metadata=_rng(0, 65535))  # 0: any free port (tests)
    write_token_file: str | None = setting(
        None, doc="a file holding the page's write token (its first line, at least 16 characters, e.g. `openssl rand "
        "-hex 16`): set, the page takes answers to alerts from whoever gives the token; unset, it is read-only")
    write_token_env: str | None = setting(None, doc="or an environment variable holding the token (not both)")


@dataclass(frozen=True)
class HomeAssistant:
    """Home Assistant MQTT discovery: retained entity configs under ``<discovery_prefix>/...`` on every connect.

    Off by default: the broker may be shared, and retained messages in another application's topic tree
    must be asked for.
    """

    enabled: bool = False
    discovery_prefix: str = field(default="homeassistant", metadata=_rng())


@dataclass(frozen=True)
class Answers:
    """Technicians' answers to alerts (acknowledge, confirmed fault, false alarm, silence for N hours): from the
    status page when ``[http]`` has a write token, and from MQTT (``vib/<device>/answer/set``, Home Assistant's
    buttons) when ``mqtt`` is on. Kept across restarts in ``file`` (only when something can answer); a false alarm
    or a confirmed fault travels with the alert's upload records to retraining."""

    file: str = setting("answers.json", doc="where the answers and silences are kept across restarts (the agent's "
                        "own file: one that is anything else is never touched)")
    mqtt: bool = setting(False, doc="take answers on `vib/<device>/answer/set` (and publish `vib/<device>/answer`; "
                         "Home Assistant gets answer buttons): only behind a broker ACL that lets only those who may "
                         "answer write there (`edge-agent broker-acl`)")


@dataclass(frozen=True)
class Calibration:
    path: str = "calibration.json"
    windows: int = field(default=0, metadata=_rng(0, 1_000_000))  # > 0: calibrate on the first N windows when unset


@dataclass(frozen=True)
class Health:
    no_window_s: float = field(default=60.0, metadata=_rng(1.0, 7 * 86_400.0))  # data arrives, nothing scorable
    no_data_s: float = field(default=60.0, metadata=_rng(1.0, 7 * 86_400.0))  # nothing arrives at all
    # share of a window's samples that may be missing or NaN, left out instead of restarting assembly
    # (features bundles without FFT bands; scripts/study_gaps.py measured 10 %: no false alarm, detection kept)
    bridge_fraction: float = field(default=0.1, metadata=_rng(0.0, 0.5))
    # health is "partial" when less than min_coverage of the samples of the last coverage_s reached a scored window
    coverage_s: float = field(default=60.0, metadata=_rng(5.0, 86_400.0))
    min_coverage: float = field(default=0.9, metadata=_rng(0.0, 1.0))


@dataclass(frozen=True)
class SensorUploads(KeepPolicy):
    """A sensor's ``[uploads]``: whether it keeps windows for retraining, and which (``uploader.KeepPolicy``)."""

    enabled: bool = False


@dataclass(frozen=True)
class Drift(DriftPolicy):
    """Score drift against the bundle's training score quantiles (``drift.DriftPolicy``)."""

    enabled: bool = True


@dataclass(frozen=True)
class Rollout(RolloutPolicy):
    """Signed model rollouts (``trainer publish``): the trusted public keys and the limits of a swap
    (``rollout.RolloutPolicy``)."""


@dataclass(frozen=True)
class Advice(AdviceTexts):
    """What to do, one text per alert kind and health condition (``advice.AdviceTexts``: the defaults, written for
    maintenance staff, are declared there once). They travel with every alert (MQTT, JSONL, the command's
    environment), in Home Assistant's attributes and on the status page. Set a key to replace its text: at the
    top level for every sensor, in ``[sensors.advice]`` for one."""


@dataclass(frozen=True)
class SensorConfig:
    """One sensor: its id, where its samples come from, the model that scores them and what its alerts do."""

    device: str
    source: Source
    bundle: BundleSection
    alerts: Alerts = field(default_factory=Alerts)
    uploads: SensorUploads = field(default_factory=SensorUploads)
    calibration: Calibration = field(default_factory=Calibration)
    health: Health = field(default_factory=Health)
    drift: Drift = field(default_factory=Drift)
    asset: str | None = setting(None, doc="what the sensor is mounted on, in the plant's words (\"cooling pump 7, "
                                "drive-end bearing\"): on the status page, in Home Assistant and in every alert")
    location: str | None = setting(None, doc="where it is (\"hall 3, bay 2\"): on the status page, in every alert, "
                                   "and Home Assistant's suggested area for the sensor's device")
    group: str | None = setting(None, doc="the sensor's kind of machine, an id (\"centrifugal-pump\"): in its upload "
                                "records, so that a model can be trained for all machines of a kind")
    advice: Advice = field(default_factory=Advice)
    severity: SeverityPolicy = field(default_factory=SeverityPolicy)
    bearing: BearingGeometry | None = None

    def advisor(self) -> Advisor:
        """The runtime side of ``asset``, ``location`` and ``advice``: what this sensor's events and status carry."""
        return Advisor(self.advice, self.asset, self.location)


@dataclass(frozen=True)
class AgentConfig:
    """The whole gateway: one MQTT connection, one status, one upload spool, any number of sensors."""

    gateway: str
    sensors: tuple[SensorConfig, ...]
    mqtt: Mqtt | None = None
    uploads: Uploads = field(default_factory=Uploads)
    status: Status = field(default_factory=Status)
    http: Http = field(default_factory=Http)
    homeassistant: HomeAssistant = field(default_factory=HomeAssistant)
    answers: Answers = field(default_factory=Answers)
    logging: Logging = field(default_factory=Logging)
    rollout: Rollout | None = None
    base_dir: Path = Path(".")
    path: Path | None = None  # the config file, when loaded from one

    def resolve(self, path: str | Path) -> Path:
        """A path from the file, relative to the config file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def client_id(self) -> str:
        return (self.mqtt.client_id if self.mqtt and self.mqtt.client_id else None) or f"edge-agent-{self.gateway}"

    @property
    def uploads_enabled(self) -> bool:
        return any(s.uploads.enabled for s in self.sensors)

    @property
    def page_writable(self) -> bool:
        """Whether the status page takes answers (a write token is configured)."""
        return self.http.enabled and (self.http.write_token_file is not None or self.http.write_token_env is not None)

    @property
    def answers_mqtt(self) -> bool:
        """Whether answers are taken on MQTT."""
        return self.answers.mqtt and self.mqtt is not None

    @property
    def answers_enabled(self) -> bool:
        """Whether anything can answer an alert (then the answers are kept in ``answers.file``)."""
        return self.page_writable or self.answers_mqtt

    def sensor(self, device: str | None = None) -> SensorConfig:
        """The sensor with this device id (the only one when None); ConfigError if there is none (or several)."""
        if device is None:
            if len(self.sensors) != 1:
                raise ConfigError(f"this config has {len(self.sensors)} sensors: name one "
                                  f"({', '.join(s.device for s in self.sensors)})")
            return self.sensors[0]
        for s in self.sensors:
            if s.device == device:
                return s
        raise ConfigError(f"no sensor {device!r} (sensors: {', '.join(s.device for s in self.sensors)})")


#: Sections of a sensor that may also be given once at the top level, as every sensor's defaults.
SENSOR_SECTIONS = ("source", "bundle", "alerts", "calibration", "health", "drift", "advice", "severity", "bearing")
#: A sensor's own keys that are not tables: at the top level only in the one-sensor layout.
SENSOR_KEYS = ("device", "asset", "location", "group")
GATEWAY_KEYS = ("gateway", "mqtt", "status", "uploads", "sensors", "http", "homeassistant", "answers", "logging",
                "rollout")
_SPOOL_KEYS = ("spool_path", "spool_max_bytes", "spool_max_records", "batch", "max_bytes_per_hour", "uplink_topic",
               "receipts", "receipt_timeout_s", "receipt_keys")


# ---------------------------------------------------------------------------------------- loading
def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a TOML config file; ConfigError names the file and the bad key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a directory, not a config file") from exc
    except NotADirectoryError as exc:
        raise ConfigError(f"{path}: a part of this path is a file, not a directory") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text ({exc})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        cfg = config_from_dict(data, base_dir=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return dataclasses.replace(cfg, path=path.resolve())


def config_from_dict(data: dict, base_dir: Path = Path(".")) -> AgentConfig:
    """Validate a parsed config (a dict as TOML gives it).

    Two layouts: one sensor (``device``, ``source``, ``bundle`` ... at the top level, the layout of the
    first releases), or ``[[sensors]]`` tables, each with its own ``device``, ``source``, ``bundle``,
    ``alerts``, ``uploads``, ``calibration``, ``health``; the same sections at the top level are every
    sensor's defaults (merged key by key, the sensor's own values win).
    """
    if not isinstance(data, dict):
        raise ConfigError("config: must be a table")
    data = dict(data)
    if "sensors" in data:
        for key in SENSOR_KEYS:
            if key in data:
                raise ConfigError(f"{key}: goes into each [[sensors]] table when there are sensors")
        raw_sensors = data.pop("sensors")
        if not isinstance(raw_sensors, list) or not raw_sensors or not all(isinstance(s, dict) for s in raw_sensors):
            raise ConfigError("sensors: must be one or more [[sensors]] tables")
        legacy = False
    else:
        if "device" not in data:
            raise ConfigError("device: required (or list [[sensors]])")
        raw_sensors = [{k: data.pop(k) for k in SENSOR_KEYS if k in data}]
        legacy = True
    unknown = sorted(set(data) - set(GATEWAY_KEYS) - set(SENSOR_SECTIONS))
    if unknown:
        known = (*GATEWAY_KEYS, *SENSOR_KEYS, *SENSOR_SECTIONS)
        raise ConfigError(f"{unknown[0]}: unknown key{_did_you_mean(unknown[0], known)} (known: "
                          f"{', '.join(sorted(known))})")
    defaults = {k: data.pop(k) for k in SENSOR_SECTIONS if k in data}
    uploads = data.pop("uploads", {})
    if not isinstance(uploads, dict):
        raise ConfigError(f"uploads: must be a table, got {type(uploads).__name__}")
    defaults["uploads"] = {k: v for k, v in uploads.items() if k not in _SPOOL_KEYS}
    gateway_uploads = {k: v for k, v in uploads.items() if k in _SPOOL_KEYS}
    sensors = []
    for i, raw in enumerate(raw_sensors):
        where = "" if legacy else f"sensors[{i}]"
        if not legacy:
            spool = sorted(set(raw.get("uploads", {}) if isinstance(raw.get("uploads"), dict) else {}) & set(_SPOOL_KEYS))
            if spool:
                raise ConfigError(f"{where}.uploads.{spool[0]}: the spool is the gateway's: set it in the top-level [uploads]")
        merged = _merge(defaults, raw)
        if not legacy and "calibration" not in raw and "path" not in defaults.get("calibration", {}):
            merged.setdefault("calibration", {})["path"] = f"calibration/{raw.get('device', i)}.json"
        sensors.append(_build(SensorConfig, merged, where))
    gateway = data["gateway"] if "gateway" in data else sensors[0].device if legacy else _host_id()
    if isinstance(data.get("mqtt"), dict) and "password" in data["mqtt"]:
        raise ConfigError("mqtt.password: a password is never written in the config (it is copied, pasted and "
                          "read by anyone who can read the file): put it in a file readable only by the agent's "
                          "user and set mqtt.password_file, or set mqtt.password_env to an environment variable")
    mqtt = _value(Mqtt | None, data.get("mqtt"), "mqtt", {}) if "mqtt" in data else None
    cfg = AgentConfig(
        gateway=_value(str, gateway, "gateway", {}),
        sensors=tuple(sensors),
        mqtt=mqtt,
        uploads=_build(Uploads, gateway_uploads, "uploads"),
        status=_build(Status, data.get("status", {}), "status"),
        http=_build(Http, data.get("http", {}), "http"),
        homeassistant=_build(HomeAssistant, data.get("homeassistant", {}), "homeassistant"),
        answers=_build(Answers, data.get("answers", {}), "answers"),
        logging=_build(Logging, data.get("logging", {}), "logging"),
        rollout=_build(Rollout, data["rollout"], "rollout") if "rollout" in data else None,
        base_dir=base_dir,
    )
    _check_semantics(cfg, legacy)
    return cfg


def _host_id() -> str:
    """The default gateway id: this host's name up to its first dot, as an id (an explicit ``gateway`` is never
    rewritten: an invalid one is an error)."""
    return topics.suggest_id(socket.gethostname().split(".")[0])


def _merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``, table by table."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_fleet(cfg: AgentConfig) -> None:
    """[rollout] keys parse and need a broker; the upload budget and the bridge topic are sound."""
    from edge_agent.contract.signing import load_public_key

    if cfg.rollout is not None:
        if cfg.mqtt is None:
            raise ConfigError("rollout: needs a [mqtt] broker section (rollouts arrive over MQTT)")
        if not cfg.rollout.public_keys:
            raise ConfigError("rollout.public_keys: at least one key (`trainer keygen` prints it)")
        for i, key in enumerate(cfg.rollout.public_keys):
            try:
                load_public_key(key)
            except SignatureError as exc:
                raise ConfigError(f"rollout.public_keys[{i}]: {exc}") from None
    u = cfg.uploads
    if cfg.uploads_enabled and u.receipts and not u.receipt_keys:
        raise ConfigError("uploads.receipt_keys: a receipt deletes records from the spool, so only a collector may "
                          "send one: give the public key(s) of the collectors' signing key (`trainer keygen --out "
                          "collector.key` prints it; run `trainer collect --key collector.key`), or set "
                          "uploads.receipts = false to forget records once the broker has them")
    for i, key in enumerate(u.receipt_keys):
        try:
            load_public_key(key)
        except SignatureError as exc:
            raise ConfigError(f"uploads.receipt_keys[{i}]: {exc}") from None
    topic = cfg.uploads.uplink_topic
    if topic is not None and (not topic or any(c in topic for c in "+#")):
        raise ConfigError(f"uploads.uplink_topic: a topic name without wildcards, got {topic!r}")
    if 0 < cfg.uploads.max_bytes_per_hour < 1024:
        raise ConfigError(f"uploads.max_bytes_per_hour: 0 (no budget) or at least 1024, got "
                          f"{cfg.uploads.max_bytes_per_hour}")


def _check_semantics(cfg: AgentConfig, legacy: bool) -> None:
    """Rules across keys and across sensors."""
    for i, s in enumerate(cfg.sensors):  # ids first: a one-sensor config's gateway id is its device's
        try:
            topics.check_id(s.device, "device id")
        except ConfigError as exc:
            raise ConfigError(f"{'' if legacy else f'sensors[{i}].'}device: {exc}") from None
    try:
        topics.check_id(cfg.gateway, "gateway id")
    except ConfigError as exc:
        raise ConfigError(f"gateway: {exc}") from None
    _check_web(cfg)
    if cfg.mqtt is not None:
        _check_mqtt(cfg.mqtt)
    _check_fleet(cfg)
    devices: dict[str, str] = {}
    ports: dict[str, str] = {}
    sample_topics: dict[str, str] = {}
    paths: dict[Path, str] = {}

    def claim(table: dict, key, owner: str, what: str) -> None:
        if key in table:
            raise ConfigError(f"{owner}: {what} is already used by {table[key]}")
        table[key] = owner

    for i, s in enumerate(cfg.sensors):
        where = "" if legacy else f"sensors[{i}]."
        _check_sensor(cfg, s, where)
        first = next((d for d in cfg.sensors[:i] if d.device.lower() == s.device.lower()), None)
        if first is not None and first.device != s.device:
            raise ConfigError(f"{where}device: device id {s.device!r} and {first.device!r} differ only in case: they are "
                              f"one name to Home Assistant and to case-insensitive file systems (rename one)")
        claim(devices, s.device, f"{where}device", f"device id {s.device!r}")
        if s.source.kind == "serial":
            port = serial_identity(s.source.serial.port)
            shown = s.source.serial.port + (f" (which is {port})" if port != s.source.serial.port else "")
            claim(ports, port, f"{where}source.serial.port", f"port {shown!r}")
        else:
            topic = (s.source.mqtt or MqttSection()).samples_topic(s.device)
            claim(sample_topics, topic, f"{where}source.mqtt", f"topic {topic!r}")
        claim(paths, cfg.resolve(s.calibration.path).resolve(), f"{where}calibration.path", "this file")
        check_path(f"{where}bundle.path", cfg.resolve(s.bundle.path), directory=True)
        if s.alerts.sinks.jsonl:
            check_path(f"{where}alerts.sinks.jsonl", cfg.resolve(s.alerts.sinks.jsonl))
    if cfg.status.file:
        check_path("status.file", cfg.resolve(cfg.status.file))
    if cfg.uploads_enabled:
        spool = cfg.resolve(cfg.uploads.spool_path).resolve()
        owned = {cfg.resolve(s.bundle.path).resolve(): "a bundle.path" for s in cfg.sensors}
        owned |= {cfg.resolve(s.alerts.sinks.jsonl).resolve(): "an alerts.sinks.jsonl file" for s in cfg.sensors
                  if s.alerts.sinks.jsonl}
        owned |= {p: "a calibration.path" for p in paths}
        if cfg.status.file:
            owned[cfg.resolve(cfg.status.file).resolve()] = "status.file"
        if spool in owned:
            raise ConfigError(f"uploads.spool_path: {spool} is {owned[spool]}, not a spool file")
        for p, what in owned.items():
            if p in spool.parents:
                raise ConfigError(f"uploads.spool_path: {spool} is inside {what} ({p})")
        check_path("uploads.spool_path", spool)


def serial_identity(port: str) -> str:
    """What a serial port really is: the resolved device path (symlinks such as /dev/serial/by-id/..., ``.`` and
    ``..`` followed), or a pyserial URL (``loop://``, ``socket://host:port``) as written. Two sensors on one
    device would each get half of its samples."""
    if "://" in port:
        return port
    return os.path.realpath(os.path.expanduser(port))


def check_path(key: str, path: Path, directory: bool = False) -> None:
    """ConfigError naming ``key`` when ``path`` cannot be what it must be: a file key that names a directory,
    a directory key that names a file, or any path under a regular file. A path that does not exist yet is fine."""
    if os.path.lexists(path):
        if directory and not path.is_dir():
            raise ConfigError(f"{key}: {path} is a file, not a directory")
        if not directory and path.is_dir():
            raise ConfigError(f"{key}: {path} is a directory, not a file")
        return
    for parent in path.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise ConfigError(f"{key}: {path} cannot exist: {parent} is a file, not a directory")
            return


def _check_web(cfg: AgentConfig) -> None:
    """[http] and [homeassistant]: an address to bind, and what discovery needs."""
    import ipaddress

    try:
        ipaddress.ip_address(cfg.http.listen)
    except ValueError:
        raise ConfigError(f"http.listen: must be an IP address (127.0.0.1, ::1, 0.0.0.0), got {cfg.http.listen!r}"
                          ) from None
    ha = cfg.homeassistant
    prefix = ha.discovery_prefix
    if any(c in prefix for c in "+#\0") or prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        raise ConfigError(f"homeassistant.discovery_prefix: must be a topic without wildcards or empty levels, "
                          f"got {prefix!r}")
    if ha.enabled and cfg.mqtt is None:
        raise ConfigError("homeassistant.enabled: needs a [mqtt] broker section")
    if ha.enabled and not cfg.status.mqtt:
        raise ConfigError("homeassistant.enabled: needs status.mqtt = true (the entities read vib/<device>/status)")
    h = cfg.http
    if h.write_token_file is not None and h.write_token_env is not None:
        raise ConfigError("http.write_token_env: give write_token_file or write_token_env, not both")
    if cfg.answers.mqtt and cfg.mqtt is None:
        raise ConfigError("answers.mqtt: needs a [mqtt] broker section")
    if cfg.answers_enabled:
        check_path("answers.file", cfg.resolve(cfg.answers.file))


#: Shortest write token the page accepts (characters): 16 hex digits are 64 bits.
MIN_TOKEN = 16


def http_write_token(cfg: AgentConfig) -> str | None:
    """The status page's write token from ``http.write_token_file`` (its first line) or ``http.write_token_env``;
    None when neither is set. ConfigError (never showing the token) when it is missing, empty or too short."""
    h = cfg.http
    if h.write_token_env is not None:
        value, key = os.environ.get(h.write_token_env) or "", "http.write_token_env"
        where = f"the environment variable {h.write_token_env}"
    elif h.write_token_file is not None:
        key, path = "http.write_token_file", cfg.resolve(h.write_token_file)
        where = str(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"{key}: {path}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{key}: {path}: not UTF-8 text") from None
        value = lines[0].strip() if lines else ""
    else:
        return None
    if len(value) < MIN_TOKEN or not value.isprintable() or " " in value:
        raise ConfigError(f"{key}: {where} must hold a token of at least {MIN_TOKEN} printable characters without "
                          f"spaces (e.g. `openssl rand -hex 16`), got {len(value)} characters")
    return value
def _check_mqtt(m: Mqtt) -> None:
    if m.password_file is not None and m.password_env is not None:
        raise ConfigError("mqtt.password_env: give password_file or password_env, not both")
    if (m.password_file is not None or m.password_env is not None) and m.username is None:
        raise ConfigError("mqtt.username: required with a password")
    if m.tls is not None and (m.tls.cert_file is None) != (m.tls.key_file is None):
        raise ConfigError("mqtt.tls.key_file: cert_file and key_file go together")


def mqtt_password(cfg: AgentConfig) -> str | None:
    """The broker password from ``mqtt.password_file`` (its first line) or ``mqtt.password_env``; None when
    neither is set. ConfigError (never showing the secret) when the file or the variable is missing or empty."""
    import os

    m = cfg.mqtt
    if m is None or (m.password_file is None and m.password_env is None):
        return None
    if m.password_env is not None:
        value = os.environ.get(m.password_env)
        if not value:
            raise ConfigError(f"mqtt.password_env: the environment variable {m.password_env} is not set or empty")
        return value
    path = cfg.resolve(m.password_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"mqtt.password_file: {path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"mqtt.password_file: {path}: not UTF-8 text") from None
    if not lines or not lines[0].strip():
        raise ConfigError(f"mqtt.password_file: {path}: empty")
    return lines[0].strip()


def secret_file_warnings(cfg: AgentConfig) -> list[str]:
    """Secret files that others can read (group or world permissions): warnings for validate-config/doctor."""
    m = cfg.mqtt
    out = []
    for key, value in (("mqtt.password_file", m.password_file if m is not None else None),
                       ("mqtt.tls.key_file", m.tls.key_file if m is not None and m.tls is not None else None),
                       ("http.write_token_file", cfg.http.write_token_file)):
        if value is None:
            continue
        path = cfg.resolve(value)
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if mode & 0o077:
            out.append(f"{key}: {path} is readable by others (mode {mode & 0o777:o}): chmod 600 it")
    return out


def _check_sensor(cfg: AgentConfig, s: SensorConfig, where: str) -> None:
    a = s.alerts
    for key in ("asset", "location"):
        try:
            check_text(key, getattr(s, key), MAX_NAME)
        except ValueError as exc:
            raise ConfigError(f"{where}{exc}") from None
    if s.group is not None:
        try:
            topics.check_id(s.group, "group id")
        except ConfigError as exc:
            raise ConfigError(f"{where}group: {exc}") from None
    src = s.source
    if src.kind == "serial" and src.serial is None:
        raise ConfigError(f"{where}source.serial: required when source.kind = 'serial'")
    if src.kind == "mqtt":
        if cfg.mqtt is None:
            raise ConfigError(f"mqtt: a [mqtt] broker section is required when {where}source.kind = 'mqtt'")
        if src.mqtt is not None:
            _check_mqtt_source(src.mqtt, f"{where}source.mqtt")
    if src.kind != "serial" and src.serial is not None:
        raise ConfigError(f"{where}source.serial: given but source.kind = {src.kind!r}")
    if src.kind != "mqtt" and src.mqtt is not None:
        raise ConfigError(f"{where}source.mqtt: given but source.kind = {src.kind!r}")
    if src.serial is not None and src.serial.format == "binary" and src.serial.channels is not None:
        raise ConfigError(f"{where}source.serial.channels: only for format = 'csv' (binary frames carry their channel count)")
    for key, needs in ((f"{where}alerts.sinks.mqtt", a.sinks.mqtt), (f"{where}uploads.enabled", s.uploads.enabled)):
        if needs and cfg.mqtt is None:
            raise ConfigError(f"{key}: needs a [mqtt] broker section")
    if a.sinks.command is not None and not a.sinks.command:
        raise ConfigError(f"{where}alerts.sinks.command: must be a non-empty list of strings (program and arguments)")
    secret = cfg.mqtt.password_env if cfg.mqtt is not None else None
    if secret is not None and secret in a.sinks.command_env:
        raise ConfigError(f"{where}alerts.sinks.command_env: {secret} holds the broker password (mqtt.password_env): "
                          f"it never goes to a child program")


def _check_mqtt_source(m: MqttSection, where: str) -> None:
    """Topic and payload mapping of an MQTT source (the mapping is built once here, so its errors come at load)."""
    if m.topic_device is not None:
        try:
            topics.check_id(m.topic_device)
        except ConfigError as exc:
            raise ConfigError(f"{where}.topic_device: {exc}") from None
    if m.topic is not None:
        if m.topic_device is not None:
            raise ConfigError(f"{where}.topic: give topic or topic_device, not both")
        if any(ch in m.topic for ch in "+#\0") or len(m.topic.encode()) > 65535:
            raise ConfigError(f"{where}.topic: one topic, without the wildcards '+' and '#' (a sensor reads one "
                              f"publisher), got {m.topic!r}")
    if m.payload != "json":
        given = [k for k in (*MAPPING_KEYS, "max_payload_bytes") if getattr(m, k) is not None]
        if given:
            raise ConfigError(f"{where}.{given[0]}: only for payload = \"json\" (the wire payloads describe themselves)")
        return
    if m.time_unit is not None and m.time_field is None:
        raise ConfigError(f"{where}.time_unit: only with time_field")
    try:
        m.mapping()
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None


def _build(cls: type, data: object, where: str):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and bad values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{key}: unknown key{_did_you_mean(unknown[0], fields)} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: required")
            continue
        kwargs[name] = _value(hints[name], data[name], key, f.metadata)
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a rule between keys (alerts.k <= alerts.n), raised by the policy itself
        raise ConfigError(f"{where}.{exc}" if where else str(exc)) from None


def _did_you_mean(key: object, known) -> str:
    """``", did you mean 'over_range'?"`` for a key close to a known one (a typo), else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.75)
    return f", did you mean {close[0]!r}?" if close else ""


def _value(tp, value: object, key: str, meta) -> object:
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:  # a value valid for one member would be checked against another
            raise TypeError(f"{key}: a config field has one type (or None), not {tp}")
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
