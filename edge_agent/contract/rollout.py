"""Signed model rollout over MQTT: the message format, defined once for the publisher and the gateway.

The workstation (``trainer publish``) sends a bundle to one sensor, to every sensor of one group (kind of
machine) or to the whole fleet; each gateway verifies it before anything of it is used (``edge_agent.rollout``)::

    vib/rollout/<target>/<rollout_id>/chunk/<i>   retained, binary   the bundle payload, cut in CHUNK_SIZE pieces
    vib/rollout/<target>/meta                     retained, JSON     what the rollout is, signed (published last)
    vib/<device>/rollout                          retained, JSON     the gateway's rollout state for that sensor

``<target>`` is ``fleet``, ``group/<group>`` or ``device/<device>`` (``<group>`` and ``<device>`` are ids:
``topics.check_id``). A gateway subscribes, for each sensor, to ``fleet``, to the sensor's ``device/<device>`` and,
when the sensor has a ``group`` in the gateway config, to ``group/<group>`` (:func:`subscriptions`). Both message
kinds are signed with Ed25519 by the workstation's private key (which never leaves it); gateways hold the public
key(s) (``[rollout] public_keys``).

Metadata (UTF-8 JSON; ``signature`` is base64 of the Ed25519 signature over the canonical JSON of every
other field: keys sorted, no spaces, ASCII)::

    {"schema": 3, "rollout_id": "<32 hex>", "target": "fleet" | "group/<group>" | "device/<device>",
     "created": ISO-8601 (microseconds; when it was published),
     "model": {"id": str, "version": str, "created": ISO-8601 (the bundle's manifest model.created)},
     "allow_downgrade": bool,     # the operator rolls back on purpose (trainer publish --allow-downgrade)
     "bundle": {"input_shape": [1, T, F], "channels": [str], "sample_rate": float | null, "quantization": str,
                "group": id | null},   # the bundle's manifest model.group (schema 3)
     "payload": {"format": "tar", "size": int, "sha256": hex, "chunk_size": int, "chunks": [sha256 hex, ...]},
     "key_id": "<16 hex: sha256 of the raw public key>", "signature": base64}

Chunk (binary)::

    b"VRC1" | rollout_id (16 bytes) | index u32 LE | count u32 LE | data | Ed25519 signature (64 bytes)
                                                                          over everything before it

Order: a gateway takes a target's rollouts only in the order they were published (a rollout published no later
than one it has already taken is a replay: ignored and counted), and never a model older than the one it serves
unless the metadata says ``allow_downgrade`` (``edge_agent.rollout``). Schemas 1 (no model.created, created in
seconds) and 2 (no bundle.group) are still read.

Groups: a bundle whose manifest ``model.group`` is G is taken only by sensors whose config ``group`` is G; a bundle
without a group is taken by any sensor (a fleet-wide model). The gateway checks it on the signed metadata before it
collects chunks (schema 3) and again on the unpacked manifest (:func:`group_refusal`); the publisher sends a grouped
bundle only with ``trainer publish --group G`` (:func:`check_publish_target`).

The payload is an uncompressed tar of the bundle's ``manifest.json``, ``model.tflite`` and ``report/*``
(regular files only, sorted, zero times and owners: the same bundle gives the same bytes). The gateway
unpacks it with :func:`unpack_bundle`, which writes nothing but those names.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import tarfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.contract import topics
from edge_agent.contract.bundle import MANIFEST_FILE, MODEL_FILE
from edge_agent.contract.errors import BundleError, SignatureError
from edge_agent.contract.signing import (  # noqa: F401 (key helpers, re-exported for the publisher and the tests)
    canonical,
    key_id,
    keyring,
    load_public_key,
    public_key_text,
    sign_fields,
    verifies,
    verify_fields,
)

SCHEMA_VERSION = 3
SCHEMAS = (1, 2, 3)  # 2 adds model.created and allow_downgrade, ``created`` in microseconds; 3 adds bundle.group
CHUNK_SIZE = 64 * 1024  # fits every broker's default packet limit (AWS IoT: 128 KB)
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024
MAX_META_BYTES = 1024 * 1024
FLEET = "fleet"
GROUP_PREFIX = "group/"
_MAGIC = b"VRC1"
_HEADER = struct.Struct("<4s16sII")
_SIG = 64
_HEX = re.compile(r"[0-9a-f]{64}")
_PAYLOAD_NAME = re.compile(r"(manifest\.json|model\.tflite|report/[A-Za-z0-9][A-Za-z0-9._-]{0,100})")


class RolloutError(BundleError, SignatureError):
    """A rollout message that is not to be trusted: bad signature, unknown key, corrupt or foreign payload."""


# ------------------------------------------------------------------------------------------ topics
def target_of(to: str) -> str:
    """``fleet`` or a device id -> the topic level ``fleet`` / ``device/<device>``."""
    return FLEET if to == FLEET else f"device/{topics.check_id(to)}"


def group_target(group: str) -> str:
    """A group id -> the topic level ``group/<group>``; ConfigError naming the group when it is not an id
    (``/``, ``+``, ``#`` would change or widen the topic)."""
    return f"{GROUP_PREFIX}{topics.check_id(group, 'group id')}"


def meta_topic(target: str) -> str:
    return f"vib/rollout/{target}/meta"


def chunk_topic(target: str, rollout_id: str, index: int) -> str:
    return f"vib/rollout/{target}/{rollout_id}/chunk/{index}"


def subscriptions(device: str, group: str | None = None) -> list[str]:
    """The filters a gateway subscribes to for one sensor: the fleet's rollouts, the sensor's own and, when the
    sensor has a group, its group's (in that order)."""
    subs = [f"vib/rollout/{FLEET}/#", f"vib/rollout/{target_of(device)}/#"]
    if group is not None:
        subs.append(f"vib/rollout/{group_target(group)}/#")
    return subs


def parse_topic(topic: str) -> tuple[str, str | None, int | None] | None:
    """``(target, rollout_id, chunk index)`` of a rollout topic (``rollout_id``/index None for meta), else None."""
    m = re.fullmatch(r"vib/rollout/(fleet|device/[^/]+|group/[^/]+)/(?:meta|([0-9a-f]{32})/chunk/(\d{1,9}))", topic)
    if m is None:
        return None
    return m.group(1), m.group(2), None if m.group(3) is None else int(m.group(3))


# ------------------------------------------------------------------------------------------ metadata
@dataclass(frozen=True)
class RolloutMeta:
    """Verified metadata of one rollout."""

    rollout_id: str
    target: str
    created: str
    model_id: str
    model_version: str
    input_shape: tuple[int, ...]
    channels: tuple[str, ...]
    sample_rate: float | None
    quantization: str
    size: int
    sha256: str
    chunk_size: int
    chunks: tuple[str, ...]
    key_id: str
    raw: dict
    model_created: str | None = None  # the bundle's manifest model.created (schema 2)
    allow_downgrade: bool = False  # the publisher rolls back on purpose (``trainer publish --allow-downgrade``)
    schema: int = SCHEMA_VERSION
    group: str | None = None  # the bundle's manifest model.group (schema 3; None: any sensor, or not said)

    @property
    def group_signed(self) -> bool:
        """Whether the metadata says the bundle's group (schema 3); older metadata leaves it to the manifest."""
        return self.schema >= 3

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    @property
    def published(self) -> datetime:
        """When it was published (aware UTC): rollouts of one target only move forward in this order."""
        return parse_time(self.created)


def parse_time(text: str | None) -> datetime:
    """An ISO-8601 time as aware UTC (naive means UTC); ``datetime.min`` (UTC) when absent or unreadable."""
    try:
        t = datetime.fromisoformat(str(text))
    except (TypeError, ValueError):
        return datetime.min.replace(tzinfo=UTC)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def make_metadata(bundle_dir: Path, payload: bytes, to: str | None, private_key: Ed25519PrivateKey,
                  chunk_size: int = CHUNK_SIZE, allow_downgrade: bool = False, *,
                  group: str | None = None) -> tuple[bytes, list[bytes]]:
    """The signed metadata and the signed chunks of ``payload`` (``pack_bundle(bundle_dir)``) for target ``to`` (a
    device id or ``fleet``) or, with ``to=None``, for every sensor of ``group``. ``allow_downgrade``: gateways may
    take it although it is older than the model they serve.

    This is the message format only: it does not check that the bundle's group fits the target (the publisher's
    :func:`check_publish_target` does; every gateway checks it again)."""
    from edge_agent.contract.bundle import Bundle

    if (to is None) == (group is None):
        raise ValueError("a rollout goes to a device or the fleet (to) or to a group (group), one of them")
    target = group_target(group) if group is not None else target_of(to)
    bundle = Bundle.load(bundle_dir)
    rollout_id = uuid.uuid4().hex
    pieces = [payload[i:i + chunk_size] for i in range(0, len(payload), chunk_size)] or [b""]
    fields = {
        "schema": SCHEMA_VERSION,
        "rollout_id": rollout_id,
        "target": target,
        "created": datetime.now(UTC).isoformat(timespec="microseconds"),
        "model": {"id": bundle.model_id, "version": bundle.version,
                  "created": bundle.manifest["model"].get("created")},
        "allow_downgrade": bool(allow_downgrade),
        "bundle": {"input_shape": list(bundle.input_shape), "channels": list(bundle.spec.channels),
                   "sample_rate": bundle.manifest["signal"].get("sample_rate"), "quantization": bundle.quantization,
                   "group": bundle.group},
        "payload": {"format": "tar", "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
                    "chunk_size": chunk_size, "chunks": [hashlib.sha256(p).hexdigest() for p in pieces]},
    }
    meta = sign_fields(fields, private_key)
    chunks = [encode_chunk(rollout_id, i, len(pieces), p, private_key) for i, p in enumerate(pieces)]
    return meta, chunks


def verify_metadata(payload: bytes, keys: dict[str, Ed25519PublicKey]) -> RolloutMeta:
    """Check and parse a metadata message. Raises RolloutError naming what is wrong."""
    if len(payload) > MAX_META_BYTES:
        raise RolloutError(f"rollout metadata of {len(payload)} bytes is too large")
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RolloutError(f"rollout metadata is not JSON ({exc})") from exc
    try:
        fields = verify_fields(obj, keys, "rollout metadata")
    except SignatureError as exc:
        raise RolloutError(str(exc)) from None
    kid = fields["key_id"]
    try:
        if type(fields["schema"]) is not int or fields["schema"] not in SCHEMAS:  # true == 1: not a schema
            raise RolloutError(f"rollout schema {fields['schema']!r} is not supported (this gateway reads {SCHEMAS})")
        m, b, p = fields["model"], fields["bundle"], fields["payload"]
        meta = RolloutMeta(
            rollout_id=str(fields["rollout_id"]), target=str(fields["target"]), created=str(fields["created"]),
            model_id=str(m["id"]), model_version=str(m["version"]),
            input_shape=tuple(int(x) for x in b["input_shape"]), channels=tuple(str(c) for c in b["channels"]),
            sample_rate=None if b["sample_rate"] is None else float(b["sample_rate"]),
            quantization=str(b["quantization"]), size=int(p["size"]), sha256=str(p["sha256"]),
            chunk_size=int(p["chunk_size"]), chunks=tuple(str(c) for c in p["chunks"]), key_id=kid, raw=fields,
            model_created=None if m.get("created") is None else str(m["created"]),
            allow_downgrade=fields.get("allow_downgrade", False) is True,
            schema=int(fields["schema"]), group=b["group"] if fields["schema"] >= 3 else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RolloutError(f"rollout metadata is malformed ({type(exc).__name__}: {exc})") from exc
    if not re.fullmatch(r"[0-9a-f]{32}", meta.rollout_id) or p["format"] != "tar":
        raise RolloutError("rollout metadata: bad rollout id or payload format")
    if meta.group is not None and not topics.is_id(meta.group):
        raise RolloutError(f"rollout metadata: bundle.group {str(meta.group)[:80]!r} is not a group id")
    if not 0 < meta.size <= MAX_PAYLOAD_BYTES or meta.chunk_size <= 0 \
            or len(meta.chunks) != -(-meta.size // meta.chunk_size) \
            or not all(_HEX.fullmatch(c) for c in (meta.sha256, *meta.chunks)):
        raise RolloutError("rollout metadata: payload size, chunking or digests are inconsistent")
    return meta


# ------------------------------------------------------------------------------------------ chunks
def encode_chunk(rollout_id: str, index: int, count: int, data: bytes, private_key: Ed25519PrivateKey) -> bytes:
    body = _HEADER.pack(_MAGIC, bytes.fromhex(rollout_id), index, count) + data
    return body + private_key.sign(body)


def verify_chunk(meta: RolloutMeta, payload: bytes, keys: dict[str, Ed25519PublicKey]) -> tuple[int, bytes]:
    """``(index, data)`` of a chunk of ``meta``'s rollout. Raises RolloutError (signature, rollout, digest)."""
    if len(payload) < _HEADER.size + _SIG:
        raise RolloutError("rollout chunk is truncated")
    body, signature = payload[:-_SIG], payload[-_SIG:]
    magic, rid, index, count = _HEADER.unpack_from(body)
    if magic != _MAGIC or rid.hex() != meta.rollout_id:
        raise RolloutError("rollout chunk belongs to another rollout or is not a chunk")
    key = keys.get(meta.key_id)
    if key is None or not verifies(key, signature, body):
        raise RolloutError(f"rollout chunk {index} signature does not verify")
    if count != meta.n_chunks or index >= count:
        raise RolloutError(f"rollout chunk {index}/{count} does not fit the metadata's {meta.n_chunks} chunks")
    data = body[_HEADER.size:]
    if hashlib.sha256(data).hexdigest() != meta.chunks[index]:
        raise RolloutError(f"rollout chunk {index}: sha256 differs from the signed metadata")
    return index, data


def assemble(meta: RolloutMeta, chunks: dict[int, bytes]) -> bytes:
    """The payload from every chunk; RolloutError when one is missing or the whole sha256 differs."""
    missing = [i for i in range(meta.n_chunks) if i not in chunks]
    if missing:
        raise RolloutError(f"rollout {meta.rollout_id[:8]}: chunks {missing[:5]} missing")
    blob = b"".join(chunks[i] for i in range(meta.n_chunks))
    if len(blob) != meta.size or hashlib.sha256(blob).hexdigest() != meta.sha256:
        raise RolloutError(f"rollout {meta.rollout_id[:8]}: payload sha256 differs from the signed metadata")
    return blob


# ------------------------------------------------------------------------------------------ payload
def pack_bundle(bundle_dir: Path) -> bytes:
    """A deterministic tar of the bundle's manifest, model and report files."""
    bundle_dir = Path(bundle_dir)
    names = [MANIFEST_FILE, MODEL_FILE]
    report = bundle_dir / "report"
    if report.is_dir():
        names += sorted(f"report/{p.name}" for p in report.iterdir() if p.is_file() and _PAYLOAD_NAME.fullmatch(
            f"report/{p.name}"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            data = (bundle_dir / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def unpack_bundle(payload: bytes, dest: Path) -> Path:
    """Write the payload's files into the new folder ``dest`` (must not exist); only regular files with the
    names ``pack_bundle`` writes. RolloutError for anything else."""
    dest = Path(dest)
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as tar:
            members = tar.getmembers()
            bad = [m.name for m in members if not m.isreg() or not _PAYLOAD_NAME.fullmatch(m.name)]
            if bad or len({m.name for m in members}) != len(members):
                raise RolloutError(f"rollout payload holds entries a bundle has not: {bad[:3] or 'duplicates'}")
            dest.mkdir(parents=False)
            for m in members:
                target = dest / m.name
                target.parent.mkdir(exist_ok=True)
                src = tar.extractfile(m)
                target.write_bytes(src.read() if src is not None else b"")
    except (tarfile.TarError, EOFError) as exc:
        raise RolloutError(f"rollout payload is not a readable tar ({exc})") from exc
    return dest


# ------------------------------------------------------------------------------------------ groups
def group_refusal(device: str, sensor_group: str | None, model_group: str | None, model: str, *,
                  deploying: bool = False) -> str:
    """Why sensor ``device`` (its config ``group``) may not take ``model`` (``"<id> <version>"``) of
    ``model_group``; ``""`` when it may. The rule: a model of group G serves only sensors of group G; a model
    without a group serves any sensor. The reason names both groups and what to do."""
    if model_group is None or model_group == sensor_group:
        return ""
    mine = f"group {sensor_group!r}" if sensor_group is not None else "no group"
    send = (f"deploy a model of {'group ' + repr(sensor_group) if sensor_group else 'no group'} (or one without a "
            f"group) to it" if deploying else
            f"publish it with `trainer publish --group {model_group}` (only sensors of group {model_group!r} "
            f"receive it)")
    return (f"sensor {device} ({mine}) does not take model {model} of group {model_group!r}: a model made for a "
            f"group serves only that group's sensors. {send[0].upper()}{send[1:]}; or, if {device} is a "
            f"{model_group!r} machine, set group = \"{model_group}\" in its [[sensors]] table of the gateway config")


def check_publish_target(bundle_group: str | None, to: str | None, group: str | None, bundle: str = "bundle") -> None:
    """The publisher's side of the group rule, before anything is sent: BundleError when ``bundle`` (its manifest
    ``model.group`` is ``bundle_group``) would go to sensors of another group. ``to`` is a device id or ``fleet``,
    ``group`` a group id (one of them); a bad group id is a ConfigError naming it.

    A grouped bundle goes only to its group (``trainer publish --group G``): not to another group, not to the
    fleet. To one device it may go (the publisher does not know the device's group; the gateway checks). A bundle
    without a group may go anywhere."""
    if (to is None) == (group is None):
        raise ValueError("give the target: --to a device id or 'fleet', or --group a group id (not both)")
    if group is not None:
        group_target(group)
        if bundle_group is not None and bundle_group != group:
            raise BundleError(f"{bundle}: the model is for group {bundle_group!r} (manifest model.group), not "
                              f"{group!r}: publish it with --group {bundle_group}; nothing was published")
    elif to == FLEET and bundle_group is not None:
        raise BundleError(f"{bundle}: the model is for group {bundle_group!r} (manifest model.group): sensors of "
                          f"other groups refuse it; publish it with --group {bundle_group} instead of --to fleet; "
                          f"nothing was published")


def check_fits(meta: RolloutMeta, input_shape: Sequence[int], channels: Sequence[str]) -> None:
    """RolloutError when the rollout's model does not take this sensor's windows."""
    if tuple(meta.input_shape) != tuple(input_shape) or tuple(meta.channels) != tuple(channels):
        raise RolloutError(f"rollout model takes input {list(meta.input_shape)} of channels {list(meta.channels)}; "
                           f"this sensor's model takes {list(input_shape)} of {list(channels)}")
