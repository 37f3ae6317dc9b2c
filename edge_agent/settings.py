"""One declaration per setting: its default, its allowed range and what it means, on the field itself.

A runtime policy (``AlertPolicy``, ``DriftPolicy``, ``KeepPolicy``, ``RolloutPolicy``) declares its settings
with :func:`setting`; the config section of the same name extends it (``config.Alerts(AlertPolicy)`` adds the
sinks), so the default, the range ``edge-agent validate-config`` enforces and the reference's description
cannot drift apart. A field marked ``internal`` is the policy's own and not a config key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field


def setting(default: object = dataclasses.MISSING, *, lo: float | None = None, hi: float | None = None,
            choices: tuple | None = None, doc: str = "", internal: bool = False, factory=dataclasses.MISSING):
    """A dataclass field with the config's metadata: ``lo``..``hi`` or ``choices``, ``doc`` for the reference."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "doc": doc, "internal": internal}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)
