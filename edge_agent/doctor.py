"""``edge-agent doctor --config FILE``: is this gateway ready to monitor its machines? One table, one verdict.

Checks (each ``ok``, ``warn`` or ``FAIL``, with what was seen)::

    gateway   config        the file loads (else nothing else is checked)
    gateway   secrets       the MQTT password can be read; secret files are not readable by others
    gateway   broker        connects and authenticates within --timeout-s (TLS, password), as its own client id
    gateway   spool disk    the spool's folder is writable and its disk can hold the spool's bound
    gateway   clock         the wall clock is not before the bundles were made; NTP synchronised (timedatectl)
    gateway   agent         a running agent's status file is fresh (else: none running, which is fine before start)
    <sensor>  port          the serial device exists, is a character device, readable and writable by this user
    <sensor>  data          samples arrive at the expected rate (listens --listen-s; reads the running agent's status
                            instead of a serial port the agent holds: two readers on one tty would steal its bytes)
    <sensor>  payload       what arrives decodes as source.serial.format / source.mqtt.payload says
    <sensor>  channels      the stream's channel count is the bundle's (run rejects every frame of another width;
                            with the agent running: no frame rejected by it while doctor watched)
    <sensor>  rate          the rate in the stream's timestamps and sequence numbers is the one run assumes (the
                            bundle's signal.sample_rate, its preprocessing's, else source.sample_rate): within
                            1 % ok, 5 % warn, beyond a failure
    <sensor>  values        no NaN, no saturated value, none beyond the bundle's signal.range (> 0.1 %: warn,
                            > 50 %: a failure)
    <sensor>  bundle        loads and scores a test window in the runtime (digest, tensors, test inference)
    <sensor>  calibration   a device threshold for the served model version (else the bundle's default: warn)

The stream rows need something decoded (payload: something arrived) and the bundle loaded (channels, rate,
values); a failure names the sensor, what the stream has, what the bundle expects, and what to do.

Exit code: 0 every check ok, 1 warnings only, 2 at least one failure (scripts: ``doctor || alarm``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from edge_agent.config import AgentConfig, SensorConfig, mqtt_password, secret_file_warnings
from edge_agent.contract.errors import AgentError, FrameError
from edge_agent.sinks import child_env

OK, WARN, FAIL = "ok", "warn", "FAIL"
EXIT = {OK: 0, WARN: 1, FAIL: 2}
#: A bundle made before this is impossible: a wall clock earlier than it is wrong (a gateway without RTC).
CLOCK_FLOOR = 1_704_067_200  # 2024-01-01T00:00:00Z


@dataclass(frozen=True)
class Check:
    scope: str  # "gateway" or a device id
    name: str
    verdict: str  # ok | warn | FAIL
    detail: str


def verdict(checks: list[Check]) -> str:
    return FAIL if any(c.verdict == FAIL for c in checks) else WARN if any(c.verdict == WARN for c in checks) else OK


def run(cfg: AgentConfig, *, listen_s: float = 5.0, timeout_s: float = 10.0) -> list[Check]:
    """Every check of ``cfg`` (see the module docstring), gateway first, then per sensor."""
    checks: list[Check] = [Check("gateway", "config", OK, f"{cfg.path or 'config'}: {len(cfg.sensors)} sensor(s)")]
    checks += _secrets(cfg)
    connection = None
    if cfg.mqtt is not None and not any(c.verdict == FAIL for c in checks if c.name == "secrets"):
        check, connection = _broker(cfg, timeout_s)
        checks.append(check)
    try:
        checks.append(_spool_disk(cfg))
        bundles = {s.device: _bundle(cfg, s) for s in cfg.sensors}
        checks.append(_clock(cfg, [b for _, b in bundles.values() if b is not None]))
        running = _running_agent(cfg)
        checks.append(running[0])
        for s in cfg.sensors:
            bundle_check, bundle = bundles[s.device]
            if s.source.kind == "serial":
                checks.append(_port(s))
            checks += _stream(cfg, s, bundle, running[1], connection, listen_s)
            checks.append(bundle_check)
            checks.append(_calibration(cfg, s, bundle))
    finally:
        if connection is not None:
            connection.stop()
    return checks


# ---------------------------------------------------------------------------------------- gateway
def _secrets(cfg: AgentConfig) -> list[Check]:
    if cfg.mqtt is None:
        return []
    try:
        password = mqtt_password(cfg)
    except AgentError as exc:
        return [Check("gateway", "secrets", FAIL, str(exc))]
    warnings = secret_file_warnings(cfg)
    if warnings:
        return [Check("gateway", "secrets", WARN, "; ".join(warnings))]
    how = ("no password" if password is None else
           f"password from {'$' + cfg.mqtt.password_env if cfg.mqtt.password_env else cfg.mqtt.password_file}")
    return [Check("gateway", "secrets", OK, how + (", TLS" if cfg.mqtt.tls else ", no TLS"))]


def _broker(cfg: AgentConfig, timeout_s: float):
    from edge_agent.mqtt_client import connection_for

    m = cfg.mqtt
    where = f"{m.host}:{m.port}{' (TLS)' if m.tls else ''}"
    try:
        connection = connection_for(cfg, f"{cfg.client_id}-doctor", reconnect_max_s=2.0)
    except AgentError as exc:
        return Check("gateway", "broker", FAIL, f"{where}: {exc}"), None
    connection.start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not connection.connected and connection.counters.refused_connects == 0:
        connection.wait_connected(0.2)
    if connection.connected:
        user = f" as {m.username}" if m.username else ""
        return Check("gateway", "broker", OK, f"{where}: connected and authenticated{user}"), connection
    connection.stop()
    reason = connection.counters.last_error or f"no answer in {timeout_s:g} s"
    return Check("gateway", "broker", FAIL, f"{where}: {reason}"), None


def _spool_disk(cfg: AgentConfig) -> Check:
    spool = cfg.resolve(cfg.uploads.spool_path)
    folder = next((p for p in (spool.parent, *spool.parent.parents) if p.exists()), Path("/"))
    if not os.access(folder, os.W_OK | os.X_OK):
        return Check("gateway", "spool disk", FAIL, f"{folder}: not writable by this user (uid {os.geteuid()})")
    usage = shutil.disk_usage(folder)
    used = spool.stat().st_size if spool.exists() else 0
    need = max(0, cfg.uploads.spool_max_bytes - used)
    detail = f"{folder}: {usage.free / 2**20:.0f} MiB free, spool {used / 2**20:.1f} of {cfg.uploads.spool_max_bytes / 2**20:.0f} MiB"
    if usage.free < need:
        return Check("gateway", "spool disk", FAIL, detail + ": the disk cannot hold a full spool")
    if usage.free < 2 * need or usage.free < usage.total * 0.05:
        return Check("gateway", "spool disk", WARN, detail + ": little room left")
    return Check("gateway", "spool disk", OK, detail)


def _clock(cfg: AgentConfig, bundles: list) -> Check:
    now = time.time()
    made = []
    for b in bundles:
        try:
            made.append(datetime.fromisoformat(b.manifest["model"]["created"]).timestamp())
        except (KeyError, TypeError, ValueError):
            continue
    floor = max([CLOCK_FLOOR, *made])
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    if now < floor:
        return Check("gateway", "clock", FAIL, f"{stamp} is before {time.strftime('%Y-%m-%d', time.gmtime(floor))} "
                     "(a bundle's creation or 2024): the clock is wrong (no RTC, no NTP yet?)")
    synced = _ntp_synchronized()
    if synced is False:
        return Check("gateway", "clock", WARN, f"{stamp}: NTP not synchronised (timedatectl); alert times may be off")
    return Check("gateway", "clock", OK, f"{stamp}" + (", NTP synchronised" if synced else ", NTP state unknown"))


def _ntp_synchronized() -> bool | None:
    exe = shutil.which("timedatectl")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True,
                             env=child_env(), timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return {"yes": True, "no": False}.get(value) if out.returncode == 0 else None


def _running_agent(cfg: AgentConfig) -> tuple[Check, dict | None]:
    """A fresh status file means an agent runs: (check, its status) — else (check, None)."""
    if not cfg.status.file:
        return Check("gateway", "agent", OK, "status.file not set: cannot tell whether an agent runs"), None
    path = cfg.resolve(cfg.status.file)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return Check("gateway", "agent", OK, "not running (no status file yet)"), None
    except (OSError, ValueError) as exc:
        return Check("gateway", "agent", WARN, f"{path}: unreadable status: {exc}"), None
    if doc.get("state") == "stopped" or age > max(3 * cfg.status.every_s, 30):
        return Check("gateway", "agent", OK, f"not running (status {doc.get('state')}, {age:.0f} s old)"), None
    return Check("gateway", "agent", OK, f"running: up {doc.get('uptime_s')} s, mqtt connected "
                 f"{doc.get('mqtt_connected')}"), doc


# ---------------------------------------------------------------------------------------- sensors
def _port(s: SensorConfig) -> Check:
    port = s.source.serial.port
    if "://" in port:
        return Check(s.device, "port", OK, f"{port}: a pyserial URL (not checked)")
    path = Path(port)
    try:
        st = path.stat()
    except FileNotFoundError:
        return Check(s.device, "port", FAIL, f"{port}: no such device (unplugged? ls /dev/serial/by-id/)")
    except OSError as exc:
        return Check(s.device, "port", FAIL, f"{port}: {exc.strerror or exc}")
    if not stat.S_ISCHR(st.st_mode):
        return Check(s.device, "port", FAIL, f"{port}: not a character device")
    if not os.access(path, os.R_OK | os.W_OK):
        return Check(s.device, "port", FAIL, f"{port}: not readable and writable by this user (group dialout?)")
    real = os.path.realpath(path)
    return Check(s.device, "port", OK, port + (f" -> {real}" if real != port else ""))


def _stream(cfg: AgentConfig, s: SensorConfig, bundle, running: dict | None, connection, listen_s: float) -> list[Check]:
    """The sensor's live stream judged against its bundle as ``run`` will judge it: ``data`` (samples arrive),
    ``payload`` (they decode), ``channels``, ``rate`` and ``values`` (what the model expects). A running agent
    holds a serial port (two readers on one tty would steal its bytes): its status is read instead."""
    expected = _expected_rate(cfg, s, bundle)
    if running is not None and s.device in running.get("sensors", {}) and s.source.kind == "serial":
        return _agent_checks(cfg, s, bundle, running, listen_s, expected)
    if s.source.kind == "mqtt" and connection is None:
        return [Check(s.device, "data", FAIL, "no broker connection: cannot listen")]
    heard = _listen(cfg, s, bundle, listen_s)
    checks = [_data(s, heard, expected)]
    if heard.frames or heard.bytes or heard.messages:  # something arrived: does it decode?
        checks.append(_payload(s, heard))
    if heard.frames and bundle is not None:  # frames decoded: are they what the model expects?
        checks += [_channels(s, heard, bundle), _rate(s, heard, expected), _values(s, heard, bundle)]
    return checks


@dataclass
class Heard:
    """What doctor heard from a sensor's source while listening (``_listen``); counts over all frames."""

    seconds: float = 0.0
    frames: int = 0
    samples: int = 0
    channels: dict[int, int] = field(default_factory=dict)  # channel count -> frames
    values: int = 0
    non_finite: int = 0  # NaN or infinite values
    saturated: int = 0  # saturated int16 codes (binary frames)
    beyond_range: int = 0  # finite values beyond the bundle's signal.range
    stamped_samples: int = 0  # samples between consecutive frames whose timestamps advance ...
    stamped_us: int = 0  # ... and the microseconds of sensor clock between them
    bytes: int = 0  # received from the link
    messages: int = 0  # MQTT messages received
    refused: dict[str, int] = field(default_factory=dict)  # the source's counters of SOURCE_ERRORS
    topic: str | None = None  # MQTT: the topic listened to
    first_error: str | None = None  # the first payload refused, in words (MQTT)
    _last: tuple[int, int] | None = None  # (seq, t0_us) of the previous frame

    def add(self, frame, value_range: float | None) -> None:
        """Count one frame (samples (n, C) float32)."""
        from edge_agent.contract.frames import seq_gap

        x = frame.samples
        self.frames += 1
        self.samples += frame.n_samples
        self.channels[frame.n_channels] = self.channels.get(frame.n_channels, 0) + 1
        self.values += x.size
        finite = np.isfinite(x)
        self.non_finite += int(x.size - np.count_nonzero(finite))
        self.saturated += frame.saturated
        if value_range is not None:
            self.beyond_range += int(np.count_nonzero(np.abs(x[finite]) > value_range))
        if self._last is not None:
            n, us = seq_gap(self._last[0], frame.seq), frame.t0_us - self._last[1]
            if 0 < n <= MAX_STAMP_STEP and us > 0:  # a restart, a resync or a clock without time: not a step
                self.stamped_samples += n
                self.stamped_us += us
        self._last = (frame.seq, frame.t0_us)

    @property
    def arrival_rate(self) -> float:
        """Samples per second of this machine's clock."""
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    @property
    def stamped_rate(self) -> float | None:
        """Samples per second of the sensor's own clock (its frames' t0_us), or None when they carry no time."""
        if self.stamped_us < MIN_STAMPED_S * 1e6 or self.stamped_samples == 0:
            return None
        return self.stamped_samples / (self.stamped_us / 1e6)

    def errors(self) -> str:
        """The source's refusals and link troubles this listen, in words ("crc_errors 3, ...")."""
        return ", ".join(f"{k} {v}" for k, v in self.refused.items() if v)


