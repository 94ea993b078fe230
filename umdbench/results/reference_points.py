"""Reference points that need no image: the majority answer and a question-only classifier.

A VQA score means little without them: on datasets whose closed questions are mostly "yes", the
majority answer alone scores well. ``umdbench baselines DATASET`` prints both beside each other,
with the same open / closed / overall split as the VQA metric; with ``--work-dir`` it also keeps
them in the work dir's reference-points file, keyed by dataset, split and data fingerprint, where
``umdbench leaderboard`` finds them and prints them under the dataset's table (the leaderboard
itself reads no data and imports no torch).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from umdbench.util import atomic_write_json

__all__ = [
    "majority_baseline",
    "question_only_baseline",
    "reference_key",
    "reference_points",
    "load_reference_points",
    "row_reference_key",
    "store_reference_points",
]

TOKEN = re.compile(r"[a-z0-9]+")


def _accuracy(records: list, predictions: list[str]) -> dict[str, float]:
    out = {}
    for name, keep in (
        ("overall", lambda r: True),
        ("open", lambda r: r.answer_type == "open"),
        ("closed", lambda r: r.answer_type == "closed"),
    ):
        pairs = [(r.answer, p) for r, p in zip(records, predictions) if keep(r)]
        out[name] = 100.0 * sum(a == p for a, p in pairs) / len(pairs) if pairs else float("nan")
    return out


def majority_baseline(train: list, test: list) -> dict[str, float]:
    """Most frequent training answer, per answer type (open / closed) as the type is given."""
    by_type = {t: Counter(r.answer for r in train if r.answer_type == t).most_common(1) for t in ("open", "closed")}
    overall = Counter(r.answer for r in train).most_common(1)[0][0]
    preds = [(by_type.get(r.answer_type) or [(overall, 0)])[0][0] for r in test]
    return _accuracy(test, preds)


def question_only_baseline(train: list, test: list, epochs: int = 30, seed: int = 0) -> dict[str, float]:
    """Bag-of-words (unigrams + bigrams) logistic regression from the question to the answer."""
    import torch

    def features(text: str) -> list[str]:
        words = TOKEN.findall(text.lower())
        return words + [f"{a}_{b}" for a, b in zip(words, words[1:])]

    vocab = {f: i for i, f in enumerate(sorted({f for r in train for f in features(r.text)}))}
    answers = sorted({r.answer for r in train})
    answer_index = {a: i for i, a in enumerate(answers)}

    def encode(records):
        x = torch.zeros(len(records), len(vocab))
        for row, r in enumerate(records):
            for f in features(r.text):
                if f in vocab:
                    x[row, vocab[f]] = 1.0
        return x

    generator = torch.Generator().manual_seed(seed)
    x_train, x_test = encode(train), encode(test)
    y_train = torch.tensor([answer_index[r.answer] for r in train])
    model = torch.nn.Linear(len(vocab), len(answers))
    torch.nn.init.normal_(model.weight, std=0.01, generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=1e-4)
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=generator)
        for batch in perm.split(256):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        predicted = model(x_test).argmax(1).tolist()
    return _accuracy(test, [answers[i] for i in predicted])


def reference_points(train: list, test: list) -> dict[str, dict[str, float]]:
    """Both baselines of one split: ``{"question only": {...}, "majority answer": {...}}``."""
    return {"question only": question_only_baseline(train, test), "majority answer": majority_baseline(train, test)}


def reference_key(dataset: str, split: str, fingerprint: str) -> str:
    """What a stored reference point belongs to: the same dataset, split and data as a row."""
    return f"{dataset}|{split}|{fingerprint}"


def row_reference_key(row: dict) -> str:
    """The :func:`reference_key` of the split and data a stored row was evaluated on."""
    split = ((row.get("config") or {}).get("eval") or {}).get("split", "test")
    return reference_key(row["dataset"], split, str(row.get("data_fingerprint")))


def load_reference_points(path: Path) -> dict[str, dict]:
    """The stored reference points (empty when there is no file)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}


def store_reference_points(path: Path, key: str, points: dict[str, dict[str, float]]) -> None:
    """Add (or replace) one split's reference points in the file, atomically."""
    stored = load_reference_points(path)
    stored[key] = points
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, stored)
