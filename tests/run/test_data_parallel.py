"""The pieces that make a step independent of how its batch is split: the keyed loader, keyed draws
and batch normalisation over the global batch."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from umdbench import draws
from umdbench.run.data_parallel import GlobalBatchNorm, GlobalBatchSampler, KeyedCollate, KeyedItems, convert_batch_norm


def _loader_batches(monkeypatch, size, global_batch, world, rank, micro, n_batches):
    import mmengine.dist

    monkeypatch.setattr(mmengine.dist, "get_dist_info", lambda: (rank, world))
    sampler = GlobalBatchSampler(range(size), global_batch, micro_batches=micro, seed=7)
    local = global_batch // (world * micro)
    it = iter(sampler)
    return [[next(it) for _ in range(local)] for _ in range(n_batches)]


@pytest.mark.parametrize("world,micro", [(2, 1), (1, 2), (2, 2), (4, 1)])
def test_every_split_reads_the_one_process_batch(monkeypatch, world, micro):
    steps, batch = 5, 8  # 40 samples from a set of 13: passes over the data wrap mid-batch
    (one,) = [_loader_batches(monkeypatch, 13, batch, 1, 0, 1, steps)]
    per_rank = [_loader_batches(monkeypatch, 13, batch, world, r, micro, steps * micro) for r in range(world)]
    for step in range(steps):
        rebuilt = {}
        for r in range(world):
            for m in range(micro):
                for index, s, pos in per_rank[r][step * micro + m]:
                    assert s == step
                    rebuilt[pos] = index
        assert [rebuilt[p] for p in range(batch)] == [index for index, _, _ in one[step]]
        assert [pos for _, _, pos in one[step]] == list(range(batch))


def test_a_batch_that_does_not_split_is_refused(monkeypatch):
    import mmengine.dist

    monkeypatch.setattr(mmengine.dist, "get_dist_info", lambda: (0, 3))
    with pytest.raises(ValueError, match="does not split"):
        GlobalBatchSampler(range(10), 8)


class _Draws(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        rng = draws.item_rng("crop")
        return {"x": torch.tensor(rng.integers(0, 10**9) if rng is not None else -1)}


def test_an_item_draws_by_its_step_and_position_not_by_who_loads_it():
    items = KeyedItems(_Draws(), seed=3)
    a, step, pos = items[(4, 2, 5)]
    assert (step, pos) == (2, 5)
    assert items[(4, 2, 5)][0]["x"] == a["x"]  # again, e.g. in another worker or rank
    assert items[(4, 2, 6)][0]["x"] != a["x"] and items[(4, 3, 5)][0]["x"] != a["x"]
    assert KeyedItems(_Draws(), seed=4)[(4, 2, 5)][0]["x"] != a["x"]
    assert _Draws()[4]["x"] == -1  # outside the keyed loader the dataset keeps its own generator
    batch = KeyedCollate(lambda items: {"x": torch.stack([i["x"] for i in items])})(
        [items[(1, 0, 0)], items[(2, 0, 1)]]
    )
    assert batch["sample_step"].tolist() == [0, 0] and batch["sample_position"].tolist() == [0, 1]


def test_a_sample_draws_the_same_in_any_batch():
    with draws.step_context(seed=0, step=4, positions=range(6)):
        whole = draws.rand(6, 10, stream="mask")
        gen = draws.step_generator("itm")
        shared = torch.rand(3, generator=gen)
    with draws.step_context(seed=0, step=4, positions=[3, 4, 5]):
        half = draws.rand(3, 10, stream="mask")
        assert torch.equal(torch.rand(3, generator=draws.step_generator("itm")), shared)
        with pytest.raises(ValueError, match="one row per sample"):
            draws.rand(4, 10, stream="mask")
    assert torch.equal(half, whole[3:])
    with draws.step_context(seed=0, step=5, positions=range(6)):
        assert not torch.equal(draws.rand(6, 10, stream="mask"), whole)
    assert draws.step_generator("itm") is None and draws.rand(2, 3, stream="mask").shape == (2, 3)


def test_global_batch_norm_is_batch_norm_in_one_process():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 1), torch.nn.BatchNorm3d(4))
    x = torch.randn(3, 2, 4, 4, 4)
    ref = model(x)
    assert convert_batch_norm(model) == ["1"] and isinstance(model[1], GlobalBatchNorm)
    torch.testing.assert_close(model(x), ref)


def _bn_rank(rank, path, x, out):
    os.environ.update(MASTER_ADDR="127.0.0.1")
    torch.distributed.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    torch.manual_seed(0)
    bn = GlobalBatchNorm(4)
    part = x[rank * 3 : (rank + 1) * 3].clone().requires_grad_(True)
    y = bn(part)
    (y * torch.arange(y.numel()).view_as(y)).sum().backward()
    torch.save(
        {"y": y.detach(), "grad": part.grad, "w": bn.weight.grad, "mean": bn.running_mean, "var": bn.running_var},
        f"{out}/{rank}.pt",
    )
    torch.distributed.destroy_process_group()


@pytest.mark.serial  # two spawned processes
def test_global_batch_norm_over_two_ranks_is_batch_norm_over_the_whole_batch(tmp_path):
    torch.manual_seed(1)
    x = torch.randn(6, 4, 3, 3, 3, dtype=torch.float64).float()
    mp.spawn(_bn_rank, args=(str(tmp_path / "rendezvous"), x, str(tmp_path)), nprocs=2)
    got = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    bn = torch.nn.BatchNorm3d(4)
    whole = x.clone().requires_grad_(True)
    y = bn(whole)
    # the one-process loss is the sum of the ranks' losses
    weights = torch.cat([torch.arange(y[:3].numel()).view_as(y[:3]), torch.arange(y[3:].numel()).view_as(y[3:])])
    (y * weights).sum().backward()
    torch.testing.assert_close(torch.cat([got[0]["y"], got[1]["y"]]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([got[0]["grad"], got[1]["grad"]]), whole.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[0]["w"] + got[1]["w"], bn.weight.grad, rtol=1e-4, atol=1e-4)
    for g in got:
        torch.testing.assert_close(g["mean"], bn.running_mean)
        torch.testing.assert_close(g["var"], bn.running_var)


def test_counter_based_draws_hash_as_the_reference_and_look_uniform():
    import random

    values = [random.Random(5).getrandbits(64) for _ in range(1)] + [
        random.Random(i).getrandbits(64) for i in range(200)
    ]
    got = draws._mix(torch.tensor([draws._signed(v) for v in values], dtype=torch.long))
    assert [v & ((1 << 64) - 1) for v in got.tolist()] == [draws._mix_int(v) for v in values]
    with draws.step_context(seed=1, step=2, positions=range(64)):
        u, z = draws.rand(64, 500, stream="u"), draws.randn(64, 500, stream="z")
        r = draws.randint(3, 7, 64, 500, stream="r")
        u64 = draws.rand(64, 500, stream="u", dtype=torch.float64)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0 and abs(float(u.mean()) - 0.5) < 0.01
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1.0) < 0.02
    assert set(r.unique().tolist()) == {3, 4, 5, 6}
    assert float((u64.float() - u).abs().max()) < 1e-6  # the same draws at either precision
