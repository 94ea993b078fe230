"""Where a result came from: code version, packages, device."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

PACKAGES = (
    "umdbench",
    "torch",
    "torchvision",
    "onedl-mmengine",
    "transformers",
    "timm",
    "torchmetrics",
    "numpy",
    "pillow",
    "cmeel-mimalloc",
)


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the umdbench checkout, with '-dirty' when it has uncommitted changes."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git unavailable)"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def active_allocator() -> str:
    """``mimalloc`` when it is mapped into this process (``umdbench.run.host_memory``), else ``system``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "mimalloc" if "libmimalloc" in maps else "system"


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return (
        f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"{active_allocator()} allocator"
    )
