"""The user's door: the `harness` command, one module per command group (`python -m harness`)."""
