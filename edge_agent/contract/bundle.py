"""The model bundle: the one contract between the trainer and the gateway.

A bundle is a directory::

    <bundle>/
      model.tflite      the served model (float32, full-int8 or 16x8, builtin ops only)
      manifest.json     everything needed to use it (schema below, version ``SCHEMA_VERSION``)
      variants/         every exported variant, for benchmarks and comparison
      report/           PNG plots and report.json from training

The trainer writes it with :func:`write_bundle` and ``edge-agent deploy`` installs one with
:func:`deploy_bundle`; both assemble the new bundle in a temporary sibling directory and rename it into
place, so a reader never sees half a bundle. The agent opens it with :meth:`Bundle.load`, which reads
the model's bytes once, checks the manifest's sha256 on those very bytes, and refuses, with a
:class:`BundleError` naming the problem, anything whose manifest, digest, or tensors do not agree.
Interpreters are built from those bytes, never from the file: a model file overwritten in place
(``cp new.tflite bundle/model.tflite`` truncates it) cannot pull the weights from under a running model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.contract import topics
from edge_agent.contract.blind_spots import spread_judged
from edge_agent.contract.errors import BundleError
from edge_agent.contract.interpreter import load_interpreter
from edge_agent.contract.preprocess import MinMaxScaler, PreprocessSpec

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
#: Suffix of the directory ``deploy_bundle`` keeps the replaced bundle in (a manual rollback).
PREVIOUS_SUFFIX = ".previous"
#: Largest manifest read (a real one is ~10 KB): anything bigger is refused before it is parsed.
MAX_MANIFEST_BYTES = 4 << 20
#: Largest model read into memory: 20x the largest model measured here (12.5 MB, int8 LSTM over 256 steps).
MAX_MODEL_BYTES = 256 << 20
#: Served model forms, by the dtype of their input and output tensors.
QUANTIZATIONS = ("float32", "int8", "16x8")
#: The input/output tensor dtype of each quantization (16x8: int16 activations, int8 weights).
IO_DTYPES = {"float32": "float32", "int8": "int8", "16x8": "int16"}

_NUMBER = (int, float)
#: ``signal`` key of the per-channel facts of the training rows the stuck-channel check needs
#: (``edge_agent.blind_spots``): ``{"longest": [int] the longest run of identical consecutive raw values, in samples,
#: "changed": [bool] whether the channel's value ever changed}``, one entry per channel. Optional: a bundle written
#: before it has none, and the check is off for it.
FLAT_RUNS_KEY = "flat_runs"
#: ``score_quantiles`` key of the too-good check's facts (``edge_agent.blind_spots``): ``{"windows": [M, ...], "lowest":
#: [score, ...]}``, for spans of M consecutive windows (at the served hop) of the training rows, the lowest of the
#: highest score among M consecutive windows: every healthy stretch of M windows had one scoring at least that.
#: Optional, like ``FLAT_RUNS_KEY``.
SPAN_MAX_KEY = "healthy_served_span_max"
#: ``signal`` key of the level check's facts (``edge_agent.blind_spots``, raw mode): ``{"window": W, "channels": [c],
#: "mean": [...], "sd": [...], "max_z": [...]}``, per judged channel the mean and spread of the means of W consecutive
#: training rows and the largest |mean - mean| / spread a training window reached. Optional, like ``FLAT_RUNS_KEY``.
WINDOW_MEANS_KEY = "window_means"

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


def _read_capped(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path`` (at most ``limit``); BundleError for a file that is missing, unreadable or too big."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError as exc:
        raise BundleError(f"{path.parent}: no {path.name}, so not a complete bundle: give the folder `trainer train "
                          "--out` wrote or `edge-agent deploy` installed") from exc
    except IsADirectoryError as exc:
        raise BundleError(f"{path}: is a directory, not the {what}") from exc
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise BundleError(f"{path}: the {what} is larger than {limit >> 20} MiB: refused")
    return data


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
class FlatRunFacts:
    """Per channel of ``signal.channels``: the longest run of identical consecutive raw values in the training rows
    (samples) and whether the channel ever changed there (``FLAT_RUNS_KEY``)."""

    longest: tuple[int, ...]
    changed: tuple[bool, ...]


def _flat_run_facts(manifest: dict, n_channels: int, where: Path) -> FlatRunFacts | None:
    """``signal.flat_runs`` checked (BundleError when present but malformed), or None when absent."""
    facts = manifest["signal"].get(FLAT_RUNS_KEY)
    if facts is None:
        return None
    key = f"signal.{FLAT_RUNS_KEY}"
    if not isinstance(facts, dict):
        raise BundleError(f"{where}: {key} must be an object with 'longest' and 'changed', not {type(facts).__name__}")
    longest, changed = facts.get("longest"), facts.get("changed")
    if not (isinstance(longest, list) and len(longest) == n_channels
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in longest)):
        raise BundleError(f"{where}: {key}.longest must list {n_channels} whole numbers of samples >= 0 (one per "
                          f"channel), not {str(longest)[:80]}")
    if not (isinstance(changed, list) and len(changed) == n_channels and all(isinstance(v, bool) for v in changed)):
        raise BundleError(f"{where}: {key}.changed must list {n_channels} booleans (one per channel), not "
                          f"{str(changed)[:80]}")
    return FlatRunFacts(tuple(longest), tuple(changed))


@dataclass(frozen=True)
class WindowMeanFacts:
    """``WINDOW_MEANS_KEY``: rows per window, the judged channels' indices, their training window means' mean,
    spread and largest excursion (in spreads), each (K,) float64."""

    window: int
    channels: tuple[int, ...]
    mean: np.ndarray
    sd: np.ndarray
    max_z: np.ndarray


def _window_mean_facts(manifest: dict, n_channels: int, window: int, where: Path) -> WindowMeanFacts | None:
    """``signal.window_means`` checked (BundleError naming the field, the value and the fix when present but
    malformed), or None when absent."""
    facts = manifest["signal"].get(WINDOW_MEANS_KEY)
    if facts is None:
        return None
    key = f"signal.{WINDOW_MEANS_KEY}"
    fix = "retrain the bundle (trainer train), or delete the key to serve without the level check"
    if not isinstance(facts, dict) or any(k not in facts for k in ("window", "channels", "mean", "sd", "max_z")):
        raise BundleError(f"{where}: {key} must be an object with 'window', 'channels', 'mean', 'sd' and 'max_z', "
                          f"not {str(facts)[:80]}; {fix}")
    if facts["window"] != window or isinstance(facts["window"], bool):
        raise BundleError(f"{where}: {key}.window is {facts['window']!r}, the bundle's windows are {window} rows: the "
                          f"facts are not this model's; {fix}")
    chans = facts["channels"]
    if not (isinstance(chans, list) and chans
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < n_channels for c in chans)
            and len(set(chans)) == len(chans)):
        raise BundleError(f"{where}: {key}.channels must list distinct channel indices 0..{n_channels - 1}, not "
                          f"{str(chans)[:80]}; {fix}")
    arrays = []
    for name in ("mean", "sd", "max_z"):
        v = facts[name]
        ok = isinstance(v, list) and len(v) == len(chans) and all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and abs(x) < 1e300 for x in v)
        if ok and name == "sd":  # the mean, checked first, is in arrays[0]
            ok = all(spread_judged(x, m) for x, m in zip(v, arrays[0], strict=True))
        if ok and name == "max_z":
            ok = all(x >= 0 for x in v)
        if not ok:
            want = {"mean": "finite numbers", "sd": "spreads > 1e-12 x max(1, |mean|)", "max_z": "numbers >= 0"}[name]
            raise BundleError(f"{where}: {key}.{name} must hold {len(chans)} {want} (one per channel), not "
                              f"{str(v)[:80]}; {fix}")
        arrays.append(np.asarray(v, np.float64))
    return WindowMeanFacts(int(window), tuple(chans), *arrays)


def _span_floors(manifest: dict, where: Path) -> tuple[tuple[int, float], ...]:
    """``score_quantiles.healthy_served_span_max`` as ((M, lowest max over M windows), ...) (BundleError when present
    but malformed; empty when absent)."""
    facts = manifest["score_quantiles"].get(SPAN_MAX_KEY)
    if facts is None:
        return ()
    key = f"score_quantiles.{SPAN_MAX_KEY}"
    spans, lowest = (facts.get("windows"), facts.get("lowest")) if isinstance(facts, dict) else (None, None)
    if not (isinstance(spans, list) and isinstance(lowest, list) and len(spans) == len(lowest) <= 64):
        raise BundleError(f"{where}: {key} must be an object with 'windows' and 'lowest', lists of the same length "
                          f"(at most 64), not {str(facts)[:80]}")
    for m, v in zip(spans, lowest, strict=True):
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= 1 << 20:
            raise BundleError(f"{where}: {key}.windows must hold whole numbers of windows >= 1, not {m!r}")
        if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v >= 0):
            raise BundleError(f"{where}: {key}.lowest must hold scores >= 0, not {v!r}")
    return tuple((int(m), float(v)) for m, v in zip(spans, lowest, strict=True))


@dataclass(frozen=True)
class Bundle:
    """A validated bundle: its manifest and the model's bytes as read and verified (the file is never read
    again). Holds no interpreter: the scorer makes its own from ``model_bytes``."""

    path: Path
    manifest: dict
    spec: PreprocessSpec
    scaler: MinMaxScaler
    threshold: Threshold
    model_bytes: bytes = field(default=b"", repr=False, compare=False)
    #: ``signal.flat_runs`` (None: a bundle written before it; no stuck-channel check).
    flat_runs: FlatRunFacts | None = None
    #: ``score_quantiles.healthy_served_span_max`` as ((M windows, lowest max), ...) (empty: a bundle written before
    #: it; no too-good check).
    span_floors: tuple[tuple[int, float], ...] = ()
    #: ``signal.window_means`` (None: a bundle written before it, or not in raw mode; no level check).
    window_means: WindowMeanFacts | None = field(default=None, compare=False)

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
    def group(self) -> str | None:
        """``model.group``: the kind of machine the model is for (only sensors of that group serve it); None: any."""
        return self.manifest["model"].get("group")

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

        Every way a bundle can be wrong (a value of the wrong type deep in the manifest, JSON nested past
        the parser's depth, a file that is a directory) is a BundleError: a running agent refuses such a
        bundle and keeps serving its model.
        """
        try:
            return cls._load(Path(path), check_model)
        except BundleError:
            raise
        except Exception as exc:  # hostile input must never escape as anything but a refused bundle
            raise BundleError(f"{path}: malformed bundle ({type(exc).__name__}: {str(exc)[:200]})") from exc

    @classmethod
    def _load(cls, path: Path, check_model: bool) -> Bundle:
        manifest_path = path / MANIFEST_FILE
        if not path.exists():
            raise BundleError(f"{path} does not exist: give the bundle's folder, the one holding {MANIFEST_FILE} and the "
                              "model (`trainer train --out` writes it, `edge-agent deploy` installs it)")
        if not path.is_dir():
            raise BundleError(f"{path} is a file, not a bundle: give the folder that holds {MANIFEST_FILE} and the model")
        raw = _read_capped(manifest_path, MAX_MANIFEST_BYTES, "manifest")
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
        except RecursionError as exc:
            raise BundleError(f"{manifest_path}: not a manifest (JSON nested too deeply)") from exc
        validate_manifest(manifest)
        declared_file = Path(manifest["tflite"]["file"])
        model_path = path / declared_file
        if declared_file.is_absolute() or ".." in declared_file.parts:
            raise BundleError(f"{manifest_path}: tflite.file must name a file inside the bundle, not {manifest['tflite']['file']!r}")
        group = manifest["model"].get("group")
        if group is not None and not topics.is_id(group):
            raise BundleError(f"{manifest_path}: model.group must be an id (1-64 letters, digits, '_' or '-', no '/', '+' "
                              f"or '#'), not {str(group)[:80]!r}")
        if manifest["tflite"]["quantization"] not in QUANTIZATIONS:
            raise BundleError(f"{manifest_path}: tflite.quantization must be one of {QUANTIZATIONS}, not {manifest['tflite']['quantization']!r}")
        model_bytes = _read_capped(model_path, MAX_MODEL_BYTES, "model file")
        actual = hashlib.sha256(model_bytes).hexdigest()
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
        bundle = cls(path, manifest, spec, scaler, Threshold(t["method"], float(t["value"]), dict(t["params"])),
                     model_bytes, _flat_run_facts(manifest, len(spec.channels), manifest_path),
                     _span_floors(manifest, manifest_path),
                     _window_mean_facts(manifest, len(spec.channels), spec.window_samples, manifest_path))
        if check_model:
            bundle.check_tensors()
        return bundle

    def check_tensors(self) -> None:
        """Load the model (from the verified bytes) and check its input/output tensors against the manifest."""
        interpreter = load_interpreter(self.model_bytes)
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
    either the old bundle or the new one, never a mixture. An existing ``out_dir`` that is neither
    a bundle nor empty is refused (BundleError), never replaced.
    """
    out_dir = Path(out_dir).resolve()
    _check_replaceable(out_dir)
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
        _install(tmp, out_dir, previous=None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s (model %s)", out_dir, manifest["model"]["version"])
    return out_dir


def deploy_bundle(src: Path | str, dest: Path | str) -> Bundle:
    """Install the bundle ``src`` as ``dest`` atomically, the way a running agent must be given a new model.

    ``src`` is validated first (manifest, digest, tensors) and refused with a BundleError if it would be.
    It is then copied into a temporary sibling of ``dest``, verified there again (a full disk shows up
    as a short copy), and renamed into place; the bundle it replaces is kept as ``<dest>.previous``
    (one level: a manual rollback is ``mv``). The agent watching ``dest`` sees the old bundle or the
    new one, never a mixture. Returns the installed bundle.
    """
    src, dest = Path(src), Path(dest).absolute()
    Bundle.load(src)
    if src.resolve() == dest.resolve():
        raise BundleError(f"{src}: is already the bundle in {dest}")
    _check_replaceable(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.deploy-", dir=dest.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        installed = Bundle.load(tmp)
        _install(tmp, dest, previous=dest.with_name(dest.name + PREVIOUS_SUFFIX))
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"{dest}: cannot install the bundle: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("deployed bundle %s (model %s %s) to %s", src, installed.model_id, installed.version, dest)
    return dataclasses.replace(installed, path=dest)


def _check_replaceable(dest: Path) -> None:
    """Refuse to replace anything but a bundle (or an empty directory): a mistyped path must never be moved."""
    if not os.path.lexists(dest):
        return
    if not dest.is_dir():
        raise BundleError(f"{dest}: exists and is not a bundle directory: refusing to replace it")
    if not (dest / MANIFEST_FILE).exists() and any(dest.iterdir()):
        raise BundleError(f"{dest}: is a directory without {MANIFEST_FILE} (not a bundle): refusing to replace it")


def _install(tmp: Path, dest: Path, previous: Path | None) -> None:
    """Make the complete directory ``tmp`` (a sibling of ``dest``) become ``dest``: contents synced to disk,
    then renamed into place. The replaced directory goes to ``previous``, or is deleted when None."""
    for file in tmp.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    os.chmod(tmp, 0o755)
    if os.path.lexists(dest):
        old = previous or dest.with_name(f".{dest.name}.old")
        if os.path.lexists(old):
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        os.rename(dest, old)
        os.rename(tmp, dest)
        if previous is None:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, dest)
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the renames themselves survive a power cut
    finally:
        os.close(fd)
