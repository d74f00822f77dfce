"""The plugin validator: built-ins and the example plugin pass; each broken plugin fails with the right reason;
the scaffold makes a package that the harness finds through its entry point and that passes."""
import importlib.util
import json
import subprocess
import sys
import tomllib

import pytest

from harness import registry
from harness.cli.main import main
from harness.errors import HarnessError
from harness.plugins.scaffold import scaffold
from harness.plugins.validate import validate_plugin
from plugins_gallery import BROKEN, Honest, OutOfCatalogue


def failing(report):
    return {c.name for c in report.checks if c.status == "fail"}


def test_an_honest_plugin_passes_every_check(plugin):
    plugin(Honest)
    report = validate_plugin(Honest.name)
    assert report.passed, report.render()
    assert {c.name: c.status for c in report.checks if c.status != "pass"} == {"agreement": "skip"}  # no score()
    assert report.check("cost").details["latency"]["p50_ms"] > 0 and report.check("cost").details["memory"]


@pytest.mark.parametrize("cls", list(BROKEN), ids=[c.name for c in BROKEN])
def test_each_broken_plugin_fails_naming_its_problem(cls, plugin):
    expected, words = BROKEN[cls]
    plugin(cls)
    report = validate_plugin(cls.name)
    assert not report.passed
    assert failing(report) == expected, report.render()
    assert any(words in c.reason for c in report.checks if c.name in expected), report.render()


@pytest.mark.parametrize("name", ["pop", "itemknn"])
def test_builtin_and_example_plugins_pass(name):
    report = validate_plugin(name)
    assert report.passed, report.render()
    assert report.plugin["source_hash"] and report.plugin["package"]


@pytest.mark.slow
def test_every_builtin_passes():
    """Minutes on a CPU: the generative methods train a transformer four times."""
    builtins = [name for name, cls in registry.available().items() if cls.__module__.startswith("methods.")]
    reports = [validate_plugin(name) for name in sorted(builtins)]
    assert all(r.passed for r in reports), "\n\n".join(r.render() for r in reports if not r.passed)


def test_cli_exit_codes_and_json_report(plugin, capsys, tmp_path):
    plugin(OutOfCatalogue)
    assert main(["validate-plugin", "gallery-out-of-catalogue", "--json", "--out", str(tmp_path / "r.json")]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "r.json").read_text())
    assert printed["passed"] is False
    checks = {c["name"]: c for c in printed["checks"]}
    assert checks["catalogue"]["status"] == "fail" and checks["shapes"]["status"] == "pass"
    assert main(["validate-plugin", "pop"]) == 0
    out = capsys.readouterr().out
    assert "no-test-reach" in out and "pop: PASSED" in out
    assert main(["validate-plugin", "no-such-method"]) == 2


def test_the_example_plugin_is_installed_and_listed():
    """`make setup` installs examples/itemknn; the harness finds it through its entry point only."""
    listing = subprocess.run([sys.executable, "-m", "harness", "methods"], capture_output=True, text=True,
                             timeout=120)
    assert listing.returncode == 0, listing.stderr
    line = next((l for l in listing.stdout.splitlines() if l.startswith("itemknn ")), None)
    assert line and "Sarwar" in line and "itemknn_plugin.method" in line, "pip install -e examples/itemknn"


def install_like_pip(package_dir, site):
    """What `pip install -e` leaves for the harness to find, read from the scaffolded pyproject: the package on the
    path and a dist-info folder with its entry points (pip itself would need the network for build tools)."""
    project = tomllib.loads((package_dir / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    entry_points = project["entry-points"]["harness.methods"]
    (info / "entry_points.txt").write_text("[harness.methods]\n" + "".join(f"{k} = {v}\n"
                                                                        for k, v in entry_points.items()))
    return project


def test_scaffold_makes_a_package_that_is_found_and_passes(tmp_path, monkeypatch, capsys):
    assert main(["new-method", "demo-rec", "--dir", str(tmp_path)]) == 0
    assert "pip install -e" in capsys.readouterr().out
    root = tmp_path / "demo-rec"
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert files == {"pyproject.toml", "README.md", "demo_rec_plugin/__init__.py", "demo_rec_plugin/method.py",
                     "demo_rec_plugin/method.yaml", "tests/test_demo_rec_plugin.py"}
    project = install_like_pip(root, tmp_path / "site")
    assert project["entry-points"]["harness.methods"] == {"demo-rec": "demo_rec_plugin.method:DemoRec"}
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(root))
    cls = registry.get("demo-rec")
    assert cls.default_config == {"pop_weight": 0.01} and "pop_weight" in cls.search_space
    spec = importlib.util.spec_from_file_location("scaffold_test", root / "tests" / "test_demo_rec_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.test_demo_rec_plugin_passes_the_plugin_validator()  # the scaffold's own test: the validator passes
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("someone's work")
    with pytest.raises(HarnessError, match="already exists"):
        scaffold("taken", tmp_path)
    with pytest.raises(HarnessError, match="already registered"):
        scaffold("pop", tmp_path)
    with pytest.raises(HarnessError, match="lower-case"):
        scaffold("Bad_Name", tmp_path)
