"""TensorFlow's native notices: ``trainer`` drops the known harmless lines from file descriptor 2 (``-v`` keeps
them), every other line goes through in order, and descriptor 2 is the real one again on every way out.

Each case runs in a fresh interpreter: the filter redirects the process's descriptor 2, which pytest captures.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Lines TensorFlow 2.21 and the TFLite runtime print on a training run (trainer.tfenv.NOTICES), as they come.
NOTICE_LINES = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796440789.795259     979 port.cc:153] oneDNN custom operations are on. You may see slightly "
    b"different numerical results due to floating-point round-off errors from different computation orders.\n"
    b"E0000 00:00:1796440792.291761     979 node_def_util.cc:682] NodeDef mentions attribute "
    b"use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset; signature=...>\n"
    b"E0000 00:00:1796440794.133279     979 util.cc:131] oneDNN supports DT_INT32 only on platforms with AVX-512. "
    b"Falling back to the default Eigen-based implementation if present.\n"
    b"W0000 00:00:1796440795.000001     979 tf_tfl_flatbuffer_helpers.cc:365] Ignored output_format.\n"
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    b"fully_quantize: 0, inference_type: 6, input_inference_type: INT8, output_inference_type: INT8\n"
)
#: A real error: same prefix as the notices, other text; it must go through.
REAL_ERROR = b"E0000 00:00:1796440796.000002     979 graph.cc:12] Conversion failed: unsupported op Foo\n"


def run(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, cwd=REPO, timeout=timeout)


FILTER = f"""
import os, sys, threading
from trainer import tfenv
NOTICES = {NOTICE_LINES!r}
before = os.fstat(2)
f = tfenv.notice_filter().start()
assert f.active
os.write(2, NOTICES[:40])                 # a notice cut in two writes is still one line
os.write(2, NOTICES[40:] + b"first real line\\n")
print("from Python's stderr", file=sys.stderr)
os.write(2, NOTICES + {REAL_ERROR!r} + b"no newline at the end")
f.close()
os.write(2, b"\\nafter close\\n")
after = os.fstat(2)
assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino), "descriptor 2 not restored"
assert not any(t.name == "native-notice-filter" for t in threading.enumerate()), "the pump is still running"
print(f.hidden)
"""


def test_the_filter_drops_the_notices_and_passes_every_other_line_in_order():
    proc = run(FILTER)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == (b"first real line\nfrom Python's stderr\n" + REAL_ERROR
                           + b"no newline at the end\nafter close\n")
    assert int(proc.stdout) == 2 * NOTICE_LINES.count(b"\n")


STUCK = """
import os, sys, time
from edge_agent.contract import native_notices
from trainer import tfenv
case = sys.argv[1]
class Broken:  # a notice pattern whose matching fails: stands for any bug in the filtering
    def match(self, line):
        raise ZeroDivisionError
if case == "read fails":  # the pump cannot read its pipe: it must hand descriptor 2 back, not leave it to fill
    def broken(fd, n):
        raise OSError(5, "Input/output error")
    native_notices.os.read = broken
f = (tfenv.notice_filter() if case == "read fails" else native_notices.NativeNoticeFilter(Broken())).start()
deadline = time.monotonic() + 10
while case == "read fails" and f.active and time.monotonic() < deadline:
    time.sleep(0.01)
line = b"x" * 1023 + b"\\n"
for _ in range(1024):  # 1 MiB: 16 times what a pipe holds, blocks for ever unless something drains or restores
    os.write(2, line)
os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\nend\\n")
f.close()
"""


@pytest.mark.parametrize("case", ["read fails", "matching fails"])
def test_a_broken_filter_never_blocks_a_writer_and_loses_nothing(case):
    proc = run(STUCK, case, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:].decode()
    assert proc.stderr.count(b"x" * 1023 + b"\n") == 1024
    assert proc.stderr.endswith(b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nend\n")


PROBE = f"""
import json, os, sys, threading
import click
from trainer.cli import cli, main

@cli.command("probe")
@click.argument("how")
def probe(how):
    os.write(2, {NOTICE_LINES!r} + b"real line\\n")
    if how == "fails":
        raise click.ClickException("probe failed")
    if how == "crashes":
        raise RuntimeError("probe crashed")

before = os.readlink("/proc/self/fd/2")
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code
except RuntimeError:
    code = "crashed"
print(json.dumps({{"code": code, "restored": os.readlink("/proc/self/fd/2") == before,
                  "pumps": [t.name for t in threading.enumerate() if t.name == "native-notice-filter"]}}))
"""


@pytest.mark.parametrize("args, code", [(["probe", "ok"], 0), (["probe", "fails"], 1), (["probe", "crashes"], "crashed"),
                                        (["train", "--data", "/nonexistent.csv", "--out", "/tmp/x"], 2),
                                        (["train", "--data", "pyproject.toml", "--out", "/nonexistent/b"], 1)])
def test_trainer_hides_the_notices_and_restores_stderr_on_every_way_out(args, code):
    proc = run(PROBE, *args)
    verdict = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert verdict == {"code": code, "restored": True, "pumps": []}, proc.stderr.decode()
    assert b"oneDNN" not in proc.stderr and b"XNNPACK" not in proc.stderr and b"fully_quantize" not in proc.stderr
    if args[0] == "probe":
        assert b"real line\n" in proc.stderr
    if code == 1 and args[0] == "probe":
        assert proc.stderr.endswith(b"real line\nError: probe failed\n")


def test_trainer_v_keeps_the_notices():
    proc = run(PROBE, "-v", "probe", "ok")
    assert json.loads(proc.stdout.decode().strip().splitlines()[-1])["code"] == 0
    assert NOTICE_LINES + b"real line\n" in proc.stderr


@pytest.mark.slow
def test_a_real_training_run_prints_only_the_trainers_own_log_lines(tmp_path):
    """TensorFlow imported, a model trained, converted (float32 and int8) and loaded in the TFLite runtime: stderr
    holds the trainer's log lines and nothing else (a native notice that ``NOTICES`` misses fails here)."""
    rows = "".join(f"{(i % 20) / 10:.2f},{(i % 7) / 7:.3f}\n" for i in range(300))
    (tmp_path / "d.csv").write_text("x,y\n" + rows)
    trainer = Path(sys.executable).parent / "trainer"
    proc = subprocess.run([str(trainer), "train", "--data", str(tmp_path / "d.csv"), "--out", str(tmp_path / "b"),
                           "--epochs", "2", "--units", "4", "--window", "8", "--quantize", "float32"],
                          capture_output=True, text=True, cwd=REPO, timeout=240)
    assert proc.returncode == 0, proc.stderr
    strays = [ln for ln in proc.stderr.splitlines() if not re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) [\w.]+: ", ln)]
    assert not strays, strays
