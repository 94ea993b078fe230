"""The pre-training baselines: NT-Xent by hand, Models Genesis transformations, and that both
train the shared encoder."""

import math

import pytest
import torch

from umdbench_brain.baselines import ModelsGenesis, SimCLR3D, nt_xent
from umdbench_brain.encoders import ResUNetEncoder


def encoder():
    return ResUNetEncoder(ResUNetEncoder.default_config("tiny") | {"roi_size": 8, "channels": [4, 8], "blocks": [1, 1]})


def test_nt_xent_matches_a_hand_computed_loss():
    torch.manual_seed(0)
    z1, z2 = torch.randn(2, 3), torch.randn(2, 3)
    z = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in torch.cat([z1, z2]).tolist()]
    total = 0.0
    for i in range(4):
        pos = (i + 2) % 4
        sims = {j: sum(a * b for a, b in zip(z[i], z[j])) / 0.5 for j in range(4) if j != i}
        total += -sims[pos] + math.log(sum(math.exp(s) for s in sims.values()))
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(total / 4, rel=1e-5)


def test_simclr3d_and_models_genesis_train_the_encoder():
    batch = {"volume": torch.rand(2, 4, 8, 8, 8), "present": torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]])}
    for cls in (SimCLR3D, ModelsGenesis):
        s = cls(encoder(), cls.default_config("tiny"))
        torch.manual_seed(0)
        loss = sum(s(batch).values())
        loss.backward()
        assert torch.isfinite(loss) and s.encoder.stages[0][0].conv1.conv.weight.grad.abs().sum() > 0, cls.name


def test_models_genesis_transformations():
    x = torch.rand(4, 8, 8, 8)
    torch.manual_seed(1)
    curve = ModelsGenesis.bezier_curve(torch.tensor([0.0, 1.0]))
    assert set(torch.round(curve, decimals=4).tolist()) <= {0.0, 1.0}  # the curve keeps the end points (maybe swapped)
    s = ModelsGenesis(encoder(), ModelsGenesis.default_config("tiny") | {"shuffle_blocks": 20})
    shuffled = s.local_shuffle(x)
    assert torch.equal(shuffled.flatten().sort().values, x.flatten().sort().values)  # a permutation of the voxels
    painted = ModelsGenesis.paint(x, outpaint=False)
    changed = (painted != x).any(0)
    assert 0 < changed.float().mean() < 1  # some boxes, not the whole crop
    with pytest.raises(ValueError, match="p_paint"):
        ModelsGenesis.check_config(ModelsGenesis.default_config("tiny") | {"p_paint": 2})
