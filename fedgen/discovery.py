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


def method_modules() -> list[str]:
    """The names of the modules that declare methods, built-in first."""
    names = [_package_modules(BUILTIN)]
    extra = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    names += [_package_modules(n) for n in extra]
    names += [[ep.value] for ep in entry_points(group=GROUP)]
    return [m for group in names for m in group]


def _package_modules(name: str) -> list[str]:
    """``name`` and, when it is a package, each of its modules."""
    try:
        module = import_module(name)
    except ImportError as err:
        raise ConfigError(f"{ENV} names {name!r}, which cannot be imported ({err}); it must be a module or package "
                          "on sys.path") from err
    if not hasattr(module, "__path__"):
        return [name]
    return [name, *(f"{name}.{info.name}" for info in pkgutil.iter_modules(module.__path__))]


def discover_methods() -> None:
    """Import every method module not imported yet (cheap after the first call)."""
    for name in method_modules():
        if name not in _imported:
            import_module(name)
            _imported.add(name)
