import os
import tempfile

import pytest

# the content cache of data fingerprints: a folder of this test session, not the user's ~/.cache
os.environ.setdefault("UMDBENCH_CACHE_DIR", tempfile.mkdtemp(prefix="umdbench-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_thread_per_test():
    """The CI box has two shared cores; keep torch to one thread (as the core suite does)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
