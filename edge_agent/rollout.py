"""Signed model rollout on the gateway: verify, shadow, swap, probation, rollback (one ``SensorRollout`` per sensor).

::

    vib/rollout/{fleet,group/<g>,device/<d>}/… ─► on_message (paho thread: bounded queue)
    scored windows ─► observe (scoring thread: steps copied into a bounded ring)
                                      step() (the bundle-watch thread) ─► state machine ─► vib/<d>/rollout (retained)

    received ─► verified ─► shadow ─► serving (probation) ─► serving
       │  │         │          │               └─► rolled_back (alert rate too high: the previous bundle serves)
       │  └► waiting (disk full, ...: staging cleaned, retried with a growing pause) ─► verified
       └────────────┴──────────┴─► rejected (reason; the current model never stopped scoring)

Only a rollout a trusted key signed can change the state. A message that does not verify (unsigned, another
key, altered, malformed, a chunk of another rollout) is ignored and counted (``ignored``, ``last_ignored``): it
cannot start, stop or slow a rollout. Rollouts only move forward: one published no later than the newest this
sensor has taken is a replay (ignored, counted in ``stale``), and a model older than the one serving is refused
unless its metadata says ``allow_downgrade`` (``trainer publish --allow-downgrade``; ``edge-agent rollback``
rolls back by hand).

* **received**: signed metadata for this sensor, its group or the fleet; chunks are collected (only chunks signed by
  a trusted key are buffered, bounded in bytes). A model of another group is rejected here, before any chunk is
  used: a bundle whose ``model.group`` is G serves only sensors whose config ``group`` is G (a bundle without a
  group serves any sensor); metadata older than schema 3 does not say the group, and the unpacked manifest is
  checked again in **verified**. A chunk still missing after ``chunk_timeout_s`` rejects the
  rollout for now (not remembered: the retained rollout is tried again after a reconnect).
* **verified**: every chunk's signature and sha256 and the whole payload's sha256 match the signed metadata;
  the payload unpacks to a bundle whose input shape and channels are this sensor's and whose ``model.group`` is the
  metadata's and fits this sensor's group; ``Bundle.load`` and a test inference pass in a second interpreter.
* **shadow**: the candidate scores the sensor's most recent windows beside the serving model. Its alert rate
  (share of windows above its threshold) may exceed the serving model's by at most ``max_alert_rate_increase``.
* **serving**: the bundle is deployed atomically (assembled in a sibling folder, renamed into the sensor's
  bundle path; the replaced bundle is kept as ``<bundle>.previous``) and handed to the sensor, which swaps it
  in between two frames. On **probation** for ``probation_windows`` windows the previous model keeps scoring
  beside it; if the new model's alert rate exceeds the previous one's by more than the limit it is
  **rolled back** (``edge-agent rollback`` does the same by hand).

Decisions survive a restart: ``<bundle>.rollout.json`` remembers the rollouts handled and the newest one taken,
so a retained rollout that was rejected or rolled back is not applied again, and an older one never is.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edge_agent.bundle_watch import LoadedModel, load_served_model
from edge_agent.contract import rollout as contract
from edge_agent.contract import topics
from edge_agent.contract.bundle import PREVIOUS_SUFFIX, deploy_bundle
from edge_agent.contract.errors import BundleError
from edge_agent.ratelog import RateLimitedLog
from edge_agent.settings import setting
from edge_agent.status import RolloutCounters, RolloutFigures, RolloutState, fields_of, write_json_atomic

log = logging.getLogger(__name__)

#: Most bytes of chunks buffered before their metadata arrives (retained messages come in any order).
ORPHAN_BYTES = 64 * 1024 * 1024
STATES = ("idle", "received", "waiting", "verified", "shadow", "serving", "rolled_back", "rejected")
#: Pause before a rollout that failed for a transient reason (disk full) is tried again: doubling up to the max.
RETRY_MIN_S, RETRY_MAX_S = 5.0, 300.0


@dataclass(frozen=True)
class RolloutPolicy:
    """``[rollout]`` of the gateway config."""

    public_keys: tuple[str, ...] = setting(doc="the publishers' Ed25519 public keys (trainer keygen)")
    shadow_windows: int = setting(100, lo=1, hi=100_000, doc="windows a candidate is shadow-scored on before it serves")
    max_alert_rate_increase: float = setting(0.05, lo=0.0, hi=1.0, doc="refused (or rolled back) when its alert "
                                             "rate exceeds the serving model's by more than this share")
    probation_windows: int = setting(300, lo=1, hi=10_000_000, doc="windows the previous model is kept to roll back to")
    min_probation_windows: int = setting(30, internal=True, doc="a rollback may come this early, when the excess "
                                         "is already clear")
    chunk_timeout_s: float = setting(600.0, lo=1.0, hi=7 * 86_400.0, doc="a rollout whose chunks do not all arrive "
                                     "in this time is rejected")


def previous_path(bundle_path: Path) -> Path:
    return bundle_path.with_name(bundle_path.name + PREVIOUS_SUFFIX)


def state_path(bundle_path: Path) -> Path:
    return bundle_path.with_name(bundle_path.name + ".rollout.json")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def deploy(staged: Path, bundle_path: Path) -> Path:
    """Install the unpacked bundle ``staged`` as ``bundle_path`` the way ``edge-agent deploy`` does (checked,
    assembled in a sibling, renamed into place; the replaced bundle kept as ``.previous``), then remove it."""
    try:
        deploy_bundle(staged, bundle_path)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return bundle_path


def rollback_files(bundle_path: Path, reason: str = "by hand") -> str:
    """Put ``<bundle>.previous`` back in place (the rolled-back bundle is kept as ``.rolled-back``); returns the
    version now in place. The running agent's bundle watcher serves it at its next look. BundleError if there is
    no previous bundle."""
    prev = previous_path(bundle_path)
    if not (prev / "manifest.json").is_file():
        raise BundleError(f"{bundle_path}: no previous bundle ({prev}) to roll back to")
    version = json.loads((prev / "manifest.json").read_text())["model"]["version"]
    failed = bundle_path.with_name(bundle_path.name + ".rolled-back")
    if failed.exists():
        shutil.rmtree(failed)
    if bundle_path.exists():
        os.rename(bundle_path, failed)
    os.rename(prev, bundle_path)
    _fsync_dir(bundle_path.parent)
    memory = _read_state(state_path(bundle_path))
    memory["rolled_back"] = sorted(set(memory.get("rolled_back", [])) | set(memory.get("deployed", [])[-1:]))
    memory["last"] = {"state": "rolled_back", "reason": reason, "serving_version": version,
                      "time": datetime.now(UTC).isoformat(timespec="seconds")}
    write_json_atomic(state_path(bundle_path), memory)
    return version


def _read_state(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


class SensorRollout:
    """One sensor's rollouts.

    Args:
        device: the sensor.
        group: the sensor's kind of machine (config ``group``; None: none): it takes its group's rollouts and no
            model of another group.
        bundle_path: the sensor's bundle directory (deployed bundles go there).
        policy: keys and limits.
        serving: ``() -> LoadedModel | None``, the model the sensor serves now.
        offer_model: hands a loaded model to the sensor (it swaps it in between two frames).
        publish: ``(topic, payload)`` -> None, retained QoS 1 (None: not published).
        num_threads: interpreter threads of the second interpreter.
    """

    def __init__(self, device: str, bundle_path: Path, policy: RolloutPolicy, *,
                 serving: Callable[[], LoadedModel | None], offer_model: Callable[[LoadedModel], None],
                 publish: Callable[[str, bytes], None] | None = None, num_threads: int = 1,
                 ring: int = 512, inbox: int = 4096, group: str | None = None) -> None:
        self.device = device
        self.group = group
        self.bundle_path = Path(bundle_path)
        self.policy = policy
        self.keys = contract.keyring(policy.public_keys)
        self._serving = serving
        self._offer = offer_model
        self._publish = publish
        self.num_threads = num_threads
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=inbox)
        self._ring: collections.deque[tuple[np.ndarray, float, float, str]] = collections.deque(maxlen=max(ring, 1))
        self._ring_lock = threading.Lock()
        self._seen = 0  # windows observed since start (the ring's total)
        self.state = "idle"
        self.reason = ""
        self.meta: contract.RolloutMeta | None = None
        self._chunks: dict[int, bytes] = {}
        self._orphans: dict[str, dict[int, bytes]] = {}
        self._orphan_bytes = 0
        self._received_at = 0.0
        self._retry_at: float | None = None  # monotonic time of the next try after a transient failure
        self._retry_s = RETRY_MIN_S
        self._blob: bytes | None = None  # the assembled payload, kept while waiting to retry
        self.last_ignored: str | None = None
        self._candidate: LoadedModel | None = None
        self._previous: LoadedModel | None = None
        self._staged: Path | None = None
        self._probed = 0  # windows observed when probation last looked
        self._probation: list[tuple[bool, bool]] = []  # (new above its threshold, previous above its threshold)
        self.figures = RolloutFigures()
        self.counters = RolloutCounters()
        self._memory: dict | None = None  # <bundle>.rollout.json, read at the first step
        self._ratelog = RateLimitedLog(log)

    # ------------------------------------------------------------------ inputs (other threads)
    def on_message(self, topic: str, payload: bytes) -> None:
        """paho's thread: hand over, never block (a full inbox drops; retained messages come again on reconnect)."""
        try:
            self._inbox.put_nowait((topic, bytes(payload)))
        except queue.Full:
            self.counters.dropped += 1

    def observe(self, steps: np.ndarray, score: float, threshold: float, version: str) -> None:
        """The scoring thread, once per scored window: (T, F) steps (copied), the serving model's score, threshold
        and version."""
        with self._ring_lock:
            self._ring.append((np.array(steps, np.float32, copy=True), float(score), float(threshold), version))
            self._seen += 1

    # ------------------------------------------------------------------ the state machine (watcher thread)
    def step(self) -> bool:
        """Handle queued messages and advance; returns whether the state changed."""
        if self._memory is None:
            self._memory = _read_state(state_path(self.bundle_path))
            _remove_staging(self.bundle_path)  # left by a stop in the middle of a rollout
        before = (self.state, self.meta.rollout_id if self.meta else None)
        for _ in range(self._inbox.qsize()):
            try:
                topic, payload = self._inbox.get_nowait()
            except queue.Empty:
                break
            self.counters.messages += 1
            try:
                self._message(topic, payload)
            except contract.RolloutError as exc:  # signed by nobody we trust, or not a rollout message at all
                self._ignore(str(exc))
        try:
            if self.state == "received" and self.meta is not None:
                if len(self._chunks) == self.meta.n_chunks:
                    self._verify()
                elif time.monotonic() - self._received_at > self.policy.chunk_timeout_s:
                    self._reject(f"only {len(self._chunks)} of {self.meta.n_chunks} chunks arrived in "
                                 f"{self.policy.chunk_timeout_s:g} s (tried again when the rollout is delivered again, "
                                 f"e.g. after a reconnect)", remember=False)
            elif self.state == "waiting" and self._retry_at is not None and time.monotonic() >= self._retry_at:
                self.counters.retries += 1
                self._verify()
            if self.state in ("verified", "shadow"):
                self._shadow()
            elif self.state == "serving":
                self._check_serving()
        except OSError as exc:  # disk full, read-only file system, ...: not the rollout's fault
            self._wait(exc)
        except (contract.RolloutError, BundleError) as exc:
            if isinstance(exc.__cause__, OSError) and not isinstance(exc, contract.RolloutError):
                self._wait(exc.__cause__)  # an install that failed for want of space
            else:
                self._reject(str(exc))
        return (self.state, self.meta.rollout_id if self.meta else None) != before

    def _message(self, topic: str, payload: bytes) -> None:
        parsed = contract.parse_topic(topic)
        if parsed is None or not payload:
            return  # not ours, or a cleared retained message
        target, rollout_id, index = parsed
        if target not in self.targets:
            return
        if rollout_id is None:
            self._metadata(target, payload)
        elif self.meta is not None and rollout_id == self.meta.rollout_id:
            if self.state == "received":
                i, data = contract.verify_chunk(self.meta, payload, self.keys)
                self._chunks.setdefault(i, data)
        else:
            self._orphan(rollout_id, index, payload)

    @property
    def targets(self) -> tuple[str, ...]:
        """The rollout targets this sensor takes: the fleet, its own and its group's."""
        mine = (contract.FLEET, contract.target_of(self.device))
        return mine if self.group is None else (*mine, contract.group_target(self.group))

    def _group_refusal(self, model_group: str | None, version: str, model_id: str) -> str:
        return contract.group_refusal(self.device, self.group, model_group, f"{model_id} {version}")

    def _ignore(self, reason: str) -> None:
        """A message no trusted key signed (or not a rollout message): counted, never acted on."""
        self.counters.ignored += 1
        self.last_ignored = reason[:300]
        self._ratelog.warning("ignored", "%s: rollout message ignored (%d so far): %s", self.device,
                              self.counters.ignored, reason)

    def _orphan(self, rollout_id: str, index: int, payload: bytes) -> None:
        """A chunk before its metadata: kept (bounded) only if a trusted key signed it."""
        body, signature = payload[:-64], payload[-64:]
        if not any(contract.verifies(k, signature, body) for k in self.keys.values()):
            raise contract.RolloutError(f"chunk {index} of rollout {rollout_id[:8]}: no trusted key signed it")
        if self._orphan_bytes + len(payload) > ORPHAN_BYTES:
            self._orphans.clear()
            self._orphan_bytes = 0
        self._orphans.setdefault(rollout_id, {})[index] = payload
        self._orphan_bytes += len(payload)

    def _metadata(self, target: str, payload: bytes) -> None:
        meta = contract.verify_metadata(payload, self.keys)
        if meta.target != target:
            raise contract.RolloutError(f"rollout metadata for {meta.target} arrived on the topic of {target}")
        if self.meta is not None and meta.rollout_id == self.meta.rollout_id:
            return  # the retained copy again (reconnect)
        done = {k: set(self._memory.get(k, [])) for k in ("rejected", "rolled_back")}
        if meta.rollout_id in done["rejected"] | done["rolled_back"]:
            return  # decided before (and the retained message is still there)
        serving = self._serving()
        if serving is not None and serving.bundle.version == meta.model_version:
            self.meta, self.state, self.reason = meta, "serving", ""  # delivered again (a reconnect, a restart)
            return
        newest = contract.parse_time(self._memory.get("newest_published"))
        if meta.published < newest or (meta.published == newest and meta.rollout_id != self._memory.get(
                "newest_rollout")):
            self.counters.stale += 1
            self.last_ignored = (f"rollout {meta.rollout_id[:8]} ({meta.model_version}) was published {meta.created}, "
                                 f"not after the newest this sensor took ({self._memory.get('newest_published')}): "
                                 f"a replay, ignored")
            self._ratelog.warning("stale", "%s: %s", self.device, self.last_ignored)
            return
        self._discard_candidate()
        self.meta, self._chunks, self.reason, self.figures = meta, {}, "", RolloutFigures()
        self.state, self._received_at = "received", time.monotonic()
        self._remember("taken", meta.rollout_id, newest=meta)
        refusal = self._group_refusal(meta.group, meta.model_version, meta.model_id) or self._backwards(meta, serving)
        if refusal:  # before any chunk is used
            self._reject(refusal)
            return
        for index, chunk in self._orphans.pop(meta.rollout_id, {}).items():
            self._orphan_bytes -= len(chunk)
            try:
                i, data = contract.verify_chunk(meta, chunk, self.keys)
            except contract.RolloutError as exc:
                self._ignore(f"buffered chunk {index}: {exc}")
                continue
            self._chunks[i] = data
        log.info("%s: rollout %s of %s %s received (%d chunks)", self.device, meta.rollout_id[:8], meta.model_id,
                 meta.model_version, meta.n_chunks)
        self._announce()

    @staticmethod
    def _backwards(meta: contract.RolloutMeta, serving: LoadedModel | None) -> str:
        """Why ``meta``'s model may not replace the serving one (older, and the publisher did not say so), or ""."""
        if serving is None or meta.allow_downgrade or meta.model_created is None:
            return ""
        created = serving.bundle.manifest.get("model", {}).get("created")
        if contract.parse_time(meta.model_created) >= contract.parse_time(created):
            return ""
        return (f"{meta.model_version} (created {meta.model_created}) is older than the serving {serving.bundle.version} "
                f"(created {created}): a downgrade; publish it with `trainer publish --allow-downgrade` to roll back "
                f"on purpose")

    def _verify(self) -> None:
        meta = self.meta
        blob = self._blob if self._blob is not None else contract.assemble(meta, self._chunks)
        self._blob, self._chunks = blob, {}
        serving = self._serving()
        if serving is not None:
            contract.check_fits(meta, serving.bundle.input_shape, serving.bundle.spec.channels)
        staged = _staging(self.bundle_path, meta.rollout_id)
        self._staged = staged
        if staged.exists():
            shutil.rmtree(staged)
        contract.unpack_bundle(blob, staged)
        model = load_served_model(staged, self.num_threads)
        if model.bundle.version != meta.model_version or tuple(model.bundle.input_shape) != meta.input_shape \
                or (meta.group_signed and model.bundle.group != meta.group):
            raise contract.RolloutError("the bundle inside the rollout is not the one its metadata names")
        refusal = self._group_refusal(model.bundle.group, model.bundle.version, model.bundle.model_id)
        if refusal:  # metadata older than schema 3 does not say the group: the manifest does
            raise contract.RolloutError(refusal)
        self._candidate = model
        self._retry_at, self._retry_s = None, RETRY_MIN_S
        self.state = "verified"
        log.info("%s: rollout %s verified (signature, sha256, shape, test inference)", self.device, meta.rollout_id[:8])
        self._announce()
        self.state = "shadow"
        self._announce()

    def _shadow(self) -> None:
        """Score the candidate on the most recent windows the serving model scored; swap if its alert rate fits."""
        n = self.policy.shadow_windows
        serving = self._serving()
        with self._ring_lock:
            recent = [w for w in self._ring if serving is not None and w[3] == serving.bundle.version][-n:]
        if len(recent) < min(n, self._ring.maxlen):
            return  # wait for windows (the ring fills as the sensor streams)
        cand = self._candidate
        new_scores = cand.scorer.score_windows(np.stack([w[0] for w in recent]))
        cur_above = np.array([sc > th for _, sc, th, _ in recent])
        new_above = new_scores > cand.bundle.threshold.value
        cur_rate, new_rate = float(cur_above.mean()), float(new_above.mean())
        self.figures = RolloutFigures(shadow_windows=len(recent), shadow_alert_rate=new_rate,
                                      serving_alert_rate=cur_rate)
        if new_rate - cur_rate > self.policy.max_alert_rate_increase:
            raise contract.RolloutError(
                f"shadow: the new model is above its threshold on {new_rate:.1%} of {len(recent)} recent windows, the "
                f"serving model on {cur_rate:.1%} (limit +{self.policy.max_alert_rate_increase:.1%})")
        self._swap()

    def _swap(self) -> None:
        deploy(self._staged, self.bundle_path)
        self._staged = None
        model = load_served_model(self.bundle_path, self.num_threads)  # from its final place
        self._candidate, self._blob = None, None
        # the previous model in an interpreter of this thread's own (the sensor's is busy scoring)
        prev = previous_path(self.bundle_path)
        self._previous = load_served_model(prev, self.num_threads) if prev.exists() else None
        self._offer(model)
        self.counters.swaps += 1
        with self._ring_lock:
            self._probed, self._probation = self._seen, []
        self.state, self.reason = "serving", ""
        self._remember("deployed", self.meta.rollout_id)
        log.info("%s: rollout %s: serving %s (probation: %d windows)", self.device, self.meta.rollout_id[:8],
                 model.bundle.version, self.policy.probation_windows)
        self._announce()

    def _check_serving(self) -> None:
        """Notice a rollback made by hand (the bundle watcher serves another version); run probation."""
        serving = self._serving()
        if serving is not None and self.meta is not None and serving.bundle.version != self.meta.model_version:
            last = _read_state(state_path(self.bundle_path)).get("last", {})
            self._previous = None
            self.state = "rolled_back"
            self.reason = last.get("reason") or f"{serving.bundle.version} serves instead"
            self._announce()
        elif self._previous is not None:
            self._probe()

    def _probe(self) -> None:
        """Probation: the previous model scores the windows the new one scored."""
        version = self.meta.model_version
        with self._ring_lock:
            fresh = min(self._seen - self._probed, len(self._ring))
            todo = [w for w in list(self._ring)[len(self._ring) - fresh:] if w[3] == version]
            self._probed = self._seen
        prev = self._previous
        room = self.policy.probation_windows - len(self._probation)
        for steps, score, threshold, _ in todo[:max(room, 0)]:
            self._probation.append((score > threshold, prev.scorer.score(steps) > prev.bundle.threshold.value))
        n = len(self._probation)
        if n == 0:
            return
        new_rate = sum(a for a, _ in self._probation) / n
        old_rate = sum(b for _, b in self._probation) / n
        self.figures = dataclasses.replace(self.figures, probation_windows=n, probation_alert_rate=new_rate,
                                           previous_alert_rate=old_rate)
        excess = new_rate - old_rate
        if n >= self.policy.min_probation_windows and excess > self.policy.max_alert_rate_increase:
            self.rollback(f"probation: {version} above its threshold on {new_rate:.1%} of {n} windows, the previous "
                          f"model on {old_rate:.1%} (limit +{self.policy.max_alert_rate_increase:.1%})")
        elif n >= self.policy.probation_windows:
            log.info("%s: %s passed probation (%d windows, alert rate %.1f%% vs %.1f%%)", self.device, version, n,
                     100 * new_rate, 100 * old_rate)
            self._previous = None
            self._announce()

    def rollback(self, reason: str) -> None:
        """Serve the previous bundle again (files and model)."""
        version = rollback_files(self.bundle_path, reason)
        model = load_served_model(self.bundle_path, self.num_threads)
        self._offer(model)
        self._previous = None
        self.counters.rollbacks += 1
        self.state, self.reason = "rolled_back", reason
        if self.meta is not None:
            self._remember("rolled_back", self.meta.rollout_id)
        log.error("%s: rolled back to %s: %s", self.device, version, reason)
        self._announce()

    # ------------------------------------------------------------------ bookkeeping
    def _wait(self, exc: OSError) -> None:
        """A transient failure (disk full, ...): clean the staging folder, try again later with the same payload."""
        self._discard_candidate()
        if self.meta is None or self.state not in ("received", "waiting", "verified", "shadow"):
            log.error("%s: rollout: %s", self.device, exc)
            return
        self._retry_at = time.monotonic() + self._retry_s
        self.state = "waiting"
        self.reason = (f"{exc.strerror or exc} ({getattr(exc, 'filename', None) or self.bundle_path.parent}): tried "
                       f"again in {self._retry_s:g} s; the current model keeps scoring")[:500]
        self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
        log.error("%s: rollout %s waits: %s", self.device, self.meta.rollout_id[:8], self.reason)
        self._announce()

    def _reject(self, reason: str, remember: bool = True) -> None:
        self.counters.rejected += 1
        self._discard_candidate()
        self._blob, self._retry_at, self._retry_s = None, None, RETRY_MIN_S
        self.state, self.reason = "rejected", reason[:500]
        if self.meta is not None and remember:
            self._remember("rejected", self.meta.rollout_id)
        log.error("%s: rollout %s rejected, the current model keeps scoring: %s", self.device,
                  self.meta.rollout_id[:8] if self.meta else "?", reason)
        self._announce()

    def _discard_candidate(self) -> None:
        self._candidate = None
        if self._staged is not None and self._staged.exists():
            shutil.rmtree(self._staged, ignore_errors=True)
        self._staged = None

    def _remember(self, kind: str, rollout_id: str, newest: contract.RolloutMeta | None = None) -> None:
        memory = _read_state(state_path(self.bundle_path))  # `edge-agent rollback` may have written it meanwhile
        for k in ("deployed", "rejected", "rolled_back", "taken"):
            memory[k] = list(dict.fromkeys([*memory.get(k, []), *(self._memory or {}).get(k, [])]))[-50:]
        memory[kind] = list(dict.fromkeys([*memory.get(kind, []), rollout_id]))[-50:]
        for m in (self._memory or {}, {"newest_published": newest.created, "newest_rollout": newest.rollout_id}
                  if newest is not None else {}):
            if contract.parse_time(m.get("newest_published")) > contract.parse_time(memory.get("newest_published")):
                memory["newest_published"], memory["newest_rollout"] = m["newest_published"], m.get("newest_rollout")
        memory["last"] = self.status()
        self._memory = memory
        try:
            write_json_atomic(state_path(self.bundle_path), memory)
        except OSError as exc:  # a full disk must not undo the decision in memory (kept; written next time)
            self._ratelog.log(logging.ERROR, "memory", "%s: rollout memory %s not written: %s", self.device,
                              state_path(self.bundle_path), exc)

    def status(self) -> dict:
        serving = self._serving()
        m = self.meta
        state = RolloutState(
            state=self.state, rollout_id=m.rollout_id if m else None, model_version=m.model_version if m else None,
            serving_version=serving.bundle.version if serving else None,
            probation=self.state == "serving" and self._previous is not None, reason=self.reason or None,
            last_ignored=self.last_ignored, time=datetime.now(UTC).isoformat(timespec="seconds"))
        return fields_of(state) | fields_of(self.figures) | fields_of(self.counters)

    def _announce(self) -> None:
        if self._publish is not None:
            try:
                self._publish(topics.rollout_state_topic(self.device), json.dumps(self.status()).encode())
            except Exception:  # publishing a state must never break the rollout
                log.exception("%s: rollout state not published", self.device)


def _staging(bundle_path: Path, rollout_id: str) -> Path:
    """Where a rollout's bundle is unpacked and tested before it is deployed (a hidden sibling of the bundle)."""
    return bundle_path.with_name(f".{bundle_path.name}.rollout-{rollout_id[:12]}")


def _remove_staging(bundle_path: Path) -> None:
    """Remove the staging folders of this bundle's rollouts (only ours: ``.<bundle>.rollout-<12 hex>``)."""
    import re

    pattern = re.compile(rf"\.{re.escape(bundle_path.name)}\.rollout-[0-9a-f]{{12}}")
    try:
        entries = list(bundle_path.parent.iterdir())
    except OSError:
        return
    for p in entries:
        if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
