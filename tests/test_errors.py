"""One error tree: every exception class the product defines derives from AgentError and is listed in
``edge_agent/contract/errors.py`` (private helpers, ``_Name``, excepted)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import edge_agent
import firmware_sim
import trainer
from edge_agent.contract import errors


def _product_exceptions() -> dict[str, type]:
    found: dict[str, type] = {}
    for package in (edge_agent, trainer, firmware_sim):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name
                        and not name.startswith("_")):
                    found[f"{info.name}.{name}"] = obj
    return found


def test_every_product_exception_is_in_the_tree():
    found = _product_exceptions()
    assert len(found) >= 12, sorted(found)  # the six base classes and six specific ones today
    outside = [name for name, cls in found.items() if not issubclass(cls, errors.AgentError)]
    unlisted = [name for name, cls in found.items() if cls.__name__ not in (errors.__doc__ or "")]
    assert outside == [] and unlisted == [], (outside, unlisted)
