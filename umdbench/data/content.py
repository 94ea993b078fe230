"""Content hashes of data files, each paid once per version of a file.

A dataset's fingerprint enters every stage key, so it must change whenever a byte the dataset reads
changes: a label recoded in a file of the same size, another copy of the data put in the folder's
place. Names and sizes do not see that; the content does. Hashing a 10 GB copy on every planning
would cost minutes, so a file's sha256 is remembered under its identity (absolute path, size,
mtime_ns, inode, ctime_ns): any write, rename-over or copy changes one of them (ctime_ns cannot be
set back by ``touch``), and then the file is hashed again. Facts derived from a file's bytes alone
(a volume's header, its decoded statistics) are remembered under its sha256, so a copy moved to
another folder re-uses them.

Where: one JSON file per data folder under ``$UMDBENCH_CACHE_DIR`` (default
``$XDG_CACHE_HOME/umdbench``, else ``~/.cache/umdbench``), in ``content/``, the :data:`MAX_FOLDERS`
most recently written kept. Dataset plugins compute fingerprints without knowing the run's work
dir, in every process of a run (torchrun ranks, Ray workers), so the cache lives where each of
them finds it. Writes are atomic and merge with what
another process wrote meanwhile; a cache that cannot be read is ignored and one that cannot be
written only costs hashing again (it never changes a result: each entry is checked against the
file's identity before use).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["CACHE_ENV", "cache_root", "ContentCache", "content_cache", "file_identity", "hash_file"]

CACHE_ENV = "UMDBENCH_CACHE_DIR"
FORMAT = 1
MAX_FOLDERS = 256  # cache files kept (one per data folder), newest first
_CHUNK = 1 << 20


def cache_root() -> Path:
    """The folder of umdbench's per-user data cache (see the module doc)."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "umdbench"


def file_identity(path: str | Path) -> list:
    """``[size, mtime_ns, inode, ctime_ns]`` of the file ``path`` names (symlinks followed); raises
    OSError (FileNotFoundError for a missing file or a dangling link)."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def hash_file(path: str | Path) -> str:
    """sha256 of a file's bytes (no cache)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


class ContentCache:
    """sha256 by file identity and facts by sha256 for the files of one data folder (``scope``)."""

    def __init__(self, scope: str | Path, root: Path | None = None):
        self.scope = os.path.abspath(str(scope))
        name = hashlib.sha256(self.scope.encode()).hexdigest()[:24]
        self.path = (root or cache_root()) / "content" / f"{name}.json"
        self.files: dict[str, list] = {}
        self.facts: dict[str, Any] = {}
        self.hashed = 0  # files hashed by this object (the cost the cache saves)
        self._new_files: dict[str, list] = {}
        self._new_facts: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.files, self.facts = self._load()

    # -- public ---------------------------------------------------------------------------------
    def sha256(self, path: str | Path) -> str:
        """The file's sha256, hashed only when its identity is new. Raises OSError like ``open``."""
        apath = os.path.abspath(str(path))
        ident = file_identity(apath)
        entry = self.files.get(apath)
        if entry is not None and entry[:4] == ident:
            return entry[4]
        digest = hash_file(apath)
        if file_identity(apath) != ident:  # written while we read it: hash what is there now, uncached
            return hash_file(apath)
        with self._lock:
            self.hashed += 1
            self.files[apath] = self._new_files[apath] = [*ident, digest]
        return digest

    def fact(self, kind: str, digest: str) -> Any:
        """A fact of kind ``kind`` remembered for the content ``digest``, or None."""
        return self.facts.get(f"{kind}:{digest}")

    def remember(self, kind: str, digest: str, value: Any) -> None:
        with self._lock:
            self.facts[f"{kind}:{digest}"] = self._new_facts[f"{kind}:{digest}"] = value

    def save(self) -> None:
        """Write what this object learnt, merged with the file as it is now; never raises."""
        with self._lock:
            if not self._new_files and not self._new_facts:
                return
            new_files, new_facts = dict(self._new_files), dict(self._new_facts)
            self._new_files.clear()
            self._new_facts.clear()
        try:
            from umdbench.util import atomic_write_text

            files, facts = self._load()
            files.update(new_files)
            facts.update(new_facts)
            is_new = not self.path.is_file()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                self.path,
                json.dumps(
                    {"format": FORMAT, "scope": self.scope, "files": files, "facts": facts}, separators=(",", ":")
                ),
            )
            if is_new:
                _prune(self.path.parent)
        except (OSError, ValueError, TypeError):
            pass  # an unwritable cache costs hashing again, nothing else

    # -- internals ------------------------------------------------------------------------------
    def _load(self) -> tuple[dict, dict]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}, {}
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("scope") != self.scope:
            return {}, {}
        files = data.get("files") if isinstance(data.get("files"), dict) else {}
        facts = data.get("facts") if isinstance(data.get("facts"), dict) else {}
        # an entry of the wrong form is dropped (a damaged or foreign file), never trusted
        files = {k: v for k, v in files.items() if isinstance(v, list) and len(v) == 5 and isinstance(v[4], str)}
        return files, facts


def _prune(folder: Path) -> None:
    """Keep the :data:`MAX_FOLDERS` most recently written cache files (one per data folder): data
    folders come and go (test fixtures, old copies), and a forgotten entry only costs hashing."""
    entries = []
    for entry in os.scandir(folder):
        if entry.name.endswith(".json"):
            try:
                entries.append((entry.stat().st_mtime_ns, entry.path))
            except OSError:
                continue
    for _, path in sorted(entries, reverse=True)[MAX_FOLDERS:]:
        try:
            os.unlink(path)
        except OSError:
            pass


_CACHES: dict[tuple[str, str], ContentCache] = {}
_CACHES_LOCK = threading.Lock()


def content_cache(scope: str | Path) -> ContentCache:
    """The process's :class:`ContentCache` of a data folder (read from disk once per process and
    cache location)."""
    key = (os.path.abspath(str(scope)), str(cache_root()))
    with _CACHES_LOCK:
        if key not in _CACHES:
            _CACHES[key] = ContentCache(scope)
        return _CACHES[key]
