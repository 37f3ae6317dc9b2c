"""Ed25519 signatures for what crosses a trust boundary: model rollouts (publisher -> gateways) and upload receipts
(collectors -> gateways). Each signer has its own key pair (``trainer keygen``): the private key stays where it
signs, gateways hold the public keys they trust (``[rollout] public_keys``, ``[uploads] receipt_keys``).

A signed JSON message carries ``key_id`` (16 hex digits: the sha256 of the raw public key) and ``signature``
(base64 of the Ed25519 signature over the canonical JSON of every other field: keys sorted, no spaces, ASCII).

Uses ``cryptography`` (wheels for x86_64 and aarch64; part of ``.[agent]``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import SignatureError

Keyring = dict[str, Ed25519PublicKey]


def key_id(public_key: Ed25519PublicKey) -> str:
    """16 hex digits naming a public key (sha256 of its 32 raw bytes)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """The form a gateway's config holds: base64 of the 32 raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def load_public_key(text: str) -> Ed25519PublicKey:
    """Parse ``public_key_text`` output (or a PEM public key); SignatureError if it is not an Ed25519 key."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
            if not isinstance(key, Ed25519PublicKey):
                raise SignatureError("the PEM public key is not an Ed25519 key")
            return key
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
        raise SignatureError(f"not an Ed25519 public key (base64 of 32 bytes or PEM): {exc}") from exc


def keyring(public_keys: Iterable[Ed25519PublicKey | str]) -> Keyring:
    """``{key_id: key}`` of the trusted keys."""
    keys = [k if isinstance(k, Ed25519PublicKey) else load_public_key(k) for k in public_keys]
    return {key_id(k): k for k in keys}


def keygen(path: Path) -> tuple[Path, str]:
    """Write a new Ed25519 private key to ``path`` (PEM, mode 0600; refuses to overwrite: FileExistsError) and its
    public key to ``path.pub``; return (public key file, public key text for the gateways' config)."""
    path = Path(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)  # whatever the umask
    text = public_key_text(key.public_key())
    pub = path.with_name(path.name + ".pub")
    pub.write_text(text + "\n", encoding="ascii")
    return pub, text


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A signing key; ValueError when group or others may read it, or it is not an Ed25519 private key."""
    path = Path(path)
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not a PEM private key without a passphrase ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def canonical(fields: dict) -> bytes:
    """The bytes a signature covers: JSON with sorted keys, no spaces, ASCII only."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def sign_fields(fields: dict, private_key: Ed25519PrivateKey) -> bytes:
    """``fields`` plus ``key_id`` and ``signature``, as canonical JSON bytes."""
    fields = fields | {"key_id": key_id(private_key.public_key())}
    signature = base64.b64encode(private_key.sign(canonical(fields))).decode("ascii")
    return canonical(fields | {"signature": signature})


def verify_fields(obj: dict, keys: Keyring, what: str) -> dict:
    """The fields of a signed JSON object (without ``signature``) if a trusted key signed them, else
    SignatureError naming ``what``."""
    if not isinstance(obj, dict) or not isinstance(obj.get("signature"), str):
        raise SignatureError(f"{what} is unsigned")
    kid = obj.get("key_id")
    if kid not in keys:
        raise SignatureError(f"{what} signed by an unknown key {str(kid)[:16]!r} (trusted: {sorted(keys)})")
    fields = {k: v for k, v in obj.items() if k != "signature"}
    try:
        keys[kid].verify(base64.b64decode(obj["signature"], validate=True), canonical(fields))
    except (InvalidSignature, ValueError, binascii.Error) as exc:
        raise SignatureError(f"{what}: the signature does not verify (altered, or not signed by key {kid})") from exc
    return fields


def verifies(key: Ed25519PublicKey, signature: bytes, body: bytes) -> bool:
    """Whether ``signature`` is ``key``'s over ``body``."""
    try:
        key.verify(signature, body)
    except InvalidSignature:
        return False
    return True
