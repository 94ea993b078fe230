"""Every random draw of a brain strategy's training forward and of a training item is keyed by the
sample (umdbench.draws): a half of the global batch, at its positions, sees exactly the inputs it
sees inside the whole batch, so the split over processes or micro-batches cannot change them."""

import numpy as np
import pytest
import torch

from umdbench import draws
from umdbench.api import Record
from umdbench_brain.tasks import VolumeDataset
from umdbench_brain.testing import CASES, build_case_strategy, global_batch


def encoder_inputs(strategy, batch, positions):
    """The encoder's input rows in the draw context of ``positions``, per view: [views, n, ...]."""
    seen = []
    handle = strategy.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        with draws.step_context(seed=7, step=2, positions=positions):
            strategy(batch)
    finally:
        handle.remove()
    x = torch.cat(seen)
    return x.view(-1, len(positions), *x.shape[1:])


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_half_batch_draws_what_it_draws_in_the_whole_batch(name):
    strategy, spec = build_case_strategy(name)
    strategy.train()
    batch = spec.preprocess(global_batch(name, 0))
    n = len(batch["volume"])
    whole = encoder_inputs(strategy, batch, range(n))
    second = encoder_inputs(strategy, {k: v[n // 2 :] for k, v in batch.items()}, range(n // 2, n))
    assert torch.equal(second, whole[:, n // 2 :])
    if name in ("seg", "cls"):  # no draws in the forward (the items' crops and flips are the loader's)
        return
    # and the draws are keyed by the step: another step draws other masks, views or channels
    with draws.step_context(seed=7, step=3, positions=range(n)):
        seen = []
        handle = strategy.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        strategy(batch)
        handle.remove()
    assert not torch.equal(torch.cat(seen).view_as(whole), whole)


def test_uniformer_stochastic_depth_is_keyed_per_sample_and_view():
    from umdbench_brain.encoders import UniFormerEncoder

    torch.manual_seed(0)
    enc = UniFormerEncoder(UniFormerEncoder.default_config("tiny") | {"roi_size": 16, "drop_path": 0.5})
    enc.train()
    for m in enc.modules():  # batch statistics would couple the rows; only the drop draws are under test
        if isinstance(m, torch.nn.BatchNorm3d):
            m.eval()
    x = torch.rand(8, 4, 16, 16, 16)  # two views of a local batch of 4, view after view
    with draws.step_context(0, 0, range(4)):
        whole = enc(x)[-1]
    with draws.step_context(0, 0, [2, 3]):
        half = enc(torch.cat([x[2:4], x[6:8]]))[-1]
    assert torch.allclose(half, torch.cat([whole[2:4], whole[6:8]]), atol=1e-6)
    with draws.step_context(0, 0, range(3)), pytest.raises(ValueError, match="one row per sample"):
        enc(x)


def test_training_items_are_keyed_by_step_and_position_not_by_the_loader():
    rng = np.random.default_rng(0)
    rec = Record(uid="s0", image={m: rng.random((20, 20, 20), dtype=np.float32) for m in ("a", "b")}, text="")
    ds = VolumeDataset([rec], ["a", "b"], roi=8, training=True, crop=True, seed=3)
    with draws.item_context(3, 5, 2):
        first = ds[0]
    ds[0]  # another draw outside a keyed loader moves the dataset's own counter
    with draws.item_context(3, 5, 2):
        again = ds[0]
    with draws.item_context(3, 5, 1):
        other = ds[0]
    for key in ("volume", "crop_origin", "flips"):
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(first["crop_origin"], other["crop_origin"]) or not torch.equal(
        first["flips"], other["flips"]
    )
