"""Independent jobs (one per group: ``trainer retrain --by group``) fanned out as Ray tasks, or run serially.

::

    jobs {key: payload} ─► Ray: one task per key, each asking for ``TaskResources`` (CPUs, memory)
                         │      on --ray-address's cluster, or a local Ray started here (loopback only)
                         └► serially in this process: --serial, or ``ray`` not installed (one-line notice)
       each job: fn(key, payload) under ``_call``: its log records captured as text, any exception caught
       ─► {key: {"ok", "value" | "error", "log", "seconds", "where", "peak_rss_mib"}}: plain data, in the jobs' order

One job failing, in its code or by losing its worker (killed for memory, a node gone), is that key's result
(``ok`` false, ``error`` one line, the log and traceback kept); the other jobs go on. ``fn`` must be a
module-level function (Ray ships it by reference: the workers import its module) and return plain data
(dicts, lists, str, numbers), never live objects such as Keras models.

The local Ray: ``ray.init(address="local")`` with ``num_cpus`` the CPUs this process may use, no dashboard, an
object store of ``OBJECT_STORE_BYTES`` (the jobs pass paths and small dicts; Ray's default would take 30 % of
the machine's memory), its own logs kept out of the terminal (workers' output in Ray's session folder; each
job's log comes back in its result), usage statistics off, the node on 127.0.0.1. A Ray already initialised
by the caller (a benchmark) is used as it is and left running.
"""

from __future__ import annotations

import io
import logging
import os
import resource
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

GiB = 1 << 30

#: The local Ray's object store: small, the jobs' arguments and results are paths and dicts (Ray's minimum is 75 MiB).
OBJECT_STORE_BYTES = 128 * 1024 * 1024


@dataclass(frozen=True)
class TaskResources:
    """What each task asks the Ray scheduler for, so a cluster can pack them.

    ``memory`` is a scheduling reservation (Ray places no more tasks on a node than its memory holds; it is not
    a hard limit). The defaults fit one group's retrain of the product's models: one CPU (the models are small
    1-D conv/dense autoencoders; TensorFlow is held to the CPUs assigned, ``assigned_cpus``) and 2 GiB (measured
    peak resident memory of a Ray worker that retrained a group of the tests' features-mode conv model: 0.93 GiB,
    TensorFlow, the TFLite converter and the parity check most of it; about twice that leaves room for larger
    datasets and models; docs/central/retrain.md)."""

    num_cpus: float = 1.0
    memory: int = 2 * GiB

    def __post_init__(self) -> None:
        if not self.num_cpus > 0:
            raise ValueError(f"task CPUs must be > 0, got {self.num_cpus}")
        if self.memory < 256 * 1024 * 1024:
            raise ValueError(f"task memory must be at least 256 MiB, got {self.memory} bytes")


@dataclass(frozen=True)
class FanoutOptions:
    """``address``: an existing Ray cluster (``ray://host:10001`` or ``host:6379``; None: a local Ray started for
    the run). ``serial``: no Ray, the jobs one after the other in this process. ``local_cpus``: the local Ray's
    CPUs (None: the CPUs this process may run on)."""

    address: str | None = None
    serial: bool = False
    resources: TaskResources = field(default_factory=TaskResources)
    local_cpus: int | None = None
    object_store_bytes: int = OBJECT_STORE_BYTES


@dataclass
class FanoutRun:
    """What ``run`` did: ``results`` ({key: plain dict}, in the jobs' order), ``mode`` ("serial", "local Ray",
    "Ray at ADDRESS"), ``notice`` (why it ran serially, if it had to; None otherwise), ``startup_s`` (starting or
    joining Ray) and ``wall_s`` (the whole run)."""

    results: dict[str, dict]
    mode: str
    notice: str | None = None
    startup_s: float = 0.0
    wall_s: float = 0.0


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def assigned_cpus() -> int | None:
    """The CPUs Ray assigned to the task this runs in (at least 1); None outside a Ray task."""
    try:
        import ray
    except ModuleNotFoundError:
        return None
    if not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    if ctx.worker.mode != ray.WORKER_MODE:
        return None
    return max(1, int(ctx.get_assigned_resources().get("CPU", 1)))


