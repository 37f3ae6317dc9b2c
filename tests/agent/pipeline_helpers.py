"""Helpers for the agent pipeline tests: constants of the test signal, bundle rewrites, frames, configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from edge_agent.contract.binary import encode_frame, int16_scale
from edge_agent.contract.bundle import MANIFEST_FILE, MODEL_FILE, write_bundle

RATE = 20_000
LIFE_S = 20.0  # degrading run: healthy until 60 % of life (12 s), then a growing outer-race defect
ONSET_S = 0.6 * LIFE_S


#: The running-machine signal of the too-good tests: a slow swing under broadband noise, 1 sample per second.
NOISE_SWING_S = 200


def running_machine(n: int, seed: int, quiet: slice | None = None) -> np.ndarray:
    """(n, 1) float32: a slow swing (amplitude 0.5, period ``NOISE_SWING_S``) under noise of sd 1, as a running machine
    makes; within ``quiet`` the noise drops to sd 0.05 (the machine stopped: the swing alone is easy to reconstruct)."""
    rng = np.random.default_rng(seed)
    sd = np.ones(n)
    if quiet is not None:
        sd[quiet] = 0.05
    x = 0.5 * np.sin(2 * np.pi * np.arange(n) / NOISE_SWING_S) + sd * rng.standard_normal(n)
    return x.astype(np.float32)[:, None]


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_bundle(
    path: Path, *, version: str | None = None, model: bytes | None = None, manifest_edit=None, base: Path | None = None
) -> None:
    """Write a new bundle over ``path`` atomically (as the trainer does), from the manifest in ``base`` (default: ``path``)."""
    manifest = json.loads(((base or path) / MANIFEST_FILE).read_text())
    blob = (path / MODEL_FILE).read_bytes() if model is None else model
    if version is not None:
        manifest["model"]["version"] = version
    if manifest_edit is not None:
        manifest_edit(manifest)
    write_bundle(path, manifest, blob)


def frames_of(x: np.ndarray, n: int = 256, seq0: int = 0, sample_type: str = "int16") -> list[bytes]:
    """Binary wire frames of ``n`` samples (int16 with the IMS full scale of 10 g)."""
    scale = int16_scale(10.0) if sample_type == "int16" else None
    return [
        encode_frame(seq0 + a, x[a : a + n], t0_us=(seq0 + a) * 50, sample_type=sample_type, scale=scale)
        for a in range(0, len(x) - n + 1, n)
    ]


def agent_config(tmp_path: Path, bundle: Path, **sections) -> Path:
    """Write an agent TOML config for ``bundle`` (sections override: dicts of TOML values)."""
    base = {
        "device": "pump-7",
        "source": {"kind": "serial", "serial": {"port": "loop://"}},
        "bundle": {"path": str(bundle), "watch_s": 0.2},
        "alerts": {"k": 3, "n": 5, "cooldown_s": 0.0, "sinks": {"log": True, "jsonl": str(tmp_path / "alerts.jsonl")}},
        "status": {"every_s": 0.2, "file": str(tmp_path / "status.json"), "mqtt": False},
        "calibration": {"path": str(tmp_path / "calibration.json")},
    }
    for key, value in sections.items():
        if key != "source" and isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    uploads = base.get("uploads") or {}
    if uploads.get("enabled") and uploads.get("receipts", True) and "receipt_keys" not in uploads:
        from tests.e2e.fleet_helpers import COLLECTOR_PUBLIC

        base["uploads"] = uploads | {"receipt_keys": [COLLECTOR_PUBLIC]}  # the test collectors' key
    path = tmp_path / "agent.toml"
    path.write_text(_toml(base))
    return path


def _toml(d: dict, prefix: str = "") -> str:
    scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in d.items() if isinstance(v, dict)}
    lines = [f"{k} = {json.dumps(v)}" for k, v in scalars.items()]
    out = ("\n".join(lines) + "\n") if lines else ""
    for k, v in tables.items():
        name = f"{prefix}.{k}" if prefix else k
        out += f"\n[{name}]\n" + _toml(v, name)
    return out
