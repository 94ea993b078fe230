"""The names of the work dir's top-level entries, in a module that imports nothing, so a dry-run
replay (``umdbench.cli.plancache``) can state them without importing the rest of ``umdbench.run``.
``umdbench.run.workspace.Workspace`` is the one place that builds paths from them."""

import os
from pathlib import Path

STORE_FILE = "results.sqlite"  # one row per finished cell
MARKER_FILE = "artifact.json"  # written last in a stage folder: the stage is finished
STAGES_DIR = "stages"  # one folder per trained stage
PLANNING_CACHE_FILE = "planning-cache.json"  # the data catalog's planning results (umdbench.data.catalog)


def planning_cache_path(work_dir: str | os.PathLike) -> Path:
    """The data catalog's on-disk planning cache (which images of a split are missing)."""
    return Path(work_dir) / PLANNING_CACHE_FILE
