"""Per-device threshold calibration, stored on the gateway.

After installation, ``edge-agent calibrate`` scores N windows from the live source (assumed
healthy) and sets THIS device's threshold with the bundle's own threshold method (quantile,
max_margin, mean_std or pot, with the bundle's parameters). The result is stored as JSON::

    {"device": str, "model_id": str, "bundle_version": str, "method": str, "value": float,
     "params": {...}, "n": int, "time": ISO-8601 UTC}

and used instead of the bundle's default threshold until ``edge-agent calibrate --clear``.
A stored threshold made for another model version (or another device) is ignored with a warning:
scores of a different model are not comparable. So is a file that is not a valid record (``"value":
null``, not JSON, a directory): the agent never stops over its calibration, it serves with the bundle's
threshold and says why (``Choice.note``, counted in the sensor's ``calibration_ignored``).
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge_agent.contract import threshold
from edge_agent.contract.bundle import Bundle
from edge_agent.contract.errors import ConfigError
from edge_agent.status import write_json_atomic

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


def save(path: Path, record: DeviceThreshold) -> bool:
    """Write atomically (``status.write_json_atomic``: temp file + rename); False (logged) when it cannot."""
    if not write_json_atomic(path, asdict(record)):
        return False
    log.info("calibration: %s threshold %.6g (%s, n=%d) saved to %s", record.device, record.value,
             record.method, record.n, path)
    return True


def clear(path: Path) -> bool:
    """Remove the stored threshold; return whether there was one. ConfigError when the path cannot be removed."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfigError(f"{path}: cannot remove the calibration: {_reason(path, exc)}") from exc
    return True


#: Types of the record's fields (``value`` is checked to be a positive finite number on top).
_TYPES = {"device": str, "model_id": str, "bundle_version": str, "method": str, "value": (int, float),
          "params": dict, "n": int, "time": str}


def load(path: Path) -> DeviceThreshold | None:
    """The stored record, None if there is none; ConfigError naming the problem for anything else."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a calibration record ({_reason(path, exc)})") from exc
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: not a calibration record (not JSON: {str(exc)[:100]})") from exc
    if not isinstance(data, dict) or set(data) != {f.name for f in fields(DeviceThreshold)}:
        raise ConfigError(f"{path}: not a calibration record (fields {sorted(data) if isinstance(data, dict) else data!r})")
    for key, types in _TYPES.items():
        if isinstance(data[key], bool) or not isinstance(data[key], types):
            raise ConfigError(f"{path}: not a calibration record ({key} is {data[key]!r})")
    if not (np.isfinite(data["value"]) and data["value"] > 0):
        raise ConfigError(f"{path}: not a calibration record (value {data['value']!r} is not a positive number)")
    return DeviceThreshold(**data)


def _reason(path: Path, exc: Exception) -> str:
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, NotADirectoryError):
        return "a part of the path is a file, not a directory"
    return getattr(exc, "strerror", None) or str(exc)


@dataclass(frozen=True)
class Choice:
    """The threshold in force: its value, ``source`` ("calibration" or "bundle"), and why a stored
    calibration was ignored (``note``, None when none was or when it applies)."""

    value: float
    source: str
    note: str | None = None


def choose(path: Path, bundle: Bundle, device: str) -> Choice:
    """The device's calibrated threshold if valid for this bundle, else the bundle's (with the reason, logged)."""
    try:
        record = load(path)
    except ConfigError as exc:
        note = f"calibration ignored: {exc}"
    else:
        if record is None:
            return Choice(bundle.threshold.value, "bundle")
        if record.device == device and record.model_id == bundle.model_id and record.bundle_version == bundle.version:
            return Choice(float(record.value), "calibration")
        note = (f"calibration in {path} is for device {record.device} model {record.model_id} "
                f"{record.bundle_version}, not {device} {bundle.model_id} {bundle.version}")
    log.warning("%s: using the bundle threshold %.6g", note, bundle.threshold.value)
    return Choice(bundle.threshold.value, "bundle", note)


def threshold_in_force(path: Path, bundle: Bundle, device: str) -> tuple[float, str]:
    """(threshold, source) of :func:`choose`."""
    choice = choose(path, bundle, device)
    return choice.value, choice.source
