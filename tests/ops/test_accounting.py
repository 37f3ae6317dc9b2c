"""Every sample the windower accepts is accounted for: samples_in = scored + invalid + discarded + pending,
whatever the framing, gaps, resyncs and bad values (the identity the soak benchmark checks on a live agent)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.contract import preprocess
from edge_agent.contract.frames import SEQ_MOD, Frame
from edge_agent.windows import Windower

RAW = preprocess.PreprocessSpec(mode="raw", channels=("x", "y"), window=16, hop=4)
FEAT = preprocess.PreprocessSpec(mode="features", channels=("x", "y"), window=6, hop=2, block=32,
                                 features=("rms", "peak"), sample_rate=10_000.0)


@settings(max_examples=150, deadline=None)
@given(spec=st.sampled_from([RAW, FEAT]),
       frames=st.lists(st.tuples(st.integers(1, 120), st.sampled_from(["ok", "ok", "ok", "gap", "back", "nan"])),
                       min_size=1, max_size=40))
def test_every_accepted_sample_is_scored_invalid_discarded_or_pending(spec, frames):
    w = Windower(spec, value_range=100.0)
    rng = np.random.default_rng(0)
    seq = 0
    scored = 0

    def emit(win):
        nonlocal scored
        scored += 1

    for n, kind in frames:
        x = rng.standard_normal((n, 2)).astype(np.float32)
        if kind == "gap":
            seq += 7
        elif kind == "back":
            seq = max(0, seq - 500)
        elif kind == "nan":
            x[n // 2, 1] = np.nan
        w.push(Frame(seq % SEQ_MOD, 0, x), emit)
        seq += n
        c = w.counters
        assert c.samples_in == c.samples_scored + c.samples_invalid + c.samples_discarded + w.samples_pending
    assert w.counters.windows == scored
