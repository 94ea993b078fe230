"""Whole dry-run plans remembered in the work dir, so a repeated ``--dry-run`` imports no torch,
no model and no plugin.

``umdbench run ... --dry-run`` and ``umdbench sweep ... --dry-run`` spend nearly all their time
importing torch and the plugin classes (whose base classes are ``nn.Module``\\ s); the planning itself
takes milliseconds. A finished dry run (exit 0) is stored with everything it printed, under a key
that covers every input its output can depend on, and replayed when all of them are unchanged:

* the command line, the working directory, the Python interpreter and the environment variables
  that steer umdbench, the Hugging Face hub and torch;
* the code (:func:`umdbench.plan.codekey.code_stamp`, the one owner of code fingerprints): every
  source file (``.py``/``.toml``) of umdbench, of each top-level package named in ``registry.toml``
  or in the ``umdbench`` entry-point group, and of the folder of each ``--plugin-path`` file, by
  (path, size, mtime) (a superset of the files stage keys hash: a dry run prints keys); the
  installed distributions (the ``*.dist-info`` names of every ``sys.path`` folder, so an upgrade
  changes the key);
* the machine facts planning reads: native CPU bf16, a CUDA device node, and (offline) the
  Hugging Face hub cache listing;
* the data: every path the resolved configs name (dataset roots walked recursively; other
  paths by their own size and mtime), recorded on the first run and re-stated on each replay;
* the work dir's state that the printed plan shows: the results store and which stage folders
  hold a finished marker.

Any difference is a miss: the plan is computed afresh (and stored again). A file rewritten with
the same size and mtime is the one change not seen, the usual (path, size, mtime) contract.
Errors are never stored. The cache lives only in an existing work dir (a dry run on a new one
writes nothing), in ``plan-cache.json`` (:func:`umdbench.run.layout.plan_cache_path`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from umdbench.plan.codekey import code_stamp, file_stamp
from umdbench.run.layout import MARKER_FILE, plan_cache_path, stages_dir, store_path  # not the Workspace: numpy

PLAN_CACHE_MAX = 64
FORMAT = 1

_ENV_PREFIXES = ("UMDBENCH_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "CUDA_", "PYTORCH_", "OMP_")
_ENV_NAMES = ("HOME", "XDG_CACHE_HOME", "PYTHONPATH")

# paths named by the resolved configs of the dry run in progress (None: not collecting)
_noted: dict[str, bool] | None = None


def note_config(config: Any) -> None:
    """Record the paths a resolved config names (called by the run/sweep commands while planning):
    a ``root`` is walked, any other string that is an existing path, or looks like one, is stated."""
    if _noted is None:
        return

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v, key)
        elif (
            isinstance(node, str)
            and node
            and key != "deviations"
            and (key == "root" or (os.sep in node and not any(c.isspace() for c in node)) or os.path.exists(node))
        ):
            path = os.path.abspath(node)
            _noted[path] = _noted.get(path, False) or key == "root"

    walk(config)


# -- stamps ---------------------------------------------------------------------------------
def tree_stamp(root: str) -> str:
    """(relative path, size, mtime) of every file and folder under ``root`` (symlinks followed,
    each real folder once), hashed; ``missing`` when it does not exist."""
    if not os.path.isdir(root):
        return json.dumps(file_stamp(root))
    h = hashlib.sha256()
    seen = {os.path.realpath(root)}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            h.update(f"unreadable\0{folder}\n".encode())
            continue
        for entry in entries:
            try:
                st = entry.stat()
            except OSError:
                h.update(f"{entry.path}\0broken\n".encode())
                continue
            h.update(
                f"{os.path.relpath(entry.path, root)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0"
                f"{st.st_ctime_ns}\n".encode()
            )
            if entry.is_dir():
                real = os.path.realpath(entry.path)
                if real not in seen:
                    seen.add(real)
                    stack.append(entry.path)
    return h.hexdigest()


def _hub_cache_stamp() -> str | None:
    """The Hugging Face hub cache listing, when offline (only then does planning look into it)."""
    offline = any(os.environ.get(v, "0") not in ("0", "", "false") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if not offline:
        return None
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME")
        or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"),
        "hub",
    )
    return tree_stamp(hub)


def environment_stamp() -> dict:
    from umdbench.util import cpu_native_bf16

    return {
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(_ENV_PREFIXES) or k in _ENV_NAMES},
        "python": [sys.executable, sys.version],
        "cwd": os.getcwd(),
        "cpu_bf16": cpu_native_bf16(),
        "cuda_node": os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl"),
        "hub": _hub_cache_stamp(),
    }


def work_dir_stamp(work_dir: Path) -> list:
    """What of the work dir a printed plan shows: the results store and the finished stages."""
    store = str(store_path(work_dir))
    finished = []
    try:
        with os.scandir(stages_dir(work_dir)) as it:
            finished = sorted(e.name for e in it if os.path.isfile(os.path.join(e.path, MARKER_FILE)))
    except OSError:
        pass
    return [file_stamp(store), file_stamp(store + "-wal"), finished]


def _data_stamps(noted: dict[str, bool]) -> dict[str, str]:
    """Each noted path's stamp; a folder inside another walked folder is covered by it."""
    walked = sorted(p for p, deep in noted.items() if deep)
    inside = {p for p in walked if any(p != q and p.startswith(q.rstrip(os.sep) + os.sep) for q in walked)}
    return {
        p: tree_stamp(p) if deep else json.dumps(file_stamp(p)) for p, deep in sorted(noted.items()) if p not in inside
    }


