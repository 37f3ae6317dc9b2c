"""What the gateway's install (``pip install '.[agent]'``: no TensorFlow, Keras, matplotlib or pyarrow) shows a
technician: ``trainer``, which that install puts on PATH too, says in one line that it needs the workstation install
instead of dying with a traceback, and ``edge-agent`` loads a model without the TFLite runtime's XNNPACK notice.

The gateway install is the real console script run with a ``sitecustomize`` whose import hook refuses the
workstation packages (``ModuleNotFoundError``, as a missing package raises it), so this venv stands for both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.pipeline_helpers import agent_config

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GATEWAY_LACKS = ("tensorflow", "keras", "matplotlib", "pyarrow")
HOOK = """
import sys

BLOCKED = {blocked!r}


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
"""
ONE_LINE = ("needs {package}, which this install does not have: the trainer runs on a workstation installed with "
            "pip install '.[trainer]'; a gateway (pip install '.[agent]') runs edge-agent, not trainer")


def without(tmp_path: Path, blocked: tuple[str, ...]) -> dict[str, str]:
    """The environment of a process in which ``blocked`` packages are not installed."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK.format(blocked=set(blocked)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)])}


def trainer(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "trainer"), *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


def tiny_csv(path: Path, bad_row: int | None = None) -> Path:
    rows = "".join(f"{(i % 20) / 10:.2f},{'oops' if i == bad_row else f'{(i % 7) / 7:.3f}'}\n" for i in range(200))
    path.write_text("x,y\n" + rows)
    return path


@pytest.mark.parametrize("blocked", [("tensorflow", "keras"), GATEWAY_LACKS], ids=["no TensorFlow", "gateway"])
def test_trainer_without_tensorflow_says_which_install_it_needs_in_one_line(tmp_path, blocked):
    env = without(tmp_path, blocked)
    proc = trainer(env, "train", "--data", tiny_csv(tmp_path / "d.csv"), "--out", tmp_path / "b", "--epochs", "1")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == "Error: trainer train " + ONE_LINE.format(package="TensorFlow")
    assert not (tmp_path / "b").exists()
    # the data is checked all the same: a wrong file is named, not the install
    proc = trainer(env, "train", "--data", tiny_csv(tmp_path / "bad.csv", bad_row=50), "--out", tmp_path / "b")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "bad.csv:52:2: not a number: 'oops'" in proc.stderr and "workstation" not in proc.stderr


def test_on_a_gateway_trainer_help_and_inspect_work_and_the_fleet_commands_say_what_they_need(tmp_path):
    env = without(tmp_path, GATEWAY_LACKS)
    proc = trainer(env, "--help")
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0]: line for line in proc.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert set(listed) == {"collect", "dataset", "evaluate", "inspect", "keygen", "publish", "retrain", "train"}
    assert "(workstation install only)" in listed["collect"] and "(workstation install only)" in listed["retrain"]
    assert "workstation" not in listed["train"] + listed["inspect"] + listed["publish"]
    for command in ("collect", "retrain"):
        proc = trainer(env, command, "--help")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr == f"Error: trainer {command} " + ONE_LINE.format(package="pyarrow") + "\n"
    proc = trainer(env, "dataset", "summary", tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr == "Error: trainer dataset " + ONE_LINE.format(package="pyarrow") + "\n"
    proc = trainer(env, "inspect", tmp_path / "no-bundle")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no-bundle: INVALID" in proc.stderr and "does not exist" in proc.stderr
    proc = trainer(env, "keygen", "--out", tmp_path / "signing.key")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "signing.key.pub").exists()


def test_edge_agent_loads_the_model_without_the_runtimes_xnnpack_notice(tmp_path, agent_bundle):
    """Before: ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` on stderr at the first model load."""
    env = without(tmp_path, GATEWAY_LACKS)
    proc = subprocess.run([str(BIN / "edge-agent"), "validate-config", "--config", str(agent_config(tmp_path,
                          agent_bundle))], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ": ok (gateway " in proc.stdout
    assert "XNNPACK" not in proc.stderr and "INFO:" not in proc.stderr, proc.stderr
    # the same load with the delegate announced by the runtime as it is: the line is real, and only it is hidden
    script = ("import sys\nfrom edge_agent.contract import interpreter\n"
              "interpreter.RUNTIME_NOTICES = __import__('re').compile(b'(?!)')\n"
              "interpreter.load_interpreter(sys.argv[1])\n")
    shown = subprocess.run([sys.executable, "-c", script, str(agent_bundle / "model.tflite")], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr == "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
