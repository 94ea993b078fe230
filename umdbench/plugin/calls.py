"""One error path for plugin code the core runs.

Whatever a plugin's code raises while the core runs it (a strategy's ``__init__``, ``forward``,
``predict`` or hooks, a task type's batches, a metric's ``process``/``compute_metrics``) becomes one
paragraph naming the plugin, the package (and version) that provides it, the hook the core was in
and the plugin's own line that raised, exit 2. The plugin is found from the traceback: the innermost
frame in a plugin's own files, so an error inside torch called by a strategy is the strategy's, and
an error in umdbench's core stays a traceback (it is a bug of ours, not the author's). A stage that
fails this way keeps its last checkpoint: the same command resumes it once the plugin is fixed.
"""

from __future__ import annotations

import contextlib
import linecache
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from umdbench.errors import PluginError, UmdbenchError

__all__ = ["PluginRef", "blame", "plugin_errors"]


@dataclass(frozen=True)
class PluginRef:
    kind: str  # "pretrain strategy", "tuning strategy", "encoder", ...
    name: str
    package: str  # "package version" (or the --plugin-path file)
    root: str  # the plugin's own files: its top-level package folder, or its module file
    cls: type | None = None  # the registered class: tells apart two plugins of one file


def _root_of(module_name: str) -> str:
    """The folder of a module's top-level package (the module file for a single-file plugin)."""
    top = sys.modules.get(module_name.split(".", 1)[0])
    module = sys.modules.get(module_name)
    for mod in (top, module):
        path = getattr(mod, "__file__", None)
        if path:
            path = Path(path).resolve()
            return str(path.parent if path.name == "__init__.py" else path)
    return ""


def _inside(filename: str, root: str) -> bool:
    if not root:
        return False
    path = str(Path(filename).resolve())
    return path == root or path.startswith(root.rstrip("/") + "/")


def blame(exc: BaseException, refs) -> tuple[PluginRef, traceback.FrameSummary, str] | None:
    """``(plugin, its innermost frame, the hook)`` of the plugin whose code raised ``exc``; the hook
    is the outermost function of that plugin's run of frames (what the core called)."""
    frames = traceback.extract_tb(exc.__traceback__)
    selves = [f.f_locals.get("self") for f, _ in traceback.walk_tb(exc.__traceback__)]
    refs = [r for r in refs if r is not None]
    for i in range(len(frames) - 1, -1, -1):
        here = [r for r in refs if _inside(frames[i].filename, r.root)]
        if not here:
            continue
        owner = next((r for r in here if r.cls is not None and isinstance(selves[i], r.cls)), here[0])
        first = i
        while first > 0 and _inside(frames[first - 1].filename, owner.root):
            first -= 1
        return owner, frames[i], frames[first].name
    return None


def describe(ref: PluginRef, frame: traceback.FrameSummary, hook: str, exc: BaseException, doing: str) -> str:
    line = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
    where = f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}" + (f": `{line}`" if line else "")
    return (
        f"{ref.kind} {ref.name!r} ({ref.package}) failed in {hook}() while {doing}: {type(exc).__name__}: {exc}. "
        f"It was raised by the plugin's own code at {where}. Fix the plugin (or report it to the author of "
        f"{ref.package}); nothing was stored, and the same command resumes from the last checkpoint."
    )


@contextlib.contextmanager
def plugin_errors(refs, doing: str):
    """Turn an exception raised by the code of one of ``refs`` into a :class:`PluginError`."""
    try:
        yield
    except UmdbenchError:
        raise
    except Exception as exc:
        found = blame(exc, refs)
        if found is None:
            raise
        raise PluginError(describe(*found, exc, doing)) from exc
