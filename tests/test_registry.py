"""Plugins by name: built-ins, and third-party packages through the `harness.methods` entry-point group."""
import subprocess
import sys
import textwrap

from harness import registry
from harness.api import Method

PLUGIN_SOURCE = textwrap.dedent('''
    import torch
    from harness.api import Method

    class Dummy(Method):
        name = "dummy-ep"
        paper = "A dummy third-party method"
        needs = ("item_text",)

        def fit(self, train, budget):
            self.n = train.n_items

        def score(self, histories, items=None):
            return torch.arange(self.n, dtype=torch.float32).expand(len(histories), -1).clone()
''')


def install_dummy_package(folder):
    """A minimal installed distribution: a module plus a dist-info folder declaring the entry point."""
    (folder / "dummy_plugin.py").write_text(PLUGIN_SOURCE)
    (folder / "dummy_plugin.yaml").write_text("config: {alpha: 1}\nsearch_space: {alpha: {type: int, low: 1, high: 3}}\n")
    info = folder / "dummy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dummy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[harness.methods]\ndummy-ep = dummy_plugin:Dummy\n")


def test_builtins_are_registered_with_metadata():
    methods = registry.available()
    assert {"pop", "sasrec"} <= set(methods)
    sasrec = methods["sasrec"]
    assert issubclass(sasrec, Method) and "Kang" in sasrec.paper
    assert sasrec.default_config["loss"] == "ce" and "lr" in sasrec.search_space


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    install_dummy_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = registry.get("dummy-ep")
    assert cls.paper == "A dummy third-party method"
    assert cls.default_config == {"alpha": 1} and "alpha" in cls.search_space


def test_entry_point_plugin_runs_and_is_listed_by_the_cli(tmp_path):
    install_dummy_package(tmp_path)
    env_path = f"{tmp_path}"
    listing = subprocess.run([sys.executable, "-m", "harness", "methods"], capture_output=True, text=True,
                             env={"PYTHONPATH": env_path, "PATH": ""}, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "dummy-ep" in listing.stdout and "item_text" in listing.stdout
    result = subprocess.run([sys.executable, "-m", "harness", "run", "--method", "dummy-ep", "--data-set",
                             "n_users=100", "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True,
                            env={"PYTHONPATH": env_path, "PATH": ""}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "status=ok" in result.stdout
