"""The pluggy hook every umdbench plugin implements.

A plugin is any module (or object) with a function decorated by :data:`hookimpl`::

    from umdbench.hookspecs import hookimpl

    @hookimpl
    def umdbench_register(registries):
        registries.pretrain.register_lazy("my-mae", "my_package.mae:MyMAE")

Built-in plugins are registered through this same hook (from ``registry.toml``); third-party
packages expose their module under the ``umdbench`` entry-point group; a local file can be
loaded with ``umdbench --plugin-path FILE``.
"""
import pluggy

PROJECT = "umdbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class UmdbenchSpec:
    @hookspec
    def umdbench_register(self, registries):
        """Add entries to ``registries`` (a :class:`umdbench.plugin.registry.Registries`).

        Use ``registries.<kind>.register_lazy(name, "module:attr")`` so nothing is imported until
        the entry is used, or ``registries.<kind>.register(name, obj)``. Kinds: ``pretrain``,
        ``tune``, ``dataset``, ``metric``, ``suite``.
        """
