"""Built-in training recipes (YAML), shipped with the package."""
