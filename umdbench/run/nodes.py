"""Several nodes, one work dir: the check that every node sees the shared paths as node 0 (or the Ray
driver) does, and the channel over which node 0 leads a multi-node torchrun run.

Every process of a run reads and writes by absolute path: a stage's torchrun request names the
work dir, the datasets and the plugin files as node 0 resolved them, and Ray tasks get the
driver's. A node that mounts the shared file system elsewhere, or not at all, would train on
another copy or fail half-way through a sweep; the check stops the run before anything trains.
Node 0 writes a file of random content into each shared folder and every node reads it back (a
read-only data root and each plugin file are compared by a signature instead).

A multi-node torchrun run is the same ``umdbench run``/``sweep`` command on every node with its
own ``--node-rank``. Node 0 plans, takes the stage locks, trains each stage not yet cached as one
torchrun job over all nodes, evaluates and stores the rows. A node k > 0 joins each job node 0
announces, in node 0's order, and does nothing else: it never takes a lock (node 0 holds it while
its torchrun waits for the others) and never writes a row, so a cached stage is skipped on every
node alike because node 0 alone decides. Node 0 hosts a TCP store on ``--rdzv-endpoint`` for the
whole run: it carries the path check and the job list, and every job's c10d rendezvous runs on it
under the job's own id.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterable, Iterator

from umdbench.errors import UmdbenchError

TOKEN_PREFIX = ".umdbench-node-check-"
JOIN_TIMEOUT_S = 900.0  # how long node 0 waits for the other nodes to start, and they for node 0
ACK_TIMEOUT_S = 30.0  # how long node 0 keeps its store up for the others to read how the run ended
POLL_S = 0.5
SAME_PATH_FIX = (
    "Every node reads and writes the work dir (stages, requests, logs), the datasets and the plugin "
    "files by the paths node 0 uses: mount the shared file system at the same path on every node, "
    "start the same command on each (same --work-dir, --data-root and --plugin-path), then run again."
)
RAY_FIX = (
    "Ray workers read and write the work dir, the datasets and the plugin files by the paths the driver "
    "uses: mount the shared file system at the same path on every node of the cluster, then run again."
)
PathList = Iterable[tuple[str, "str | Path | None"]]  # (label, path): ("work dir", ...), ("data root", ...)


class NodeError(UmdbenchError):
    """A node cannot take part in the run: not started, unreachable, or not seeing the shared paths."""


# ---------------------------------------------------------------------------------------------
# Who sees what
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PathCheck:
    """One path every node must see as node 0 does. ``token``: the name of the file node 0 wrote
    into the folder, with content ``expect``; None when ``expect`` is a signature of what is there."""

    label: str
    path: str
    expect: str
    token: str | None = None


def write_checks(paths: PathList) -> list[PathCheck]:
    """Node 0's side: a token file in each folder of ``paths`` (a signature where it cannot write,
    and for files). The work dir is created (node 0 is about to); other paths that do not exist
    here are left to the run's own errors."""
    checks = []
    for label, path in paths:
        if path is None:
            continue
        path = Path(path).expanduser().resolve()
        if label == "work dir":
            path.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            checks.append(_token_check(label, path))
        elif path.is_file():
            checks.append(PathCheck(label, str(path), _signature(path)))
    return checks


def _token_check(label: str, folder: Path) -> PathCheck:
    name, content = f"{TOKEN_PREFIX}{secrets.token_hex(8)}", secrets.token_hex(16)
    try:
        (folder / name).write_text(content)
    except OSError:  # a read-only data root: compare what is there instead
        return PathCheck(label, str(folder), _signature(folder))
    return PathCheck(label, str(folder), content, name)


def remove_checks(checks: Iterable[PathCheck]) -> None:
    for check in checks:
        if check.token:
            (Path(check.path) / check.token).unlink(missing_ok=True)


