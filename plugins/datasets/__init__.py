"""Built-in dataset plugins (registered lazily through umdbench/registry.toml)."""
