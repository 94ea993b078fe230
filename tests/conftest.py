import os
from pathlib import Path

import pytest

# the session's content cache and offline hub settings: the repository's conftest.py

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("UMDBENCH_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS} (set UMDBENCH_SHARED_DATASETS)")
    return SHARED_DATASETS
