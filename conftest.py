"""How the test session is spread over pytest-xdist workers (``python -m pytest -n 2``, ``--dist loadgroup``
in pyproject's addopts), for the core's tests and the brain package's alike.

- A test marked ``serial`` (several processes, torchrun, a Ray cluster, a fixed port, or a bound on its
  own wall time) joins the group ``serial``: those run one after another on one worker, never two at once.
- The tests of a module that share a module-scoped fixture (a trained stage, a sweep, an installed
  package) stay on one worker, so the fixture is built once, not once per worker.
- torch computes on one thread in every worker from the start of the session: two workers share
  two cores, and module-scoped fixtures are built before any per-test fixture could set it (at
  torch's default of one thread per core, the two workers' OpenMP threads spun against each other
  and the world-size equivalence fixtures took three times the CPU).

Without ``-n`` nothing changes: the groups only steer xdist's scheduler.

The world-size equivalence cases of the core and of the brain package train in one torchrun job
(``equivalence_reports``), built for the cases of the test modules the session collected.

Each test must also leave the process as it found it: no torch dispatch mode or global module hook
left on (a test that does fails), and no ``--plugin-path`` plugins left loaded (they are dropped).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile

import pytest

if "UMDBENCH_CACHE_DIR" not in os.environ:
    # the content cache of data fingerprints: one folder for the session (its xdist workers and the
    # processes its tests start inherit it), not the user's ~/.cache, removed when the session ends
    _CACHE_DIR = tempfile.mkdtemp(prefix="umdbench-test-cache-")
    os.environ["UMDBENCH_CACHE_DIR"] = _CACHE_DIR
    atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _group(item: pytest.Item) -> str | None:
    """The xdist group a test runs in (None: any worker, alone)."""
    names = sorted(
        {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    )
    if names:  # a group the test names itself
        return "_".join(names)
    if item.get_closest_marker("serial"):
        return "serial"
    info = getattr(item, "_fixtureinfo", None)
    if info is not None and any(d and d[-1].scope == "module" for d in info.name2fixturedefs.values()):
        return item.nodeid.split("::")[0]
    return None


@contextlib.contextmanager
def _torch_on_one_thread():
    try:
        import torch
    except ImportError:  # the hermetic subset runs without it
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_for_the_session():
    with _torch_on_one_thread():
        yield


@pytest.fixture(autouse=True)
def _one_torch_thread_per_test():
    """Again around each test: one that sets its own thread count leaves the next at one."""
    with _torch_on_one_thread():
        yield


def torch_modes_left_on() -> list[str]:
    """Dispatch modes (e.g. a FLOP counter) and global module hooks still installed in this process:
    a run that raised must not leave them, or every later torch call of the process pays for them."""
    if "torch" not in sys.modules:
        return []
    import torch.nn.modules.module as module
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    left = [type(mode).__name__ for mode in _get_current_dispatch_mode_stack()]
    for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if getattr(module, name, None):
            left.append(f"torch.nn.modules.module.{name}")
    return left


@pytest.fixture(autouse=True)
def _no_torch_mode_left_on():
    """Fails the test that leaves a torch mode or global hook on (it slowed later tests of the
    worker up to eightfold before a stage that raised left torch's FLOP counter on)."""
    yield
    left = torch_modes_left_on()
    if left:
        from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

        for mode in reversed(_get_current_dispatch_mode_stack()):  # the next test starts clean
            mode.__exit__(None, None, None)
        pytest.fail(f"the test left torch modes or global hooks on: {left}")


@pytest.fixture(scope="session")
def install_package():
    """``install_package(source, tmp)``: a package folder installed into a site of its own, with a
    CLI run in the test process on it (``tests.support.install_package``), for the brain package's
    tests as for the core's."""
    from tests.support import install_package

    return install_package


@pytest.fixture(scope="session")
def equivalence_reports(request):
    """World-size equivalence reports (``umdbench.run.equivalence.compare``) of every case that the
    session's collected test modules declare in a module-level ``EQUIVALENCE_CASES = {factory:
    steps}`` (the core's strategies and the brain package's), from one torchrun job: a job costs a
    launcher and two worker start-ups (~12 CPU-s) before it trains anything. Those modules are
    ``serial``, so one worker builds this once."""
    from umdbench.run.equivalence import compare

    cases: dict[str, int] = {}
    for module in dict.fromkeys(getattr(item, "module", None) for item in request.session.items):
        cases.update(getattr(module, "EQUIVALENCE_CASES", None) or {})
    return compare(cases)


@pytest.fixture(autouse=True)
def _no_plugin_path_left_loaded():
    """A test that ran a command with ``--plugin-path`` leaves the process-wide registries holding that
    file's plugins (a command keeps what it loaded); the next test on the worker must see the
    installed plugins only, not a note about another test's broken file."""
    yield
    loading = sys.modules.get("umdbench.plugin.loading")
    loaded = getattr(loading, "_LOADED", None)
    if loaded is not None and any(p.source.startswith("path ") for p in loaded[1].plugins):
        loading._LOADED = None


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the groups into scheduling scopes
def pytest_collection_modifyitems(config, items):
    # xdist puts a test in its group's scope by appending "@group" to the node id it reports; with
    # pytest >= 9.2 (structured node ids) xdist 3.8 writes a field pytest no longer reads, and the
    # groups are silently lost (pytest-dev/pytest-xdist#1386): the id is extended here, where pytest reads it
    fix_ids = hasattr(config, "workerinput") and bool(config.getvalue("loadgroup"))  # in an xdist worker only
    for item in items:
        group = _group(item)
        if group is None:
            continue
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))
        if fix_ids and hasattr(item, "_id") and not item.nodeid.endswith(f"@{group}"):
            from _pytest.nodeid import coerce_node_id

            item._id = coerce_node_id(f"{item.nodeid}@{group}")
