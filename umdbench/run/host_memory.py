"""How the training process gets host memory (Linux only): which allocator, and glibc's heap rule.

**The allocator.** A training process runs on mimalloc where the ``cmeel-mimalloc`` wheel is
installed (a Linux x86-64 dependency of umdbench), configured to return freed pages to the kernel
instead of keeping them: ``MIMALLOC_ARENA_EAGER_COMMIT=0`` (an arena's memory is committed as it
is used, not all at once) and a 500 ms purge delay (freed pages go back that long after their last
use, so a step's activations are returned between steps but not re-faulted within one). At the
paper preset this took the MR step's peak RSS from 8.44-8.71 to 8.05-8.12 GiB, and the step from
7.0 to 6.2 s (BENCHMARKS.md); a 0-10 ms delay gave 7.9 GiB at 1.4-2x the step time, 1 s 8.24 GiB.
An allocator must be in place before the interpreter starts, so :func:`reexec_on_allocator`
re-executes the process (same argv) with ``LD_PRELOAD`` set, and :func:`allocator_env` gives the
variables to start a child process (a Ray worker, a benchmark case) on it. ``UMDBENCH_ALLOCATOR``
chooses: ``auto`` (default; mimalloc where installed, else the system's), ``mimalloc`` (an error
where it is not installed) or ``system``. Numerics are unchanged; only where the bytes live.
:func:`active_allocator` says which one this process runs on (recorded with each stage's device).

**glibc's heap rule** (the system allocator).

glibc serves allocations below a threshold from its heap and larger ones with ``mmap``. The
threshold starts at 128 KiB and is *raised* every time an mmapped block is freed, up to 32 MiB, so
after the first step nearly every activation, gradient and autocast weight copy of a CPU step lands
in the heap. Freed heap pages stay resident and fragment: at the paper preset the MR step's peak
RSS carries ~0.8 GiB that no tensor holds. A fixed threshold turns the dynamic raise off: large
blocks are mmapped and returned to the kernel the moment they are freed.

That is a trade, so it is opt-in: every large allocation then page-faults afresh, which on the
2-core box made the paper MR step 1.5-2x slower for 0.8 GiB less peak RSS. Set
``UMDBENCH_MMAP_THRESHOLD`` (bytes, e.g. ``1048576``) where memory is the limit; unset or ``0``
leaves glibc's behaviour. Numerics are unchanged; only where the bytes live.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata as md
import logging
import os
import sys
from pathlib import Path

from umdbench.errors import UmdbenchError
from umdbench.results.provenance import active_allocator  # a provenance fact; re-exported here

__all__ = [
    "ALLOCATOR_ENV",
    "DEFAULT_THRESHOLD",
    "MIMALLOC_OPTIONS",
    "THRESHOLD_ENV",
    "active_allocator",
    "allocator_env",
    "limit_heap_retention",
    "mimalloc_library",
    "reexec_on_allocator",
]

log = logging.getLogger(__name__)

ALLOCATOR_ENV = "UMDBENCH_ALLOCATOR"
#: mimalloc's options for a training process (see the module doc for the measurements)
MIMALLOC_OPTIONS = {"MIMALLOC_ARENA_EAGER_COMMIT": "0", "MIMALLOC_PURGE_DELAY": "500"}
_REEXEC_GUARD = "UMDBENCH_ALLOCATOR_REEXEC"  # set on the re-executed process: never loop
THRESHOLD_ENV = "UMDBENCH_MMAP_THRESHOLD"
DEFAULT_THRESHOLD = 0  # glibc's own rule; 1 << 20 (1 MiB) catches every activation/weight-sized tensor
_M_MMAP_THRESHOLD = -3  # <malloc.h>
_applied: int | None = None


def limit_heap_retention() -> int:
    """Fix glibc's mmap threshold for this process (once). Returns the threshold in force
    (0 when left to glibc: unset or ``0``, not Linux, or no glibc)."""
    global _applied
    if _applied is not None:
        return _applied
    raw = os.environ.get(THRESHOLD_ENV, "").strip()
    try:
        threshold = int(raw) if raw else DEFAULT_THRESHOLD
    except ValueError:
        log.warning("%s=%r is not a number of bytes; using %d", THRESHOLD_ENV, raw, DEFAULT_THRESHOLD)
        threshold = DEFAULT_THRESHOLD
    _applied = 0
    if threshold <= 0 or not os.uname().sysname == "Linux":
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt, nothing to tune
        return _applied
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1:
        _applied = int(threshold)
    return _applied


def mimalloc_library() -> Path | None:
    """``libmimalloc.so`` of the installed ``cmeel-mimalloc`` wheel, or None (not installed / not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        files = md.files("cmeel-mimalloc") or []
    except md.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "libmimalloc.so":
            path = Path(f.locate()).resolve()
            if path.is_file():
                return path
    return None


def _choice(environ) -> str:
    choice = environ.get(ALLOCATOR_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "mimalloc", "system"):
        raise UmdbenchError(
            f"{ALLOCATOR_ENV}={environ.get(ALLOCATOR_ENV)!r} is not an allocator umdbench knows. "
            "Set it to 'auto' (mimalloc where installed), 'mimalloc' or 'system', or unset it."
        )
    return choice


def allocator_env(environ=None) -> dict[str, str]:
    """Variables that start a process on the chosen allocator (empty for the system's)."""
    environ = os.environ if environ is None else environ
    choice = _choice(environ)
    if choice == "system":
        return {}
    lib = mimalloc_library()
    if lib is None:
        if choice == "mimalloc":
            raise UmdbenchError(
                f"{ALLOCATOR_ENV}=mimalloc, but the cmeel-mimalloc wheel is not installed in this "
                "environment (it ships libmimalloc.so for Linux x86-64). Install it with "
                "`pip install cmeel-mimalloc`, or set UMDBENCH_ALLOCATOR=system."
            )
        return {}
    preload = " ".join(p for p in (str(lib), environ.get("LD_PRELOAD", "")) if p)
    return {"LD_PRELOAD": preload, **{k: environ.get(k, v) for k, v in MIMALLOC_OPTIONS.items()}}


def reexec_on_allocator() -> None:
    """Re-execute this process (``sys.orig_argv``) on the chosen allocator, unless it already runs
    on it or was already re-executed once. Call it first thing in a process that trains: nothing
    done before it survives. Returns only when no re-execution is needed (or possible)."""
    env = allocator_env()
    if not env or active_allocator() == "mimalloc" or os.environ.get(_REEXEC_GUARD):
        return
    argv = list(getattr(sys, "orig_argv", []) or [sys.executable, *sys.argv])
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], {**os.environ, **env, _REEXEC_GUARD: "1"})
    except OSError as exc:  # the process goes on, on the system allocator
        log.warning("could not restart on mimalloc (%s); using the system allocator", exc)