def local_cpus() -> int:
    """The CPUs this process may run on (its affinity, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextmanager
def _captured_logs() -> Iterator[io.StringIO]:
    """Every log record of INFO and above, while inside, as text (root handler; the root level is lowered to INFO
    for the while if it was higher, then restored)."""
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    if level > logging.INFO or level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield text
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _call(fn: Callable[[str, object], dict], key: str, payload: object) -> dict:
    """``fn(key, payload)`` with its log captured and any exception made into a result (the same in a Ray task
    and in this process)."""
    where = f"pid {os.getpid()}"
    t0 = time.monotonic()
    with _captured_logs() as text:
        try:
            value = fn(key, payload)
        except Exception as exc:  # one job's failure is its result; the others go on
            logging.getLogger(__name__).error("%s failed:\n%s", key, traceback.format_exc())
            return {"ok": False, "error": _one_line(exc), "log": text.getvalue(),
                    "seconds": time.monotonic() - t0, "where": where, "peak_rss_mib": _peak_rss_mib()}
    return {"ok": True, "value": value, "log": text.getvalue(), "seconds": time.monotonic() - t0, "where": where,
            "peak_rss_mib": _peak_rss_mib()}


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far (a reused Ray worker's includes its earlier tasks)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one_line(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else '(no message)'}"


def run(fn: Callable[[str, object], dict], jobs: dict[str, object], opts: FanoutOptions | None = None,
        notify: Callable[[str], None] | None = None) -> FanoutRun:
    """Run ``fn(key, payload)`` for every job, as Ray tasks unless ``opts.serial`` or Ray is not installed (then
    serially, ``notify`` told why in one line). Raises only when Ray cannot be started or reached (RuntimeError
    naming the address); a job's own failure is its result."""
    opts = opts or FanoutOptions()
    t0 = time.monotonic()
    notice = None
    if not opts.serial and not ray_available():
        notice = "Ray is not installed (pip install '.[fleet]'): retraining the groups one after the other here"
    elif opts.serial:
        notice = "--serial: retraining the groups one after the other here, without Ray"
    if notice is not None:
        if notify is not None:
            notify(notice)
        log.info("%s", notice)
        results = {key: _call(fn, key, payload) for key, payload in jobs.items()}
        return FanoutRun(results, "serial", notice, 0.0, time.monotonic() - t0)

    import ray

    started_here = False
    if ray.is_initialized():
        mode = "Ray (already initialised by the caller)"
    else:
        started_here = True
        _init(ray, opts)
        mode = f"Ray at {opts.address}" if opts.address else "local Ray"
    startup = time.monotonic() - t0
    try:
        remote = ray.remote(_call).options(num_cpus=opts.resources.num_cpus, memory=opts.resources.memory,
                                            max_retries=1)
        refs = {key: remote.remote(fn, key, payload) for key, payload in jobs.items()}
        results = {}
        for key, ref in refs.items():
            try:
                results[key] = ray.get(ref)
            except Exception as exc:  # the task's worker died (memory, node lost), or could not import fn's module
                log.error("%s: its Ray task did not finish: %s", key, exc)
                results[key] = {"ok": False, "error": f"its Ray task did not finish: {_one_line(exc)}", "log": "",
                                "seconds": None, "where": mode, "peak_rss_mib": None}
    finally:
        if started_here:
            ray.shutdown()
    return FanoutRun(results, mode, None, startup, time.monotonic() - t0)


def _init(ray, opts: FanoutOptions) -> None:
    """Start a local Ray (loopback, quiet, small object store), or join ``opts.address``."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report to the Internet
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
    try:
        if opts.address:
            ray.init(address=opts.address, **quiet)
        else:
            ray.init(address="local", num_cpus=opts.local_cpus or local_cpus(), _node_ip_address="127.0.0.1",
                     object_store_memory=opts.object_store_bytes, **quiet)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: whatever Ray says, with the address
        where = f"the Ray cluster at {opts.address}" if opts.address else "a local Ray"
        raise RuntimeError(f"cannot start or reach {where}: {_one_line(exc)} (--serial runs without Ray)") from exc
