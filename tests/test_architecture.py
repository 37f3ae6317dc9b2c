"""The package boundaries, checked on the source of every product file (imports at any depth, in functions too).

* ``edge_agent`` (what a gateway installs with ``pip install '.[agent]'``) imports neither ``trainer``,
  ``firmware_sim``, TensorFlow/Keras, matplotlib nor pandas.
* ``trainer`` and ``firmware_sim`` use the agent only through ``ALLOWED_FROM_AGENT``: the contract, plus the
  scorer (parity is measured with the gateway's own code), replay + alerts (``trainer evaluate`` runs the
  gateway's own pipeline), ``shutdown`` (a safe SIGTERM), ``ratelog`` and ``mqtt_client`` (one MQTT connection
  class for every client, so the collectors, the publisher and the simulator get TLS, client certificates,
  password files and MQTT 5 sessions exactly as the gateway does).
* ``edge_agent.contract`` imports only the standard library, itself, numpy and cryptography, and a TFLite
  runtime in ``edge_agent.contract.interpreter`` alone (contract/__init__.py says why).
* No product package (``PRODUCT``) imports ``tests``.
* Product code names the modules it imports: a computed name (``importlib.import_module(name)``) could cross
  any boundary unseen, so it is a violation too.

``check(root)`` finds the violations in any tree laid out like this repository: ``import a.b``, ``from a import
b`` (``b`` counts as the module ``a.b`` where that is a file of the tree), relative imports resolved against the
importing file's package, and ``importlib.import_module("...")`` / ``__import__("...")`` with literal names.
Modules compare on dotted components, so a rule for ``edge_agent.contract`` says nothing about
``edge_agent.contractual``. The tests below run it on the repository, and on copies of it with violations planted.
"""

from __future__ import annotations

import ast
import functools
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The packages and folders of product code (shipped, or run by people: demos, benches).
PRODUCT = ("edge_agent", "trainer", "firmware_sim", "scripts", "bench")
#: What the gateway package never imports.
GATEWAY_BANNED = ("trainer", "firmware_sim", "tensorflow", "keras", "tf_keras", "matplotlib", "pandas")
#: The only parts of the agent that ``trainer`` and ``firmware_sim`` may import.
ALLOWED_FROM_AGENT = ("edge_agent.contract", "edge_agent.scorer", "edge_agent.replay", "edge_agent.alerts",
                      "edge_agent.shutdown", "edge_agent.mqtt_client", "edge_agent.ratelog")
#: Third-party packages the contract may import (besides the standard library).
CONTRACT_DEPENDS = ("numpy", "cryptography")
#: The TFLite runtimes: imported by ``edge_agent.contract.interpreter`` alone.
TFLITE_RUNTIMES = ("ai_edge_litert", "tflite_runtime")
_DYNAMIC = ("import_module", "__import__")


@dataclass(frozen=True)
class Import:
    """One import in one file: the absolute module it loads (None: a computed name), and how it was written."""

    file: str
    line: int
    module: str | None
    how: str  # "import", "from", "relative", "dynamic"; "beyond": a relative import above the top package


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    importer: str
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.importer} imports {self.imported}: {self.rule}"


def within(module: str, package: str) -> bool:
    """``module`` is ``package`` or inside it, compared on dotted components."""
    head = package.split(".")
    return module.split(".")[: len(head)] == head


def within_any(module: str, packages: tuple[str, ...]) -> bool:
    return any(within(module, p) for p in packages)


