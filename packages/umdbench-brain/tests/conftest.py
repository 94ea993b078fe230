import os
import tempfile

import pytest

# the content cache of data fingerprints: a folder of this test session, not the user's ~/.cache
os.environ.setdefault("UMDBENCH_CACHE_DIR", tempfile.mkdtemp(prefix="umdbench-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# torch runs on one thread in every test (the repository's conftest.py)
_PHANTOMS: dict = {}


@pytest.fixture
def memo_phantoms(monkeypatch):
    """Planning tests generate the same phantom studies over and over (every plan builds its datasets
    afresh and checks every split): within a test worker each study is generated once and handed out
    as a copy, so no test sees another's edits. Only for tests that plan; the generator's own tests
    (test_synth.py) call it directly."""
    import copy

    from umdbench_brain import synth

    make = synth.make_study

    def cached(*args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in _PHANTOMS:
            _PHANTOMS[key] = make(*args, **kwargs)
        return copy.deepcopy(_PHANTOMS[key])

    monkeypatch.setattr(synth, "make_study", cached)
