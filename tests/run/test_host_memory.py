"""The training process's glibc mmap threshold (umdbench.run.host_memory): freed tensor memory
goes back to the kernel instead of staying resident in a fragmented heap."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Frees 2 MiB tensors that sit between small (64 KiB) survivors, after one 8 MiB free has (under glibc's
# dynamic rule) raised the threshold so that 2 MiB blocks come from the heap. Prints the threshold
# in force and how much of the freed memory stayed resident.
_PROBE = r"""
import json, sys
from umdbench.run.host_memory import limit_heap_retention
applied = limit_heap_retention()
if sys.argv[1:] != ["measure"]:  # the threshold in force is all that is asked: no torch to import
    print(json.dumps({"applied": applied}))
    raise SystemExit
import torch
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
big = torch.ones(2 * 1024 * 1024)
del big
before = rss()
blocks, survivors = [], []
for _ in range(150):
    blocks.append(torch.ones(512 * 1024))  # 2 MiB
    survivors.append(torch.ones(16 * 1024))  # 64 KiB: too big for any free fragment imports left
grown = rss() - before
del blocks
print(json.dumps({"applied": applied, "grown_mib": grown, "kept_mib": rss() - before}))
"""


def _probe(value: str | None, measure: bool = False) -> dict:
    """Run the probe in a fresh process with ``UMDBENCH_MMAP_THRESHOLD`` unset (None) or set; with
    ``measure``, the tensor work and the resident memory too."""
    env = dict(os.environ)
    env.pop("UMDBENCH_MMAP_THRESHOLD", None)
    if value is not None:
        env["UMDBENCH_MMAP_THRESHOLD"] = value
    argv = [sys.executable, "-c", _PROBE] + (["measure"] if measure else [])
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and /proc are Linux-only")
def test_fixed_threshold_returns_freed_blocks_to_the_kernel():
    fixed = _probe(str(1 << 20), measure=True)
    assert fixed["applied"] == 1 << 20
    assert fixed["grown_mib"] > 250  # the 300 MiB of blocks were resident
    assert fixed["kept_mib"] < 50  # and left with the blocks
    dynamic = _probe(None, measure=True)  # the default: glibc's own rule
    assert dynamic["applied"] == 0
    assert _probe("0")["applied"] == 0
    # glibc's own rule keeps the freed blocks resident behind the survivors: what the fix removes
    assert dynamic["kept_mib"] > 250


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_threshold_from_the_environment():
    assert _probe(str(4 << 20))["applied"] == 4 << 20
    assert _probe("not-a-number")["applied"] == 0  # warned, then the default


# --- the allocator -------------------------------------------------------------------------------
from umdbench.errors import UmdbenchError  # noqa: E402
from umdbench.run.host_memory import MIMALLOC_OPTIONS, allocator_env, mimalloc_library  # noqa: E402

needs_mimalloc = pytest.mark.skipif(mimalloc_library() is None, reason="the cmeel-mimalloc wheel is not installed")

# re-executes itself on the chosen allocator, then does real tensor work on it
_REEXEC = r"""
import json, os, torch
from umdbench.run.host_memory import active_allocator, reexec_on_allocator
print("started", os.getpid(), flush=True)
reexec_on_allocator()
x = torch.arange(1_000_000, dtype=torch.float64).reshape(1000, 1000)
print(json.dumps({"allocator": active_allocator(), "pid": os.getpid(), "sum": float((x @ x).trace()),
                  "purge": os.environ.get("MIMALLOC_PURGE_DELAY")}))
"""


def _reexec(choice: str | None) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UMDBENCH_ALLOCATOR", "MIMALLOC_"))}
    env.pop("LD_PRELOAD", None)
    if choice is not None:
        env["UMDBENCH_ALLOCATOR"] = choice
    out = subprocess.run([sys.executable, "-c", _REEXEC], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    return [line for line in lines if line.startswith("started")], json.loads(lines[-1])


@needs_mimalloc
def test_a_training_process_restarts_itself_on_mimalloc():
    starts, result = _reexec(None)  # auto: mimalloc where installed
    assert result["allocator"] == "mimalloc"
    assert len(starts) == 2  # ran once on glibc, was re-executed once (no loop)
    assert starts[0].split()[1] == starts[1].split()[1] == str(result["pid"])  # exec: same process
    assert result["purge"] == MIMALLOC_OPTIONS["MIMALLOC_PURGE_DELAY"]
    starts_sys, on_system = _reexec("system")
    assert on_system["allocator"] == "system" and len(starts_sys) == 1
    assert on_system["sum"] == result["sum"]  # where the bytes live changes nothing computed


def test_allocator_choice_is_checked():
    assert allocator_env({"UMDBENCH_ALLOCATOR": "system"}) == {}
    with pytest.raises(UmdbenchError, match="UMDBENCH_ALLOCATOR='tcmalloc'.*'auto'.*'system'"):
        allocator_env({"UMDBENCH_ALLOCATOR": "tcmalloc"})


def test_mimalloc_asked_for_but_not_installed(monkeypatch):
    import umdbench.run.host_memory as hm

    monkeypatch.setattr(hm, "mimalloc_library", lambda: None)
    assert hm.allocator_env({}) == {}  # auto: the system's, silently
    with pytest.raises(UmdbenchError, match="pip install cmeel-mimalloc"):
        hm.allocator_env({"UMDBENCH_ALLOCATOR": "mimalloc"})


@needs_mimalloc
def test_preload_keeps_what_was_preloaded_and_user_options():
    env = allocator_env({"LD_PRELOAD": "/opt/other.so", "MIMALLOC_PURGE_DELAY": "0"})
    assert env["LD_PRELOAD"].split() == [str(mimalloc_library()), "/opt/other.so"]
    assert env["MIMALLOC_PURGE_DELAY"] == "0" and env["MIMALLOC_ARENA_EAGER_COMMIT"] == "0"
