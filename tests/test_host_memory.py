"""The training process's glibc mmap threshold (umdbench.run.host_memory): freed tensor memory
goes back to the kernel instead of staying resident in a fragmented heap."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Frees 2 MiB tensors that sit between small survivors, after one 8 MiB free has (under glibc's
# dynamic rule) raised the threshold so that 2 MiB blocks come from the heap. Prints the threshold
# in force and how much of the freed memory stayed resident.
_PROBE = r"""
import json, torch
from umdbench.run.host_memory import limit_heap_retention
applied = limit_heap_retention()
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
    survivors.append(torch.ones(64))
grown = rss() - before
del blocks
print(json.dumps({"applied": applied, "grown_mib": grown, "kept_mib": rss() - before}))
"""


def _probe(value: str | None) -> dict:
    """Run the probe in a fresh process with ``UMDBENCH_MMAP_THRESHOLD`` unset (None) or set."""
    env = dict(os.environ)
    env.pop("UMDBENCH_MMAP_THRESHOLD", None)
    if value is not None:
        env["UMDBENCH_MMAP_THRESHOLD"] = value
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and /proc are Linux-only")
def test_fixed_threshold_returns_freed_blocks_to_the_kernel():
    fixed = _probe(str(1 << 20))
    assert fixed["applied"] == 1 << 20
    assert fixed["grown_mib"] > 250  # the 300 MiB of blocks were resident
    assert fixed["kept_mib"] < 50  # and left with the blocks
    dynamic = _probe(None)  # the default: glibc's own rule
    assert dynamic["applied"] == 0
    assert _probe("0")["applied"] == 0
    # glibc's own rule keeps the freed blocks resident behind the survivors: what the fix removes
    assert dynamic["kept_mib"] > 250


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_threshold_from_the_environment():
    assert _probe(str(4 << 20))["applied"] == 4 << 20
    assert _probe("not-a-number")["applied"] == 0  # warned, then the default
