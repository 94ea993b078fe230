"""Built-in dataset plugins (registered lazily through registry.toml)."""
