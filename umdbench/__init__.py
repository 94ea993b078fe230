"""umdbench: a plugin-based benchmark harness for medical vision-language pre-training.

The public API is small and import-light (no torch at import time):

* :mod:`umdbench.api` -- base classes for plugins (datasets, pre-training and tuning strategies).
* :mod:`umdbench.hookspecs` -- the pluggy hook a plugin implements (``umdbench_register``).
* :func:`umdbench.plugin.get_registries` -- the registries, with every plugin loaded.
"""

__version__ = "0.1.0"