def module_name(root: Path, path: Path) -> str:
    """``edge_agent/contract/bundle.py`` -> ``edge_agent.contract.bundle``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(root: Path, name: str) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolve(package: str, level: int, name: str | None) -> str | None:
    """The absolute name of a relative import ``level`` dots up from ``package``; None beyond the top package."""
    parts = package.split(".") if package else []
    if level - 1 >= len(parts):
        return None
    parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + (name.split(".") if name else []))


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


@functools.cache
def _raw_imports(text: str, rel: str) -> tuple[tuple, ...]:
    """The import statements and calls of one file's text, unresolved (cached: the planted copies parse once)."""
    out: list[tuple] = []
    for node in ast.walk(ast.parse(text, rel)):
        if isinstance(node, ast.Import):
            out += [("import", node.lineno, 0, a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append(("from", node.lineno, node.level, node.module, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Call) and (
            (isinstance(node.func, ast.Name) and node.func.id in _DYNAMIC)
            or (isinstance(node.func, ast.Attribute) and node.func.attr in _DYNAMIC)
        ):
            keywords = {k.arg: k.value for k in node.keywords}
            name = _literal(node.args[0] if node.args else keywords.get("name"))
            anchor = _literal(node.args[1] if len(node.args) > 1 else keywords.get("package"))
            out.append(("dynamic", node.lineno, 0, name, (anchor,)))
    return tuple(out)


def imports_in(root: Path, path: Path) -> list[Import]:
    """Every import of one file, at any depth, with relative and literal dynamic imports made absolute."""
    rel = str(path.relative_to(root))
    module = module_name(root, path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[Import] = []
    for kind, line, level, name, names in _raw_imports(path.read_text(encoding="utf-8"), rel):
        if kind == "import":
            out.append(Import(rel, line, name, "import"))
        elif kind == "from":
            how = "relative" if level else "from"
            base = _resolve(package, level, name) if level else name
            if base is None:
                out.append(Import(rel, line, f"{'.' * level}{name or ''}", "beyond"))
                continue
            for alias in names:
                sub = f"{base}.{alias}"
                out.append(Import(rel, line, sub if alias != "*" and _is_module(root, sub) else base, how))
        else:
            if name is not None and name.startswith("."):
                anchor = names[0]
                dots = len(name) - len(name.lstrip("."))
                name = _resolve(anchor if anchor is not None else package, dots, name.lstrip(".") or None)
            out.append(Import(rel, line, name, "dynamic"))
    return out


def _rule_broken(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported``, or None."""
    if within(imported, "tests"):
        return "product code never imports tests (move what it needs into a product module)"
    if within(importer, "edge_agent") and within_any(imported, GATEWAY_BANNED):
        return f"the gateway never imports {', '.join(GATEWAY_BANNED)}"
    if within(importer, "edge_agent.contract"):
        top = imported.split(".")[0]
        allowed = (
            within(imported, "edge_agent.contract")
            or imported == "edge_agent"  # the package the contract lives in (imported with it anyway)
            or top in sys.stdlib_module_names
            or top in CONTRACT_DEPENDS
            or (top in TFLITE_RUNTIMES and importer == "edge_agent.contract.interpreter")
        )
        if not allowed:
            return (f"the contract imports only the standard library, edge_agent.contract, {', '.join(CONTRACT_DEPENDS)}"
                    " (and a TFLite runtime in edge_agent.contract.interpreter)")
    if (within_any(importer, ("trainer", "firmware_sim")) and within(imported, "edge_agent")
            and imported != "edge_agent" and not within_any(imported, ALLOWED_FROM_AGENT)):
        return f"trainer and firmware_sim use the agent only through {', '.join(ALLOWED_FROM_AGENT)}"
    return None


def check(root: Path) -> list[Violation]:
    """The boundary violations of the product code under ``root`` (a checkout, or a copy of one)."""
    out: list[Violation] = []
    for top in PRODUCT:
        for path in sorted((root / top).rglob("*.py")):
            importer = module_name(root, path)
            for imp in imports_in(root, path):
                if imp.module is None:
                    rule = "a computed module name: name the module, so that the boundaries can be checked"
                elif imp.how == "beyond":
                    rule = "a relative import above the top package (an ImportError, or another tree's module)"
                else:
                    rule = _rule_broken(importer, imp.module)
                if rule is not None:
                    out.append(Violation(imp.file, imp.line, importer, imp.module or "<computed name>", rule))
    return out


# --------------------------------------------------------------------------- the repository
def test_the_repository_keeps_its_boundaries():
    violations = check(REPO)
    assert not violations, "\n".join(map(str, violations))


def test_the_checker_sees_the_imports_it_judges():
    """A checker that finds no imports finds no violations: it must see each form in the real code."""
    found = {(i.module, i.how) for i in imports_in(REPO, REPO / "edge_agent/contract/receipt.py")}
    assert ("edge_agent.contract.signing", "relative") in found and ("edge_agent.contract.errors", "relative") in found
    found = {i.module for i in imports_in(REPO, REPO / "edge_agent/contract/bundle.py")}
    assert {"edge_agent.contract.interpreter", "numpy", "hashlib"} <= found
    found = {i.module for i in imports_in(REPO, REPO / "tests/conftest.py")}
    assert "firmware_sim.browser" in found  # ``from firmware_sim import browser as b``, inside a fixture
    assert sum(1 for top in PRODUCT for _ in (REPO / top).rglob("*.py")) > 100


# --------------------------------------------------------------------------- violations planted in a copy
@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the product code (the .py files): found clean, then planted with violations."""
    for top in PRODUCT:
        shutil.copytree(REPO / top, tmp_path / top,
                        ignore=lambda d, names: [n for n in names if not n.endswith(".py") and not Path(d, n).is_dir()
                                                 or n == "__pycache__"])
    assert check(tmp_path) == []
    return tmp_path


def _plant(tree: Path, rel: str, text: str) -> int:
    """Append ``text`` to ``rel`` (created if absent); the line number of its first line."""
    path = tree / rel
    old = path.read_text() if path.exists() else ""
    path.write_text(old + ("" if not old or old.endswith("\n") else "\n") + text)
    return old.count("\n") + 1


def _found(tree: Path) -> set[tuple[str, int, str]]:
    return {(v.file, v.line, v.imported) for v in check(tree)}


def _relative_crossing(tree: Path) -> tuple[str, int, str]:
    """The contract reaching into the agent by a relative import."""
    return "edge_agent/contract/threshold.py", _plant(tree, "edge_agent/contract/threshold.py",
                                                      "from ..sensor import Sensor\n"), "edge_agent.sensor"


def _prefix_trap(tree: Path) -> tuple[str, int, str]:
    """``edge_agent.contractual`` is not ``edge_agent.contract``: the trainer may not import it."""
    _plant(tree, "edge_agent/contractual.py", '"""Not the contract."""\n\nHELPER = 1\n')
    return "trainer/evil.py", _plant(tree, "trainer/evil.py", "from edge_agent.contractual import HELPER\n"), \
        "edge_agent.contractual"


def _dynamic_trainer_import(tree: Path) -> tuple[str, int, str]:
    """The gateway loading the trainer by name."""
    line = _plant(tree, "edge_agent/loader.py", 'import importlib\n\n\ndef load():\n'
                  '    return importlib.import_module("trainer.pipeline")\n')
    return "edge_agent/loader.py", line + 4, "trainer.pipeline"


def _contract_imports_the_agent(tree: Path) -> tuple[str, int, str]:
    """The contract importing a loader that lives in the agent (how edge_agent.interpreter used to be)."""
    _plant(tree, "edge_agent/interpreter.py", '"""A loader outside the contract."""\n')
    return "edge_agent/contract/bundle.py", _plant(tree, "edge_agent/contract/bundle.py",
                                                   "from edge_agent.interpreter import load_interpreter\n"), \
        "edge_agent.interpreter"


PLANTS = [_relative_crossing, _prefix_trap, _dynamic_trainer_import, _contract_imports_the_agent]


@pytest.mark.parametrize("plant", PLANTS, ids=lambda p: p.__name__.strip("_"))
def test_a_planted_violation_is_reported(tree, plant):
    planted = plant(tree)
    assert _found(tree) == {planted}


def test_four_violations_planted_at_once_are_all_reported(tree):
    planted = {plant(tree) for plant in PLANTS}
    assert _found(tree) == planted and len(planted) == 4


def test_relative_imports_within_a_boundary_are_no_violation(tree):
    """The same relative form that crosses a boundary above is fine inside it."""
    _plant(tree, "edge_agent/contract/threshold.py", "from . import topics\nfrom .errors import ConfigError\n")
    _plant(tree, "edge_agent/sensor.py", "from .contract import frames\n")
    assert _found(tree) == set()


def test_product_code_importing_tests_and_computed_names_are_reported(tree):
    line_b = _plant(tree, "bench/probe.py", "from tests.waiting import wait_for\n")
    line_s = _plant(tree, "scripts/probe.py", "import importlib\n\nmod = importlib.import_module(NAME)\n")
    line_t = _plant(tree, "trainer/probe.py", 'import importlib\n\nmod = importlib.import_module(".contract", "tests")\n')
    line_u = _plant(tree, "firmware_sim/probe.py", 'broker = __import__("tests.broker")\n')
    assert _found(tree) == {("bench/probe.py", line_b, "tests.waiting"),
                            ("scripts/probe.py", line_s + 2, "<computed name>"),
                            ("trainer/probe.py", line_t + 2, "tests.contract"),
                            ("firmware_sim/probe.py", line_u, "tests.broker")}


def test_a_relative_import_above_the_top_package_is_reported(tree):
    line = _plant(tree, "edge_agent/sensor.py", "from .. import trainer\n")
    assert _found(tree) == {("edge_agent/sensor.py", line, "..")}


def test_the_contract_may_use_a_tflite_runtime_only_in_its_interpreter_module(tree):
    _plant(tree, "edge_agent/contract/interpreter.py", "import tflite_runtime\n")  # allowed there
    line = _plant(tree, "edge_agent/contract/bundle.py", "import ai_edge_litert\nimport paho.mqtt.client\n")
    assert _found(tree) == {("edge_agent/contract/bundle.py", line, "ai_edge_litert"),
                            ("edge_agent/contract/bundle.py", line + 1, "paho.mqtt.client")}
