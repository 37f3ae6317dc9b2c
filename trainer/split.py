"""Choosing rows by time: ``--start``, ``--end`` and ``--train-until`` (numpy only, no TensorFlow)."""

from __future__ import annotations

import logging
import re

import numpy as np

from edge_agent.contract.recordings import Recording

log = logging.getLogger(__name__)


def parse_time(text: str) -> np.datetime64:
    """ISO-8601 (``2004-02-15 12:52:39``, ``2004-02-15T12:52:39``) or IMS (``2004.02.15.12.52.39``) time."""
    m = re.fullmatch(r"(\d{4})\.(\d{2})\.(\d{2})\.(\d{2})\.(\d{2})\.(\d{2})", text.strip())
    iso = f"{m[1]}-{m[2]}-{m[3]}T{m[4]}:{m[5]}:{m[6]}" if m else text.strip().replace(" ", "T", 1)
    try:
        return np.datetime64(iso, "ms")
    except ValueError as exc:
        raise ValueError(f"cannot read {text!r} as a time (use 2004-02-15T12:52:39 or 2004.02.15.12.52.39)") from exc


def trim_recording(rec: Recording, start: str | None, end: str | None) -> Recording:
    """Drop rows before ``start`` and at or after ``end`` (both optional), logging what was dropped."""
    if start is not None:
        dropped, rec = rec.split_at(parse_time(start))
        log.info("--start %s: ignoring %d rows before it", start, dropped.n_rows)
    if end is not None:
        rec, dropped = rec.split_at(parse_time(end))
        log.info("--end %s: ignoring %d rows from it on", end, dropped.n_rows)
    return rec


def split_recording(rec: Recording, train_until: str | None) -> tuple[Recording, int]:
    """(training part, its row count). Without ``train_until`` everything is training data."""
    if train_until is None:
        return rec, rec.n_rows
    before, after = rec.split_at(parse_time(train_until))
    if before.n_rows == 0:
        raise ValueError(f"no rows before --train-until {train_until}; the data starts later")
    if after.n_rows == 0:
        log.warning("no rows at or after --train-until %s: nothing is held out beyond validation", train_until)
    return before, before.n_rows
