"""FEMTO-ST PRONOSTIA (IEEE PHM 2012) bearing data: ``acc_NNNNN.csv`` folders and ``.npz`` snapshots.

CSV folders (``femto``): one file per snapshot, ``acc_00001.csv`` ... in acquisition order, each
2560 rows of ``hour, minute, second, microsecond, horizontal g, vertical g`` (comma- or
semicolon-separated, no header), sampled at 25.6 kHz, one snapshot every 10 s. Other files
(``temp_NNNNN.csv`` temperature logs) are ignored.

Snapshot archives (``snapshots``): the ``.npz`` layout of the shared data set: ``acc`` float32
(n, L, C), or (n, L) for one channel (FEMTO: (n, 2560, 2) [horizontal, vertical]); optional
``sample_rate`` (or ``fs``) scalar Hz (default: FEMTO's 25.6 kHz, said in the log), ``time_of_day``
float64 (n, 4) (h, min, s, µs), ``snapshot_index`` int32 (n,), ``source_file`` str (n,),
``n_snapshots_total`` int32 ().

The files give a time of day but no date; pass ``date="YYYY-MM-DD"`` to get segment start
times (a day is added whenever the time of day goes backwards by more than 12 h; a smaller step back is
one bad time stamp, replaced by the previous time plus the usual spacing). Without it starts are None.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from ._text import guess_delimiter, parse_numeric, read_text
from .errors import DataFormatError
from .recording import Recording, Segment

log = logging.getLogger(__name__)

FEMTO_SAMPLE_RATE = 25600.0
FEMTO_ROWS = 2560
FEMTO_CHANNELS = ("horizontal", "vertical")
ACC_NAME = re.compile(r"^acc_(\d+)\.csv$")
#: Entries of a snapshot archive that may give its sample rate (Hz, a scalar).
RATE_KEYS = ("sample_rate", "fs", "sampling_rate")
#: A time of day that goes back by less than this is a bad time stamp; by more, the next day.
_HALF_DAY_MS = 43_200_000


def femto_files(path: str | os.PathLike[str]) -> list[Path]:
    """The ``acc_NNNNN.csv`` files of a folder (or the one file given), in snapshot-number order.

    Raises:
        DataFormatError: a file named ``acc_*`` that is not ``acc_<digits>.csv``, or none at all.
    """
    p = Path(path)
    if p.is_file():
        if not ACC_NAME.match(p.name):
            raise DataFormatError(p, message=f"bad file name {p.name!r}: expected acc_NNNNN.csv")
        return [p]
    numbered: list[tuple[int, Path]] = []
    ignored = 0
    for e in sorted(p.iterdir()):
        if e.name.startswith(".") or not e.is_file():
            continue
        m = ACC_NAME.match(e.name)
        if m:
            numbered.append((int(m.group(1)), e))
        elif e.name.startswith("acc_"):
            raise DataFormatError(e, message=f"bad file name {e.name!r}: expected acc_NNNNN.csv")
        else:
            ignored += 1
    if ignored:
        log.info("%s: ignored %d files that are not acc_NNNNN.csv", p, ignored)
    if not numbered:
        raise DataFormatError(p, message="no acc_NNNNN.csv files in folder")
    numbered.sort()
    nums = [n for n, _ in numbered]
    if nums != list(range(nums[0], nums[0] + len(nums))):
        log.warning("%s: snapshot numbers are not consecutive (%d files, %d..%d)",
                    p, len(nums), nums[0], nums[-1])
    return [f for _, f in numbered]


def read_femto_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One ``acc_NNNNN.csv``: returns (data (n, 2) float32 [horizontal, vertical] in g,
    time of day of the first row as float64 (4,) [h, min, s, µs]).

    Raises:
        DataFormatError: empty, non-numeric, ragged, NaN, or not 6 columns.
    """
    text = read_text(path)
    lines = text.splitlines()
    first = next(ln for ln in lines if ln.strip())
    delim = guess_delimiter(first)
    arr = parse_numeric(path, lines, delimiter=delim, first_line=1)
    if arr.shape[1] != 6:
        raise DataFormatError(
            path, 1, None, f"expected 6 columns (h, min, s, us, horiz g, vert g), found {arr.shape[1]}")
    return np.ascontiguousarray(arr[:, 4:6], dtype=np.float32), arr[0, :4].copy()


def _starts(tod: np.ndarray, date: str | None) -> list[np.datetime64 | None]:
    """Segment starts from (n, 4) times of day, anchored on ``date`` (None: all None)."""
    if date is None:
        return [None] * len(tod)
    day = np.datetime64(date, "D").astype("datetime64[ms]")
    ms = np.round(((tod[:, 0] * 60 + tod[:, 1]) * 60 + tod[:, 2]) * 1000 + tod[:, 3] / 1000).astype(np.int64)
    step = int(np.median(np.diff(ms))) if len(ms) > 1 else 0
    out: list[np.datetime64 | None] = []
    days, prev = 0, None  # prev: the previous snapshot's time of day (ms)
    for i, v in enumerate(ms.tolist()):
        if prev is not None and v < prev:
            if prev - v < _HALF_DAY_MS:  # one bad time stamp, not midnight
                log.warning("snapshot %d: time of day %s is %.0f s before the previous one: taken as a glitch",
                            i, tod[i].tolist(), (prev - v) / 1000)
                v = prev + step
                if v >= 86_400_000:
                    v -= 86_400_000
                    days += 1
            else:
                days += 1
        out.append(day + np.timedelta64(v + days * 86_400_000, "ms"))
        prev = v
    return out


