"""ITM negatives (M3AE, MR-Pretrain) are never a real pair, even when a batch repeats an image or
a caption (several questions about one image; the same caption on two figures)."""

import pytest
import torch

from umdbench.models.objectives import itm_sources, same_rows


def _images(ids):
    """One distinct image per id (a constant image of value id, with a pattern), [B, 3, 8, 8]."""
    base = torch.randn(max(ids) + 1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return base[torch.tensor(ids)].clone()


def _texts(ids, length=6):
    return torch.tensor([[101, 1000 + i, 7, 8, 102, 0][:length] for i in ids])


def _is_real_pair(images, texts, text_i, image_j):
    """Some sample k of the batch has image j's pixels and text i's tokens."""
    return any(
        torch.equal(images[k], images[image_j]) and torch.equal(texts[k], texts[text_i]) for k in range(len(images))
    )


def test_same_rows_finds_exact_duplicates_only():
    x = _images([0, 1, 0, 2, 1])
    x[3] = x[0] + 1e-3  # close, but not the same image
    s = same_rows(x)
    assert s.tolist() == [
        [True, False, True, False, False],
        [False, True, False, False, True],
        [True, False, True, False, False],
        [False, False, False, True, False],
        [False, True, False, False, True],
    ]
    assert same_rows(_texts([5, 5, 6])).tolist() == [[True, True, False], [True, True, False], [False, False, True]]


@pytest.mark.parametrize(
    "image_ids, text_ids",
    [
        ([0, 0, 1, 1, 2, 2, 3, 3], list(range(8))),  # every image twice (two questions per image)
        ([0, 1, 0, 1, 0, 1, 0, 1], list(range(8))),  # interleaved: the rolled neighbour is never it
        ([0, 0, 0, 1, 1, 1, 2, 3], list(range(8))),  # runs of three
        (list(range(8)), [0, 0, 1, 1, 2, 2, 3, 3]),  # every caption twice
        ([0, 0, 1, 1, 2, 3, 4, 5], [0, 0, 1, 2, 3, 3, 4, 5]),  # a repeated pair, a repeated image, a repeated caption
    ],
)
def test_mismatched_pairs_are_never_real_pairs(image_ids, text_ids):
    images, texts = _images(image_ids), _texts(text_ids)
    b = len(image_ids)
    for seed in range(30):
        src, labels = itm_sources(b, generator=torch.Generator().manual_seed(seed), image=images, text_ids=texts)
        assert labels.sum().item() == b - b // 2  # still half negatives: each text has some valid partner
        for i in range(b):
            real = _is_real_pair(images, texts, i, int(src[i]))
            assert real == bool(labels[i]), (seed, i, int(src[i]))
            if labels[i]:
                assert src[i] == i


def test_batch_of_one_image_has_no_negatives():
    images, texts = _images([4] * 6), _texts(range(6))
    src, labels = itm_sources(6, generator=torch.Generator().manual_seed(0), image=images, text_ids=texts)
    assert labels.tolist() == [1] * 6 and src.tolist() == list(range(6))


def test_few_valid_partners_give_fewer_negatives():
    # five copies of one image and one other: only pairs across the two images are negatives
    images, texts = _images([0, 0, 0, 0, 0, 1]), _texts(range(6))
    for seed in range(20):
        src, labels = itm_sources(6, generator=torch.Generator().manual_seed(seed), image=images, text_ids=texts)
        assert labels.sum().item() == 3
        for i in range(6):
            if not labels[i]:
                assert image_of(images, src[i]) != image_of(images, i)


def image_of(images, j):
    return int(next(k for k in range(len(images)) if torch.equal(images[k], images[int(j)])))


def test_duplicate_free_batch_keeps_the_rolled_neighbour():
    images, texts = _images(range(8)), _texts(range(8))
    g = dict(generator=torch.Generator().manual_seed(5))
    src, labels = itm_sources(8, image=images, text_ids=texts, **g)
    src0, labels0 = itm_sources(8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(src, src0) and torch.equal(labels, labels0)
    assert all(int(src[i]) == ((i - 1) % 8 if labels[i] == 0 else i) for i in range(8))


@pytest.mark.parametrize("name", ["mr", "m3ae"])
def test_strategies_check_negatives_on_the_batch(name, monkeypatch):
    """MR-Pretrain and M3AE hand their batch's images and texts to the pairing: a batch that is one
    image-text pair repeated gets no negatives at all (every "mismatch" would be the pair itself)."""
    import importlib

    from umdbench.models import build_encoder
    from umdbench.models.tiny_fixtures import synthetic_pairs, tiny_encoder_cfg

    module = importlib.import_module(f"umdbench_plugins.pretrain.{name}")
    cls = getattr(module, {"mr": "MRPretrain", "m3ae": "M3AEPretrain"}[name])
    seen = []
    real_loss = module.itm_loss

    def spy(logits, labels):
        seen.append(labels.clone())
        return real_loss(logits, labels)

    monkeypatch.setattr(module, "itm_loss", spy)
    torch.manual_seed(0)
    cfg = tiny_encoder_cfg(image_size=64)
    batch, special = synthetic_pairs(4, image_size=64, max_len=cfg["max_text_len"], seed=1)
    strat = cls(build_encoder(cfg), {**cls.default_config("tiny"), "special_ids": special})
    same = {k: v[:1].expand(4, *v.shape[1:]).clone() for k, v in batch.items()}
    strat(same)
    assert seen[-1].tolist() == [1, 1, 1, 1]
    strat(batch)  # distinct pairs: half the texts get another image
    assert seen[-1].sum().item() == 2
