"""Where fedgen finds its methods: importing a method's module registers it (its config section in
:data:`fedgen.config.SECTIONS`, its :class:`strategies.Method` in :data:`strategies.METHODS`).

Three sources, all imported on first need, none edited to add a method:
- every module of the ``strategies`` package (the built-in methods);
- the modules (or packages: each of their modules) named in the environment variable ``FEDGEN_METHODS``,
  comma-separated: a method kept in a project of its own, importable from ``sys.path`` (a SuperNode and every
  Ray worker need it too, as they need any code of the run);
- the entry points of group ``fedgen.methods`` of the installed distributions (a method published as a package:
  ``[project.entry-points."fedgen.methods"] mymethod = "mypackage.mymethod"``).

A method's module must import only light libraries at its top (torch and Flower); diffusers, transformers, opacus
and torch-pruning are imported inside the functions that use them, so discovering every method stays cheap and a
client loads only what its run uses.
"""

from __future__ import annotations

import os
import pkgutil
from importlib import import_module
from importlib.metadata import entry_points

from fedgen.config.base import ConfigError

BUILTIN = "strategies"
ENV = "FEDGEN_METHODS"
GROUP = "fedgen.methods"

_imported: set[str] = set()
_found: dict[str, list[str]] = {}
"""The method modules, by the value of FEDGEN_METHODS they were listed for (listing reads packages and entry
points: once per value, not once per message)."""


_imported: set[str] = set()
_found: dict[str, list[str]] = {}
"""The method modules, by the value of FEDGEN_METHODS they were listed for (listing reads packages and entry
points: once per value, not once per message)."""


def method_modules() -> list[str]:
    """The names of the modules that declare methods, built-in first."""
    extra = os.environ.get(ENV, "")
    if extra not in _found:
        names = _package_modules(BUILTIN)
        for name in (n.strip() for n in extra.split(",")):
            if name:
                names += _package_modules(name)
        names += [ep.value for ep in entry_points(group=GROUP)]
        _found[extra] = names
    return _found[extra]


def _package_modules(name: str) -> list[str]:
    """``name`` and, when it is a package, each of its modules."""
    module = _import(name)
    if not hasattr(module, "__path__"):
        return [name]
    return [name, *(f"{name}.{info.name}" for info in pkgutil.iter_modules(module.__path__))]


def _import(name: str):
    try:
        return import_module(name)
    except ImportError as err:
        raise ConfigError(f"method module {name!r} cannot be imported ({err}): a module named in {ENV} or in an "
                          f"entry point of group {GROUP!r} must be importable from sys.path") from err


def discover_methods() -> None:
    """Import every method module not imported yet (cheap after the first call)."""
    for name in method_modules():
        if name not in _imported:
            _import(name)
            _imported.add(name)