def load_femto(
    path: str | os.PathLike[str], *, limit: int | None = None, start: int = 0, date: str | None = None,
) -> Recording:
    """Load a FEMTO folder of ``acc_NNNNN.csv`` files, one ``Segment`` per file.

    Args:
        limit: load at most this many files (after skipping ``start``).
        date: ``YYYY-MM-DD`` of the first snapshot, to give segments start times.

    Returns:
        Segments of (2560, 2) float32 [horizontal, vertical] in g; sample_rate 25600.0.
    """
    files = femto_files(path)[start:]
    if limit is not None:
        files = files[: int(limit)]
    segs_data: list[np.ndarray] = []
    tods = np.empty((len(files), 4))
    for i, f in enumerate(files):
        data, tods[i] = read_femto_file(f)
        if data.shape[0] != FEMTO_ROWS:
            log.warning("%s: %d rows, FEMTO snapshots have %d", f, data.shape[0], FEMTO_ROWS)
        segs_data.append(data)
    segments = tuple(Segment(d, s, None) for d, s in zip(segs_data, _starts(tods, date), strict=True))
    log.info("loaded %d FEMTO snapshots from %s", len(segments), path)
    return Recording(segments, FEMTO_CHANNELS, FEMTO_SAMPLE_RATE, "g", os.fspath(path), "femto")


def load_snapshots(
    path: str | os.PathLike[str], *, limit: int | None = None, start: int = 0, date: str | None = None,
    sample_rate: float | None = None,
) -> Recording:
    """Load a snapshot archive (``.npz`` with ``acc`` (n, L, C)), one ``Segment`` per snapshot.

    Args:
        limit / start: keep snapshots ``start .. start+limit``.
        date: ``YYYY-MM-DD`` of the first snapshot (uses ``time_of_day``) for start times.
        sample_rate: Hz within a snapshot; default: the archive's ``sample_rate`` (or ``fs``) entry, else
            FEMTO's 25600.

    Raises:
        DataFormatError: not an ``.npz``, no ``acc`` key, wrong shapes, NaN or inf values.
    """
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            if "acc" not in z.files:
                raise DataFormatError(p, message=f"no 'acc' array in archive (keys: {', '.join(z.files)})")
            acc = z["acc"]
            tod = z["time_of_day"] if "time_of_day" in z.files else None
            stored = next((z[k] for k in RATE_KEYS if k in z.files), None)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, DataFormatError):
            raise
        raise DataFormatError(p, message=f"not a readable .npz archive ({exc})") from exc
    if acc.ndim == 2:
        acc = acc[:, :, None]  # (n, L): one channel
    if acc.ndim != 3 or acc.shape[0] == 0:
        raise DataFormatError(p, message=f"'acc' must have shape (n, L, C) or (n, L) with n > 0, got {acc.shape}")
    if sample_rate is None and stored is not None:
        try:
            sample_rate = float(np.asarray(stored).reshape(()))
        except (TypeError, ValueError) as exc:
            raise DataFormatError(p, message=f"'sample_rate' must be one number (Hz), got {stored!r}") from exc
        if not (np.isfinite(sample_rate) and sample_rate > 0):
            raise DataFormatError(p, message=f"'sample_rate' must be a positive number of Hz, got {sample_rate}")
    elif sample_rate is None:
        sample_rate = FEMTO_SAMPLE_RATE
        femto_like = acc.shape[1:] == (FEMTO_ROWS, len(FEMTO_CHANNELS))
        log.log(logging.INFO if femto_like else logging.WARNING,
                "%s states no sample rate (no 'sample_rate' entry): assuming FEMTO's %g Hz%s", p, sample_rate,
                "" if femto_like else f" for snapshots of {acc.shape[1]} x {acc.shape[2]} (give it with --sample-rate)")
    if not np.issubdtype(acc.dtype, np.number):
        raise DataFormatError(p, message=f"'acc' has non-numeric dtype {acc.dtype}")
    if tod is not None and tod.shape != (acc.shape[0], 4):
        raise DataFormatError(
            p, message=f"'time_of_day' shape {tod.shape} does not match {acc.shape[0]} snapshots")
    stop = None if limit is None else start + int(limit)
    acc = acc[start:stop]
    bad = ~np.isfinite(acc)
    if bad.any():
        i, r, c = (int(v) for v in np.argwhere(bad)[0])
        raise DataFormatError(
            p, message=f"non-finite value in 'acc' at snapshot {i + start}, row {r}, channel {c}")
    if date is not None and tod is None:
        raise DataFormatError(p, message="date given but the archive has no 'time_of_day'")
    starts = _starts(tod[start:stop], date) if tod is not None else [None] * len(acc)
    channels = FEMTO_CHANNELS if acc.shape[2] == 2 else tuple(f"ch{j}" for j in range(acc.shape[2]))
    segments = tuple(Segment(np.array(a, np.float32), s, None) for a, s in zip(acc, starts, strict=True))
    log.info("loaded %d snapshots (%d x %d) from %s", len(segments), acc.shape[1], acc.shape[2], p)
    return Recording(segments, channels, sample_rate, "g", os.fspath(p), "snapshots")
