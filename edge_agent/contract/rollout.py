"""Signed model rollout over MQTT: the message format, defined once for the publisher and the gateway.

The workstation (``trainer publish``) sends a bundle to one sensor or to the whole fleet; each gateway
verifies it before anything of it is used (``edge_agent.rollout``)::

    vib/rollout/<target>/<rollout_id>/chunk/<i>   retained, binary   the bundle payload, cut in CHUNK_SIZE pieces
    vib/rollout/<target>/meta                     retained, JSON     what the rollout is, signed (published last)
    vib/<device>/rollout                          retained, JSON     the gateway's rollout state for that sensor

``<target>`` is ``fleet`` or ``device/<device>``. Both message kinds are signed with Ed25519 by the
workstation's private key (which never leaves it); gateways hold the public key(s) (``[rollout] public_keys``).

Metadata (UTF-8 JSON; ``signature`` is base64 of the Ed25519 signature over the canonical JSON of every
other field: keys sorted, no spaces, ASCII)::

    {"schema": 1, "rollout_id": "<32 hex>", "target": "fleet" | "device/<device>", "created": ISO-8601,
     "model": {"id": str, "version": str},
     "bundle": {"input_shape": [1, T, F], "channels": [str], "sample_rate": float | null, "quantization": str},
     "payload": {"format": "tar", "size": int, "sha256": hex, "chunk_size": int, "chunks": [sha256 hex, ...]},
     "key_id": "<16 hex: sha256 of the raw public key>", "signature": base64}

Chunk (binary)::

    b"VRC1" | rollout_id (16 bytes) | index u32 LE | count u32 LE | data | Ed25519 signature (64 bytes)
                                                                          over everything before it

The payload is an uncompressed tar of the bundle's ``manifest.json``, ``model.tflite`` and ``report/*``
(regular files only, sorted, zero times and owners: the same bundle gives the same bytes). The gateway
unpacks it with :func:`unpack_bundle`, which writes nothing but those names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import struct
import tarfile
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.contract import wire
from edge_agent.contract.bundle import MANIFEST_FILE, MODEL_FILE
from edge_agent.contract.errors import BundleError

SCHEMA_VERSION = 1
CHUNK_SIZE = 64 * 1024  # fits every broker's default packet limit (AWS IoT: 128 KB)
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024
MAX_META_BYTES = 1024 * 1024
FLEET = "fleet"
_MAGIC = b"VRC1"
_HEADER = struct.Struct("<4s16sII")
_SIG = 64
_HEX = re.compile(r"[0-9a-f]{64}")
_PAYLOAD_NAME = re.compile(r"(manifest\.json|model\.tflite|report/[A-Za-z0-9][A-Za-z0-9._-]{0,100})")


class RolloutError(BundleError):
    """A rollout message that is not to be trusted: bad signature, unknown key, corrupt or foreign payload."""


# ------------------------------------------------------------------------------------------ topics
def target_of(to: str) -> str:
    """``fleet`` or a device id -> the topic level ``fleet`` / ``device/<device>``."""
    return FLEET if to == FLEET else f"device/{wire.check_device_id(to)}"


def meta_topic(target: str) -> str:
    return f"vib/rollout/{target}/meta"


def chunk_topic(target: str, rollout_id: str, index: int) -> str:
    return f"vib/rollout/{target}/{rollout_id}/chunk/{index}"


def subscriptions(device: str) -> list[str]:
    """The filters a gateway subscribes to for one sensor: the fleet's rollouts and the sensor's own."""
    return [f"vib/rollout/{FLEET}/#", f"vib/rollout/{target_of(device)}/#"]


def state_topic(device: str) -> str:
    """Where the gateway publishes its rollout state for ``device`` (retained)."""
    return f"vib/{wire.check_device_id(device)}/rollout"


def parse_topic(topic: str) -> tuple[str, str | None, int | None] | None:
    """``(target, rollout_id, chunk index)`` of a rollout topic (``rollout_id``/index None for meta), else None."""
    m = re.fullmatch(r"vib/rollout/(fleet|device/[^/]+)/(?:meta|([0-9a-f]{32})/chunk/(\d{1,9}))", topic)
    if m is None:
        return None
    return m.group(1), m.group(2), None if m.group(3) is None else int(m.group(3))


# ------------------------------------------------------------------------------------------ keys
def key_id(public_key: Ed25519PublicKey) -> str:
    """16 hex digits naming a public key (sha256 of its 32 raw bytes)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """The form a gateway's config holds: base64 of the 32 raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def load_public_key(text: str) -> Ed25519PublicKey:
    """Parse ``public_key_text`` output (or a PEM public key); RolloutError if it is not an Ed25519 key."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
            if not isinstance(key, Ed25519PublicKey):
                raise RolloutError("the PEM public key is not an Ed25519 key")
            return key
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
        raise RolloutError(f"not an Ed25519 public key (base64 of 32 bytes or PEM): {exc}") from exc


