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
                            instead of the port when the agent runs: two readers on one tty would steal its bytes)
    <sensor>  bundle        loads and scores a test window in the runtime (digest, tensors, test inference)
    <sensor>  calibration   a device threshold for the served model version (else the bundle's default: warn)

Exit code: 0 every check ok, 1 warnings only, 2 at least one failure (scripts: ``doctor || alarm``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from edge_agent.config import AgentConfig, SensorConfig, mqtt_password, secret_file_warnings
from edge_agent.contract.errors import AgentError
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
            checks.append(_data(cfg, s, bundle, running[1], connection, listen_s))
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


def _data(cfg: AgentConfig, s: SensorConfig, bundle, running: dict | None, connection, listen_s: float) -> Check:
    from edge_agent.pipeline import make_windower

    expected = None
    if bundle is not None:
        expected = make_windower(bundle, s.source.sample_rate).sample_rate
    expected = expected or s.source.sample_rate
    if running is not None and s.device in running.get("sensors", {}):
        samples, seconds, errors = _agent_rate(cfg, s.device, running, listen_s)
        how = "read by the running agent"
    elif s.source.kind == "mqtt" and connection is None:
        return Check(s.device, "data", FAIL, "no broker connection: cannot listen")
    else:
        samples, seconds, errors = _listen(s, connection, listen_s)
        how = "listened"
    rate = samples / seconds if seconds > 0 else 0.0
    detail = f"{samples} samples in {seconds:.1f} s ({how}): {rate:,.0f} Hz"
    if expected:
        detail += f" of {expected:,.0f} Hz expected"
    if errors:
        detail += f"; {errors}"
    if samples == 0:
        return Check(s.device, "data", FAIL, detail + ": nothing arrives")
    if expected and not 0.9 <= rate / expected <= 1.1:
        return Check(s.device, "data", WARN, detail + ": rate off by more than 10 %")
    return Check(s.device, "data", WARN if errors else OK, detail)


def _agent_rate(cfg: AgentConfig, device: str, first: dict, listen_s: float) -> tuple[int, float, str]:
    """Samples the running agent counted for ``device`` between two of its status files."""
    path = cfg.resolve(cfg.status.file)
    deadline = time.monotonic() + listen_s + 2 * cfg.status.every_s + 1
    doc = first
    while doc.get("uptime_s", 0) - first.get("uptime_s", 0) < listen_s and time.monotonic() < deadline:
        time.sleep(0.2)  # the agent rewrites its status every status.every_s: poll it, bounded by the deadline
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    a, b = first["sensors"][device], doc.get("sensors", {}).get(device, first["sensors"][device])
    seconds = float(doc.get("uptime_s", 0) - first.get("uptime_s", 0))
    errors = {k: b.get(k, 0) - a.get(k, 0) for k in ("crc_errors", "gaps", "frames_dropped", "bad_payloads")}
    return b.get("samples_in", 0) - a.get("samples_in", 0), seconds, ", ".join(
        f"{k} +{v}" for k, v in errors.items() if v)


def _listen(s: SensorConfig, connection, listen_s: float) -> tuple[int, float, str]:
    from edge_agent.sensor import make_source

    source = make_source(s, connection)
    source.start()
    if connection is not None and s.source.kind == "mqtt":
        connection.wait_subscribed(5)
    samples = 0
    t0 = time.monotonic()
    try:
        while (left := t0 + listen_s - time.monotonic()) > 0:
            samples += sum(f.n_samples for f in source.read(min(left, 0.2)))
    finally:
        seconds = time.monotonic() - t0
        source.stop()
    c = source.counters.as_dict()
    errors = ", ".join(f"{k} {v}" for k, v in c.items() if v and k in (
        "crc_errors", "bad_headers", "bad_lines", "bad_payloads", "frames_dropped", "open_failures", "read_errors"))
    return samples, seconds, errors


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
