"""A loopback mosquitto for demos, benches and tests: a real broker on a free port of 127.0.0.1.

``Broker(workdir)`` writes its config, log and persistence under ``workdir``; ``start()`` waits until it accepts
TCP connections, ``stop()`` / ``start()`` / ``restart()`` take the broker away and bring it back on the same port
(the network going away). The broker persists sessions and queued QoS 1 messages across a restart
(``persistence true``), as a production broker would. ``tls_conf`` makes the listener TLS-only (client
certificates, an ACL file, a password file); ``add_password`` adds a user to a password file.

mosquitto is found on PATH or in /usr/sbin (``$MOSQUITTO`` overrides); where it is missing ``start()`` raises a
RuntimeError naming the fix (``make setup`` installs it). The tests' ``mosquitto`` fixture (tests/conftest.py)
yields a started ``Broker``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO = os.environ.get("MOSQUITTO") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def terminate(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM a server process (it saves its state), wait up to ``timeout`` s, then kill it; None or exited: nothing."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def require_mosquitto() -> str:
    """The mosquitto executable; RuntimeError naming the fix when it is not installed."""
    if not (Path(MOSQUITTO).is_file() and os.access(MOSQUITTO, os.X_OK)):
        raise RuntimeError(f"mosquitto is not installed (looked on PATH and at {MOSQUITTO}): run `make setup`, "
                           "which installs it (or apt-get install mosquitto)")
    return MOSQUITTO


def tls_conf(ca_file: Path, cert_file: Path, key_file: Path, *, require_certificate: bool = True,
             acl_file: Path | None = None, password_file: Path | None = None) -> str:
    """``extra_conf`` for a TLS listener: with ``require_certificate`` the client certificate's common name is the
    MQTT user name (for the ACL); else clients log in with a user name and a password from ``password_file``."""
    lines = [f"cafile {ca_file}", f"certfile {cert_file}", f"keyfile {key_file}",
             f"require_certificate {'true' if require_certificate else 'false'}"]
    if require_certificate:
        lines.append("use_identity_as_username true")
    if password_file is not None:
        lines.append(f"password_file {password_file}")
    if acl_file is not None:
        lines.append(f"acl_file {acl_file}")
    lines.append("allow_anonymous false")
    return "\n".join(lines)


def add_password(password_file: Path, user: str, password: str) -> None:
    """Add a user to a mosquitto password file (hashed by mosquitto_passwd)."""
    args = [MOSQUITTO_PASSWD, "-b", *([] if password_file.exists() else ["-c"]), str(password_file), user, password]
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A mosquitto process on ``127.0.0.1:port`` with its config, log and persistence under ``workdir``."""

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "") -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        self.conf_path.write_text(
            f"listener {self.port} {self.host}\n"
            f"{extra_conf or 'allow_anonymous true'}\n"
            # started as root, mosquitto would drop to the "mosquitto" user and could not write its persistence
            # file under pytest's private tmp dirs: keep it the user running the tests (no effect otherwise)
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            "set_tcp_nodelay true\n"  # else the broker's Nagle holds back PUBACKs ~40 ms per QoS 1 batch
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 0\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait (up to ``timeout`` s) until it accepts TCP connections."""
        assert not self.running, "broker already running"
        exe = require_mosquitto()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen([exe, "-c", str(self.conf_path)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not accept connections on port {self.port} in {timeout} s") from exc
                time.sleep(0.02)  # poll interval while waiting for the listener, bounded by the deadline

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate mosquitto (SIGTERM: it saves its persistence file) and wait for it to exit."""
        proc, self._proc = self._proc, None
        terminate(proc, timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) for clients."""
        return self.host, self.port

