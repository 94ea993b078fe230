"""Several nodes: torchrun over two launchers on the loopback interface, a Ray cluster of two nodes on
this machine, and the check that every node sees the work dir at node 0's path."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from tests.support import REPO, TINY
from umdbench.errors import ConfigError
from umdbench.results.store import ResultsStore
from umdbench.run.distributed import NODE_RANK_ENV, Launch, order_ranks_by_node
from umdbench.run.nodes import TOKEN_PREFIX, NodeError, check_ray_nodes, look, node_group, write_checks

pytestmark = pytest.mark.serial  # torchrun over two launchers, a two-node Ray cluster, loopback ports

# one training stage (direct on medsynth), two iterations of a global batch of 4
ONE_STAGE = [o for o in TINY if not o.startswith(("pretrain.", "tune.*"))] + [
    "tune.0.train.max_iters=2",
    "tune.0.train.batch_size=4",
]
RUN = ["run", "--pretrain", "none", "--tune", "direct", "--dataset", "medsynth"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# options and the rank order
# ---------------------------------------------------------------------------------------------
def test_launch_options_become_torchrun_options():
    one = Launch(nproc_per_node=2).torchrun_args("job")
    assert one[0] == "--standalone" and "--nproc-per-node=2" in one
    many = Launch(2, 3, 1, "node0:29400").torchrun_args("umdbench-abc-0")
    assert "--standalone" not in many
    for option in (
        "--nnodes=3",
        "--nproc-per-node=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=node0:29400",
        "--rdzv-id=umdbench-abc-0",
        "--max-restarts=0",
        "--rdzv-conf=is_host=false",
    ):
        assert option in many
    assert Launch(2, 3, 1, "node0:29400").world_size == 6
    for bad in (
        dict(nnodes=2),
        dict(nnodes=2, node_rank=2, rdzv_endpoint="h:1"),
        dict(node_rank=1),
        dict(rdzv_endpoint="h:1"),
        dict(nnodes=2, rdzv_endpoint="no-port"),
        dict(nproc_per_node=0),
    ):
        with pytest.raises(ConfigError):
            Launch(**bad)


def test_ranks_are_numbered_node_by_node(monkeypatch):
    """c10d orders nodes by host name and pid; node 0 must hold rank 0 (it writes the artifact)."""
    monkeypatch.setenv(NODE_RANK_ENV, "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    order_ranks_by_node()
    assert os.environ["RANK"] == "3" and os.environ["GROUP_RANK"] == "1"


# ---------------------------------------------------------------------------------------------
# who sees what
# ---------------------------------------------------------------------------------------------
def test_look_names_what_a_node_does_not_see(tmp_path):
    work, other = tmp_path / "work", tmp_path / "other"
    work.mkdir(), other.mkdir()
    plugin = tmp_path / "plugin.py"
    plugin.write_text("x = 1\n")
    checks = write_checks([("work dir", work), ("data root", None), ("plugin file", plugin)])
    assert [c.label for c in checks] == ["work dir", "plugin file"] and len(list(work.glob(f"{TOKEN_PREFIX}*"))) == 1
    assert look(checks, {"work dir": str(work.resolve())}) == []
    assert look(checks, {"work dir": str(other)}) == [f"was given the work dir {other}, not node 0's {work.resolve()}"]
    next(work.glob(f"{TOKEN_PREFIX}*")).unlink()  # a node that mounts another folder at the same path
    plugin.write_text("x = 2\n")
    problems = look(checks)
    assert problems[0].startswith(f"sees another folder at {work.resolve()} (the work dir)")
    assert problems[1] == f"sees other contents at {plugin.resolve()} (the plugin file)"


def _group_of_two(endpoint: str, paths0: list, paths1: list) -> tuple[dict, Exception | None]:
    """Node 1 in a thread, node 0 here: the path check, one job, the end. Returns what node 1 read
    and node 0's error."""
    seen: dict = {}

    def node1():
        try:
            with node_group(Launch(1, 2, 1, endpoint), paths1) as group:
                seen["jobs"] = [group.next_job(), group.next_job()]
        except NodeError as exc:
            seen["error"] = exc

    thread = threading.Thread(target=node1)
    thread.start()
    error = None
    try:
        with node_group(Launch(1, 2, 0, endpoint), paths0) as group:
            group.announce({"stage": "direct", "key": "k" * 64})
    except NodeError as exc:
        error = exc
    thread.join(60)
    return seen, error