def keyring(public_keys: Iterable[Ed25519PublicKey | str]) -> dict[str, Ed25519PublicKey]:
    """``{key_id: key}`` of the trusted keys."""
    keys = [k if isinstance(k, Ed25519PublicKey) else load_public_key(k) for k in public_keys]
    return {key_id(k): k for k in keys}


# ------------------------------------------------------------------------------------------ metadata
def canonical(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


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

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)


def make_metadata(bundle_dir: Path, payload: bytes, to: str, private_key: Ed25519PrivateKey,
                  chunk_size: int = CHUNK_SIZE) -> tuple[bytes, list[bytes]]:
    """The signed metadata and the signed chunks of ``payload`` (``pack_bundle(bundle_dir)``) for target ``to``."""
    from edge_agent.contract.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    rollout_id = uuid.uuid4().hex
    pieces = [payload[i:i + chunk_size] for i in range(0, len(payload), chunk_size)] or [b""]
    fields = {
        "schema": SCHEMA_VERSION,
        "rollout_id": rollout_id,
        "target": target_of(to),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {"id": bundle.model_id, "version": bundle.version},
        "bundle": {"input_shape": list(bundle.input_shape), "channels": list(bundle.spec.channels),
                   "sample_rate": bundle.manifest["signal"].get("sample_rate"), "quantization": bundle.quantization},
        "payload": {"format": "tar", "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
                    "chunk_size": chunk_size, "chunks": [hashlib.sha256(p).hexdigest() for p in pieces]},
        "key_id": key_id(private_key.public_key()),
    }
    signature = private_key.sign(canonical(fields))
    meta = canonical(fields | {"signature": base64.b64encode(signature).decode("ascii")})
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
    if not isinstance(obj, dict) or not isinstance(obj.get("signature"), str):
        raise RolloutError("rollout metadata is unsigned")
    kid = obj.get("key_id")
    if kid not in keys:
        raise RolloutError(f"rollout signed by an unknown key {str(kid)[:16]!r} (trusted: {sorted(keys)})")
    fields = {k: v for k, v in obj.items() if k != "signature"}
    try:
        keys[kid].verify(base64.b64decode(obj["signature"], validate=True), canonical(fields))
    except (InvalidSignature, ValueError, binascii.Error) as exc:
        raise RolloutError("rollout metadata signature does not verify: altered, or not signed by this key") from exc
    try:
        if fields["schema"] != SCHEMA_VERSION:
            raise RolloutError(f"rollout schema {fields['schema']!r} is not supported (expected {SCHEMA_VERSION})")
        m, b, p = fields["model"], fields["bundle"], fields["payload"]
        meta = RolloutMeta(
            rollout_id=str(fields["rollout_id"]), target=str(fields["target"]), created=str(fields["created"]),
            model_id=str(m["id"]), model_version=str(m["version"]),
            input_shape=tuple(int(x) for x in b["input_shape"]), channels=tuple(str(c) for c in b["channels"]),
            sample_rate=None if b["sample_rate"] is None else float(b["sample_rate"]),
            quantization=str(b["quantization"]), size=int(p["size"]), sha256=str(p["sha256"]),
            chunk_size=int(p["chunk_size"]), chunks=tuple(str(c) for c in p["chunks"]), key_id=kid, raw=fields,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RolloutError(f"rollout metadata is malformed ({type(exc).__name__}: {exc})") from exc
    if not re.fullmatch(r"[0-9a-f]{32}", meta.rollout_id) or p["format"] != "tar":
        raise RolloutError("rollout metadata: bad rollout id or payload format")
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
    try:
        keys[meta.key_id].verify(signature, body)
    except (InvalidSignature, KeyError) as exc:
        raise RolloutError(f"rollout chunk {index} signature does not verify") from exc
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


def check_fits(meta: RolloutMeta, input_shape: Sequence[int], channels: Sequence[str]) -> None:
    """RolloutError when the rollout's model does not take this sensor's windows."""
    if tuple(meta.input_shape) != tuple(input_shape) or tuple(meta.channels) != tuple(channels):
        raise RolloutError(f"rollout model takes input {list(meta.input_shape)} of channels {list(meta.channels)}; "
                           f"this sensor's model takes {list(input_shape)} of {list(channels)}")
