"""A sweep through --executor ray on a local Ray: stages as dependent tasks, rows by the driver.

One CPU, so one Ray worker process: each worker imports the training stack (~7 CPU-s) outside the
test's own accounting, and running two tasks at once is covered by the two-node cluster test
(tests/e2e/test_multinode.py), whose stages train on both nodes."""

import pytest

from tests.support import TINY, umdbench, umdbench_here, write_plugin
from umdbench.results.store import ResultsStore
from umdbench.run.host_memory import mimalloc_library

pytestmark = pytest.mark.serial  # a local Ray

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_sweep_on_local_ray(tmp_path):
    plugin, work = write_plugin(tmp_path), tmp_path / "work"
    argv = [
        "sweep",
        "--suite",
        "mini",
        "--plugin-path",
        str(plugin),
        "--work-dir",
        str(work),
        "--executor",
        "ray",
        "--ray-num-cpus",
        "1",
        "--cfg-options",
        *TINY,
    ]
    result = umdbench(argv, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "ray: 4 training stages and 3 evaluations to run, 1 at a time, earliest cell first" in result.stdout
    rows = ResultsStore(work / "results.sqlite").rows(suite="mini")
    assert sorted(r["cell_name"] for r in rows) == ["1 none", "2 mr", "4 mr+gm"]
    assert all(r["seed"] == 0 and r["device"] and r["git_commit"] and "overall" in r["metrics"] for r in rows)
    # the workers were started on the training allocator (the driver, which only plans, was not)
    allocator = "mimalloc allocator" if mimalloc_library() else "system allocator"
    assert all(allocator in r["device"] for r in rows), [r["device"] for r in rows]
    # the one MR pre-training was trained once and reused by both cells that need it
    assert len(list((work / "stages").glob("pretrain-mr-*/artifact.json"))) == 1
    assert {m.status for m in ResultsStore(work / "results.sqlite").membership("mini")} == {"done"}
    # each run's config is on disk, and the rows' compute adds up to the trained stages (each once)
    # plus the evaluations, not the time spent queueing
    assert all((work / "runs" / r["cell_key"][:16] / "config.json").is_file() for r in rows)
    import json

    trained = sum(json.loads(p.read_text())["wall_time_s"] for p in (work / "stages").glob("*/artifact.json"))
    total = sum(r["wall_time_s"] for r in rows)
    assert trained < total < trained + 120
    # a second sweep finds everything finished and does not start Ray (so it can run in this process)
    again = umdbench_here(argv)
    assert again.returncode == 0 and "nothing to run" in again.stdout, again.stdout + again.stderr
    assert not ray.is_initialized()