#: Source counters that mean refused input or link trouble.
SOURCE_ERRORS = ("crc_errors", "bad_headers", "bad_lines", "bad_payloads", "oversized_payloads", "frames_dropped",
                 "open_failures", "read_errors")
#: Largest step between two frames' sequence numbers used to measure the sensor's rate (a larger one is a resync).
MAX_STAMP_STEP = 1_000_000
#: The sensor's clock must span this long in the frames heard before its rate is judged.
MIN_STAMPED_S = 0.5
#: The rate in the stream's timestamps may differ from the expected one by this fraction (a warning beyond it)...
RATE_WARN = 0.01
#: ... and by this much before it is a failure (every frequency the model learned would be shifted as much).
RATE_FAIL = 0.05
#: The arrival rate (this machine's clock, a short listen) may differ from the expected rate by this fraction.
ARRIVAL_TOLERANCE = 0.10
#: Invalid values (NaN, saturated, beyond signal.range) above this fraction: a warning (the pipeline
#: judges a span with this much clipping anomalous: pipeline.OVER_RANGE_MIN_FRACTION) ...
INVALID_WARN = 1e-3
#: ... and above this fraction a failure: most of the stream cannot be scored.
INVALID_FAIL = 0.5


def _expected_rate(cfg: AgentConfig, s: SensorConfig, bundle) -> tuple[float | None, str]:
    """The sample rate ``run`` will assume, and who says it (``pipeline.make_windower``'s order)."""
    if bundle is not None:
        signal = bundle.manifest.get("signal", {})
        stated = signal.get("sample_rate") if isinstance(signal, dict) else None
        if isinstance(stated, int | float) and stated > 0:
            return float(stated), f"the bundle's signal.sample_rate ({bundle.model_id})"
        if bundle.spec.sample_rate:
            return float(bundle.spec.sample_rate), f"the bundle's preprocessing ({bundle.model_id})"
    if s.source.sample_rate:
        where = Path(cfg.path).name if cfg.path else "the config"
        return float(s.source.sample_rate), f"source.sample_rate in {where}"
    return None, "nothing (neither the bundle nor source.sample_rate states a rate)"


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _value_range(bundle) -> float | None:
    """The bundle's ``signal.range`` (|value| beyond it is invalid in ``run``), or None."""
    signal = bundle.manifest.get("signal", {}) if bundle is not None else {}
    value = signal.get("range") if isinstance(signal, dict) else None
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _data(s: SensorConfig, heard: Heard, expected: tuple[float | None, str]) -> Check:
    rate, _ = expected
    detail = f"{heard.samples} samples in {heard.seconds:.1f} s (listened): {heard.arrival_rate:,.0f} Hz"
    if rate:
        detail += f" of {rate:,.0f} Hz expected"
    if heard.errors():
        detail += f"; {heard.errors()}"
    if heard.samples == 0:
        received = heard.bytes or heard.messages
        return Check(s.device, "data", FAIL, detail + (": data arrives but nothing decodes (see payload)"
                                                       if received else ": nothing arrives"))
    if rate and not 1 - ARRIVAL_TOLERANCE <= heard.arrival_rate / rate <= 1 + ARRIVAL_TOLERANCE:
        return Check(s.device, "data", WARN, detail + f": arrival rate off by more than {ARRIVAL_TOLERANCE:.0%}")
    return Check(s.device, "data", WARN if heard.errors() else OK, detail)


