"""What the gateway's install (``pip install '.[agent]'``: no TensorFlow, Keras, matplotlib or pyarrow) shows a
technician: ``edge-agent`` loads a model without the TFLite runtime's XNNPACK notice.

The gateway install is the real console script run with a ``sitecustomize`` whose import hook refuses the
workstation packages (``ModuleNotFoundError``, as a missing package raises it), so this venv stands for both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def without(tmp_path: Path, blocked: tuple[str, ...]) -> dict[str, str]:
    """The environment of a process in which ``blocked`` packages are not installed."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK.format(blocked=set(blocked)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)])}


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
