"""Built-in method plugins: one module per method, its default config and search space in the YAML beside it."""
