"""itemknn: a method plugin for gr-harness (entry point `itemknn` in the `harness.methods` group)."""