def _payload(s: SensorConfig, heard: Heard) -> Check:
    """Whether what arrives decodes as the configured format (``run`` drops what does not, frame by frame)."""
    if s.source.kind == "serial":
        fmt = s.source.serial.format
        what = f"{heard.bytes} bytes read from {s.source.serial.port}"
        how = "binary wire frames" if fmt == "binary" else "CSV lines (seq,t_us,v0,...)"
        fix = ("the sensor sends another format: set source.serial.format (binary or csv) to what it sends, "
               "or check its firmware and baud rate")
    else:
        m = s.source.mqtt
        fmt = m.payload if m is not None else "wire"
        topic = heard.topic or "the samples topic"
        what = f"{heard.messages} messages on {topic}"
        how = ("the gateway's wire payloads (a binary frame or the wire JSON)" if fmt != "json"
               else "the sensor's JSON through source.mqtt's mapping")
        fix = ("the sensor publishes another payload: set source.mqtt.payload ('wire' for the gateway's frames, "
               "'json' with fields or values for the sensor's own JSON)")
    errors = heard.errors()
    first = f" (first refused: {heard.first_error})" if heard.first_error else ""
    if heard.frames == 0:
        return Check(s.device, "payload", FAIL, f"sensor {s.device}: {what}, none decodes as {how}"
                     f"{'; ' + errors if errors else ''}{first}: {fix}")
    detail = f"{heard.frames} frames decoded as {how} from {what}"
    if errors:
        return Check(s.device, "payload", WARN, f"{detail}; refused: {errors}{first}")
    return Check(s.device, "payload", OK, detail)


