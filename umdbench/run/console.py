"""What a run says: :func:`echo` prints a line to the console; :class:`PluginLogs` sends the
records of plugin packages' loggers to the console and to the mmengine log of the stage being run."""

from __future__ import annotations

import logging
import logging.handlers
import sys

from umdbench.plugin.registry import Registries

__all__ = ["PluginLogs", "echo", "plugin_packages"]


def echo(message: str) -> None:
    """One line on the console, flushed at once (a stage's progress under a sweep's log capture)."""
    print(message, flush=True)


class _ConsoleHandler(logging.StreamHandler):
    """Writes each record to the ``sys.stdout`` of the moment it is emitted, as :func:`echo` prints:
    a handler made once per process must follow a later redirect (a notebook cell, a caller's
    ``contextlib.redirect_stdout``), not keep the stream that was current when it was made."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # StreamHandler assigns it; the current sys.stdout is always used
        pass


class PluginLogs:
    """Records of plugin packages' loggers (``logging.getLogger(__name__)`` in a plugin) go to the
    console and to the mmengine log of the stage being run. Records emitted while no Runner runs
    (a strategy being built) are held and written into the next stage's log when it starts.
    One instance per process: handlers are added to each package logger once."""

    _instance: PluginLogs | None = None

    def __init__(self):
        self.console = _ConsoleHandler()
        self.console.setFormatter(logging.Formatter("    [%(name)s] %(levelname)s: %(message)s"))
        self.held = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.DEBUG, target=None)
        self.routed: set[str] = set()

    @classmethod
    def route(cls, registries: Registries) -> PluginLogs:
        if cls._instance is None:
            cls._instance = cls()
        self = cls._instance
        for name in sorted(plugin_packages(registries) - self.routed):
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)
            logger.addHandler(self.console)
            logger.addHandler(self.held)
            self.routed.add(name)
        return self

    def to_log_of(self, runner) -> None:
        files = [h for h in runner.logger.handlers if isinstance(h, logging.FileHandler)]
        self.held.setTarget(files[0] if files else None)
        self.held.flush()

    def hold(self) -> None:
        self.held.setTarget(None)


def plugin_packages(registries: Registries) -> set[str]:
    """Top-level packages of every registered plugin class (``umdbench_plugins``, a third-party
    package, a ``--plugin-path`` module), whose loggers :class:`PluginLogs` routes."""
    names = set()
    for kind, reg in registries.kinds().items():
        if kind == "suite":
            continue
        for name in reg.names():
            module = reg.target(name).split(":", 1)[0]
            if not module.startswith("umdbench.") and module != "umdbench":
                names.add(module.split(".", 1)[0])
    return names
