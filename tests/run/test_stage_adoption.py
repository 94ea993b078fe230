"""`umdbench adopt`: stages trained by older code are reused under the new keys only when re-running
their first optimiser steps under the current code gives the numbers they recorded.

One tiny MR-Pretrain -> direct cell is trained once (3 steps each); every test works on a copy of
that work dir. A code change is simulated in-process, never by editing the shared tree: codekey's
source reader returns a comment-only edit of a module every stage runs (new keys, same numbers),
and a strategy's forward is patched for a change that alters the numbers."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from umdbench.cli import main
from umdbench.plan import codekey
from umdbench.results.store import ResultsStore

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "pretrain.train.max_iters=3",
    "pretrain.train.batch_size=4",
    "pretrain.corpus.options.n=16",
    "tune.*.train.max_iters=3",
    "tune.*.train.batch_size=4",
    "dataset.options.n_train=16",
    "dataset.options.n_val=4",
    "dataset.options.n_test=8",
    "data.num_workers=0",
]
CELL = ["--pretrain", "mr", "--tune", "direct", "--dataset", "medsynth", "--cfg-options", *TINY]
SUITE_PLUGIN = """
from umdbench.hookspecs import hookimpl

@hookimpl
def umdbench_register(registries):
    registries.suite.register("adopt-mini", {"title": "one cell", "datasets": ["medsynth"], "metrics": ["overall"],
                                             "rows": [{"name": "mr", "pretrain": "mr", "tune": "direct"}]})