def _channels(s: SensorConfig, heard: Heard, bundle) -> Check:
    """The stream's channel count against the model's (``run`` rejects every frame of another width)."""
    names = ", ".join(bundle.spec.channels)
    want = len(bundle.spec.channels)
    wrong = {c: n for c, n in heard.channels.items() if c != want}
    if not wrong:
        return Check(s.device, "channels", OK, f"{_n(want, 'channel')} as the model expects ({names})")
    seen = max(heard.channels, key=heard.channels.get)
    hint = (" (for a JSON sensor, source.mqtt.fields or values picks them)"
            if s.source.kind == "mqtt" and s.source.mqtt is not None and s.source.mqtt.payload == "json" else "")
    counts = ", ".join(f"{_n(n, 'frame')} with {c}" for c, n in sorted(heard.channels.items()))
    which = (f"the stream has {_n(seen, 'channel')}" if len(heard.channels) == 1
             else f"the stream's frames differ in width ({counts})")
    return Check(s.device, "channels", FAIL,
                 f"sensor {s.device}: {which}, the bundle's model {bundle.model_id} expects {want} (channels {names}): "
                 f"run would reject {'every frame' if not heard.channels.get(want) else 'those frames'}. Send the "
                 f"model's {want} channels{hint}, or deploy a bundle trained on this sensor's channels "
                 f"(edge-agent deploy)")