# -- the cache ------------------------------------------------------------------------------
class _Tee:
    """A stream that writes through and remembers what was written, in order across streams."""

    def __init__(self, stream, name: str, chunks: list):
        self._stream, self._name, self._chunks = stream, name, chunks

    def write(self, text: str) -> int:
        self._chunks.append([self._name, text])
        return self._stream.write(text)

    def __getattr__(self, attr):
        return getattr(self._stream, attr)


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == FORMAT else {}


def cached_dry_run(argv: list[str], work_dir: str | Path, plugin_paths, compute: Callable[[], int]) -> int:
    """Replay the stored output of this dry run when nothing it depends on changed; else run
    ``compute`` (the command), record the paths its configs name, and store its output (exit 0)."""
    global _noted

    work = Path(work_dir)
    cache_path = plan_cache_path(work)
    key = hashlib.sha256(
        json.dumps(
            {"argv": list(argv), "code": code_stamp(plugin_paths), "machine": environment_stamp()}, sort_keys=True
        ).encode()
    ).hexdigest()
    cache = _load(cache_path) if cache_path.is_file() else {}
    entry = (cache.get("entries") or {}).get(key)
    if isinstance(entry, dict):
        try:
            fresh = entry["work"] == json.loads(json.dumps(work_dir_stamp(work))) and entry["data"] == _data_stamps(
                {p: bool(d) for p, d in entry["deep"].items()}
            )
        except (KeyError, TypeError, AttributeError):
            fresh = False
        if fresh:
            for name, text in entry["output"]:
                (sys.stdout if name == "out" else sys.stderr).write(text)
            return 0
    chunks: list = []
    saved = sys.stdout, sys.stderr
    _noted = {}
    try:
        sys.stdout, sys.stderr = _Tee(saved[0], "out", chunks), _Tee(saved[1], "err", chunks)
        rc = compute()
    finally:
        sys.stdout, sys.stderr = saved
        noted, _noted = _noted, None
    if rc == 0 and work.is_dir():
        entries = {k: v for k, v in (_load(cache_path).get("entries") or {}).items() if k != key}
        entries[key] = {"deep": noted, "data": _data_stamps(noted), "work": work_dir_stamp(work), "output": chunks}
        while len(entries) > PLAN_CACHE_MAX:  # oldest first (dicts keep insertion order)
            del entries[next(iter(entries))]
        try:
            from umdbench.util import atomic_write_json

            atomic_write_json(cache_path, {"format": FORMAT, "entries": entries})
        except OSError:
            pass  # a read-only work dir plans without the cache
    return rc
