"""How the training process asks glibc for host memory (Linux only).

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
import logging
import os

__all__ = ["DEFAULT_THRESHOLD", "THRESHOLD_ENV", "limit_heap_retention"]

log = logging.getLogger(__name__)

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
