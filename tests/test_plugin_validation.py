"""The plugin validator: built-ins and the example plugin pass; each broken plugin fails with the right reason;
the scaffold makes a package that the harness finds through its entry point and that passes."""
import importlib.util
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import torch

import harness.metrics
import harness.run.evaluate
from harness import registry
from harness.board.store import DEFAULT_RUNS_DIR, RunStore
from harness.cli.main import main
from harness.errors import HarnessError
from harness.plugins.checks import n_differing, output_noise
from harness.plugins.scaffold import scaffold
from harness.plugins.validate import validate_plugin
from harness.run.isolation import sandbox_problem
from harness.run.referee import run
from plugins_gallery import (BROKEN, PUBLISHED_RANKS, GarbageCollector, Honest, OutOfCatalogue, PatchesEvaluator,
                             PublishedRanks, StoreWriter)


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


@pytest.mark.parametrize("isolation", ["process", "sandbox"])
def test_published_ranks_are_out_of_reach_or_betrayed_by_the_public_data(plugin, isolation):
    if isolation == "sandbox" and sandbox_problem():
        pytest.skip(f"needs a bubblewrap sandbox: {sandbox_problem()}")
    expected, words = PUBLISHED_RANKS[isolation]
    plugin(PublishedRanks)
    report = validate_plugin(PublishedRanks.name, isolation=isolation)
    assert report.isolation == isolation and failing(report) == expected, report.render()
    assert any(words in c.reason for c in report.checks if c.name in expected), report.render()


def test_a_patched_evaluator_in_the_worker_changes_nothing(tiny_spec, store, plugin, monkeypatch):
    for module in (harness.metrics, harness.run.evaluate):  # restored after the test: the in-process run patches them
        monkeypatch.setattr(module, "ranks_from_scores", module.ranks_from_scores)
        monkeypatch.setattr(module, "ranks_from_topk", module.ranks_from_topk)
    plugin(Honest)
    plugin(PatchesEvaluator)
    honest = run(tiny_spec("gallery-honest"), store)
    patched = run(tiny_spec("gallery-patches-evaluator"), store)
    assert patched["status"] == "ok" and patched["isolation"] in ("process", "sandbox")
    assert patched["metrics"] == honest["metrics"] and honest["metrics"]["test"]["recall@10"] < 0.5
    # the same plugin in the referee's own process (the debugging mode) fakes every number: why the worker exists
    faked = run(tiny_spec("gallery-patches-evaluator", isolation="none"), store)
    assert faked["isolation"] == "none" and faked["metrics"]["test"]["recall@10"] == 1.0


@pytest.mark.skipif(sandbox_problem() is not None, reason=f"needs a bubblewrap sandbox: {sandbox_problem()}")
def test_a_sandboxed_plugin_cannot_write_into_any_run_store(tiny_spec, plugin, tmp_path):
    plugin(StoreWriter)
    store = RunStore(runs_dir=tmp_path / "runs")
    record = run(tiny_spec("gallery-store-writer", isolation="sandbox"), store)
    assert record["status"] == "ok" and record["isolation"] == "sandbox", record["failure"]
    assert store.get("forged-by-a-plugin") is None
    if (Path(DEFAULT_RUNS_DIR) / "harness.db").exists():  # its write went to an empty folder that vanished with it
        assert RunStore(runs_dir=DEFAULT_RUNS_DIR, read_only=True).get("forged-by-a-plugin") is None


def test_an_unimportable_plugin_installed_changes_nothing_the_validator_sees(plugin, tmp_path, monkeypatch):
    info = tmp_path / "site" / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[harness.methods]\nbroken-ep = no_such_module:Nothing\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    plugin(GarbageCollector)
    report = validate_plugin(GarbageCollector.name)
    assert failing(report) == {"run"} and "no EvalPart" in report.check("run").reason, report.render()


def test_a_nudge_below_float_tolerance_is_caught_by_the_reruns_own_noise():
    honest = [("score", torch.tensor([[0.5, 0.25, 0.125]]), None)]
    nudged = [("score", torch.tensor([[0.5, 0.25 + 1e-7, 0.125]]), None)]
    assert n_differing(honest, nudged) == (0, 1)  # a fixed float tolerance lets it through
    assert output_noise(honest, [("score", honest[0][1].clone(), None)]) == 0.0  # reruns: bit for bit
    assert n_differing(honest, nudged, tolerance=0.0) == (1, 1)
    noisy = [("score", torch.tensor([[0.5, 0.25 + 3e-6, 0.125]], dtype=torch.float64), None)]
    assert output_noise(honest, noisy) == pytest.approx(3e-6, rel=1e-6)


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
