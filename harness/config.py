"""Configuration helpers: `--set key=value` overrides, budget strings, config hashes and the named-entry registry."""
from __future__ import annotations

import hashlib
import importlib
import json
import re
from typing import Any, Callable, Generic, Iterable, Iterator, Sequence, TypeVar

import yaml

from harness.errors import ConfigError

T = TypeVar("T")


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """`["loss=ce", "lr=1e-3", "layers=[2,2]"]` → dict, values read as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w.\-]*", key):
            raise ConfigError(f"malformed --set {pair!r}: expected key=value, e.g. --set loss=ce")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"malformed --set {pair!r}: value {raw!r} is not a valid YAML value") from None
    return out


def merge_config(defaults: dict[str, Any], overrides: dict[str, Any], method: str,
                 recipes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """defaults ⊕ the named recipe (`recipe=...`, where the plugin has recipes) ⊕ overrides; unknown keys refused."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(f"method {method!r} has no config key(s) {unknown}; known: {sorted(defaults)}")
    merged = dict(defaults)
    recipe = overrides.get("recipe", defaults.get("recipe"))
    if recipes and recipe is not None:
        if recipe not in recipes:
            raise ConfigError(f"method {method!r} has no recipe {recipe!r}; recipes: {', '.join(recipes)}")
        merged.update(recipes[recipe])
    for key, value in overrides.items():
        problem = _type_problem(defaults[key], value)
        if problem:
            raise ConfigError(f"method {method!r}: {key} expects {problem} (its default is {defaults[key]!r}), "
                              f"got {value!r}")
    merged.update(overrides)
    return merged


def _type_problem(default: Any, value: Any) -> str | None:
    """What `value` should be to stand in for `default`, or None when it may: a wrong type is the user's mistake,
    said before the run, not a plugin failure after it."""
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    for kind, word in ((str, "a string"), (list, "a list"), (dict, "a mapping")):
        if isinstance(default, kind):
            return None if isinstance(value, kind) else word
    return None


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "gpu-h": 3600, "cpu-h": 3600}


def parse_budget(text: str | None) -> float | None:
    """'90s', '20m', '1.5h', '1gpu-h' → seconds; None / 'none' → unlimited."""
    if text is None or str(text).lower() in ("", "none", "inf", "unlimited"):
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z\-]*)\s*", str(text).lower())
    if not match or (match.group(2) and match.group(2) not in _UNITS):
        raise ConfigError(f"malformed budget {text!r}: use e.g. 90s, 20m, 1.5h or 1gpu-h")
    return float(match.group(1)) * _UNITS.get(match.group(2) or "s", 1)


def epoch_plan(epochs: Any, max_epochs: int | None) -> int | None:
    """The epochs a run plans for (`Budget.epochs`): the method's own `epochs` under the track's epoch cap; the cap
    where the config names no `epochs`. Training sees the cap only through this plan, so runs of one config under two
    caps that give the same plan trained the same: a track may raise its cap above its methods' epochs without
    splitting their rows (the board's `row_key`) or re-running their seeds."""
    if not isinstance(epochs, int) or isinstance(epochs, bool):
        return max_epochs
    return epochs if max_epochs is None else min(epochs, max_epochs)


class Registry(Generic[T]):
    """Named entries of one kind (methods, embedders, tokenizers, dataset loaders), the one name → class table.

    `@REGISTRY.register("name")` files a class (and sets its `name`) or a function. The modules that hold an
    entry are listed in `discover` (module names, or a function that imports them) and imported on the first lookup,
    so that what is registered never depends on what happened to be imported before.
    """

    def __init__(self, kind: str, discover: Sequence[str] | Callable[[], None] = (),
                 error: type[Exception] = ConfigError, hint: str = ""):
        self.kind = kind
        self.error = error
        self.hint = hint  # appended to the unknown-name message, e.g. where to list the names
        self._discover = discover
        self._discovered = False
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            key = name or getattr(obj, "name", "")
            if not key:
                raise TypeError(f"{obj!r} needs a name to be registered as a {self.kind}")
            if name is not None and isinstance(obj, type):
                obj.name = name
            self._entries[key] = obj
            return obj
        return wrap

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def _ensure(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        if callable(self._discover):
            self._discover()
        else:
            for module in self._discover:
                importlib.import_module(module)

    def entries(self) -> dict[str, T]:
        self._ensure()
        return dict(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries()

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries())

    def find(self, name: str) -> T | None:
        return self.entries().get(name)

    def get(self, name: str) -> T:
        entries = self.entries()
        if name not in entries:
            raise self.error(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(entries))}{self.hint}")
        return entries[name]

    def make(self, name: str, **options: Any) -> Any:
        """Instantiate the named class with one clear error for an unknown name or bad options."""
        cls = self.get(name)
        try:
            return cls(**options)
        except TypeError as exc:
            raise ConfigError(f"bad options for {self.kind} {name!r}: {exc}") from None
