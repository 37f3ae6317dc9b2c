"""``trainer evaluate``: the gateway's pipeline over labelled recordings, with baselines (see ``harness``)."""