def _signature(path: Path) -> str:
    """A file's sha256; for a folder, its names two levels deep (cheap, and differs between copies
    that hold different datasets)."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    names = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.name.startswith(TOKEN_PREFIX):
            continue
        names.append(entry.name)
        if entry.is_dir():
            names += [f"{entry.name}/{name}" for name in sorted(os.listdir(entry.path))]
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def look(checks: Iterable[PathCheck], given: dict[str, str] | None = None) -> list[str]:
    """What this node gets wrong about ``checks`` (empty: it sees them as node 0 does). ``given``:
    this node's own resolved paths by label, which must be node 0's."""
    problems = []
    for check in checks:
        own = (given or {}).get(check.label)
        if own is not None and own != check.path:
            problems.append(f"was given the {check.label} {own}, not node 0's {check.path}")
        problems += _look_one(check)
    return problems


def _look_one(check: PathCheck) -> list[str]:
    path = Path(check.path)
    try:
        if check.token is not None:
            if not path.is_dir():
                return [f"has no folder at {path} (the {check.label})"]
            token = path / check.token
            if not token.is_file() or token.read_text() != check.expect:
                return [
                    f"sees another folder at {path} (the {check.label}): the check file {check.token} "
                    f"written there is missing"
                ]
        elif not path.exists():
            return [f"has nothing at {path} (the {check.label})"]
        elif _signature(path) != check.expect:
            return [f"sees other contents at {path} (the {check.label})"]
    except OSError as exc:
        return [f"cannot read {path} (the {check.label}): {exc}"]
    return []


def unseen_error(failures: list[tuple[str, list[str]]], fix: str) -> NodeError:
    """One paragraph for every node that does not see the shared paths as node 0 does."""
    said = "; ".join(f"{who} {', and '.join(problems)}" for who, problems in failures)
    return NodeError(f"{said}. {fix} Nothing was trained.")


def probe(checks: list[dict]) -> tuple[str, list[str]]:
    """Run on one node (a Ray task): its host name and what it does not see."""
    return socket.gethostname(), look(PathCheck(**c) for c in checks)


def check_ray_nodes(ray, paths: PathList, timeout_s: float = 600.0) -> int:
    """Raise :class:`NodeError` unless every alive node of the Ray cluster sees ``paths`` as the
    driver does: one task pinned on each node reads the files the driver wrote. Returns the number
    of nodes."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    checks = write_checks(paths)
    failures = []
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        task = ray.remote(num_cpus=0, max_retries=0)(probe)  # no CPU: it runs even where every CPU is busy
        sent = [asdict(c) for c in checks]
        refs = [
            task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(sent)
            for n in nodes
        ]
        for node, ref in zip(nodes, refs):
            try:
                host, problems = ray.get(ref, timeout=timeout_s)
            except Exception as exc:  # noqa: BLE001 - a node that cannot run the check is reported, not skipped
                text = str(exc).strip().splitlines()
                host, problems = (
                    node.get("NodeManagerHostname", "?"),
                    [f"could not run the check ({type(exc).__name__}: {text[-1] if text else ''})"],
                )
            if problems:
                failures.append((f"Ray node {node['NodeID'][:12]} (host {host})", problems))
    finally:
        remove_checks(checks)
    if failures:
        raise unseen_error(failures, RAY_FIX)
    return len(nodes)


# ---------------------------------------------------------------------------------------------
# The node group of a multi-node torchrun run
# ---------------------------------------------------------------------------------------------
def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); ValueError when it is not one."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(endpoint)
    return host, int(port)


