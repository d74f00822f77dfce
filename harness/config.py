"""Configuration helpers: `--set key=value` overrides and budget strings."""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable

import yaml

from harness.errors import ConfigError


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
    merged.update(overrides)
    return merged


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


def registrar(table: dict[str, Any]):
    """A class decorator factory: `@kind("name")` sets `cls.name` and files the class in `table`."""
    def named(name: str):
        def wrap(cls):
            cls.name = name
            table[name] = cls
            return cls
        return wrap
    return named


def make_named(table: dict[str, Any], kind: str, name: str, **options: Any) -> Any:
    """Instantiate `table[name](**options)` with one clear error for an unknown name or bad options."""
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; available: {', '.join(table)}")
    try:
        return table[name](**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for {kind} {name!r}: {exc}") from None
