import os
import tempfile
from pathlib import Path

import pytest

# the content cache of data fingerprints: a folder of this test session, not the user's ~/.cache
os.environ.setdefault("UMDBENCH_CACHE_DIR", tempfile.mkdtemp(prefix="umdbench-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("UMDBENCH_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS} (set UMDBENCH_SHARED_DATASETS)")
    return SHARED_DATASETS
