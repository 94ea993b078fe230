"""pytest-benchmark suite of umdbench's hot paths (not collected by CI; see benchmarks/run.py)."""