def test_node_group_checks_paths_then_hands_out_jobs(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    seen, error = _group_of_two(f"127.0.0.1:{free_port()}", [("work dir", work)], [("work dir", work)])
    assert error is None and "error" not in seen
    assert seen["jobs"] == [{"stage": "direct", "key": "k" * 64}, None]
    assert not list(work.glob(f"{TOKEN_PREFIX}*"))  # node 0 removed its check file


def test_node_group_stops_every_node_when_one_sees_another_work_dir(tmp_path):
    work, other = tmp_path / "work", tmp_path / "other"
    work.mkdir(), other.mkdir()
    seen, error = _group_of_two(f"127.0.0.1:{free_port()}", [("work dir", work)], [("work dir", other)])
    assert isinstance(error, NodeError) and str(error) == str(seen["error"]) and "jobs" not in seen
    message = str(error)
    assert "\n" not in message and message.startswith(f"node 1 (host {socket.gethostname()}) was given the work dir")
    assert str(other) in message and "mount the shared file system at the same path on every node" in message


class FakeRay:
    """Just enough of Ray for check_ray_nodes: two alive nodes (and a dead one), each task run here;
    on node ``blind`` the work dir is not where the driver put it."""

    def __init__(self, blind: str, work: Path):
        self.blind, self.work = blind, work

    def nodes(self):
        return [
            {"NodeID": "a" * 56, "Alive": True, "NodeManagerHostname": "head"},
            {"NodeID": "b" * 56, "Alive": True, "NodeManagerHostname": "worker-2"},
            {"NodeID": "c" * 56, "Alive": False, "NodeManagerHostname": "gone"},
        ]

    def remote(self, **_options):
        return lambda fn: _FakeTask(self, fn, None)

    def get(self, ref, timeout=None):
        return ref


class _FakeTask:
    def __init__(self, ray, fn, node):
        self.ray, self.fn, self.node = ray, fn, node

    def options(self, scheduling_strategy):
        return _FakeTask(self.ray, self.fn, scheduling_strategy.node_id)

    def remote(self, *args):
        if self.node != self.ray.blind:
            return self.fn(*args)
        away = self.ray.work.with_name("elsewhere")
        self.ray.work.rename(away)  # this node has nothing mounted at the driver's path
        try:
            return self.fn(*args)
        finally:
            away.rename(self.ray.work)


def test_ray_check_names_the_node_that_cannot_see_the_work_dir(tmp_path):
    pytest.importorskip("ray")
    work = (tmp_path / "work").resolve()
    work.mkdir()
    assert check_ray_nodes(FakeRay("none", work), [("work dir", work)]) == 2
    with pytest.raises(NodeError) as caught:
        check_ray_nodes(FakeRay("b" * 56, work), [("work dir", work), ("data root", None)])
    message = str(caught.value)
    assert "\n" not in message and message.startswith(
        f"Ray node bbbbbbbbbbbb (host {socket.gethostname()}) has no folder at {work} (the work dir)."
    )
    assert "aaaaaaaaaaaa" not in message and "mount the shared file system at the same path" in message
    assert not list(work.glob(f"{TOKEN_PREFIX}*"))


# ---------------------------------------------------------------------------------------------
# two torchrun nodes on the loopback interface, each a `umdbench run` of its own
# ---------------------------------------------------------------------------------------------
def _two_nodes(tmp_path: Path, work1: Path | None = None, timeout: float = 900) -> list[tuple[int, str, str]]:
    """The same `umdbench run` as node 0 and node 1; (exit status, stdout, stderr) of each."""
    work = tmp_path / "work"
    endpoint = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    procs, logs = [], []
    for rank, folder in enumerate([work, work1 or work]):
        out = open(tmp_path / f"node{rank}.out", "w+")
        err = open(tmp_path / f"node{rank}.err", "w+")
        argv = [
            *RUN,
            "--work-dir",
            str(folder),
            "--nnodes",
            "2",
            "--node-rank",
            str(rank),
            "--rdzv-endpoint",
            endpoint,
            "--cfg-options",
            *ONE_STAGE,
        ]
        procs.append(
            subprocess.Popen([sys.executable, "-m", "umdbench.cli", *argv], stdout=out, stderr=err, env=env, cwd=REPO)
        )
        logs.append((out, err))
    results = []
    try:
        for proc, (out, err) in zip(procs, logs):
            proc.wait(timeout=timeout)
            out.seek(0), err.seek(0)
            results.append((proc.returncode, out.read(), err.read()))
    finally:
        for proc, (out, err) in zip(procs, logs):
            if proc.poll() is None:
                proc.kill()
            out.close(), err.close()
    return results


@pytest.mark.slow
def test_two_node_torchrun_run(tmp_path):
    (rc0, out0, err0), (rc1, out1, err1) = _two_nodes(tmp_path)
    assert rc0 == 0 and rc1 == 0, out0[-3000:] + err0[-3000:] + out1[-3000:] + err1[-3000:]
    work = tmp_path / "work"
    markers = list((work / "stages").glob("*/artifact.json"))
    assert len(markers) == 1 and json.loads(markers[0].read_text())["world_size"] == 2
    rows = ResultsStore(work / "results.sqlite").rows()
    assert len(rows) == 1 and "overall" in rows[0]["metrics"]
    assert "torchrun with 1 processes on each of 2 nodes" in out0 and "result: " in out0
    # node 1 joined node 0's one job, holding the second rank; rank 0 (the artifact's writer) ran on node 0
    assert "node 1: joined 1 training stage(s)" in out1 and "[rank 1]" in out1 and "[rank 0]" not in out1
    assert "[rank 0]" in out0 and not list(work.glob(f"{TOKEN_PREFIX}*"))
    # again: node 0 finds the result stored, so no node trains and no row is added
    (rc0, out0, err0), (rc1, out1, _) = _two_nodes(tmp_path)
    assert rc0 == 0 and rc1 == 0, out0[-3000:] + err0[-3000:]
    assert "result already in the store" in out0 and "node 1: joined 0 training stage(s)" in out1
    assert len(ResultsStore(work / "results.sqlite").rows()) == 1


@pytest.mark.slow
def test_node_that_sees_another_work_dir_stops_the_run_before_training(tmp_path):
    other = tmp_path / "other"
    results = _two_nodes(tmp_path, work1=other, timeout=600)
    for rank, (rc, out, err) in enumerate(results):
        assert rc == 2, f"node {rank}: {out[-2000:]}{err[-2000:]}"
        errors = [line for line in err.splitlines() if line.startswith("umdbench: error:")]
        assert len(errors) == 1, err[-3000:]
        assert f"node 1 (host {socket.gethostname()}) was given the work dir {other.resolve()}" in errors[0]
        assert "mount the shared file system at the same path on every node" in errors[0]
        assert "torchrun" not in out and "training" not in out
    for folder in (tmp_path / "work", other):
        assert not list(folder.glob("stages/*/artifact.json")) and not list(folder.glob(f"{TOKEN_PREFIX}*"))


# ---------------------------------------------------------------------------------------------
# a Ray cluster of two nodes on this machine
# ---------------------------------------------------------------------------------------------
TWO_ROWS = """
from umdbench.hookspecs import hookimpl

@hookimpl
def umdbench_register(registries):
    registries.suite.register("two-nodes", {
        "title": "two cells on medsynth", "datasets": ["medsynth"], "metrics": ["overall"],
        "rows": [{"name": "none", "pretrain": "none", "tune": "direct"},
                 {"name": "mr", "pretrain": "mr", "tune": "direct"}]})
"""


# The cluster lives in a process of its own: ray.cluster_utils leaves gRPC threads in the process
# that made it, and a later test that forks (a multiprocessing pool) would inherit their locks held.
CLUSTER_SCRIPT = textwrap.dedent("""
    import json, subprocess, sys
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        second = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        argv = json.loads(sys.argv[1])
        proc = subprocess.run(argv[:-1] + ["--ray-address", cluster.address] + argv[-1], capture_output=True,
                              text=True, timeout=900)
        nodes = [cluster.head_node.node_id[:12], second.node_id[:12]]
    finally:
        cluster.shutdown()
    print(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "nodes": nodes}))
""")


@pytest.mark.slow
def test_sweep_on_a_two_node_ray_cluster(tmp_path):
    pytest.importorskip("ray")
    from types import SimpleNamespace

    # a private Ray temp dir: the cluster's address file must not draw other local `ray.init()`s into it
    ray_tmp = tempfile.mkdtemp(prefix="umdray-", dir="/tmp")
    plugin = tmp_path / "two_nodes_plugin.py"
    plugin.write_text(TWO_ROWS)
    work = tmp_path / "work"
    sweep = [
        sys.executable,
        "-m",
        "umdbench.cli",
        "sweep",
        "--suite",
        "two-nodes",
        "--plugin-path",
        str(plugin),
        "--work-dir",
        str(work),
        "--executor",
        "ray",
        ["--cfg-options", *TINY],
    ]
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CLUSTER_SCRIPT, json.dumps(sweep)],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=1200,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    result = SimpleNamespace(**report)
    nodes = set(report["nodes"])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "ray: all 2 nodes see the work dir at the driver's paths" in result.stdout
    trained_on = re.findall(r"^ray: trained .+ on node (\w+) ", result.stdout, flags=re.M)
    assert len(trained_on) == 3 and set(trained_on) == nodes, result.stdout[-4000:]
    rows = ResultsStore(work / "results.sqlite").rows(suite="two-nodes")
    assert sorted(r["cell_name"] for r in rows) == ["mr", "none"]
    assert not list(work.glob(f"{TOKEN_PREFIX}*"))
