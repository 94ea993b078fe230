"""CLIP / FLIP under data parallelism and the learned temperature.

Two CPU processes (torchrun, gloo) on two halves of a batch must give the loss and, after DDP's
gradient average, the gradients of one process on the whole batch: the embeddings are gathered
across ranks with their gradients. The logit scale is clamped after the optimiser step (OpenCLIP),
so the forward pass never cuts its gradient.
"""

import math
import os
import runpy
import subprocess
import sys
import textwrap

import pytest
import torch

from umdbench.plan.config import CellSpec, resolve
from umdbench.plugin import get_registries

# The worker builds the strategy and runs one forward + backward. The test runs it once in this
# process on the whole batch (the reference) and once as two torchrun ranks on the two halves.
WORKER = textwrap.dedent("""
    import sys

    import torch

    from umdbench.models import build_encoder
    from umdbench.models.tiny_fixtures import synthetic_pairs, tiny_encoder_cfg

    BATCH = 8
    CASES = [("clip", True), ("clip", False), ("flip", True)]


    def build(name, global_negatives):
        from umdbench_plugins.pretrain.clip import CLIPPretrain
        from umdbench_plugins.pretrain.flip import FLIPPretrain

        cls = {"clip": CLIPPretrain, "flip": FLIPPretrain}[name]
        torch.manual_seed(0)
        cfg = tiny_encoder_cfg(image_size=64, vision={"embed_dim": 64, "depth": 1, "num_heads": 2},
                               text={"hidden_size": 64, "num_layers": 1, "num_heads": 2, "intermediate_size": 128},
                               fusion={"hidden_size": 64, "num_layers": 1, "num_heads": 2})
        strat = cls(build_encoder(cfg), {**cls.default_config("tiny"), "global_negatives": global_negatives})
        strat.train()
        batch, _ = synthetic_pairs(BATCH, image_size=64, max_len=cfg["max_text_len"], seed=1)
        n = (64 // 16) ** 2
        noise = torch.rand(BATCH, n, generator=torch.Generator().manual_seed(2))
        return strat, batch, noise


    def step(model, strat, batch, noise, lo, hi):
        part = {k: v[lo:hi] for k, v in batch.items()}
        out = model(part, noise[lo:hi])
        out["loss_clip"].backward()
        grads = {k: p.grad.detach().clone() for k, p in strat.named_parameters() if p.grad is not None}
        return {"loss": out["loss_clip"].item(), "acc": out["clip_acc"].item(), "grads": grads}


    if __name__ == "__main__":
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        per = BATCH // world
        results = {}
        for name, global_negatives in CASES:
            strat, batch, noise = build(name, global_negatives)
            model = DistributedDataParallel(strat, find_unused_parameters=True)  # as the runner wraps it
            results[(name, global_negatives)] = step(model, strat, batch, noise, rank * per, (rank + 1) * per)
        torch.save(results, f"{sys.argv[1]}/rank{rank}.pt")
        dist.destroy_process_group()
""")


@pytest.mark.serial  # torchrun with two processes
@pytest.mark.slow
def test_two_ranks_match_one_process_on_the_global_batch(tmp_path):
    script = tmp_path / "clip_ddp_worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    worker = runpy.run_path(str(script))
    for name, global_negatives in worker["CASES"]:
        strat, batch, noise = worker["build"](name, global_negatives)
        ref = worker["step"](strat, strat, batch, noise, 0, worker["BATCH"])
        got = [r[(name, global_negatives)] for r in ranks]
        # DDP leaves the same (averaged) gradients on both ranks
        assert got[0]["grads"].keys() == got[1]["grads"].keys() == ref["grads"].keys()
        for k in ref["grads"]:
            torch.testing.assert_close(got[0]["grads"][k], got[1]["grads"][k], rtol=0, atol=0)
        if global_negatives:
            for g in got:  # each rank's loss is the global-batch loss, and so is the gradient
                assert g["loss"] == pytest.approx(ref["loss"], rel=1e-5)
                assert g["acc"] == ref["acc"]
            for k, v in ref["grads"].items():
                torch.testing.assert_close(got[0]["grads"][k], v, rtol=1e-4, atol=1e-6, msg=f"{name} {k}")
            assert "logit_scale" in ref["grads"]
        else:
            # per-rank InfoNCE (the old behaviour, kept as an option): fewer negatives, another loss
            assert all(abs(g["loss"] - ref["loss"]) > 1e-3 for g in got)
            assert not torch.allclose(got[0]["grads"]["logit_scale"], ref["grads"]["logit_scale"], rtol=1e-3)