class NodeGroup:
    """The launchers of one multi-node run, talking over the TCP store node 0 hosts on
    ``endpoint``. Node 0 announces jobs and ends the run; the others follow."""

    def __init__(self, node_rank: int, nnodes: int, endpoint: str, timeout_s: float = JOIN_TIMEOUT_S):
        from torch.distributed import TCPStore

        self.node_rank, self.nnodes, self.endpoint, self.timeout_s = node_rank, nnodes, endpoint, timeout_s
        self.hostname = socket.gethostname()
        self.jobs = 0  # announced (node 0) or read (the others) so far
        host, port = split_endpoint(endpoint)
        try:
            self.store = TCPStore(
                host, port, is_master=self.leads, wait_for_workers=False, timeout=timedelta(seconds=timeout_s)
            )
        except Exception as exc:  # noqa: BLE001 - DistNetworkError, RuntimeError or TimeoutError by torch version
            raise self._unreachable(exc) from exc

    @property
    def leads(self) -> bool:
        return self.node_rank == 0

    def _unreachable(self, exc: Exception) -> NodeError:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self.leads:
            return NodeError(
                f"node 0 (host {self.hostname}) cannot serve the run's rendezvous on --rdzv-endpoint "
                f"{self.endpoint} ({reason}): give every node the same free port on node 0's address."
            )
        return NodeError(
            f"node {self.node_rank} (host {self.hostname}) could not reach node 0 at --rdzv-endpoint "
            f"{self.endpoint} within {self.timeout_s / 60:.0f} min ({reason}): start the same command "
            f"with --node-rank 0 on the node that address names, and let the port through."
        )

    def _wait(self, key: str, deadline: float | None = None) -> bytes | None:
        """The value of ``key`` once set; None past ``deadline``. Polls, because a blocking wait that
        times out logs warnings, and a follower may wait hours while node 0 evaluates."""
        try:
            while not self.store.check([key]):
                if deadline is not None and time.monotonic() > deadline:
                    return None
                time.sleep(POLL_S)
            return self.store.get(key)
        except Exception as exc:  # noqa: BLE001 - DistNetworkError: node 0's store went away
            if self.leads:
                raise
            raise NodeError(
                f"node {self.node_rank} (host {self.hostname}) lost node 0 at {self.endpoint}: node 0's "
                f"command ended or its machine went away. Run the same commands again on every node "
                f"to resume."
            ) from exc

    # -- the path check, before anything trains ------------------------------------------------
    def check_paths(self, paths: PathList) -> None:
        """Raise :class:`NodeError` on every node unless each one sees ``paths`` at node 0's paths."""
        paths = list(paths)
        if not self.leads:
            return self._report(paths)
        checks = write_checks(paths)
        try:
            self.store.set("paths", json.dumps([asdict(c) for c in checks]))
            failures, absent = self._collect()
        finally:
            remove_checks(checks)
        error = None
        if absent:
            error = NodeError(
                f"node(s) {', '.join(map(str, absent))} did not start within {self.timeout_s / 60:.0f} "
                f"min: start the same command on each with its own --node-rank (0 to "
                f"{self.nnodes - 1}) and --rdzv-endpoint {self.endpoint}. Nothing was trained."
            )
        elif failures:
            error = unseen_error(failures, SAME_PATH_FIX)
        self.store.set("verdict", str(error or ""))
        if error:
            self._wait_acks("verdict")
            raise error

    def _collect(self) -> tuple[list[tuple[str, list[str]]], list[int]]:
        deadline = time.monotonic() + self.timeout_s
        failures, absent = [], []
        for rank in range(1, self.nnodes):
            raw = self._wait(f"seen/{rank}", deadline)
            if raw is None:
                absent.append(rank)
                continue
            seen = json.loads(raw)
            if seen["problems"]:
                failures.append((f"node {rank} (host {seen['host']})", seen["problems"]))
        return failures, absent

    def _report(self, paths: list) -> None:
        checks = [PathCheck(**c) for c in json.loads(self._wait("paths"))]
        given = {
            label: str(Path(p).expanduser().resolve())
            for label, p in paths
            if p is not None and label in ("work dir", "data root")
        }
        self.store.set(f"seen/{self.node_rank}", json.dumps({"host": self.hostname, "problems": look(checks, given)}))
        verdict = self._wait("verdict").decode()
        self.store.set(f"ack/verdict/{self.node_rank}", "1")
        if verdict:
            raise NodeError(verdict)

    # -- jobs ------------------------------------------------------------------------------------
    def announce(self, job: dict) -> int:
        """Node 0: post the next job (read by every other node in order). Returns its number."""
        number = self.jobs
        self.store.set(f"job/{number}", json.dumps(job))
        self.jobs += 1
        return number

    def next_job(self) -> dict | None:
        """Node k > 0: node 0's next job; None when node 0 ended the run, NodeError when it failed."""
        job = json.loads(self._wait(f"job/{self.jobs}"))
        self.jobs += 1
        if "end" not in job:
            return job
        self.store.set(f"ack/end/{self.node_rank}", "1")
        if job["end"]:
            raise NodeError(f"node 0 stopped the run: {job['end']}")
        return None

    def end(self, error: str = "") -> None:
        """Node 0: tell the others the run is over (failed, when ``error``), and wait for them to read it."""
        self.announce({"end": error})
        self._wait_acks("end")

    def _wait_acks(self, what: str) -> None:
        deadline = time.monotonic() + ACK_TIMEOUT_S
        for rank in range(1, self.nnodes):
            self._wait(f"ack/{what}/{rank}", deadline)

    @contextmanager
    def leading(self) -> Iterator["NodeGroup"]:
        """Node 0's run: however it ends, the other nodes are told."""
        try:
            yield self
        except BaseException as exc:
            text = str(exc).strip()
            self.end(text.split("\n\n")[0] if text else type(exc).__name__)
            raise
        self.end()


@contextmanager
def node_group(launch, paths: PathList) -> Iterator[NodeGroup | None]:
    """The node group of a multi-node run (``launch``: a :class:`umdbench.run.distributed.Launch`),
    its paths checked on every node before anything trains; None on one node. Whatever ends node
    0's block ends the run on every node."""
    if launch.nnodes <= 1:
        yield None
        return
    group = NodeGroup(launch.node_rank, launch.nnodes, launch.rdzv_endpoint)
    group.check_paths(paths)
    if not group.leads:
        yield group
        return
    with group.leading():
        yield group
