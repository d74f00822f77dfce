"""Method plugins by name: built-ins (modules in `methods/`, decorated with `harness.api.register`) and third-party
entry points.

Third-party packages declare, in their pyproject:

    [project.entry-points."harness.methods"]
    mymethod = "my_package.module:MyMethod"
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
from importlib.metadata import entry_points
from typing import Collection

import methods
from harness.api import BUILTINS, Method, attach_yaml
from harness.errors import HarnessError

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "harness.methods"


def _load_builtins() -> None:
    """Import every module of the `methods` package: each registers its plugin through `@register`."""
    for info in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"methods.{info.name}")


def register_builtin(cls: type[Method]) -> type[Method]:
    """File a class as a built-in (what `@register` does), e.g. a test-only plugin; `unregister` takes it back."""
    return BUILTINS.register()(attach_yaml(cls))


def unregister(name: str) -> None:
    BUILTINS.remove(name)


def available() -> dict[str, type[Method]]:
    """All plugins by name. Built-ins win over an entry point of the same name (which is reported). Entry points are
    read on every call, so a package installed meanwhile is found."""
    _load_builtins()
    found = BUILTINS.entries()
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


def get(name: str) -> type[Method]:
    found = available()
    if name not in found:
        raise HarnessError(f"unknown method {name!r}; available: {', '.join(sorted(found))} "
                           f"(see `harness methods`)")
    return found[name]


def peer_pairs(groups: dict[str, list[dict]], held: Collection[str] = ()) -> dict[str, str]:
    """A board's peer rows (their records carry `peer`) → the label of our row each mirrors: the record's `peer_of`
    (records made before it was recorded: the installed plugin's), paired only where that row is on the board; rows
    the clock ended, and rows `held` (`harness.run.spec.held_for_pins`: made under older pins), are left out on
    both sides."""
    groups = {label: records for label, records in groups.items() if label not in held}
    pairs = {}
    for label, records in groups.items():
        if not records[0].get("peer") or any(r.get("status") == "budget_bound" for r in records):
            continue
        ours = records[0].get("peer_of")
        if ours is None:
            try:
                ours = get(records[0]["method"]).peer_of
            except HarnessError:
                continue
        if ours and ours in groups:
            pairs[label] = ours
    return pairs
