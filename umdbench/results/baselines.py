"""Reference points that need no image: the majority answer and a question-only classifier.

A VQA score means little without them: on datasets whose closed questions are mostly "yes", the
majority answer alone scores well. ``umdbench baselines DATASET`` prints both beside each other,
with the same open / closed / overall split as the VQA metric.
"""
from __future__ import annotations

import re
from collections import Counter

import torch

from umdbench.api import Record

TOKEN = re.compile(r"[a-z0-9]+")


def _accuracy(records: list[Record], predictions: list[str]) -> dict[str, float]:
    out = {}
    for name, keep in (("overall", lambda r: True), ("open", lambda r: r.answer_type == "open"),
                       ("closed", lambda r: r.answer_type == "closed")):
        pairs = [(r.answer, p) for r, p in zip(records, predictions) if keep(r)]
        out[name] = 100.0 * sum(a == p for a, p in pairs) / len(pairs) if pairs else float("nan")
    return out


def majority_baseline(train: list[Record], test: list[Record]) -> dict[str, float]:
    """Most frequent training answer, per answer type (open / closed) as the type is given."""
    by_type = {t: Counter(r.answer for r in train if r.answer_type == t).most_common(1) for t in ("open", "closed")}
    overall = Counter(r.answer for r in train).most_common(1)[0][0]
    preds = [(by_type.get(r.answer_type) or [(overall, 0)])[0][0] for r in test]
    return _accuracy(test, preds)


def question_only_baseline(train: list[Record], test: list[Record], epochs: int = 30, seed: int = 0) -> dict[str, float]:
    """Bag-of-words (unigrams + bigrams) logistic regression from the question to the answer."""
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
