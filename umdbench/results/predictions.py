"""Per-example predictions stored with a result: the file format and how a row refers to it.

A cell's evaluation writes ``runs/<cell>/predictions.npz`` (through the Workspace); its store row
keeps ``predictions = {"path": <relative to the store's folder>, "sha256", "n", "fields"}``.
Arrays (one entry per test example, sorted by ``index``): ``index`` (position in the split),
``pred`` and ``label`` (answer / class ids; label -1 = not in the vocabulary), ``correct`` (0/1),
and ``answer_type`` (VQA: 0 closed, 1 open); ``score__<metric>`` where a metric reports its own
per-example values (e.g. each study's Dice, in [0, 1]); ``prob`` [n, C] where the metric kept each
example's class probabilities (classification: its AUC is recomputed from them and ``label``).
Loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from umdbench.results.auc import ClassScores, auc_per_seed

__all__ = [
    "PROB",
    "class_scores",
    "decode",
    "encode",
    "load_for_row",
    "metric_values",
    "read_for_row",
    "seed_matrix",
]


def encode(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def decode(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_for_row(row: dict, base_dir: Path) -> tuple[dict[str, np.ndarray] | None, str]:
    """The row's per-example arrays, or ``(None, why)``: no reference (a row from an older store
    or a task without per-example labels), a missing file (a store copied without ``runs/``) or a
    checksum that does not match (the file was replaced)."""
    data, why = read_for_row(row, base_dir)
    return (decode(data), "") if data is not None else (None, why)


def read_for_row(row: dict, base_dir: Path) -> tuple[bytes | None, str]:
    """The bytes of the row's predictions file once they match the row's sha256, or ``(None, why)``
    (see :func:`load_for_row`)."""
    ref = row.get("predictions")
    if not ref:
        return None, "no per-example predictions stored (an older store or a task without per-example labels)"
    path = Path(base_dir) / ref["path"]
    try:
        data = path.read_bytes()
    except OSError:
        return None, f"per-example predictions {path} are missing (a store copied without its runs/ folder)"
    if sha256(data) != ref.get("sha256"):
        return None, f"per-example predictions {path} do not match the checksum in the store (replaced after the run)"
    return data, ""


# metric name -> which examples it averages `correct` over (None: every example)
_SUBSETS = {"overall": None, "accuracy": None, "open": 1, "closed": 0}
SCORE_PREFIX = "score__"  # a metric's own per-example values (e.g. each study's Dice), see run/prediction_recorder.py
PROB = "prob"  # each example's class probabilities [n, C], kept by a metric whose AUC ranks them
RANK_METRICS = ("auc",)  # recomputed from PROB and label, not a mean over examples


def metric_values(arrays: dict[str, np.ndarray], metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(index, values)`` of the examples the metric averages over (values in [0, 1]: the metric's
    own per-example scores when it stored them, else correctness); None when the metric is not a
    mean over examples (AUC: see :func:`class_scores`; recall@k, HD95, ...)."""
    if f"{SCORE_PREFIX}{metric}" in arrays:
        return arrays["index"].astype(np.int64), arrays[f"{SCORE_PREFIX}{metric}"].astype(np.float64)
    if metric not in _SUBSETS or "correct" not in arrays:
        return None
    keep = np.ones(len(arrays["correct"]), dtype=bool)
    if _SUBSETS[metric] is not None:
        if "answer_type" not in arrays:
            return None
        keep = arrays["answer_type"] == _SUBSETS[metric]
    return arrays["index"][keep].astype(np.int64), arrays["correct"][keep].astype(np.float64)


def class_scores(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(index, prob [n, C], label [n])`` when the arrays keep class probabilities, else None."""
    if PROB not in arrays or "label" not in arrays or len(arrays[PROB]) != len(arrays["label"]):
        return None
    return arrays["index"].astype(np.int64), arrays[PROB].astype(np.float64), arrays["label"].astype(np.int64)


def seed_matrix(rows: list[dict], metric: str, base_dir: Path, cache: dict | None = None) -> tuple:
    """``(correct [seeds, n], index [n], "")`` of one cell's rows (its seeds) for ``metric``, or
    ``(None, None, why)`` when an interval cannot be computed from what is stored. For AUC the
    first item is a :class:`~umdbench.results.auc.ClassScores` (each seed's class probabilities and
    the labels) instead of a matrix. The stored examples must reproduce each row's stored metric,
    so an interval is never put beside a number it was not computed from (a soft or multi-answer
    accuracy is not a mean of ``correct``)."""
    cache = {} if cache is None else cache
    mats, index, label = [], None, None
    for row in rows:
        key = row["cell_key"]
        if key not in cache:
            cache[key] = load_for_row(row, base_dir)
        arrays, why = cache[key]
        if arrays is None:
            return None, None, why
        if metric in RANK_METRICS:
            kept = class_scores(arrays)
            if kept is None:
                return None, None, f"{metric} is not a mean over examples and no class probabilities are stored"
            examples, values, labels = kept
        else:
            kept = metric_values(arrays, metric)
            if kept is None:
                return None, None, f"{metric} is not a mean over per-example values"
            (examples, values), labels = kept, None
        if len(values) == 0:
            return None, None, f"no test example counts towards {metric}"
        value = 100.0 * (values.mean() if labels is None else auc_per_seed(ClassScores(values[None], labels))[0])
        stored = (row.get("metrics") or {}).get(metric)
        if stored is None or not abs(value - float(stored)) <= 1e-3:
            return None, None, f"the stored predictions do not reproduce the stored {metric}"
        if index is not None and not np.array_equal(index, examples):
            return None, None, "the seeds were scored on different test examples"
        if label is not None and not np.array_equal(label, labels):
            return None, None, "the seeds were scored with different labels"
        index, label = examples, labels
        mats.append(values)
    if not mats:
        return None, None, "no rows"
    if label is not None:
        return ClassScores(np.stack(mats), label), index, ""
    return np.stack(mats), index, ""
