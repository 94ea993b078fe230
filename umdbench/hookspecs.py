"""The pluggy hook every umdbench plugin implements.

A plugin is any module (or object) with a function decorated by :data:`hookimpl`::

    from umdbench.hookspecs import hookimpl

    @hookimpl
    def umdbench_register(registries):
        registries.pretrain.register_lazy("my-mae", "my_package.mae:MyMAE")

Built-in plugins are registered through this same hook (from ``registry.toml`` at the repository root); third-party
packages expose their module under the ``umdbench`` entry-point group; a local file can be
loaded with ``umdbench --plugin-path FILE``.
"""

import pluggy

__all__ = ["hookimpl", "hookspec", "PROJECT", "UmdbenchSpec"]

PROJECT = "umdbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class UmdbenchSpec:
    @hookspec
    def umdbench_register(self, registries):
        """Add entries to ``registries`` (a :class:`umdbench.plugin.registry.Registries`).

        Use ``registries.<kind>.register_lazy(name, "module:attr")`` so nothing is imported until
        the entry is used, or ``registries.<kind>.register(name, obj)``. Names are global per kind:
        registering a name that is already taken fails the plugin. Each entry is checked against
        its kind (when registered with an object, else when first imported):

        * ``pretrain`` -- a subclass of :class:`umdbench.api.PretrainStrategy`.
        * ``tune`` -- a subclass of :class:`umdbench.api.TuneStrategy`.
        * ``dataset`` -- a subclass of :class:`umdbench.api.DatasetPlugin`.
        * ``metric`` -- a subclass of :class:`mmengine.evaluator.BaseMetric`.
        * ``encoder`` -- a subclass of :class:`umdbench.api.Encoder` (the shared backbone).
        * ``task`` -- a subclass of :class:`umdbench.api.TaskType` (dataset, collate, head, loss).
        * ``suite`` -- a ``dict`` suite spec, registered with ``register`` (see docs/sweeps.md).

        A hook that raises (an import error, a taken name, a wrong kind) fails only its own
        plugin: what it registered is rolled back and ``umdbench plugins`` reports why.
        """
