"""The code a stage runs, as it enters the stage's key: the one place umdbench fingerprints its
own code and its plugins' code, by content for stage keys (:func:`code_key`, :func:`modules_digest`)
and by file stat for the dry-run cache (:func:`code_stamp`), over one walker of a package's source
files (:func:`source_files`).

A stage key hashes the modules the stage imports and executes, not whole packages: the static
import closure (every ``import``, module level or inside a function, relative imports resolved,
parsed with :mod:`ast`, nothing imported) of

* the run path's entry modules (:data:`RUN_ENTRIES`: training, the stage model, the builders, the
  keyed loader, the evaluation), and
* the modules of the plugins the stage uses (its strategy, the encoder, the dataset, the task
  type(s); the metric for an evaluation), each followed within first-party code: umdbench, the
  packages plugins are registered from, and the plugin's own package,

plus the installed versions of the third-party libraries that can change numbers
(:data:`NUMERIC_LIBRARIES`). So editing the leaderboard, the CLI, a sweep executor or a plugin
module no stage of a cell imports keeps every key of that cell, and no stored result comes from
code that has changed since. The closure, ``module -> sha256``, is recorded in each stage's
``stage.json`` (``key_inputs.code.modules``) so a changed key can be traced to the file.

Two rules keep the closure to the code that runs:

* importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py``: their text counts, but what
  they import counts only for a stage that imports from the package itself (``from umdbench.models
  import build_encoder``); a re-exporting ``__init__`` therefore does not pull every sibling in;
* the run path touches a few modules that cannot change numbers (:data:`NEVER_NUMERIC`); their
  edges are cut deliberately, each with its reason.

Dynamic imports (``importlib.import_module``, registry ``module:attr`` targets) are not seen by the
parser: the planner names those modules explicitly (the plugin classes and the metric target).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Iterable

__all__ = [
    "NEVER_NUMERIC",
    "NUMERIC_LIBRARIES",
    "RUN_ENTRIES",
    "clear_caches",
    "code_key",
    "code_stamp",
    "file_stamp",
    "iter_source_files",
    "library_versions",
    "module_closure",
    "modules_digest",
    "plugin_tops",
    "read_source",
    "source_files",
]

# Source files of a package: the code, plus toml (umdbench's registry.toml) for the dry-run stamp.
SOURCE_SUFFIXES = (".py", ".toml")

# Where a stage's own code starts, whatever its plugins: training (train_stage -> _train, the
# stage model, the builders of strategy, data, optimiser and runner, the keyed loader) and
# evaluation (evaluate_stage, the prediction recorder). Launching (run.distributed, run.nodes),
# the sweep executors, the CLI and the results package are not entries: they decide where and
# when a stage runs, never what it computes.
RUN_ENTRIES = (
    "umdbench.run.train_and_evaluate",
    "umdbench.run.stage_model",
    "umdbench.run.build_strategy",
    "umdbench.run.build_data",
    "umdbench.run.build_optim",
    "umdbench.run.build_runner",
    "umdbench.run.data_parallel",
    "umdbench.run.prediction_recorder",
)

# Modules the run path imports that cannot change a stage's numbers: not keyed, and not followed.
NEVER_NUMERIC = {
    "umdbench.results.provenance": "device, git and package facts written into logs and rows",
    "umdbench.results.store": "the SQLite results store (rows are written after the numbers exist)",
    "umdbench.results.reference_points": "no-image reference points, copied by Workspace.copy_results_from",
    "umdbench.results.auc": "recomputes stored AUCs for a board's intervals (reached through the predictions format)",
    "umdbench.results.leaderboard": "renders stored rows",
    "umdbench.run.host_memory": "which malloc the process uses (never what it computes)",
    "umdbench.plan.codekey": "this module: how keys are computed, not what a stage computes",
    "umdbench.plugin.calls": "turns a plugin's exception into a message; runs only once training has failed",
}

# Third-party distributions whose version can change a stage's numbers (kernels, tokenisers,
# pre-processing, the training loop, metrics); those installed enter every key.
NUMERIC_LIBRARIES = (
    "torch",
    "torchvision",
    "timm",
    "transformers",
    "tokenizers",
    "monai",
    "numpy",
    "mmengine",
    "torchmetrics",
)


# -- source files of a package ----------------------------------------------------------------------
def iter_source_files(folder: str | os.PathLike, recursive: bool = True):
    """``(path relative to folder, path)`` of every source file under ``folder``, sorted, without
    ``__pycache__`` and hidden folders."""
    for here, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(names):
            if name.endswith(SOURCE_SUFFIXES):
                path = os.path.join(here, name)
                yield os.path.relpath(path, folder), Path(path)
        if not recursive:
            break


def _locate(top: str) -> tuple[list[str], str | None]:
    """``(package folders, file)`` of a top-level package or module, without importing it."""
    module = sys.modules.get(top)
    if module is not None:
        return list(getattr(module, "__path__", None) or []), getattr(module, "__file__", None)
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return [], None
    return list(spec.submodule_search_locations or []), spec.origin if spec.has_location else None


def source_files(top: str) -> list[tuple[str, Path]]:
    """``(name, path)`` of every source file of the top-level package (or single module) ``top``,
    found without importing it when it is not imported yet."""
    folders, file = _locate(top)
    if not folders:
        return [(Path(file).name, Path(file))] if file else []
    files = []
    for folder in folders:
        files += list(iter_source_files(folder))
    return sorted(files)


@lru_cache(maxsize=None)
def plugin_tops() -> tuple[str, ...]:
    """Top-level packages plugins load from: umdbench, registry.toml targets and the ``umdbench``
    entry points (named, not imported)."""
    import importlib.metadata as md

    import tomllib

    tops = {"umdbench"}
    try:
        table = tomllib.loads((Path(__file__).resolve().parents[1] / "registry.toml").read_text())
    except (OSError, ValueError):
        table = {}

    def targets(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from targets(v)
        elif isinstance(node, str) and ":" in node:
            yield node

    tops.update(t.split(":")[0].split(".")[0] for t in targets(table))
    try:
        tops.update(ep.value.split(":")[0].split(".")[0].strip() for ep in md.entry_points(group="umdbench"))
    except Exception:  # a broken distribution: its plugins are keyed as stage classes instead
        pass
    return tuple(sorted(t for t in tops if t))


# -- the dry-run stamp: the same files by stat, none read ------------------------------------------
def file_stamp(path: str | os.PathLike) -> list:
    """What a file's stat says of its content without reading it: size, mtime, inode and ctime (a
    same-size rewrite with its mtime set back still changes the last two) and file or folder;
    ``["missing"]`` when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return ["missing"]
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, "d" if os.path.isdir(path) else "f"]


