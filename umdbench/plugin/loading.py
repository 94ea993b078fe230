"""Plugin discovery: built-ins from ``registry.toml``, third-party entry points, local files.

Every source goes through the same pluggy hook (``umdbench_register``). Plugins are registered
one at a time: a plugin that fails to import or whose hook raises (including a registration of the
wrong kind of object) is recorded in the report with its traceback, its partial registrations are
rolled back, and the rest load normally. A ``--plugin-path`` that is not an existing ``.py`` file is
a usage error (:class:`PluginPathError`), raised before any plugin loads; one that fails to load is
one too when the registries are fetched for a command (:func:`get_registries`): the user named that
file, so running without it would silently run something else. ``umdbench plugins`` still reports it.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pluggy
import tomllib

from umdbench import __version__
from umdbench.errors import UmdbenchError
from umdbench.hookspecs import PROJECT, UmdbenchSpec, hookimpl
from umdbench.plugin.registry import Registries

ENTRY_POINT_GROUP = "umdbench"


class PluginPathError(UmdbenchError):
    """A ``--plugin-path`` that does not name an existing ``.py`` file."""


def registry_toml_path() -> Path:
    """``registry.toml``: the built-in plugins and suites. The real file is at the repository root;
    ``umdbench/registry.toml`` links to it, and a wheel build copies it in as package data."""
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
    error: str | None = None  # one line: why the plugin was skipped
    error_trace: str | None = None  # the full traceback of that failure (`umdbench plugins --traceback`)
    error_line: str | None = None  # where a --plugin-path file raised: "FILE, line N: code"
    package: str = ""  # what result rows record as the provider: "dist-name version" or the local file


@dataclass
class PluginReport:
    plugins: list[PluginInfo] = field(default_factory=list)

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]


def check_plugin_path(path: str) -> Path:
    """The resolved file of a ``--plugin-path``, or :class:`PluginPathError`.

    A typo in a path must stop the command: skipping it would silently run without the plugin."""
    file = Path(path).expanduser().resolve()
    if not file.exists():
        problem = f"there is no such file ({file})"
    elif not file.is_file():
        problem = f"{file} is not a file"
    elif file.suffix != ".py":
        problem = f"{file} is not a .py file"
    else:
        return file
    raise PluginPathError(
        f"--plugin-path {path!r}: {problem}. Pass the path of a Python file that defines a @hookimpl "
        f"umdbench_register(registries) function (relative paths start from {Path.cwd()}); an installed "
        f"package registers through the `{ENTRY_POINT_GROUP}` entry-point group instead."
    )


def _load_file(file: Path) -> ModuleType:
    name = f"umdbench_local_plugin_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]  # no half-executed module left behind for a later import to find
        raise
    return module


def _record_failure(info: PluginInfo, exc: BaseException, what: str = "", file: Path | None = None) -> None:
    info.error = f"{what}{type(exc).__name__}: {exc}"
    info.error_trace = "".join(traceback.format_exception(exc))
    if file is not None:
        info.error_line = _line_in(file, exc)


def _line_in(file: Path, exc: BaseException) -> str:
    """``FILE, line N: code`` of the last frame of ``exc`` in ``file`` (the line of a SyntaxError)."""
    if isinstance(exc, SyntaxError) and exc.filename and Path(exc.filename).resolve() == file:
        code = (exc.text or "").strip()
        return f"{file}, line {exc.lineno}" + (f": {code}" if code else "")
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename and Path(frame.filename).resolve() == file:
            found = frame
    if found is None:
        return f"{file} (the exception was raised outside it: `umdbench plugins --traceback` shows where)"
    code = (found.line or "").strip()
    return f"{file}, line {found.lineno}" + (f": {code}" if code else "")


def check_path_plugins(report: PluginReport) -> None:
    """A ``--plugin-path`` file that failed to load (import or hook) stops the command: one paragraph
    naming the file, the exception and its line (:class:`PluginPathError`, exit 2)."""
    for info in report.plugins:
        if info.error and info.source.startswith("path "):
            path = info.source[len("path ") :]
            raise PluginPathError(
                f"--plugin-path {path!r} failed to load ({info.error_line or path}): {info.error.rstrip('.')}. "
                f"Fix the file, or leave out --plugin-path {path}; "
                f"`umdbench plugins --plugin-path {path} --traceback` shows the whole traceback."
            )


def _register_one(
    pm: pluggy.PluginManager, registries: Registries, obj, info: PluginInfo, file: Path | None = None
) -> None:
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
    except Exception as exc:  # a broken plugin is reported and skipped (a --plugin-path one: see get_registries)
        _record_failure(info, exc, file=file)
        after = registries.snapshot()
        for kind, reg in registries.kinds().items():
            for name in after[kind] - before[kind]:
                reg.unregister(name)
        if pm.is_registered(obj):
            pm.unregister(obj)
    else:
        after = registries.snapshot()
        info.registered = {k: sorted(after[k] - before[k]) for k in after if after[k] - before[k]}
        for kind, names in info.registered.items():
            for name in names:
                registries.kinds()[kind]._packages[name] = info.package
    finally:
        registries.set_origin("unknown")


def load_plugins(plugin_paths=()) -> tuple[Registries, PluginReport]:
    """Load every plugin into fresh registries; a broken plugin is reported, not raised.

    Raises :class:`PluginPathError` for a ``plugin_paths`` entry that is not an existing .py file."""
    files = [check_plugin_path(path) for path in plugin_paths]  # before anything loads
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(UmdbenchSpec)
    registries = Registries()
    report = PluginReport()

    builtin = PluginInfo("builtin", str(registry_toml_path().name), __version__, package=f"umdbench {__version__}")
    _register_one(pm, registries, BuiltinPlugin(), builtin)
    report.plugins.append(builtin)

    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(ep.name, f"entry point {ep.value}", dist.version if dist else "?")
        if dist is not None:
            info.source = f"entry point {ep.value} (package {dist.metadata['Name']})"
            info.package = f"{dist.metadata['Name']} {dist.version}"
        try:
            obj = ep.load()
        except Exception as exc:
            _record_failure(info, exc, "import failed: ")
            report.plugins.append(info)
            continue
        _register_one(pm, registries, obj, info)
        report.plugins.append(info)

    for path, file in zip(plugin_paths, files):
        info = PluginInfo(file.stem, f"path {path}", "local", package=f"local file {file}")
        try:
            obj = _load_file(file)
        except Exception as exc:
            _record_failure(info, exc, "import failed: ", file=file)
            report.plugins.append(info)
            continue
        info.version = str(getattr(obj, "__version__", "local"))
        _register_one(pm, registries, obj, info, file=file)
        report.plugins.append(info)
    return registries, report


_LOADED: tuple[Registries, PluginReport] | None = None


def get_registries(
    plugin_paths: tuple[str, ...] | list[str] = (), reload: bool = False, strict_paths: bool = True
) -> Registries:
    """The process-wide registries with every plugin loaded (built-in, entry points, paths).

    A file of ``plugin_paths`` that fails to load raises :class:`PluginPathError` unless
    ``strict_paths`` is False (``umdbench plugins``, which reports it)."""
    global _LOADED
    if _LOADED is None or reload or plugin_paths:
        _LOADED = load_plugins(plugin_paths)
    if strict_paths and plugin_paths:
        try:
            check_path_plugins(_LOADED[1])
        except PluginPathError:
            _LOADED = None  # the command stops; nothing keeps registries the user did not ask for
            raise
    return _LOADED[0]


def get_plugin_report():
    """The :class:`PluginReport` of the last :func:`get_registries` call."""
    if _LOADED is None:
        get_registries()
    return _LOADED[1]


def note_failed_plugins() -> None:
    """One line on stderr when some plugin failed to load, so a run or a listing does not silently
    miss what it provides."""
    failed = [p.name for p in get_plugin_report().failures]
    if failed:
        print(
            f"umdbench: note: {len(failed)} plugin(s) failed to load and were skipped ({', '.join(failed)}); "
            f"`umdbench plugins --traceback` shows why.",
            file=sys.stderr,
        )
