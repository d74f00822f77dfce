"""`harness new-method NAME`: write an installable method plugin package from the templates in `templates/`.

The package declares the `harness.methods` entry point, so once `pip install -e` has run the harness finds it
without any change of its own.
"""
from __future__ import annotations

import re
from pathlib import Path
from string import Template

from harness import registry
from harness.errors import HarnessError

TEMPLATES = Path(__file__).resolve().parent / "templates"
# target path (with ${package}) → template file
LAYOUT = {
    "pyproject.toml": "pyproject.toml.tmpl",
    "README.md": "README.md.tmpl",
    "${package}/__init__.py": "__init__.py.tmpl",
    "${package}/method.py": "method.py.tmpl",
    "${package}/method.yaml": "method.yaml.tmpl",
    "tests/test_${package}.py": "test_method.py.tmpl",
}


def names(name: str) -> dict[str, str]:
    """The method name and what is derived from it: package, class and distribution names."""
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name):
        raise HarnessError(f"method name {name!r}: use lower-case letters, digits and single hyphens, e.g. item-knn")
    snake = name.replace("-", "_")
    return {"name": name, "package": f"{snake}_plugin", "cls": "".join(p.capitalize() for p in name.split("-")),
            "distribution": f"gr-harness-{name}"}


def scaffold(name: str, parent: str | Path = ".") -> Path:
    """Write the plugin package to `<parent>/<name>/` and return that folder."""
    values = names(name)
    if name in registry.available():
        raise HarnessError(f"a method named {name!r} is already registered; pick another name")
    target = Path(parent) / name
    if target.exists() and any(target.iterdir()):
        raise HarnessError(f"{target} already exists and is not empty")
    for relative, template in LAYOUT.items():
        path = target / Template(relative).substitute(values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template((TEMPLATES / template).read_text()).substitute(values))
    return target