def code_stamp(plugin_paths: Iterable[str] = ()) -> str:
    """The code a dry run's output can depend on, from stat calls alone: every source file of
    :func:`plugin_tops` (a superset of what :func:`module_closure` hashes for stage keys), each
    ``--plugin-path`` file and the sources beside it (it may import them), and the installed
    distributions (the ``*.dist-info``/``*.egg-info`` names of every ``sys.path`` folder, so an
    upgrade changes it)."""
    h = hashlib.sha256()
    for top in plugin_tops():
        h.update(f"top\0{top}\n".encode())
        for _, path in source_files(top):
            h.update(f"{path}\0{json.dumps(file_stamp(path))}\n".encode())
    for path in plugin_paths:
        full = os.path.abspath(path)
        h.update(f"plugin-path\0{full}\0{json.dumps(file_stamp(full))}\n".encode())
        for _, beside in iter_source_files(os.path.dirname(full), recursive=False):
            h.update(f"{beside}\0{json.dumps(file_stamp(beside))}\n".encode())
    for entry in sys.path:
        folder = entry or os.getcwd()
        try:
            names = sorted(
                n for n in os.listdir(folder) if n.endswith((".dist-info", ".egg-info", ".pth", ".egg-link"))
            )
        except OSError:
            continue
        h.update(f"path\0{folder}\0{','.join(names)}\n".encode())
    return h.hexdigest()


# -- reading and parsing ---------------------------------------------------------------------------
def read_source(path: Path) -> bytes:
    """A source file's bytes: the one read behind every key (tests swap it for an edited copy)."""
    return Path(path).read_bytes()


_files: dict[Path, tuple[str, tuple]] = {}  # path -> (sha256, its imports)
_index: dict[str, dict[str, Path]] = {}  # top -> {module: path}
_closures: dict[tuple[str, frozenset], frozenset] = {}
# (sha256, module, is a package __init__) -> its imports: content-addressed, so kept by clear_caches
_parsed: dict[tuple[str, str, bool], tuple] = {}


def clear_caches() -> None:
    """Forget what this process read (a new process starts empty; tests edit sources between plans)."""
    _files.clear()
    _index.clear()
    _closures.clear()
    plugin_tops.cache_clear()


