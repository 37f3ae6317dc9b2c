"""``edge-agent install``: a systemd service for the agent, run by its own unprivileged user.

What it does (a dry run prints exactly this list; ``--apply`` does it; ``--root DIR`` does it under DIR)::

    /usr/lib/sysusers.d/edge-agent.conf   system user and group "edge-agent" (no login, no home of its own),
                                          member of "dialout" (serial ports); created with systemd-sysusers
    /var/lib/edge-agent/                  the state directory (0750, edge-agent): status, spool, calibration,
                                          alerts, bundles; the only place the service may write
    /etc/edge-agent/                      0750 root:edge-agent: the config and its secrets, readable by the agent
    /etc/edge-agent/agent.toml            a config skeleton (never overwritten: an existing config is kept)
    /etc/systemd/system/edge-agent.service
                                          the unit (rewritten on every install)
    systemctl daemon-reload; systemctl enable edge-agent   (only with --root /, when systemd runs)

The service is not started: edit the config first, then ``edge-agent doctor --config /etc/edge-agent/agent.toml``
and ``systemctl start edge-agent``.

The unit: ``Restart=on-failure`` with a delay (``RestartSec``; an exponential backoff with ``RestartSteps``/
``RestartMaxDelaySec`` on systemd >= 254) and no start limit (a gateway must come back by itself);
``TimeoutStopSec`` leaves SIGTERM time to flush the spool and publish "offline"; hardening: no privileges
(``NoNewPrivileges``, empty ``CapabilityBoundingSet``), a read-only system (``ProtectSystem=strict``) but for
the state directory (``ReadWritePaths``/``StateDirectory``), no home directories, a private /tmp, only the serial
devices (``DevicePolicy=closed`` + ``DeviceAllow``), ``SupplementaryGroups=dialout``, no kernel tunables, modules,
logs, clock or namespaces, the ``@system-service`` system calls, IPv4/IPv6/Unix sockets only.
``MemoryDenyWriteExecute`` is left out: the TFLite runtime's XNNPACK may generate code at run time.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

USER = "edge-agent"
SERIAL_GROUP = "dialout"


@dataclass(frozen=True)
class Layout:
    """Where things go on the target (absolute paths as the service sees them), and who runs it."""

    executable: Path
    config: Path = Path("/etc/edge-agent/agent.toml")
    state_dir: Path = Path("/var/lib/edge-agent")
    unit: Path = Path("/etc/systemd/system/edge-agent.service")
    sysusers: Path = Path("/usr/lib/sysusers.d/edge-agent.conf")
    user: str = USER
    systemd_version: int | None = None  # None: unknown (no exponential restart backoff keys)


@dataclass
class Step:
    """One change: ``what`` is printed by the dry run, ``run(root)`` applies it."""

    what: str
    run: object = field(repr=False)  # Callable[[Path], None]


def systemd_version() -> int | None:
    """The running systemd's version (``systemctl --version``), or None."""
    exe = shutil.which("systemctl")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"systemd (\d+)", out)
    return int(m[1]) if m else None


def installed_config(root: Path = Path("/")) -> Path:
    """The config the installed service runs with: the ``--config`` of the unit's ``ExecStart`` (an install with
    ``--config FILE`` put it there), else the default, ``/etc/edge-agent/agent.toml``. Under ``root``."""
    unit = _under(root, Layout.unit)
    try:
        text = unit.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    m = re.search(r"^ExecStart=\S+ run --config (\S+)\s*$", text, re.MULTILINE)
    return _under(root, Path(m[1]) if m and m[1].startswith("/") else Layout.config)


def default_executable() -> Path:
    """This ``edge-agent`` (the venv's script next to the running Python)."""
    exe = Path(sys.executable).parent / "edge-agent"
    return exe if exe.exists() else Path(shutil.which("edge-agent") or exe)


def unit_text(lay: Layout) -> str:
    """The systemd unit (see the module docstring)."""
    state = lay.state_dir
    under_var_lib = state.parent == Path("/var/lib")
    backoff = ("RestartSec=2s\nRestartSteps=8\nRestartMaxDelaySec=5min\n" if (lay.systemd_version or 0) >= 254
               else "RestartSec=10s\n")
    return f"""\
# Written by `edge-agent install`; rewritten by the next install (put local changes in a drop-in:
# systemctl edit edge-agent).
[Unit]
Description=vibration-edge agent: anomaly detection on vibration sensors
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
Type=exec
User={lay.user}
Group={lay.user}
SupplementaryGroups={SERIAL_GROUP}
ExecStart={lay.executable} run --config {lay.config}
WorkingDirectory={state}
Environment=PYTHONUNBUFFERED=1
Restart=on-failure
{backoff}TimeoutStopSec=30s
{f"StateDirectory={state.name}" + chr(10) + "StateDirectoryMode=0750" + chr(10) if under_var_lib else ""}\
ReadWritePaths={state}
UMask=0027
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
DevicePolicy=closed
DeviceAllow=char-ttyUSB rw
DeviceAllow=char-ttyACM rw
DeviceAllow=char-ttyAMA rw
DeviceAllow=char-ttyS rw
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


def config_skeleton(lay: Layout) -> str:
    """A config to edit: one serial sensor, every file the agent writes in the state directory."""
    state = lay.state_dir
    gateway = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0])[:64] or "gateway"
    return f"""\
