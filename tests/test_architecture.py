"""The package boundaries: the gateway never imports the workstation, and the shared contracts stay shared.

* ``edge_agent`` (what a gateway installs with ``pip install '.[agent]'``) imports neither ``trainer``,
  ``firmware_sim``, TensorFlow/Keras nor matplotlib.
* ``trainer`` and ``firmware_sim`` use the agent only through ``edge_agent.contract`` (plus the scorer, so that parity is measured with the gateway's own code, replay + alerts, so that
  ``trainer evaluate`` runs the gateway's own pipeline, ``shutdown`` for a safe SIGTERM, and ``mqtt_client``: one
  MQTT connection class for every client, so the collectors, the publisher and the simulator get TLS, client
  certificates, password files and MQTT 5 sessions exactly as the gateway does).
* ``edge_agent.contract`` depends on nothing of the agent (the interpreter wrapper is part of the contract).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: ``replay`` and ``alerts``: the evaluation harness (``trainer evaluate``) must run the gateway's exact pipeline.
ALLOWED_FROM_AGENT = ("edge_agent.contract", "edge_agent.scorer", "edge_agent.replay",
                      "edge_agent.alerts", "edge_agent.shutdown", "edge_agent.mqtt_client", "edge_agent.ratelog")


def imports(package: str) -> dict[str, set[str]]:
    """Every absolute module a package's files import (at any depth), by file."""
    out: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
        out[str(path.relative_to(REPO))] = names
    return out


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_gateway_package_imports_no_workstation_code():
    banned = {"trainer", "firmware_sim", "tensorflow", "keras", "tf_keras", "matplotlib", "pandas"}
    bad = {f: sorted(n for n in names if _top(n) in banned) for f, names in imports("edge_agent").items()}
    assert not {f: n for f, n in bad.items() if n}


@pytest.mark.parametrize("package", ["trainer", "firmware_sim"])
def test_trainer_and_simulator_use_only_the_contract(package):
    bad = {
        f: sorted(n for n in names if _top(n) == "edge_agent" and n != "edge_agent"
                  and not n.startswith(ALLOWED_FROM_AGENT))
        for f, names in imports(package).items()
    }
    assert not {f: n for f, n in bad.items() if n}, "import the contract (edge_agent.contract), not the agent"


def test_the_contract_depends_on_nothing_of_the_agent():
    bad = {
        f: sorted(n for n in names if n.startswith("edge_agent.") and not n.startswith(
            "edge_agent.contract"))
        for f, names in imports("edge_agent/contract").items()
    }
    assert not {f: n for f, n in bad.items() if n}
