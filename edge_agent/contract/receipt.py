"""Upload receipts: a collector tells a gateway which of its records it holds durably, and which it refused.

A gateway keeps every uploaded record in its spool until a receipt names it (``edge_agent.uploader``), so a
receipt deletes data on the gateway: only a collector may send one. Receipts are published on
``vib/<device>/upload/receipt`` (the brokers' ACL lets only the collectors write there) and signed with the
collector's Ed25519 key (``trainer collect --key``); the gateway checks the signature against
``[uploads] receipt_keys`` and that the receipt names the device of the topic it came on. Anything else is
refused and counted; it deletes nothing. Schema 2 (UTF-8 JSON, signed as ``contract.signing`` says)::

    {"schema": 2, "device": "<device>", "collector": "<client id>", "time": ISO-8601,
     "ids": ["<record id>", ...],                          # durable in the dataset: forget them
     "rejected": [{"id": "<record id>", "reason": str}],   # quarantined by the collector: never send them again
     "key_id": "<16 hex>", "signature": base64}

A replayed receipt can only name records that were already confirmed (record ids are random and unique).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import SignatureError, UploadError
from .signing import Keyring, sign_fields, verify_fields
from .topics import check_id

SCHEMA_VERSION = 2
#: Ids per receipt message (a receipt of 500 uuid4 ids is ~18 KB).
RECEIPT_IDS = 500
MAX_RECEIPT_BYTES = 1024 * 1024
MAX_REASON = 300
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def is_record_id(value: str) -> bool:
    """Whether ``value`` has the form of an upload record's id."""
    return _ID.fullmatch(value) is not None


@dataclass(frozen=True)
class Receipt:
    """A verified receipt for ``device``: ``ids`` held durably, ``rejected`` (id, reason) quarantined."""

    device: str
    collector: str
    ids: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]


def encode(device: str, ids: list[str], rejected: list[tuple[str, str]], collector: str,
           key: Ed25519PrivateKey) -> list[bytes]:
    """Signed receipt messages for ``device`` (at most ``RECEIPT_IDS`` ids and rejections each)."""
    check_id(device)
    items = [("id", i) for i in ids] + [("rejected", r) for r in rejected]
    out = []
    for a in range(0, len(items), RECEIPT_IDS):
        part = items[a:a + RECEIPT_IDS]
        fields = {"schema": SCHEMA_VERSION, "device": device, "collector": collector,
                  "time": datetime.now(UTC).isoformat(timespec="seconds"),
                  "ids": [v for k, v in part if k == "id"],
                  "rejected": [{"id": v[0], "reason": v[1][:MAX_REASON]} for k, v in part if k == "rejected"]}
        out.append(sign_fields(fields, key))
    return out


def decode(payload: bytes, keys: Keyring, device: str) -> Receipt:
    """The receipt in ``payload`` if a trusted collector signed it for ``device``; SignatureError when it is
    unsigned, signed by another key or altered, UploadError when it is malformed or for another device."""
    if len(payload) > MAX_RECEIPT_BYTES:
        raise UploadError(f"upload receipt: {len(payload)} bytes is too large")
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UploadError(f"upload receipt: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise UploadError("upload receipt: not a JSON object")
    fields = verify_fields(obj, keys, "upload receipt")
    if fields.get("schema") != SCHEMA_VERSION:
        raise UploadError(f"upload receipt: schema {fields.get('schema')!r} is not {SCHEMA_VERSION}")
    if fields.get("device") != device:
        raise UploadError(f"upload receipt for device {str(fields.get('device'))[:64]!r} arrived on {device}'s topic")
    ids, rejected = fields.get("ids"), fields.get("rejected")
    if not isinstance(ids, list) or not all(isinstance(i, str) and _ID.fullmatch(i) for i in ids):
        raise UploadError("upload receipt: 'ids' must be a list of record ids")
    if not isinstance(rejected, list) or not all(
            isinstance(r, dict) and isinstance(r.get("id"), str) and _ID.fullmatch(r["id"])
            and isinstance(r.get("reason"), str) for r in rejected):
        raise UploadError("upload receipt: 'rejected' must be a list of {id, reason}")
    return Receipt(device, str(fields.get("collector", ""))[:200], tuple(ids),
                   tuple((r["id"], r["reason"][:MAX_REASON]) for r in rejected))


__all__ = ["Receipt", "encode", "decode", "is_record_id", "SignatureError", "RECEIPT_IDS"]
