import pytest

# the session's content cache and offline hub settings: the repository's conftest.py

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
