"""Method plugins by name: built-ins (decorated modules in `methods/`) and third-party entry points.

Third-party packages declare, in their pyproject:

    [project.entry-points."harness.methods"]
    mymethod = "my_package.module:MyMethod"
"""
from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from importlib.metadata import entry_points
from pathlib import Path

import yaml

from harness.errors import HarnessError

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "harness.methods"

_BUILTINS: dict[str, type] = {}


def attach_yaml(cls: type) -> type:
    """Read `<module>.yaml` beside a plugin module: `config`, `search_space`, `recipes` and `ablations`."""
    module_file = inspect.getsourcefile(cls)
    if module_file:
        path = Path(module_file).with_suffix(".yaml")
        if path.exists():
            spec = yaml.safe_load(path.read_text()) or {}
            if not cls.__dict__.get("default_config"):
                cls.default_config = dict(spec.get("config") or {})
            if not cls.__dict__.get("search_space"):
                cls.search_space = dict(spec.get("search_space") or {})
            if not cls.__dict__.get("recipes"):
                cls.recipes = dict(spec.get("recipes") or {})
            if not cls.__dict__.get("ablations"):
                cls.ablations = dict(spec.get("ablations") or {})
    return cls


def register_builtin(cls: type) -> type:
    if not getattr(cls, "name", ""):
        raise TypeError(f"{cls.__name__} must set a `name`")
    _BUILTINS[cls.name] = attach_yaml(cls)
    return cls


def _load_builtins() -> None:
    import methods
    for info in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"methods.{info.name}")


def available() -> dict[str, type]:
    """All plugins by name. Built-ins win over an entry point of the same name (which is reported)."""
    _load_builtins()
    found = dict(_BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            log.warning("entry point %s=%s ignored: a built-in method has that name", ep.name, ep.value)
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a broken third-party package must not hide the others
            log.warning("method plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        found[ep.name] = attach_yaml(cls)
    return found


def get(name: str) -> type:
    methods = available()
    if name not in methods:
        raise HarnessError(f"unknown method {name!r}; available: {', '.join(sorted(methods))} "
                           f"(see `harness methods`)")
    return methods[name]
