"""Plugin kinds and their loading: registries with lazy ``module:attr`` entries, filled by pluggy hooks.

``get_registries()`` is the entry point: it loads the built-in entries (``registry.toml``), the
``umdbench`` entry-point group and ``--plugin-path`` files once per process and returns the registries.
"""
from umdbench.plugin.loading import PluginInfo, PluginReport, get_plugin_report, get_registries, load_plugins
from umdbench.plugin.registry import KINDS, LazyRegistry, Registries

__all__ = ["KINDS", "LazyRegistry", "PluginInfo", "PluginReport", "Registries", "get_plugin_report",
           "get_registries", "load_plugins"]