# edge-agent configuration (docs/technician/sensors.md; every key: docs/reference/config.md). Check it with
#   edge-agent validate-config {lay.config}
#   edge-agent doctor --config {lay.config}
# The service may write only under {state}; everything it writes goes there.
gateway = "{gateway}"

[status]
file = "{state}/status.json"

[uploads]
spool_path = "{state}/spool.sqlite"

[alerts.sinks]
jsonl = "{state}/alerts.jsonl"

# [mqtt]                                     # the broker: alerts, status, uploads, MQTT sensors
# host = "broker.example"
# port = 8883
# username = "{gateway}"
# password_file = "{lay.config.parent}/mqtt.secret"   # chmod 640 root:{lay.user}; never a password here
# [mqtt.tls]
# ca_file = "{lay.config.parent}/ca.pem"
# cert_file = "{lay.config.parent}/{gateway}.crt"     # with require_certificate on the broker
# key_file = "{lay.config.parent}/{gateway}.key"      # chmod 640 root:{lay.user}

[[sensors]]
device = "pump-1"
[sensors.source]
kind = "serial"
[sensors.source.serial]
port = "/dev/serial/by-id/CHANGE-ME"        # ls -l /dev/serial/by-id/
[sensors.bundle]
path = "{state}/bundles/pump-1"             # a bundle from the trainer
[sensors.calibration]
path = "{state}/calibration/pump-1.json"
"""


def sysusers_text(lay: Layout) -> str:
    return (f'u {lay.user} - "vibration-edge agent" {lay.state_dir} /usr/sbin/nologin\n'
            f"m {lay.user} {SERIAL_GROUP}\n")


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def _ids(root: Path, user: str) -> tuple[int, int]:
    """uid, gid of ``user`` in ROOT/etc/passwd (KeyError when absent)."""
    for line in _under(root, Path("/etc/passwd")).read_text().splitlines():
        parts = line.split(":")
        if parts[0] == user:
            return int(parts[2]), int(parts[3])
    raise KeyError(user)


def plan(lay: Layout, root: Path) -> list[Step]:
    """The steps of an install of ``lay`` under ``root`` ("/" for the machine itself)."""
    steps: list[Step] = []

    def write(path: Path, text: str, mode: int, owner: str | None = None, keep: bool = False) -> None:
        target = _under(root, path)
        if keep and target.exists():
            steps.append(Step(f"keep      {path} (exists; not overwritten)", lambda r: None))
            return

        def run(r: Path, target=target, text=text) -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_text(text)
            os.chmod(tmp, mode)
            if owner is not None:
                _, gid = _ids(r, owner)
                os.chown(tmp, 0, gid)
            os.replace(tmp, target)

        steps.append(Step(f"write     {path} (mode {mode:o}{', group ' + owner if owner else ''})", run))

    def mkdir(path: Path, mode: int, user: str | None, group_only: bool = False) -> None:
        def run(r: Path) -> None:
            target = _under(r, path)
            target.mkdir(parents=True, exist_ok=True)
            os.chmod(target, mode)
            if user is not None:
                uid, gid = _ids(r, user)
                os.chown(target, 0 if group_only else uid, gid)

        who = f"root:{user}" if group_only else f"{user}:{user}"
        steps.append(Step(f"mkdir     {path} (mode {mode:o}, {who})", run))

    write(lay.sysusers, sysusers_text(lay), 0o644)
    steps.append(Step(f"users     system user and group {lay.user!r}, member of {SERIAL_GROUP!r} "
                      f"(systemd-sysusers {lay.sysusers})", lambda r: _create_user(r, lay)))
    mkdir(lay.state_dir, 0o750, lay.user)
    for sub in ("bundles", "calibration"):
        mkdir(lay.state_dir / sub, 0o750, lay.user)
    mkdir(lay.config.parent, 0o750, lay.user, group_only=True)
    write(lay.config, config_skeleton(lay), 0o640, owner=lay.user, keep=True)
    write(lay.unit, unit_text(lay), 0o644)
    if root == Path("/") and shutil.which("systemctl") and Path("/run/systemd/system").is_dir():
        steps.append(Step("run       systemctl daemon-reload", lambda r: _run(["systemctl", "daemon-reload"])))
        steps.append(Step(f"run       systemctl enable {lay.unit.name}",
                          lambda r: _run(["systemctl", "enable", lay.unit.name])))
    return steps


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, timeout=60)


def _create_user(root: Path, lay: Layout) -> None:
    exe = shutil.which("systemd-sysusers")
    if exe is not None:
        _under(root, Path("/etc")).mkdir(parents=True, exist_ok=True)
        argv = [exe] if root == Path("/") else [exe, f"--root={root}"]
        _run([*argv, str(_under(root, lay.sysusers))])
        return
    if root != Path("/"):
        raise RuntimeError("creating the user under --root needs systemd-sysusers (Debian package systemd)")
    try:
        _ids(root, lay.user)
    except KeyError:
        _run(["useradd", "--system", "--user-group", "--home-dir", str(lay.state_dir), "--no-create-home",
              "--shell", "/usr/sbin/nologin", "--groups", SERIAL_GROUP, lay.user])
