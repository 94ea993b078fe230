"""CellFirstQueue: the order in which a Ray sweep hands out training stages (no Ray needed)."""

from types import SimpleNamespace

from umdbench.sweep.executors import CellFirstQueue


def _stage(key, parent=None):
    return SimpleNamespace(key=key, parent=parent, title=f"stage {key}")


def _plan(cells, stages):
    return SimpleNamespace(pending=[SimpleNamespace(training=c) for c in cells], needed_stages=lambda: stages)


# two cells, each a pre-training and a fine-tuning below it; the plan lists both pre-trainings first
PRE_A, PRE_B = _stage("preA"), _stage("preB")
TUNE_A, TUNE_B = _stage("tuneA", PRE_A), _stage("tuneB", PRE_B)
PLAN = _plan([[PRE_A, TUNE_A], [PRE_B, TUNE_B]], [PRE_A, PRE_B, TUNE_A, TUNE_B])


def test_a_finished_parent_lets_its_cell_go_before_the_next_cells_pretraining():
    queue = CellFirstQueue(PLAN, is_trained=lambda s: False)
    assert queue.pop() is PRE_A
    assert queue.pop() is PRE_B  # the second worker: nothing of cell 1 is ready yet
    assert queue.pop() is None
    queue.finish(PRE_A)
    assert queue.cell_state(PLAN.pending[0]) is None
    assert queue.pop() is TUNE_A
    queue.finish(TUNE_A)
    assert queue.cell_state(PLAN.pending[0]) == "ready" and queue.cell_state(PLAN.pending[1]) is None
    queue.finish(PRE_B)
    assert queue.pop() is TUNE_B and len(queue) == 0 and queue.trained == {"preA", "tuneA", "preB"}


def test_with_one_worker_each_cell_finishes_before_the_next_one_starts():
    queue, order = CellFirstQueue(PLAN, is_trained=lambda s: False), []
    while (stage := queue.pop()) is not None:
        order.append(stage.key)
        queue.finish(stage)
    assert order == ["preA", "tuneA", "preB", "tuneB"]


def test_stages_trained_before_the_sweep_are_not_handed_out_and_count_as_done():
    queue = CellFirstQueue(PLAN, is_trained=lambda s: s.key == "preB")
    assert queue.pop() is PRE_A and queue.pop() is TUNE_B and queue.pop() is None
    assert len(queue) == 1  # tuneA waits for preA
    assert queue.trained == set()


def test_a_failed_stage_fails_its_descendants_and_their_cells_only():
    queue = CellFirstQueue(PLAN, is_trained=lambda s: False)
    queue.pop(), queue.pop()
    queue.fail(PRE_A, "RuntimeError: out of memory")
    assert "failed: RuntimeError: out of memory" in queue.cell_state(PLAN.pending[0])
    assert "preA" in queue.failed and "tuneA" in queue.failed and "its parent" in queue.failed["tuneA"]
    queue.finish(PRE_B)
    assert queue.pop() is TUNE_B and queue.pop() is None and len(queue) == 0
