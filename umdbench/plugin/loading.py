"""Plugin discovery: built-ins from ``registry.toml``, third-party entry points, local files.

Every source goes through the same pluggy hook (``umdbench_register``). Plugins are registered
one at a time: a plugin that fails to import or whose hook raises is recorded in the report,
its partial registrations are rolled back, and the rest load normally.
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import sys
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pluggy

from umdbench import __version__
from umdbench.hookspecs import PROJECT, UmdbenchSpec, hookimpl
from umdbench.plugin.registry import Registries

ENTRY_POINT_GROUP = "umdbench"


def registry_toml_path() -> Path:
    """``umdbench/registry.toml``: the built-in plugins and suites (package data)."""
    return Path(__file__).resolve().parents[1] / "registry.toml"


def read_registry_toml(path: Path | None = None) -> dict:
    path = path or registry_toml_path()
    with open(path, "rb") as fh:
        return tomllib.load(fh)


class BuiltinPlugin:
    """Registers the entries declared in ``registry.toml`` (plugins and suites)."""

    def __init__(self, path: Path | None = None):
        self.path = path or registry_toml_path()

    @hookimpl
    def umdbench_register(self, registries: Registries) -> None:
        table = read_registry_toml(self.path)
        for kind, reg in registries.kinds().items():
            if kind == "suite":
                for name, spec in table.get("suites", {}).items():
                    reg.register(name, spec)
                continue
            for name, target in table.get(kind, {}).items():
                reg.register_lazy(name, target)


@dataclass
class PluginInfo:
    name: str
    source: str  # "builtin", "entry point <dist>", "path <file>"
    version: str
    registered: dict[str, list[str]] = field(default_factory=dict)  # kind -> names
    error: str | None = None


@dataclass
class PluginReport:
    plugins: list[PluginInfo] = field(default_factory=list)

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]


def _load_file(path: str) -> ModuleType:
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise FileNotFoundError(f"--plugin-path {path!r}: no such file")
    name = f"umdbench_local_plugin_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _register_one(pm: pluggy.PluginManager, registries: Registries, obj, info: PluginInfo) -> None:
    """Run one plugin's hook in isolation, rolling back what it registered if it fails."""
    before = registries.snapshot()
    registries.set_origin(f"{info.source} ({info.name})")
    try:
        pm.register(obj, name=info.name)
        impls = [i for i in pm.hook.umdbench_register.get_hookimpls() if i.plugin is obj]
        if not impls:
            raise TypeError("the module defines no @hookimpl umdbench_register(registries) function")
        for impl in impls:
            impl.function(registries=registries)
    except Exception as exc:  # a broken plugin is reported and skipped, never fatal
        info.error = f"{type(exc).__name__}: {exc}"
        info.error_trace = traceback.format_exc()
        after = registries.snapshot()
        for kind, reg in registries.kinds().items():
            for name in after[kind] - before[kind]:
                reg.unregister(name)
        if pm.is_registered(obj):
            pm.unregister(obj)
    else:
        after = registries.snapshot()
        info.registered = {k: sorted(after[k] - before[k]) for k in after if after[k] - before[k]}
    finally:
        registries.set_origin("unknown")


def load_plugins(plugin_paths=()) -> tuple[Registries, PluginReport]:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(UmdbenchSpec)
    registries = Registries()
    report = PluginReport()

    builtin = PluginInfo("builtin", str(registry_toml_path().name), __version__)
    _register_one(pm, registries, BuiltinPlugin(), builtin)
    report.plugins.append(builtin)

    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(ep.name, f"entry point {ep.value}", dist.version if dist else "?")
        if dist is not None:
            info.source = f"entry point {ep.value} (package {dist.metadata['Name']})"
        try:
            obj = ep.load()
        except Exception as exc:
            info.error = f"import failed: {type(exc).__name__}: {exc}"
            report.plugins.append(info)
            continue
        _register_one(pm, registries, obj, info)
        report.plugins.append(info)

    for path in plugin_paths:
        info = PluginInfo(Path(path).stem, f"path {path}", "local")
        try:
            obj = _load_file(path)
        except Exception as exc:
            info.error = f"import failed: {type(exc).__name__}: {exc}"
            report.plugins.append(info)
            continue
        info.version = str(getattr(obj, "__version__", "local"))
        _register_one(pm, registries, obj, info)
        report.plugins.append(info)
    return registries, report


_LOADED: tuple[Registries, PluginReport] | None = None


def get_registries(plugin_paths: tuple[str, ...] | list[str] = (), reload: bool = False) -> Registries:
    """The process-wide registries with every plugin loaded (built-in, entry points, paths)."""
    global _LOADED
    if _LOADED is None or reload or plugin_paths:
        _LOADED = load_plugins(plugin_paths)
    return _LOADED[0]


def get_plugin_report():
    """The :class:`PluginReport` of the last :func:`get_registries` call."""
    if _LOADED is None:
        get_registries()
    return _LOADED[1]