def _rate(s: SensorConfig, heard: Heard, expected: tuple[float | None, str]) -> Check:
    """The sensor's own clock (its frames' timestamps and sequence numbers) against the rate ``run`` assumes."""
    rate, who = expected
    stamped = heard.stamped_rate
    if stamped is None:
        return Check(s.device, "rate", OK, "the stream carries no usable timestamps: only the arrival rate is judged "
                     "(see data)" + (f"; {rate:,.0f} Hz from {who}" if rate else f"; {who}: window times count samples"))
    said = f"the stream's timestamps say {stamped:,.0f} Hz"
    if not rate:
        return Check(s.device, "rate", OK, f"{said}; {who}: window times count samples (source.sample_rate = "
                     f"{stamped:.6g} would make them seconds)")
    off = stamped / rate - 1
    detail = f"{said}, {who} says {rate:,.0f} Hz ({off:+.1%})"
    fix = f"set the sensor to {rate:,.0f} Hz, or " + (
        f"set source.sample_rate = {stamped:.6g} if the bundle was trained at that rate"
        if who.startswith("source.sample_rate") else f"train and deploy a bundle at {stamped:,.0f} Hz")
    if abs(off) > RATE_FAIL:
        return Check(s.device, "rate", FAIL, f"sensor {s.device}: {detail}: the model would see every frequency "
                     f"scaled by {rate / stamped:.3g}; {fix}")
    if abs(off) > RATE_WARN:
        return Check(s.device, "rate", WARN, f"{detail}: {fix}")
    configured = s.source.sample_rate
    if configured and not who.startswith("source.sample_rate") and abs(configured / rate - 1) > RATE_WARN:
        return Check(s.device, "rate", WARN, f"{detail}; source.sample_rate ({configured:,.0f} Hz) is not used: "
                     f"{who} wins (remove it, or correct it)")
    return Check(s.device, "rate", OK, detail)


