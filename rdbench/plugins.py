"""Registries that grow by adding a module: every module of a package that defines a dict
``ATTRIBUTE = {name: entry}`` contributes its entries (a new dataset importer, a new
architecture: one file)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def collect(package: str, attribute: str, what: str) -> dict[str, Any]:
    """{name: entry} from every module of ``package`` that defines ``attribute``; a name
    defined twice is a bug (RuntimeError naming ``what``)."""
    path = importlib.import_module(package).__path__
    found: dict[str, Any] = {}
    for info in pkgutil.iter_modules(path):
        module = importlib.import_module(f"{package}.{info.name}")
        for name, entry in getattr(module, attribute, {}).items():
            if name in found:
                raise RuntimeError(f"{what} {name!r} defined twice")
            found[name] = entry
    return found