def _clip(**cfg):
    from umdbench.models import build_encoder
    from umdbench.models.tiny_fixtures import synthetic_pairs, tiny_encoder_cfg
    from umdbench_plugins.pretrain.clip import CLIPPretrain

    torch.manual_seed(0)
    enc_cfg = tiny_encoder_cfg(image_size=64, vision={"embed_dim": 64, "depth": 1, "num_heads": 2})
    strat = CLIPPretrain(build_encoder(enc_cfg), {**CLIPPretrain.default_config("tiny"), **cfg})
    batch, _ = synthetic_pairs(4, image_size=64, max_len=enc_cfg["max_text_len"], seed=1)
    return strat, batch


def test_logit_scale_past_the_bound_gets_gradient_and_is_clamped_after_the_step():
    strat, batch = _clip()
    bound = math.log(100.0)
    assert strat.max_log_scale == pytest.approx(bound)
    with torch.no_grad():
        strat.logit_scale.fill_(math.log(250.0))  # e.g. an optimiser step overshot the bound
    out = strat(batch)
    assert out["logit_scale"].item() == pytest.approx(250.0, rel=1e-5)  # the forward uses it as it is
    out["loss_clip"].backward()
    assert strat.logit_scale.grad is not None and strat.logit_scale.grad.abs().item() > 0
    strat.after_optimizer_step()
    assert strat.logit_scale.item() == pytest.approx(bound)
    # at the bound it still receives gradient (a clamp in the forward would give exactly zero)
    strat.zero_grad(set_to_none=True)
    strat(batch)["loss_clip"].backward()
    assert strat.logit_scale.grad.abs().item() > 0
    # below zero (temperature above 1) comes back to 0
    with torch.no_grad():
        strat.logit_scale.fill_(-0.5)
    strat.after_optimizer_step()
    assert strat.logit_scale.item() == 0.0
    # inside the bounds the step leaves it alone
    with torch.no_grad():
        strat.logit_scale.fill_(2.0)
    strat.after_optimizer_step()
    assert strat.logit_scale.item() == 2.0


def test_logit_scale_can_come_back_under_an_optimiser():
    # a scale pushed past the bound and then clamped keeps learning: plain SGD on a loss that wants
    # a lower scale moves it below the bound (a forward clamp would leave it stuck at exactly ln 100)
    strat, batch = _clip()
    with torch.no_grad():
        strat.logit_scale.fill_(math.log(300.0))
    opt = torch.optim.SGD([strat.logit_scale], lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        out = strat(batch)
        # the loss a model with random embeddings wants: a smaller scale (flatter softmax) on these pairs
        out["loss_clip"].backward()
        opt.step()
        strat.after_optimizer_step()
        assert 0.0 <= strat.logit_scale.item() <= math.log(100.0) + 1e-6
    assert strat.logit_scale.item() < math.log(100.0) - 1e-3


def test_initial_scale_is_within_the_bounds():
    strat, _ = _clip(init_temperature=0.001)  # 1/0.001 = 1000 > 100
    assert strat.logit_scale.item() == pytest.approx(math.log(100.0))


def test_per_rank_infonce_is_a_recorded_deviation():
    registries = get_registries()
    for name in ("clip", "flip"):
        run = resolve(CellSpec(name, ("direct",), "medsynth"), registries)
        assert not any("global_negatives" in d for d in run.deviations)
        assert run.config["pretrain"]["global_negatives"] is True
        run = resolve(
            CellSpec(name, ("direct",), "medsynth", overrides=(("pretrain.global_negatives", False),)), registries
        )
        assert any(d.startswith(f"pretrain ({name}): global_negatives=false") for d in run.deviations)