def _values(s: SensorConfig, heard: Heard, bundle) -> Check:
    """NaN, saturated and out-of-range values: ``run`` scores none of them (and judges a clipped span anomalous)."""
    limit = _value_range(bundle)
    parts = [f"{heard.non_finite} NaN or infinite", f"{heard.saturated} saturated (int16 full scale)"]
    if limit is not None:
        parts.append(f"{heard.beyond_range} beyond the bundle's signal.range ±{limit:g}")
    invalid = heard.non_finite + heard.saturated + heard.beyond_range
    share = invalid / heard.values if heard.values else 0.0
    detail = f"{invalid} of {heard.values} values invalid ({share:.2%}): " + ", ".join(parts)
    if limit is None:
        detail += " (the bundle states no signal.range)"
    causes = (["NaN: a failing channel, or a sensor marking lost samples"] if heard.non_finite else []) + (
        ["clipping: the sensor's full scale is too small for this machine (run judges a clipped span anomalous)"]
        if heard.saturated or heard.beyond_range else [])
    if share > INVALID_FAIL:
        return Check(s.device, "values", FAIL, f"sensor {s.device}: {detail}: run would score almost nothing; "
                     f"check the sensor ({'; '.join(causes)})")
    if share > INVALID_WARN:
        return Check(s.device, "values", WARN, f"{detail}: run skips them; check the sensor ({'; '.join(causes)})")
    return Check(s.device, "values", OK, detail)


def _agent_checks(cfg: AgentConfig, s: SensorConfig, bundle, first: dict, listen_s: float,
                  expected: tuple[float | None, str]) -> list[Check]:
    """``data`` and ``channels`` from the running agent's status, two status files ``listen_s`` apart."""
    path = cfg.resolve(cfg.status.file)
    deadline = time.monotonic() + listen_s + 2 * cfg.status.every_s + 1
    doc = first
    while doc.get("uptime_s", 0) - first.get("uptime_s", 0) < listen_s and time.monotonic() < deadline:
        time.sleep(0.2)  # the agent rewrites its status every status.every_s: poll it, bounded by the deadline
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    a, b = first["sensors"][s.device], doc.get("sensors", {}).get(s.device, first["sensors"][s.device])
    seconds = float(doc.get("uptime_s", 0) - first.get("uptime_s", 0))
    delta = {k: b.get(k, 0) - a.get(k, 0) for k in (*SOURCE_ERRORS, "gaps", "frames_rejected", "samples_invalid",
                                                    "samples_in")}
    samples = delta.pop("samples_in")
    rate, _ = expected
    arrival = samples / seconds if seconds > 0 else 0.0
    errors = ", ".join(f"{k} +{v}" for k, v in delta.items() if v)
    detail = f"{samples} samples in {seconds:.1f} s (read by the running agent): {arrival:,.0f} Hz"
    detail += (f" of {rate:,.0f} Hz expected" if rate else "") + (f"; {errors}" if errors else "")
    if samples == 0:
        data = Check(s.device, "data", FAIL, detail + ": nothing arrives")
    elif rate and not 1 - ARRIVAL_TOLERANCE <= arrival / rate <= 1 + ARRIVAL_TOLERANCE:
        data = Check(s.device, "data", WARN, detail + f": arrival rate off by more than {ARRIVAL_TOLERANCE:.0%}")
    else:
        data = Check(s.device, "data", WARN if errors else OK, detail)
    if bundle is None:
        return [data]
    want = len(bundle.spec.channels)
    if delta["frames_rejected"]:
        return [data, Check(s.device, "channels", FAIL, f"sensor {s.device}: the running agent rejected "
                            f"{delta['frames_rejected']} frames in {seconds:.0f} s for their channel count: the "
                            f"bundle's model {bundle.model_id} expects {want} (channels "
                            f"{', '.join(bundle.spec.channels)}); stop the agent and run doctor again to see the "
                            "stream's width")]
    return [data, Check(s.device, "channels", OK, f"no frame rejected by the running agent ({want} channels "
                        "expected)")]


