"""Per-example predictions stored with each result (issue 17, part 1)."""

import hashlib

import numpy as np
import pytest
import torch

from umdbench.cli import main
from umdbench.results import predictions as pfile
from umdbench.results.store import ResultsStore
from umdbench.run.prediction_recorder import PredictionRecorder, per_example

SMALL = [
    "model.image_size=64",
    "data.num_workers=0",
    "data.eval_batch_size=30",
    "dataset.options.n_train=120",
    "dataset.options.n_val=20",
    "dataset.options.n_test=70",
    "tune.0.train.max_iters=3",
    "tune.0.train.batch_size=8",
]


def test_recorder_keeps_label_prediction_and_type_sorted_by_index():
    rec = PredictionRecorder()
    # two batches out of order; label -1 (answer outside the vocabulary) is never correct
    rec.process(
        None,
        [
            {
                "logits": torch.tensor([[0.1, 0.9], [0.8, 0.2]]),
                "label": torch.tensor([1, -1]),
                "answer_type": torch.tensor([0, 1]),
                "index": torch.tensor([2, 3]),
            }
        ],
    )
    rec.process(
        None,
        [
            {
                "logits": torch.tensor([[0.3, 0.7], [0.6, 0.4]]),
                "label": torch.tensor([0, 0]),
                "answer_type": torch.tensor([1, 0]),
                "index": torch.tensor([0, 1]),
            }
        ],
    )
    assert rec.evaluate(4) == {}
    assert rec.arrays["index"].tolist() == [0, 1, 2, 3]
    assert rec.arrays["pred"].tolist() == [1, 0, 1, 0]
    assert rec.arrays["correct"].tolist() == [0, 1, 1, 0]
    assert rec.arrays["answer_type"].tolist() == [1, 0, 0, 1]


def test_tasks_without_per_example_labels_record_nothing():
    # retrieval: one score per image-text pair, no label
    assert per_example({"score": torch.zeros(4), "image_index": torch.arange(4), "text_index": torch.arange(4)}) is None
    rec = PredictionRecorder()
    rec.process(None, [{"logits": torch.zeros(2, 3, 4, 4), "label": torch.zeros(2, 4, 4), "index": torch.arange(2)}])
    rec.evaluate(2)
    assert rec.arrays is None


@pytest.mark.slow
def test_run_stores_predictions_referenced_by_checksum(tmp_path, capsys):
    code = main(
        [
            "run",
            "--pretrain",
            "none",
            "--tune",
            "direct",
            "--dataset",
            "medsynth",
            "--work-dir",
            str(tmp_path),
            "--cfg-options",
            *SMALL,
        ]
    )
    assert code == 0, capsys.readouterr()
    store = ResultsStore(tmp_path / "results.sqlite")
    (row,) = store.rows()
    ref = row["predictions"]
    path = tmp_path / ref["path"]
    assert path.is_file() and path.parent.name == row["cell_key"][:16]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ref["sha256"]
    arrays, why = pfile.load_for_row(row, tmp_path)
    assert why == "" and ref["n"] == 70 and arrays["index"].tolist() == list(range(70))
    # the stored examples recompute the stored metrics exactly
    for metric in ("overall", "open", "closed"):
        _, values = pfile.metric_values(arrays, metric)
        assert values.mean() * 100 == pytest.approx(row["metrics"][metric]), metric
    # a replaced file is refused, not used
    path.write_bytes(pfile.encode({k: np.zeros_like(v) for k, v in arrays.items()}))
    arrays, why = pfile.load_for_row(row, tmp_path)
    assert arrays is None and "checksum" in why


def test_a_metrics_own_per_example_scores_are_stored_and_reproduce_it():
    from umdbench.run.prediction_recorder import with_metric_scores

    # a Dice-like metric over 4 studies, reported in shuffled order
    per_example = {
        "index": np.array([2, 0, 3, 1]),
        "dice": np.array([0.5, 1.0, 0.25, 0.75]),
        "dice_wt": np.array([1.0, 1.0, 0.5, 0.5]),
        "ragged": np.array([1.0]),
    }
    arrays = with_metric_scores(None, per_example)
    assert arrays["index"].tolist() == [0, 1, 2, 3]
    assert arrays["score__dice"].tolist() == [1.0, 0.75, 0.5, 0.25] and "score__ragged" not in arrays
    assert with_metric_scores(None, None) is None
    index, values = pfile.metric_values(pfile.decode(pfile.encode(arrays)), "dice")
    assert index.tolist() == [0, 1, 2, 3] and values.mean() * 100 == pytest.approx(62.5)
    assert pfile.metric_values(arrays, "hd95") is None  # not a mean over every example: no interval
    # two seeds -> the matrix the leaderboard bootstraps; a row whose stored value differs is refused
    rows = []
    for seed, shift in enumerate((0.0, 0.25)):
        vals = {**per_example, "dice": per_example["dice"] * (1 - shift)}
        data = pfile.encode(with_metric_scores(None, vals))
        rows.append((data, {"cell_key": f"cell{seed}", "metrics": {"dice": 100 * vals["dice"].mean()}}))
    cache = {row["cell_key"]: (pfile.decode(data), "") for data, row in rows}
    matrix, index, why = pfile.seed_matrix([row for _, row in rows], "dice", None, cache)
    assert why == "" and matrix.shape == (2, 4) and index.tolist() == [0, 1, 2, 3]
    bad = dict(rows[1][1], metrics={"dice": 99.0})
    assert pfile.seed_matrix([bad], "dice", None, {"cell1": cache["cell1"]})[0] is None
