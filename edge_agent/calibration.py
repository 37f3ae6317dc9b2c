"""Per-device threshold calibration, stored on the gateway.

After installation, ``edge-agent calibrate`` scores N windows from the live source (assumed
healthy) and sets THIS device's threshold with the bundle's own threshold method (quantile,
max_margin, mean_std or pot, with the bundle's parameters). The result is stored as JSON::

    {"device": str, "model_id": str, "bundle_version": str, "method": str, "value": float,
     "params": {...}, "n": int, "time": ISO-8601 UTC}

and used instead of the bundle's default threshold until ``edge-agent calibrate --clear``.
A stored threshold made for another model version (or another device) is ignored with a warning:
scores of a different model are not comparable.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge_agent.contract import threshold
from edge_agent.contract.bundle import Bundle
from edge_agent.contract.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceThreshold:
    device: str
    model_id: str
    bundle_version: str
    method: str
    value: float
    params: dict
    n: int
    time: str


def compute(scores: np.ndarray, bundle: Bundle, device: str) -> DeviceThreshold:
    """Threshold of healthy ``scores`` (N,) with the bundle's method and parameters; ValueError if too few."""
    method = bundle.threshold.method
    func = getattr(threshold, method, None)
    if func is None or method not in threshold.METHODS:
        raise ValueError(f"the bundle's threshold method {method!r} is unknown to this agent")
    accepted = set(inspect.signature(func).parameters) - {"scores"}
    params = {k: v for k, v in bundle.threshold.params.items() if k in accepted}
    result = threshold.calibrate(np.asarray(scores, np.float64), method, **params)
    return DeviceThreshold(
        device=device,
        model_id=bundle.model_id,
        bundle_version=bundle.version,
        method=result.method,
        value=float(result.value),
        params=dict(result.params),
        n=int(np.size(scores)),
        time=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def save(path: Path, record: DeviceThreshold) -> None:
    """Write atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    log.info("calibration: %s threshold %.6g (%s, n=%d) saved to %s", record.device, record.value,
             record.method, record.n, path)


def clear(path: Path) -> bool:
    """Remove the stored threshold; return whether there was one."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def load(path: Path) -> DeviceThreshold | None:
    """The stored record, None if there is none; ConfigError if the file is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return DeviceThreshold(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a calibration record ({exc})") from exc


def threshold_in_force(path: Path, bundle: Bundle, device: str) -> tuple[float, str]:
    """(threshold, source): the device's calibrated threshold if valid for this bundle, else the bundle's.

    ``source`` is ``"calibration"`` or ``"bundle"``. A bad or stale record is ignored with a warning.
    """
    try:
        record = load(path)
    except ConfigError as exc:
        log.warning("calibration ignored: %s", exc)
        return bundle.threshold.value, "bundle"
    if record is None:
        return bundle.threshold.value, "bundle"
    if record.device != device or record.model_id != bundle.model_id or record.bundle_version != bundle.version:
        log.warning(
            "calibration in %s is for device %s model %s %s, not %s %s %s: using the bundle threshold %.6g",
            path, record.device, record.model_id, record.bundle_version, device, bundle.model_id, bundle.version,
            bundle.threshold.value,
        )
        return bundle.threshold.value, "bundle"
    if not (np.isfinite(record.value) and record.value > 0):
        log.warning("calibration in %s has an unusable value %r: using the bundle threshold", path, record.value)
        return bundle.threshold.value, "bundle"
    return float(record.value), "calibration"