def _listen(cfg: AgentConfig, s: SensorConfig, bundle, listen_s: float) -> Heard:
    """Read the sensor's source for ``listen_s`` as ``run`` would (its own MQTT connection, under a doctor client
    id so that a running agent keeps its own), counting what arrives."""
    from edge_agent.sensor import make_source

    value_range = _value_range(bundle)
    source = make_source(s, cfg, client_id=f"{cfg.client_id}-doctor-{s.device}"[:64])
    decoder = getattr(source, "decoder", None)
    if decoder is not None:
        source.decoder = _NamingDecoder(decoder)
    heard = Heard()
    source.start()
    connection = getattr(source, "connection", None)
    if connection is not None:
        connection.wait_subscribed(5)
    t0 = time.monotonic()
    try:
        while (left := t0 + listen_s - time.monotonic()) > 0:
            for frame in source.read(min(left, 0.2)):
                heard.add(frame, value_range)
    finally:
        heard.seconds = time.monotonic() - t0
        source.stop()
    c = source.counters
    heard.bytes, heard.messages = c.bytes, c.messages
    heard.refused = {k: getattr(c, k, 0) for k in SOURCE_ERRORS}
    heard.topic = getattr(source, "topic", None)
    heard.first_error = getattr(source.decoder, "first_error", None) if decoder is not None else None
    return heard


class _NamingDecoder:
    """A payload decoder that keeps the reason of the first payload it refused (doctor names it)."""

    def __init__(self, decoder) -> None:
        self.decoder = decoder
        self.counted = decoder.counted
        self.first_error: str | None = None

    def decode(self, payload):
        try:
            return self.decoder.decode(payload)
        except FrameError as exc:
            if self.first_error is None:
                self.first_error = str(exc)[:200]
            raise


def _bundle(cfg: AgentConfig, s: SensorConfig):
    from edge_agent.bundle_watch import load_served_model

    path = cfg.resolve(s.bundle.path)
    try:
        model = load_served_model(path, s.bundle.num_threads)
    except AgentError as exc:
        return Check(s.device, "bundle", FAIL, f"{path}: {exc}"), None
    except (OSError, ValueError, RuntimeError) as exc:
        return Check(s.device, "bundle", FAIL, f"{path}: cannot load: {exc}"), None
    b = model.bundle
    return Check(s.device, "bundle", OK, f"{b.model_id} {b.version} ({b.quantization}), test inference ok"), b


def _calibration(cfg: AgentConfig, s: SensorConfig, bundle) -> Check:
    from edge_agent import calibration

    path = cfg.resolve(s.calibration.path)
    if bundle is None:
        return Check(s.device, "calibration", FAIL, "no model to calibrate for")
    value, source = calibration.threshold_in_force(path, bundle, s.device)
    if source == "calibration":
        return Check(s.device, "calibration", OK, f"threshold {value:.6g} for {bundle.version} ({path})")
    why = "none" if not path.exists() else "made for another model version or device"
    return Check(s.device, "calibration", WARN, f"{why} at {path}: the bundle's threshold {value:.6g} applies "
                 f"(run edge-agent calibrate on the healthy machine)")


# ---------------------------------------------------------------------------------------- output
def table(checks: list[Check]) -> str:
    rows = [("scope", "check", "verdict", "detail")] + [(c.scope, c.name, c.verdict, c.detail) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True)) + "  " + r[3] for r in rows]
    v = verdict(checks)
    n = {k: sum(c.verdict == k for c in checks) for k in (WARN, FAIL)}
    lines.append(f"verdict: {v.upper()} ({len(checks)} checks, {n[WARN]} warnings, {n[FAIL]} failures; "
                 f"exit {EXIT[v]})")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> str:
    v = verdict(checks)
    return json.dumps({"verdict": v, "exit": EXIT[v], "checks": [asdict(c) for c in checks]}, indent=2)
