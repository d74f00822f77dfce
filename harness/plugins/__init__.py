"""The plugin author's door: conformance checks (`validate-plugin`), submission bundles and their reproduction, and
the package scaffold."""
