"""The harness's conformance checks on its smoke track, as a test: `harness validate-plugin itemknn`."""
from harness.validate_plugin import validate


def test_itemknn_plugin_passes_the_plugin_validator():
    report = validate("itemknn")
    assert report.passed, report.render()
