"""A real small file system for full-disk tests: a tmpfs mounted under the test's folder, and a filler.

Mounting needs root (CAP_SYS_ADMIN): without it the test is skipped, except under CI (``CI`` set), where that is
a failure (``.ci/run`` runs the suite as root).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "64k") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (created), unmounted (lazily) at the end."""
    path.mkdir(parents=True, exist_ok=True)
    why = "mounting a tmpfs needs root" if os.geteuid() != 0 else None
    if why is None:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                              capture_output=True, text=True)
        why = None if done.returncode == 0 else f"mount -t tmpfs failed: {done.stderr.strip()}"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: the full-disk test must run in CI (run the suite as root)")
        pytest.skip(why)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)  # lazy: a failed test may hold a file open


def fill(fs: Path, name: str = "filler") -> Path:
    """Fill ``fs`` to the last byte with one file; return it."""
    filler = fs / name
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 1):
            while True:
                try:
                    if f.write(b"\0" * size) != size:
                        break
                except OSError:
                    break
    return filler