"""


@pytest.fixture(autouse=True)
def fresh_code_hashes():
    codekey.clear_caches()
    yield
    codekey.clear_caches()


def cli(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("trained") / "work"
    assert main(["run", *CELL, "--work-dir", str(work)]) == 0
    return work


def copy_of(trained: Path, tmp_path: Path) -> Path:
    """A work dir of its own: weights hard-linked (never written in place), the rest copied."""

    def copy(src, dst):
        return os.link(src, dst) if src.endswith(".safetensors") else shutil.copy2(src, dst)

    work = tmp_path / "work"
    shutil.copytree(trained, work, copy_function=copy, ignore=shutil.ignore_patterns("*.pth", "*.lock"))
    return work


def stage_folders(work: Path) -> dict[str, dict]:
    return {
        p.name: json.loads((p / "artifact.json").read_text())
        for p in sorted((work / "stages").iterdir())
        if (p / "artifact.json").is_file()
    }


def comment_edit(monkeypatch) -> None:
    """The keys of a comment-only edit of a module every stage runs: new keys, same numbers."""
    original = codekey.read_source
    target = (REPO / "umdbench/run/build_optim.py").resolve()
    monkeypatch.setattr(
        codekey, "read_source", lambda p: original(p) + (b"\n# a comment\n" if Path(p).resolve() == target else b"")
    )
    codekey.clear_caches()


def test_training_records_its_first_steps(trained):
    for name, marker in stage_folders(trained).items():
        evidence = marker["evidence"]
        assert evidence["steps"] == 3 and len(evidence["losses"]) == len(evidence["params_sha256"]) == 3, name
        assert "loss" in evidence["losses"][0] and evidence["world_size"] == 1


def test_adopt_after_a_comment_only_edit_reuses_every_stage(trained, tmp_path, capsys, monkeypatch):
    work = copy_of(trained, tmp_path)
    old = stage_folders(work)
    plugin = tmp_path / "adopt_suite_plugin.py"
    plugin.write_text(SUITE_PLUGIN)
    comment_edit(monkeypatch)
    suite = ["--suite", "adopt-mini", "--plugin-path", plugin, "--work-dir", work, "--cfg-options", *TINY]
    code, out = cli(["sweep", *suite, "--dry-run"], capsys)
    assert code == 0 and "[cached]" not in out, out  # new keys: nothing cached before adopting

    code, out = cli(["adopt", *suite], capsys)
    assert code == 0, out
    assert out.count("adopted from") == 2 and "2 adopted" in out, out
    new = {k: v for k, v in stage_folders(work).items() if k not in old}
    assert len(new) == 2
    old_keys = {v["key"] for v in old.values()}
    for marker in new.values():
        assert marker["adopted_from"] in old_keys
        a = marker["adoption"]
        assert a["steps"] == 3 and a["max_rel_loss_diff"] == 0 and a["params_equal"] and "git_commit" in a
        source = next(v for v in old.values() if v["key"] == marker["adopted_from"])
        assert marker["evidence"] == source["evidence"]  # the steps of the run that made these weights
    for folder in new:  # the very weights, not a copy that could differ
        src = next(k for k, v in old.items() if v["key"] == new[folder]["adopted_from"])
        assert (work / "stages" / folder / "model.safetensors").stat().st_ino == (
            work / "stages" / src / "model.safetensors"
        ).stat().st_ino

    # the finished stages now plan as cached, for the sweep and for run
    code, out = cli(["sweep", *suite, "--dry-run"], capsys)
    assert code == 0 and out.count("[cached]") == 2, out
    code, out = cli(["run", *CELL, "--work-dir", work, "--dry-run"], capsys)
    assert code == 0 and out.count("[cached]") == 2, out
    code, out = cli(["adopt", *suite], capsys)  # again: nothing left to do
    assert code == 0 and out.count("has its artifact already (adopted from") == 2, out

    # run evaluates without training; the row says which stages were adopted, from what
    code, out = cli(["run", *CELL, "--work-dir", work], capsys)
    assert code == 0 and out.count("reusing cached artifact") == 2 and "training 3 iters" not in out, out
    rows = [
        r
        for r in ResultsStore(work / "results.sqlite").rows()
        if r["cell_key"] not in {r0["cell_key"] for r0 in ResultsStore(trained / "results.sqlite").rows()}
    ]
    assert len(rows) == 1
    schedule = rows[0]["schedule"]
    assert {s["adopted_from"] for s in schedule.values()} == old_keys
    assert all(s["adoption"]["params_equal"] for s in schedule.values())


def test_adopt_refuses_a_stage_the_current_code_trains_differently(trained, tmp_path, capsys, monkeypatch):
    from umdbench_plugins.tune.direct import DirectTune

    work = copy_of(trained, tmp_path)
    comment_edit(monkeypatch)
    forward = DirectTune.forward

    def scaled(self, batch):  # what a numerics-changing edit of the strategy would do
        return {k: v * 1.0001 if k.startswith("loss") else v for k, v in forward(self, batch).items()}

    monkeypatch.setattr(DirectTune, "forward", scaled)
    code, out = cli(["adopt", "--work-dir", work, *CELL], capsys)
    assert code == 2, out
    assert "pretrain mr" in out and out.count("adopted from") == 1  # MR-Pretrain does not run DirectTune
    refusal = next(line for line in out.splitlines() if "tune direct" in line and "refused" in line)
    assert "does not give what" in refusal and "loss" in refusal and "--tolerance" in refusal, refusal
    tuned = [k for k, v in stage_folders(work).items() if k.startswith("tune-direct") and "adopted_from" in v]
    assert not tuned  # nothing unverified is reused

    # a stated tolerance accepts the difference, and the marker says what it accepted
    code, out = cli(["adopt", "--work-dir", work, "--tolerance", "1e-3", *CELL], capsys)
    assert code == 0 and "adopted from" in out, out
    marker = next(v for k, v in stage_folders(work).items() if k.startswith("tune-direct") and "adopted_from" in v)
    assert marker["adoption"]["tolerance"] == 1e-3 and not marker["adoption"]["params_equal"]
    assert 0 < marker["adoption"]["max_rel_loss_diff"] <= 1e-3


def test_adopt_refuses_without_a_candidate_or_without_recorded_steps(trained, tmp_path, capsys, monkeypatch):
    work = copy_of(trained, tmp_path)
    comment_edit(monkeypatch)
    code, out = cli(["adopt", "--work-dir", work, *CELL, "--seed", 1], capsys)
    assert code == 2 and "differs in seed" in out and "Not tried: its parent stage" in out, out

    for folder in (work / "stages").iterdir():  # as a stage trained before first steps were recorded
        marker = json.loads((folder / "artifact.json").read_text())
        del marker["evidence"]
        (folder / "artifact.json").write_text(json.dumps(marker))
    code, out = cli(["adopt", "--work-dir", work, *CELL], capsys)
    assert code == 2 and "trained by older umdbench code" in out, out
    assert not any("adopted_from" in v for v in stage_folders(work).values())
    code, out = cli(["adopt", "--work-dir", work, *CELL, "--steps", 9], capsys)
    assert code == 2 and "choose K from 1 to 5" in out


def test_the_evidence_hook_averages_micro_batches_and_keeps_steps_across_a_resume(tmp_path):
    import torch

    from umdbench.run.evidence import EvidenceComplete, EvidenceHook, stop_after

    class Runner:
        def __init__(self, it):
            self.iter, self.max_iters = it, 12  # 6 optimiser steps of 2 micro-batches

    weights = {"w": torch.zeros(3)}
    path = tmp_path / "evidence.json"
    hook = EvidenceHook(lambda: weights, path, micro_batches=2)
    hook.before_train(Runner(0))
    for it in range(6):  # 3 steps, then "killed"
        weights["w"] += 1
        hook.after_train_iter(Runner(it), it, outputs={"loss": torch.tensor(float(it))})
    assert [s["loss"] for s in hook.losses] == [0.5, 2.5, 4.5] and len(set(hook.params_sha256)) == 3

    resumed = EvidenceHook(lambda: weights, path, micro_batches=2)  # a new process, from iteration 4
    resumed.before_train(Runner(4))
    assert [s["loss"] for s in resumed.losses] == [0.5, 2.5]  # steps before the checkpoint are kept
    for it in range(4, 12):
        resumed.after_train_iter(Runner(it), it, outputs={"loss": torch.tensor(float(it))})
    assert resumed.record()["steps"] == 5 and resumed.losses[4]["loss"] == 8.5

    rerun = EvidenceHook(lambda: weights, tmp_path / "rerun.json", micro_batches=2)
    rerun.before_train(Runner(0))
    with stop_after(2), pytest.raises(EvidenceComplete) as done:
        for it in range(12):
            rerun.after_train_iter(Runner(it), it, outputs={"loss": torch.tensor(1.0)})
    assert done.value.evidence["steps"] == 2