def _modules_of(top: str) -> dict[str, Path]:
    """``{module name: file}`` of the top-level package ``top`` (a single module: itself)."""
    if top not in _index:
        folders, file = _locate(top)
        if not folders:
            _index[top] = {top: Path(file)} if file and file.endswith(".py") else {}
            return _index[top]
        out = {}
        for rel, path in source_files(top):
            if rel.endswith(".py"):
                parts = [top] + list(Path(rel).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                out[".".join(parts)] = path
        _index[top] = out
    return _index[top]


def _path(module: str) -> Path | None:
    return _modules_of(module.split(".")[0]).get(module)


def _read(module: str) -> tuple[str, tuple]:
    """``(sha256, imported names)`` of a module's file, read once per process (until
    :func:`clear_caches`) and parsed once per content."""
    path = _path(module)
    if path not in _files:
        data = read_source(path)
        digest = hashlib.sha256(data).hexdigest()
        parsed = (digest, module, path.name == "__init__.py")  # what the imports depend on
        if parsed not in _parsed:
            _parsed[parsed] = tuple(_imports(module, path, data))
        _files[path] = (digest, _parsed[parsed])
    return _files[path]


def _statements(body: list):
    """Every statement in ``body``, nested ones too (an import is a statement: no expression is
    visited, which is most of a tree's nodes)."""
    for node in body:
        yield node
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(node, name, None)
            if isinstance(inner, list):
                yield from _statements(inner)


def _imports(module: str, path: Path, data: bytes) -> list[tuple[str, str | None]]:
    """Every import of a file, anywhere in it, as ``(module, name)``: ``import a.b`` gives
    ``("a.b", None)``, ``from a import b`` gives ``("a", "b")`` (relative imports resolved)."""
    try:
        tree = ast.parse(data, filename=str(path))
    except SyntaxError:
        return []  # it cannot run either; its bytes are still keyed
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out: list[tuple[str, str | None]] = []
    for node in _statements(tree.body):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out += [(base, alias.name) for alias in node.names]
    return out


def _resolve(base: str, name: str | None, followed: frozenset) -> str | None:
    """The first-party module an import depends on: ``from pkg import sub`` the submodule when
    there is one, else ``pkg``; a dotted name its longest prefix with a file; None outside
    ``followed`` (third-party code: keyed by :func:`library_versions`)."""
    if base.split(".")[0] not in followed:
        return None
    if name and name != "*" and _path(f"{base}.{name}") is not None:
        return f"{base}.{name}"
    while base:
        if _path(base) is not None:
            return base
        base = base.rpartition(".")[0]
    return None


def _closure(entry: str, followed: frozenset) -> frozenset:
    """The modules ``entry`` imports, transitively, within the ``followed`` top-level packages."""
    memo = (entry, followed)
    if memo not in _closures:
        seen: set[str] = set()
        stack = [entry]
        while stack:
            module = stack.pop()
            if module in seen or module in NEVER_NUMERIC or _path(module) is None:
                continue
            seen.add(module)
            for base, name in _read(module)[1]:
                target = _resolve(base, name, followed)
                if target is not None and target not in seen:
                    stack.append(target)
        _closures[memo] = frozenset(seen)
    return _closures[memo]


def module_closure(*entries: str) -> dict[str, str]:
    """``{module: sha256}`` of the entry modules, what they import (within first-party code:
    umdbench, the plugin packages and each entry's own package) and the ``__init__`` of every
    package above them (run on import; its text only). A module without a file (built at run
    time) is keyed by its source when :mod:`inspect` finds it, else ``nosource``."""
    followed = frozenset(plugin_tops()) | {e.split(".")[0] for e in entries}
    found: set[str] = set()
    out: dict[str, str] = {}
    for entry in entries:
        if _path(entry) is None:
            out[entry] = _unfiled(entry)
            continue
        found |= _closure(entry, followed)
    for module in list(found):
        parts = module.split(".")
        found.update(
            p
            for p in (".".join(parts[:i]) for i in range(1, len(parts)))
            if _path(p) is not None and p not in NEVER_NUMERIC
        )
    out.update({m: _read(m)[0][:16] for m in found})
    return dict(sorted(out.items()))


def _unfiled(module: str) -> str:
    try:
        return hashlib.sha256(inspect.getsource(sys.modules[module]).encode()).hexdigest()[:16]
    except (KeyError, OSError, TypeError):
        return "nosource"


def modules_digest(*entries: str) -> str:
    """One hash of :func:`module_closure` (for caches keyed by a plugin's code)."""
    return hashlib.sha256(repr(sorted(module_closure(*entries).items())).encode()).hexdigest()[:16]


# distributions that ship a library under another name (forks, "lite" builds)
_DISTRIBUTIONS = {"mmengine": ("mmengine", "onedl-mmengine", "mmengine-lite")}


@lru_cache(maxsize=None)
def library_versions() -> tuple[tuple[str, str], ...]:
    """``(import name, version)`` of each installed :data:`NUMERIC_LIBRARIES` entry; a library
    installed from another distribution is keyed by it too (``onedl-mmengine 0.10.12``)."""
    import importlib.metadata as md

    out = []
    for name in NUMERIC_LIBRARIES:
        for dist in _DISTRIBUTIONS.get(name, (name,)):
            try:
                version = md.version(dist)
            except md.PackageNotFoundError:
                continue
            out.append((name, version if dist == name else f"{dist} {version}"))
            break
    return tuple(out)


def code_key(*classes, targets: tuple[str, ...] = ()) -> dict:
    """The code inputs of one stage key: the plugin classes it uses (``module:qualname`` and the
    class's declared ``version``), the registry targets it uses without importing them
    (``module:attr``, the metric: importing torchmetrics would cost planning a second), the import
    closure of the run path and of all of those modules, and the numeric libraries' versions."""
    classes = [c for c in classes if c is not None]
    modules = [c.__module__ for c in classes] + [t.split(":")[0] for t in targets]
    return {
        "classes": {f"{c.__module__}:{c.__qualname__}": str(getattr(c, "version", "0")) for c in classes},
        "targets": sorted(targets),
        "modules": module_closure(*RUN_ENTRIES, *dict.fromkeys(modules)),
        "libraries": dict(library_versions()),
    }
