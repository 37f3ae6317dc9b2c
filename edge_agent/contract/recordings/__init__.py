"""Data loaders: every supported input becomes a ``Recording`` of time-contiguous ``Segment``s.

numpy and the standard library only (no TensorFlow, no pandas), so the edge agent's
``replay`` command can use them too.

Formats (``load(path, format=...)``):

==========  ============================================================================
ims         NASA IMS raw snapshot folder (or one file) ``YYYY.MM.DD.HH.MM.SS[.gz]``
ims-avg     IMS per-snapshot table: date-time first column, or index + ``Datetime``
femto       FEMTO/PRONOSTIA folder of ``acc_NNNNN.csv``
snapshots   ``.npz`` with ``acc`` (n, L, C) (+ ``time_of_day``, ``snapshot_index``, ...)
nab         NAB CSV ``timestamp,value``
csv         generic numeric CSV (optional header, optional leading time column)
npy         ``.npy`` (n,), (n, C) or (n, L, C)
uploads     gateway upload records: ``.jsonl`` / ``.json`` file or folder of them
==========  ============================================================================

``auto`` detection (``detect_format``), in this order:

* folder: any file named ``YYYY.MM.DD.HH.MM.SS[.gz]`` -> ``ims``; any ``acc_NNNNN.csv`` ->
  ``femto`` (any ``acc_*.csv``); any ``.jsonl``/``.json`` -> ``uploads``.
* file: ``.npz`` holding ``acc`` -> ``snapshots``; ``.npy`` -> ``npy``; ``.jsonl``/``.json`` ->
  ``uploads``; a name ``YYYY.MM.DD.HH.MM.SS[.gz]`` -> ``ims``; ``acc_NNNNN.csv`` -> ``femto``
  (its folder is not implied: a single snapshot); other text: header exactly
  ``timestamp,value`` -> ``nab``; a header with a ``Datetime``/``datetime`` column among the
  first two, or a date-time first cell under a header, followed by numeric columns ->
  ``ims-avg``; anything else -> ``csv``.

Every loader raises ``DataFormatError`` (``path:line:column: message``) on malformed input.
"""

from __future__ import annotations

import inspect
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._text import is_number, looks_like_time, read_text, split_row
from .errors import DataFormatError
from .femto import ACC_NAME, load_femto, load_snapshots
from .generic import load_csv, load_npy
from .ims import IMS_NAME, load_ims, load_ims_avg
from .nab import load_nab
from .recording import Recording, Segment
from .uploads import load_uploads

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "DataFormatError",
    "Recording",
    "Segment",
    "detect_format",
    "load",
]

LOADERS: dict[str, Callable[..., Recording]] = {
    "ims": load_ims,
    "ims-avg": load_ims_avg,
    "femto": load_femto,
    "snapshots": load_snapshots,
    "nab": load_nab,
    "csv": load_csv,
    "npy": load_npy,
    "uploads": load_uploads,
}
FORMATS: tuple[str, ...] = ("auto", *LOADERS)
#: The formats ``auto`` may find for a text table (``_detect_table``).
TEXT_TABLES = ("nab", "ims-avg", "csv")


def detect_format(path: str | os.PathLike[str]) -> str:
    """Name of the format ``auto`` picks for ``path`` (see the module docstring).

    Raises:
        DataFormatError: the path does not exist or matches no known format.
    """
    p = Path(path)
    if p.is_dir():
        names = [e.name for e in p.iterdir() if e.is_file() and not e.name.startswith(".")]
        if any(IMS_NAME.match(n) for n in names):
            return "ims"
        if any(n.startswith("acc_") and n.endswith(".csv") for n in names):
            return "femto"
        if any(n.endswith((".jsonl", ".json")) for n in names):
            return "uploads"
        raise DataFormatError(p, message="cannot detect the format of this folder (no IMS, acc_NNNNN.csv "
                              "or upload files)")
    if not p.is_file():
        raise DataFormatError(p, message="no such file or folder")
    name = p.name
    if name.endswith(".npz"):
        try:
            with np.load(p, allow_pickle=False) as z:
                keys = z.files
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise DataFormatError(p, message=f"not a readable .npz archive ({exc})") from exc
        if "acc" in keys:
            return "snapshots"
        raise DataFormatError(p, message=f".npz without an 'acc' array (keys: {', '.join(keys)})")
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".jsonl", ".json")):
        return "uploads"
    if IMS_NAME.match(name):
        return "ims"
    if ACC_NAME.match(name):
        return "femto"
    return _detect_table(p)


def _detect_table(p: Path) -> str:
    text = read_text(p)
    lines = [ln for ln in text.splitlines()[:50] if ln.strip()]
    header_line = lines[0]
    delim = "\t" if "\t" in header_line else ("," if "," in header_line else ";")
    header = split_row(header_line, delim)
    lowered = [h.lower() for h in header]
    if lowered == ["timestamp", "value"] and not (len(lines) > 1 and is_number(split_row(lines[1], delim)[0])):
        return "nab"  # NAB's date-time stamps (numeric ones are a generic table with a time column)
    if len(lines) > 1 and any(not is_number(h) for h in header):
        first = split_row(lines[1], delim)
        tcol = next((j for j in range(min(2, len(lowered))) if lowered[j] == "datetime"), None)
        if tcol is None and first and looks_like_time(first[0]):
            tcol = 0
        if tcol is not None and len(first) > tcol + 1 and all(is_number(c) for c in first[tcol + 1:]):
            return "ims-avg"
    return "csv"


def load(path: str | os.PathLike[str], format: str = "auto", **opts: Any) -> Recording:
    """Load ``path`` as a ``Recording``.

    Args:
        path: file or folder.
        format: one of ``FORMATS``; ``auto`` detects it (see ``detect_format``).
        **opts: passed to the loader (``limit``, ``start``, ``sample_rate``, ``healthy_only``,
            ``date``, ``names``, ``skip_rows``, ...); ``channels`` (names or indices) is accepted by every
            format and selects those channels: the CSV loader reads only those columns (the others may hold
            text), the other loaders select them after loading. ``skip_rows`` (lines above a CSV table) makes
            ``auto`` read any text table as ``csv``.

    Raises:
        DataFormatError: malformed input or undetectable format.
        ValueError: unknown format name.
        TypeError: an option the chosen loader does not take.
    """
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in LOADERS:
        raise ValueError(f"unknown data format {format!r}; choose one of {', '.join(FORMATS)}")
    if not Path(path).exists():
        raise DataFormatError(path, message="no such file or folder")
    if not opts.get("skip_rows"):
        opts.pop("skip_rows", None)
    elif format == "auto" and fmt in TEXT_TABLES:  # detection read the preamble as the table
        fmt = "csv"
    takes = inspect.signature(LOADERS[fmt]).parameters
    if "skip_rows" in opts and "skip_rows" not in takes:
        raise ValueError(f"rows can be skipped in CSV tables only (--format csv), not in {fmt} recordings")
    channels = opts.pop("channels", None)
    if opts.get("sample_rate") is None:
        opts.pop("sample_rate", None)
    elif "sample_rate" not in takes:
        raise ValueError(f"a sample rate cannot be given for {fmt} recordings: they state their own")
    if channels is not None and "channels" in takes:
        opts["channels"], channels = channels, None
    rec = LOADERS[fmt](path, **opts)
    if channels is not None:
        rec = rec.select_channels(channels)
    log.debug("loaded %r", rec)
    return rec
