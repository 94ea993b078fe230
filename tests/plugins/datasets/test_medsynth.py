"""Tests of the embedded MedSynth dataset (umdbench_plugins.datasets.medsynth).

Run: OMP_NUM_THREADS=1 python -m pytest -q tests/plugins/datasets/test_medsynth.py
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from torch import nn

from umdbench.api import DatasetPlugin
from umdbench_plugins.datasets import medsynth as ms
from umdbench_plugins.datasets.medsynth import MedSynthCaptions, MedSynthVQA


@pytest.fixture(scope="module")
def vqa():
    d = MedSynthVQA()
    return d, {s: d.records(s) for s in d.splits}


@pytest.fixture(scope="module")
def captions():
    c = MedSynthCaptions()
    return c, {s: c.records(s) for s in c.splits}


def _img_hash(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def _split_bytes(recs) -> bytes:
    h = hashlib.sha256()
    for r in recs:
        h.update(f"{r.uid}|{r.text}|{r.answer}|{r.answer_type}".encode())
        h.update(r.image.tobytes())
    return h.digest()


# ---------------------------------------------------------------------------------------------
def test_plugin_attributes():
    assert issubclass(MedSynthVQA, DatasetPlugin) and issubclass(MedSynthCaptions, DatasetPlugin)
    assert (MedSynthVQA.name, MedSynthVQA.task, MedSynthVQA.needs_root) == ("medsynth", "vqa", False)
    assert MedSynthVQA.default_pretrain_corpus == "medsynth-captions"
    assert MedSynthVQA.splits == ("train", "val", "test")
    assert (MedSynthCaptions.name, MedSynthCaptions.task, MedSynthCaptions.splits) == (
        "medsynth-captions",
        "pretrain",
        ("train", "val"),
    )
    with pytest.raises(ValueError, match="unknown option"):
        MedSynthVQA(n_trian=5)
    with pytest.raises(KeyError):
        MedSynthVQA(n_train=4, n_val=4, n_test=4).records("dev")


def test_determinism():
    gen = ms._vqa_split.__wrapped__  # bypass the in-process cache: really regenerate
    a = gen(0, ms.STREAMS[("vqa", "test")], 80, 64, 4)
    b = gen(0, ms.STREAMS[("vqa", "test")], 80, 64, 4)
    c = gen(1, ms.STREAMS[("vqa", "test")], 80, 64, 4)
    assert _split_bytes(a) == _split_bytes(b)
    assert _split_bytes(a) != _split_bytes(c)
    capgen = ms._caption_split.__wrapped__
    assert _split_bytes(capgen(0, 11, 20, 64)) == _split_bytes(capgen(0, 11, 20, 64))
    assert _split_bytes(capgen(0, 11, 20, 64)) != _split_bytes(capgen(3, 11, 20, 64))
    # fingerprints: stable, and sensitive to seed and every option
    small = dict(n_train=40, n_val=8, n_test=8)
    f0 = MedSynthVQA(**small).fingerprint()
    assert f0 == MedSynthVQA(**small).fingerprint() and len(f0) == 64
    assert f0 != MedSynthVQA(**small, seed=1).fingerprint()
    assert f0 != MedSynthVQA(**{**small, "n_train": 41}).fingerprint()
    assert f0 != MedSynthVQA(**small, image_size=128).fingerprint()
    assert MedSynthCaptions(n=10).fingerprint() != MedSynthCaptions(n=10, seed=1).fingerprint()


def test_split_sizes_and_records(vqa):
    d, splits = vqa
    assert {s: len(r) for s, r in splits.items()} == {"train": 3000, "val": 600, "test": 600}
    for recs in splits.values():
        per_image = Counter(r.extra["image_id"] for r in recs)
        assert max(per_image.values()) <= 4 and np.mean(list(per_image.values())) > 3.0
        assert len({r.uid for r in recs}) == len(recs)
        for r in recs[:50]:
            assert r.image.shape == (64, 64, 3) and r.image.dtype == np.uint8
            assert r.answer == r.answer.lower() and r.answer_type in ("open", "closed")
            assert (r.answer in ("yes", "no")) == (r.answer_type == "closed")
    # other image sizes render directly at that size
    big = MedSynthVQA(n_train=8, n_val=4, n_test=4, image_size=128).records("train")
    assert big[0].image.shape == (128, 128, 3)
    rep = d.check()
    assert rep.ok, rep.problems
    assert rep.counts == {"train": 3000, "val": 600, "test": 600}
    assert set(rep.checksums) == {"train", "val", "test"}


def test_answer_balance(vqa):
    _, splits = vqa
    for split, recs in splits.items():
        by_group: dict[str, Counter] = defaultdict(Counter)
        by_template: dict[str, Counter] = defaultdict(Counter)
        for r in recs:
            by_group[r.extra["group"]][r.answer] += 1
            by_template[r.extra["template"]][r.answer] += 1
        # every exact question text has (within one) the same count for each of its possible answers
        for g, c in by_group.items():
            counts = [c.get(a, 0) for a in ms.answer_set(g)]
            assert max(counts) - min(counts) <= 1, (split, g, c)
        for t, c in by_template.items():
            if ms.TEMPLATES[t][1] == "closed" and split == "train":
                assert abs(c["yes"] / (c["yes"] + c["no"]) - 0.5) < 0.03, (t, c)
        if split == "train":
            assert len(by_template) == len(ms.TEMPLATES)


def test_vocab_deterministic(vqa):
    d, splits = vqa
    names = d.label_names()
    assert names == MedSynthVQA().label_names()
    assert len(names) == len(set(names)) == 25
    assert set(names) == {r.answer for s in splits.values() for r in s}
    # regenerate from scratch in a fresh cache: same vocabulary, same order
    small = dict(n_train=60, n_val=12, n_test=12, seed=7)
    v1 = MedSynthVQA(**small).label_names()
    ms._vqa_split.cache_clear()
    assert MedSynthVQA(**small).label_names() == v1


def test_captions_describe_image(captions):
    c, splits = captions
    assert {s: len(r) for s, r in splits.items()} == {"train": 2000, "val": 200}
    assert c.check().ok
    words = {"ct": " CT ", "mri": " MRI ", "x-ray": " X-ray ", "ultrasound": "ltrasound "}
    for recs in splits.values():
        for r in recs:
            mod, region = r.extra["modality"], r.extra["region"]
            assert words[mod] in f" {r.text} ", r.text
            for other, w in words.items():
                if other != mod:
                    assert w not in f" {r.text} ", r.text
            assert f"of the {region}" in r.text
            assert r.answer is None and r.image.shape == (64, 64, 3)
    # the modality named in the caption is visible in the pixels: ultrasound images are fan-shaped
    # (black top corners, bright apex), x-ray images have no black noise floor inside the body
    for r in splits["train"][:200]:
        corners = r.image[:6, :6, 0].mean() + r.image[:6, -6:, 0].mean()
        if "ltrasound" in r.text:
            assert r.image[:12, 28:36, 0].mean() > 3 * corners + 2
    assert len(Counter(r.extra["modality"] for r in splits["train"])) == 4


def test_test_images_disjoint_from_pretraining(vqa, captions):
    _, splits = vqa
    _, caps = captions
    test_imgs = {_img_hash(r.image) for r in splits["test"]}
    cap_imgs = {_img_hash(r.image) for s in caps.values() for r in s}
    train_imgs = {_img_hash(r.image) for r in splits["train"]}
    assert not test_imgs & cap_imgs
    assert not test_imgs & train_imgs
    # also with the same seed and size and the caption corpus much larger than the test split
    assert len(cap_imgs) == 2200


# ---------------------------------------------------------------------------------------------
# The two properties that matter: question-only is at chance, the image helps a lot.
_WORD = re.compile(r"[a-z0-9-]+")


def _chance(recs) -> float:
    return float(np.mean([1.0 / len(ms.answer_set(r.extra["group"])) for r in recs]))


def _bow(recs, w2i):
    q = torch.zeros(len(recs), len(w2i))
    for i, r in enumerate(recs):
        for w in _WORD.findall(r.text.lower()):
            if w in w2i:
                q[i, w2i[w]] = 1.0
    return q


@pytest.fixture(scope="module")
def question_only(vqa):
    """(majority-per-question accuracy, BoW logistic-regression accuracy, chance) on test."""
    d, splits = vqa
    tr, te = splits["train"], splits["test"]
    majority: dict[str, Counter] = defaultdict(Counter)
    for r in tr:
        majority[r.text][r.answer] += 1
    maj_acc = float(np.mean([majority[r.text].most_common(1)[0][0] == r.answer for r in te]))
    # bag-of-words logistic regression (full batch), with question-pair features
    vocab = d.label_names()
    a2i = {a: i for i, a in enumerate(vocab)}
    words = sorted({w for r in tr for w in _WORD.findall(r.text.lower())})
    w2i = {w: i for i, w in enumerate(words)}
    texts = sorted({r.text for r in tr})
    t2i = {t: i for i, t in enumerate(texts)}

    def feats(recs):
        one_hot = torch.zeros(len(recs), len(texts))
        for i, r in enumerate(recs):
            if r.text in t2i:
                one_hot[i, t2i[r.text]] = 1.0
        return torch.cat([_bow(recs, w2i), one_hot], 1)

    X, Y = feats(tr), torch.tensor([a2i[r.answer] for r in tr])
    XT, YT = feats(te), torch.tensor([a2i[r.answer] for r in te])
    torch.manual_seed(0)
    lin = nn.Linear(X.shape[1], len(vocab))
    opt = torch.optim.Adam(lin.parameters(), 0.05)
    for _ in range(300):
        loss = nn.functional.cross_entropy(lin(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        lr_acc = (lin(XT).argmax(1) == YT).float().mean().item()
    return maj_acc, lr_acc, _chance(te)


def test_question_only_is_at_chance(question_only):
    maj_acc, lr_acc, chance = question_only
    print(f"\nchance {chance:.3f}  question-only majority {maj_acc:.3f}  question-only BoW-LR {lr_acc:.3f}")
    assert abs(maj_acc - chance) < 0.04
    assert lr_acc < chance + 0.04


class _TinyVQA(nn.Module):
    def __init__(self, n_words: int, n_answers: int, size: int = 64):
        super().__init__()

        def block(i, o):
            return [nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU()]

        self.cnn = nn.Sequential(
            *block(1, 16),
            *block(16, 32),
            *block(32, 32),
            nn.Flatten(),
            nn.Linear(32 * (size // 8) ** 2, 128),
            nn.ReLU(),
        )
        self.q = nn.Sequential(nn.Linear(n_words, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(3 * 128, 256), nn.ReLU(), nn.Linear(256, n_answers))

    def forward(self, img, q):
        a, b = self.cnn(img), self.q(q)
        return self.head(torch.cat([a, b, a * b], 1))


@pytest.mark.slow
def test_image_model_beats_question_only(vqa, question_only):
    """A tiny CNN (on the image average-pooled to 32 px) + bag-of-words model, 8 epochs on CPU
    (1 thread, ~10 s), is far above question-only."""
    d, splits = vqa
    tr, te = splits["train"], splits["test"]
    maj_acc, lr_acc, chance = question_only
    vocab = d.label_names()
    a2i = {a: i for i, a in enumerate(vocab)}
    words = sorted({w for r in tr for w in _WORD.findall(r.text.lower())})
    w2i = {w: i for i, w in enumerate(words)}

    def enc(recs):
        img = torch.from_numpy(np.stack([r.image[:, :, 0] for r in recs])).float().div(255.0).unsqueeze(1)
        img = nn.functional.avg_pool2d(img, 2)  # 32 px: 4x cheaper, lesions still visible
        return img, _bow(recs, w2i), torch.tensor([a2i[r.answer] for r in recs])

    Xi, Xq, Y = enc(tr)
    Ti, Tq, TY = enc(te)
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = _TinyVQA(len(words), len(vocab), size=32)
        opt = torch.optim.Adam(net.parameters(), 2e-3)
        gen = torch.Generator().manual_seed(0)
        for _epoch in range(8):
            net.train()
            perm = torch.randperm(len(Y), generator=gen)
            for k in range(0, len(Y), 64):
                b = perm[k : k + 64]
                loss = nn.functional.cross_entropy(net(Xi[b], Xq[b]), Y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            pred = net(Ti, Tq).argmax(1)
    finally:
        torch.set_num_threads(n_threads)
    acc = (pred == TY).float().mean().item()
    closed = torch.tensor([r.answer_type == "closed" for r in te])
    acc_closed = (pred[closed] == TY[closed]).float().mean().item()
    acc_open = (pred[~closed] == TY[~closed]).float().mean().item()
    print(
        f"\nimage+question {acc:.3f} (closed {acc_closed:.3f}, open {acc_open:.3f}); "
        f"question-only majority {maj_acc:.3f}, BoW-LR {lr_acc:.3f}; chance {chance:.3f}"
    )
    assert acc > max(maj_acc, lr_acc) + 0.15
