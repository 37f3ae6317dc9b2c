"""Numenta Anomaly Benchmark (NAB) series: CSV with header ``timestamp,value``.

One row every few minutes (5 min in the artificial series); loaded as one ``Segment`` with
``row_times`` and a single channel ``value``; ``sample_rate`` is None (rows carry their times).
"""

from __future__ import annotations

import logging
import os

from .errors import DataFormatError
from .ims import load_time_table
from .recording import Recording

log = logging.getLogger(__name__)


def load_nab(path: str | os.PathLike[str]) -> Recording:
    """Load a NAB ``timestamp,value`` CSV.

    Returns:
        One segment, ``data`` (n, 1) float32, ``row_times`` (n,) datetime64[ms].

    Raises:
        DataFormatError: header is not ``timestamp,value``, or a bad time, number or NaN.
    """
    rec = load_time_table(path, format_name="nab", units="", time_column="timestamp")
    if rec.channels != ("value",):
        raise DataFormatError(path, 1, None, f"expected header 'timestamp,value', found value columns "
                              f"{list(rec.channels)}")
    log.info("loaded NAB series %s: %d rows", path, rec.n_rows)
    return rec
