"""The model bundle: the one contract between the trainer and the gateway.

A bundle is a directory::

    <bundle>/
      model.tflite      the served model (float32, full-int8 or 16x8, builtin ops only)
      manifest.json     everything needed to use it (schema below, version ``SCHEMA_VERSION``)
      variants/         every exported variant, for benchmarks and comparison
      report/           PNG plots and report.json from training

The trainer writes it with :func:`write_bundle` (temp dir + rename, so a reader never sees half a
bundle); the agent opens it with :meth:`Bundle.load`, which refuses, with a :class:`BundleError`
naming the problem, anything whose manifest, digest, or tensors do not agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.contract.errors import BundleError
from edge_agent.contract.preprocess import MinMaxScaler, PreprocessSpec

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
#: Served model forms, by the dtype of their input and output tensors.
QUANTIZATIONS = ("float32", "int8", "16x8")
#: The input/output tensor dtype of each quantization (16x8: int16 activations, int8 weights).
IO_DTYPES = {"float32": "float32", "int8": "int8", "16x8": "int16"}

_NUMBER = (int, float)
#: Required manifest keys and their types; nested dicts are checked recursively.
MANIFEST_SCHEMA: dict = {
    "schema_version": int,
    "model": {"id": str, "version": str, "created": str, "architecture": str},
    "data": {"digest": str},
    "signal": {"channels": list, "units": str},
    "preprocess": dict,
    "scaler": dict,
    "score": {"kind": str},
    "threshold": {"method": str, "value": _NUMBER, "params": dict},
    "score_quantiles": dict,
    "tflite": {
        "file": str,
        "sha256": str,
        "quantization": str,
        "stateful": bool,
        "input": {"shape": list, "dtype": str},
        "output": {"shape": list, "dtype": str},
    },
    "parity": dict,
    "libraries": dict,
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def validate_manifest(manifest: object, schema: dict = MANIFEST_SCHEMA, path: str = "") -> None:
    """Raise BundleError naming the first missing or mistyped key."""
    if not isinstance(manifest, dict):
        raise BundleError(f"manifest{'.' + path if path else ''} must be an object")
    for key, expected in schema.items():
        where = f"{path}.{key}" if path else key
        if key not in manifest:
            raise BundleError(f"manifest is missing '{where}'")
        value = manifest[key]
        if isinstance(expected, dict):
            validate_manifest(value, expected, where)
        elif isinstance(value, bool) and expected is not bool:
            raise BundleError(f"manifest '{where}' must be {_type_name(expected)}, not a boolean")
        elif not isinstance(value, expected):
            raise BundleError(f"manifest '{where}' must be {_type_name(expected)}, not {type(value).__name__}")
    if not path and manifest["schema_version"] != SCHEMA_VERSION:
        raise BundleError(f"manifest schema {manifest['schema_version']} is not supported (this agent reads {SCHEMA_VERSION})")


def _type_name(expected) -> str:
    return " or ".join(t.__name__ for t in expected) if isinstance(expected, tuple) else expected.__name__


@dataclass(frozen=True)
class Threshold:
    method: str
    value: float
    params: dict


@dataclass(frozen=True)
class Bundle:
    """A validated bundle on disk. Holds no interpreter: the scorer makes its own."""

    path: Path
    manifest: dict
    spec: PreprocessSpec
    scaler: MinMaxScaler
    threshold: Threshold

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["tflite"]["file"]

    @property
    def model_id(self) -> str:
        return self.manifest["model"]["id"]

    @property
    def version(self) -> str:
        return self.manifest["model"]["version"]

    @property
    def quantization(self) -> str:
        return self.manifest["tflite"]["quantization"]

    @property
    def stateful(self) -> bool:
        return self.manifest["tflite"]["stateful"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["tflite"]["input"]["shape"])

    @classmethod
    def load(cls, path: Path | str, check_model: bool = True) -> Bundle:
        """Read and validate a bundle; with ``check_model`` also load the model and compare its tensors.

        Every way a bundle can be wrong, a value of the wrong type deep in the manifest included,
        is a BundleError: a running agent refuses such a bundle and keeps serving its model.
        """
        try:
            return cls._load(Path(path), check_model)
        except BundleError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise BundleError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def _load(cls, path: Path, check_model: bool) -> Bundle:
        manifest_path = path / MANIFEST_FILE
        if not path.is_dir():
            raise BundleError(f"{path}: not a bundle directory")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise BundleError(f"{path}: no {MANIFEST_FILE}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
        validate_manifest(manifest)
        declared_file = Path(manifest["tflite"]["file"])
        model_path = path / declared_file
        if declared_file.is_absolute() or ".." in declared_file.parts:
            raise BundleError(f"{manifest_path}: tflite.file must name a file inside the bundle, not {manifest['tflite']['file']!r}")
        if manifest["tflite"]["quantization"] not in QUANTIZATIONS:
            raise BundleError(f"{manifest_path}: tflite.quantization must be one of {QUANTIZATIONS}, not {manifest['tflite']['quantization']!r}")
        if not model_path.is_file():
            raise BundleError(f"{path}: model file {manifest['tflite']['file']} is missing")
        actual = sha256_file(model_path)
        if actual != manifest["tflite"]["sha256"]:
            raise BundleError(
                f"{model_path}: sha256 {actual[:12]}… does not match the manifest ({manifest['tflite']['sha256'][:12]}…);"
                " the bundle is corrupt or was modified"
            )
        try:
            spec = PreprocessSpec.from_dict(manifest["preprocess"])
            scaler = MinMaxScaler.from_dict(manifest["scaler"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{manifest_path}: bad preprocessing or scaler: {exc}") from exc
        if scaler.minimum.shape[0] != spec.n_features:
            raise BundleError(f"{manifest_path}: scaler has {scaler.minimum.shape[0]} features, preprocessing makes {spec.n_features}")
        expected_input = [1, spec.window, spec.n_features]
        if manifest["tflite"]["input"]["shape"] != expected_input:
            raise BundleError(f"{manifest_path}: tflite.input.shape {manifest['tflite']['input']['shape']} != {expected_input}")
        rate = manifest["signal"].get("sample_rate")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0):
            raise BundleError(f"{manifest_path}: signal.sample_rate must be a positive number or null, not {rate!r}")
        t = manifest["threshold"]
        if not np.isfinite(t["value"]) or t["value"] <= 0:
            raise BundleError(f"{manifest_path}: threshold.value must be a positive number, got {t['value']}")
        bundle = cls(path, manifest, spec, scaler, Threshold(t["method"], float(t["value"]), dict(t["params"])))
        if check_model:
            bundle.check_tensors()
        return bundle

    def check_tensors(self) -> None:
        """Load the model and check its input/output tensors against the manifest."""
        from edge_agent.interpreter import load_interpreter

        interpreter = load_interpreter(self.model_path)
        for kind, details in (("input", interpreter.get_input_details()), ("output", interpreter.get_output_details())):
            if len(details) != 1:
                raise BundleError(f"{self.model_path}: expected one {kind} tensor, found {len(details)}")
            declared = self.manifest["tflite"][kind]
            shape, dtype = list(details[0]["shape"]), np.dtype(details[0]["dtype"]).name
            if shape != declared["shape"] or dtype != declared["dtype"]:
                raise BundleError(
                    f"{self.model_path}: {kind} tensor is {dtype}{shape}, manifest says {declared['dtype']}{declared['shape']}"
                )
            if dtype != IO_DTYPES[self.quantization]:
                raise BundleError(f"{self.model_path}: {kind} tensor is {dtype}, manifest says the model is {self.quantization}")
            scale, zero_point = details[0]["quantization"]
            integer = dtype != "float32"
            if integer != (scale != 0.0):
                raise BundleError(f"{self.model_path}: {kind} tensor quantization does not match its dtype {dtype}")
            stated = declared.get("quantization")
            if integer and stated is not None and (
                not np.isclose(stated.get("scale", np.nan), scale, rtol=1e-6, atol=0.0) or stated.get("zero_point") != zero_point
            ):
                raise BundleError(
                    f"{self.model_path}: {kind} tensor is quantized with scale {scale:.6g}, zero point {zero_point};"
                    f" the manifest says scale {stated.get('scale')}, zero point {stated.get('zero_point')}"
                )


def write_bundle(
    out_dir: Path | str,
    manifest: dict,
    model: bytes,
    variants: dict[str, bytes] | None = None,
    report_dir: Path | None = None,
) -> Path:
    """Write a bundle atomically and return its path.

    The manifest's ``tflite.file`` and ``tflite.sha256`` are filled in here. The bundle is
    assembled in a temporary sibling directory and renamed into place, so ``out_dir`` holds
    either the old bundle or the new one, never a mixture.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(json.dumps(manifest))  # a deep copy that is surely JSON
    manifest["tflite"]["file"] = MODEL_FILE
    manifest["tflite"]["sha256"] = hashlib.sha256(model).hexdigest()
    validate_manifest(manifest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / MODEL_FILE).write_bytes(model)
        for name, blob in (variants or {}).items():
            (tmp / "variants").mkdir(exist_ok=True)
            (tmp / "variants" / f"model.{name}.tflite").write_bytes(blob)
        if report_dir is not None:
            shutil.copytree(report_dir, tmp / "report")
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s (model %s)", out_dir, manifest["model"]["version"])
    return out_dir
