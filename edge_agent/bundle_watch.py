"""Notice a changed bundle and load the new model, off the scoring thread.

A bundle directory is watched by its *signature*: the directory's own inode and the size, mtime and
inode of every file in it. Any change (a new directory renamed into place, a file rewritten, a manifest
``touch``ed) makes the watcher load the bundle again:

* ``Bundle.load`` validates manifest, digest and tensors, a scorer is built and given a test inference;
* a bundle whose manifest and model are byte-identical to the one served is not swapped again;
* a bundle that fails is rejected (the old model keeps serving) and tried again at its next change, so a
  deployment copied file by file is picked up once its last file is complete;
* a bundle made for another kind of machine (its ``model.group`` is not the sensor's ``group``) is rejected with
  the reason, at start and on every change, as a rollout of it would be (``rollout.group_refusal``);
* a signature taken within ``RACY_S`` of a file's modification cannot prove that the file did not change
  again within the same timestamp tick (same size, same mtime, as an in-place rewrite can leave it): a
  bundle rejected on such a signature is tried once more at the next look, like git's "racily clean" index.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.contract import rollout
from edge_agent.contract.bundle import Bundle
from edge_agent.contract.errors import BundleError
from edge_agent.scorer import Scorer

log = logging.getLogger(__name__)

Signature = tuple
#: A file modified this close (seconds) to the signature may change again without changing the signature.
RACY_S = 2.0


@dataclass(frozen=True)
class LoadedModel:
    """A bundle ready to serve: validated, with a scorer that passed a test inference."""

    bundle: Bundle
    scorer: Scorer
    identity: str  # sha256 over manifest and model digests: equal identities serve the same model
    load_s: float


def load_served_model(path: Path, num_threads: int = 1) -> LoadedModel:
    """Load and validate a bundle, build its scorer and run one test inference; BundleError on any failure."""
    t0 = time.perf_counter()
    bundle = Bundle.load(path)
    scorer = Scorer(bundle, num_threads=num_threads)
    scorer.self_test()
    identity = hashlib.sha256(
        (bundle.manifest["tflite"]["sha256"] + bundle.version + repr(sorted(bundle.manifest["threshold"].items())))
        .encode()
    ).hexdigest()
    return LoadedModel(bundle, scorer, identity, time.perf_counter() - t0)


def signature(path: Path) -> Signature | None:
    """What the watcher compares: the folder's inode and (name, size, mtime, ctime, inode) of each file in it."""
    try:
        top = os.stat(path)
        with os.scandir(path) as it:
            entries = []
            for e in it:
                if e.name.startswith("."):
                    continue
                st = e.stat(follow_symlinks=True)
                entries.append((e.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    except OSError:
        return None
    return (top.st_ino, tuple(sorted(entries)))


def _racy(sig: Signature | None, now_ns: int) -> bool:
    """Whether a file of ``sig`` was modified within ``RACY_S`` of ``now_ns`` (wall clock)."""
    if sig is None:
        return False
    newest = max((max(e[2], e[3]) for e in sig[1]), default=0)
    return now_ns - newest < RACY_S * 1e9


class BundleWatch:
    """The bundle directory of one sensor (``device``, of ``group``), and what was last seen, served and rejected
    there."""

    def __init__(self, path: Path, num_threads: int = 1, device: str = "sensor", group: str | None = None) -> None:
        self.path = path
        self.num_threads = num_threads
        self.device = device
        self.group = group
        self._seen: Signature | None = None
        self._racy_retry = False  # the last load failed on a signature too fresh to be trusted
        self._last_error: str | None = None
        self.served_identity: str | None = None

    def load(self) -> LoadedModel:
        """Load the bundle now (at start); BundleError if it cannot serve."""
        now_ns = time.time_ns()
        self._seen = signature(self.path)
        try:
            model = self._load()
        except BundleError as exc:
            self._racy_retry, self._last_error = _racy(self._seen, now_ns), str(exc)
            raise
        self.served_identity = model.identity
        return model

    def _load(self) -> LoadedModel:
        """``load_served_model``, refused (BundleError, the reason) when the bundle is for another group."""
        model = load_served_model(self.path, self.num_threads)
        b = model.bundle
        why = rollout.group_refusal(self.device, self.group, b.group, f"{b.model_id} {b.version}", deploying=True)
        if why:
            raise BundleError(f"{self.path}: {why}")
        return model

    def changed(self) -> bool:
        """Whether the directory changed since the last look (cheap: stat calls only)."""
        sig = signature(self.path)
        if sig is None or sig == self._seen:
            return False
        self._seen = sig
        return True

    def check(self) -> LoadedModel | None:
        """The new model when the bundle changed and loads; None when nothing (new) is there.

        Raises BundleError when the changed bundle cannot serve (it is tried again at its next change, or
        once more at the next look when its signature was racy; a racy retry that fails the same way again
        is not reported twice).
        """
        now_ns = time.time_ns()
        retry = False
        if not self.changed():
            if not self._racy_retry:
                return None
            retry = True
        self._racy_retry = False
        seen = self._seen
        try:
            model = self._load()
        except BundleError as exc:
            self._racy_retry = _racy(seen, now_ns)
            repeated = retry and str(exc) == self._last_error
            self._last_error = str(exc)
            if repeated:
                return None
            raise
        self._last_error = None
        if model.identity == self.served_identity:
            return None
        return model

    def served(self, model: LoadedModel) -> None:
        self.served_identity = model.identity
