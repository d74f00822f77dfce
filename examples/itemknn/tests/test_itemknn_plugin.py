"""The harness's conformance checks on its smoke track, as a test: `harness validate-plugin itemknn`."""
from harness.plugins.validate import validate_plugin


def test_itemknn_plugin_passes_the_plugin_validator():
    report = validate_plugin("itemknn")
    assert report.passed, report.render()
