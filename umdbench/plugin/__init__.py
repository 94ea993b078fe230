"""Plugin kinds and their loading: registries with lazy ``module:attr`` entries, filled by pluggy hooks.

``get_registries()`` is the entry point: it loads the built-in entries (``registry.toml``), the
``umdbench`` entry-point group and ``--plugin-path`` files once per process and returns the registries.
``get_plugin_report()`` says where each plugin came from and why a broken one was skipped.

The hook a plugin implements (``hookimpl``) lives in :mod:`umdbench.hookspecs`, not here.
"""

from umdbench.plugin.loading import (
    PluginInfo,
    PluginPathError,
    PluginReport,
    check_path_plugins,
    get_plugin_report,
    get_registries,
    load_plugins,
    note_failed_plugins,
)
from umdbench.plugin.registry import KINDS, LazyRegistry, Registries, RegistryTypeError

__all__ = [
    # the process-wide registries and the report of how they were filled
    "get_registries",
    "get_plugin_report",
    "note_failed_plugins",
    # loading into fresh registries (tests, tools)
    "load_plugins",
    "check_path_plugins",
    "PluginInfo",
    "PluginReport",
    # the registries themselves
    "KINDS",
    "LazyRegistry",
    "Registries",
    # errors a user can meet
    "PluginPathError",
    "RegistryTypeError",
]
