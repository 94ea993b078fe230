"""Pre-training baselines on the same volume encoders (our baseline choice, see the brain
README; not verified against the paper's table): ``simclr3d`` (contrast two augmented views of a
crop, Chen et al. 2020 in 3-D) and ``models-genesis`` (restore a transformed crop, Zhou et al. 2019).
Both read every present modality as a channel of one input."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from umdbench import draws
from umdbench.api import Option, PretrainStrategy
from umdbench_brain.brainmvp import PRETRAIN_PAPER, PRETRAIN_SMALL, PRETRAIN_TINY
from umdbench_brain.strategies import PRESENT_VOXEL_MEAN, VOLUME_ENCODERS, budget_deviations
from umdbench_brain.templates import wide

__all__ = ["SimCLR3D", "ModelsGenesis", "nt_xent"]

COMMON_GAPS = [
    "our baseline choice (see the brain README: baselines), not verified against the paper's table; "
    "trained with BrainMVP's pre-training recipe on the same encoder and corpus"
]


def on_device(generator: torch.Generator | None, device) -> torch.Generator | None:
    """A generator on ``device`` seeded from a sample's keyed CPU ``generator``: a volume of noise
    is drawn where it is used, still keyed by the sample (None: the device's process RNG)."""
    if generator is None:
        return None
    return torch.Generator(device).manual_seed(int(torch.randint(0, 2**62, (), generator=generator)))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2B views has its other view as positive and the other 2B-2 as
    negatives."""
    z = F.normalize(wide(torch.cat([z1, z2])), dim=1)
    sim = z @ z.t() / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class SimCLR3D(PretrainStrategy):
    """Two views of each crop: a random sub-crop (``min_scale``..1 of each edge) resized back,
    random flips, per-channel intensity gain and shift and Gaussian noise; pooled deepest features
    -> projection MLP -> NT-Xent at ``temperature`` (0.1)."""

    name = "simclr3d"
    task_types = ("volumes",)
    encoders = VOLUME_ENCODERS
    option_schema: ClassVar[dict] = {
        "temperature": Option(float, 0.1, "NT-Xent temperature, > 0"),
        "min_scale": Option(float, 0.6, "smallest sub-crop edge, a share of the crop's"),
        "noise_std": Option(float, 0.05, "Gaussian noise of a view"),
        "proj_dim": Option(int, 128, "width of the projection MLP's output"),
    }
    presets: ClassVar[dict] = {
        "tiny": {"temperature": 0.1, "min_scale": 0.6, "noise_std": 0.05, "proj_dim": 64, "train": PRETRAIN_TINY},
        "small": {"temperature": 0.1, "min_scale": 0.6, "noise_std": 0.05, "proj_dim": 128, "train": PRETRAIN_SMALL},
        "paper": {"temperature": 0.1, "min_scale": 0.6, "noise_std": 0.05, "proj_dim": 128, "train": PRETRAIN_PAPER},
    }

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        if not isinstance(cfg.get("temperature"), (int, float)) or cfg["temperature"] <= 0:
            raise ValueError(f"simclr3d: temperature={cfg.get('temperature')!r} must be > 0 (SimCLR 0.1)")
        if not isinstance(cfg.get("min_scale"), (int, float)) or not 0 < cfg["min_scale"] <= 1:
            raise ValueError(f"simclr3d: min_scale={cfg.get('min_scale')!r} must be within (0, 1]")

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        return (
            COMMON_GAPS
            + [
                "3-D augmentations of our choosing (sub-crop + resize, flips, intensity, noise); "
                "SimCLR's colour jitter and blur have no MRI counterpart"
            ]
            + budget_deviations(cfg.get("train"), PRETRAIN_PAPER, "pre-training (BrainMVP's recipe)")
        )

    @classmethod
    def batch_coupled_terms(cls, cfg: dict) -> list[str]:
        return ["NT-Xent over the 2B views of the batch (the other studies' views are the negatives)"]

    def __init__(self, encoder: nn.Module, cfg: dict):
        super().__init__(encoder, cfg)
        self.check_config(cfg)
        width = int(encoder.hidden_size)
        self.projection = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, int(cfg["proj_dim"]))
        )

    def augment(self, volume: torch.Tensor, present: torch.Tensor, stream: str) -> torch.Tensor:
        """One view of every crop, drawn from the crop's keyed ``stream`` (:mod:`umdbench.draws`;
        the process RNG outside a training step)."""
        size = volume.shape[2:]
        lo_scale = float(self.cfg["min_scale"])
        views = []
        for b in range(volume.shape[0]):
            g = draws.sample_generator(b, stream)
            edge = [max(1, int(s * float(torch.empty(()).uniform_(lo_scale, 1.0, generator=g)))) for s in size]
            lo = [int(torch.randint(0, s - e + 1, (), generator=g)) for s, e in zip(size, edge)]
            piece = volume[b : b + 1, :, lo[0] : lo[0] + edge[0], lo[1] : lo[1] + edge[1], lo[2] : lo[2] + edge[2]]
            piece = F.interpolate(piece, size=tuple(size), mode="trilinear", align_corners=False)
            axes = [2 + a for a in range(3) if bool(torch.rand((), generator=g) < 0.5)]
            piece = piece.flip(axes) if axes else piece
            gain = torch.empty(1, piece.shape[1], 1, 1, 1).uniform_(0.9, 1.1, generator=g).to(piece.device)
            shift = torch.empty(1, piece.shape[1], 1, 1, 1).uniform_(-0.1, 0.1, generator=g).to(piece.device)
            noise = torch.randn(piece.shape, generator=on_device(g, piece.device), device=piece.device)
            views.append(piece * gain + shift + float(self.cfg["noise_std"]) * noise)
        x = torch.cat(views)
        return x * present.to(x.dtype)[:, :, None, None, None]  # an absent modality stays absent

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        volume, present = batch["volume"], batch["present"]
        x = torch.cat([self.augment(volume, present, "view_1"), self.augment(volume, present, "view_2")])
        z = self.projection(self.encoder(x)[-1].mean(dim=(2, 3, 4)))
        B = volume.shape[0]
        # negatives from the global batch: every rank's loss is the one-process loss (draws.gather)
        z1, z2 = draws.gather(z[:B]), draws.gather(z[B:])
        return {"loss_contrast": nt_xent(z1, z2, float(self.cfg["temperature"]))}


class ModelsGenesis(PretrainStrategy):
    """Restore the crop from a transformed copy (Models Genesis): a non-linear intensity curve
    (Bezier, ``p_nonlinear``), local voxel shuffling in small blocks (``p_shuffle``), and in- or
    out-painting with noise (``p_paint``; out-painting with ``p_outpaint``). A U-Net decoder with
    skips (this package's segmentation decoder, one sigmoid output per modality) restores every
    present modality; MSE over all voxels."""

    name = "models-genesis"
    task_types = ("volumes",)
    encoders = VOLUME_ENCODERS
    option_schema: ClassVar[dict] = {
        "p_nonlinear": Option(float, 0.9, "probability of the intensity curve"),
        "p_shuffle": Option(float, 0.5, "probability of local voxel shuffling"),
        "p_paint": Option(float, 0.9, "probability of in- or out-painting"),
        "p_outpaint": Option(float, 0.8, "probability that painting is out-painting"),
        "shuffle_blocks": Option(int, 10000, "blocks shuffled"),
    }
    _common: ClassVar[dict] = {
        "p_nonlinear": 0.9,
        "p_shuffle": 0.5,
        "p_paint": 0.9,
        "p_outpaint": 0.8,
        "shuffle_blocks": 64,
    }
    presets: ClassVar[dict] = {
        "tiny": {**_common, "train": PRETRAIN_TINY},
        "small": {**_common, "train": PRETRAIN_SMALL},
        "paper": {**_common, "shuffle_blocks": 10000, "train": PRETRAIN_PAPER},
    }

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        for key in ("p_nonlinear", "p_shuffle", "p_paint", "p_outpaint"):
            v = cfg.get(key)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"models-genesis: {key}={v!r} must be a probability within [0, 1]")

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        return (
            COMMON_GAPS
            + [
                "every present modality is a channel of one input (Models Genesis: one CT channel); "
                "transformations re-implemented from the paper's description"
            ]
            + budget_deviations(cfg.get("train"), PRETRAIN_PAPER, "pre-training (BrainMVP's recipe)")
        )

    @classmethod
    def batch_coupled_terms(cls, cfg: dict) -> list[str]:
        return [PRESENT_VOXEL_MEAN.format(what="restoration")]

    def __init__(self, encoder: nn.Module, cfg: dict):
        super().__init__(encoder, cfg)
        self.check_config(cfg)
        from umdbench_brain.heads import SegDecoder

        self.decoder = SegDecoder(
            int(encoder.in_channels), tuple(int(c) for c in encoder.feature_channels), int(encoder.in_channels)
        )

    @staticmethod
    def bezier_curve(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random monotone-ish intensity curve through (0,0) and (1,1), inverted half the time."""
        p1, p2 = torch.rand(2, generator=generator), torch.rand(2, generator=generator)
        t = torch.linspace(0, 1, 256)
        pts = [(1 - t) ** 3 * 0 + 3 * (1 - t) ** 2 * t * p1[i] + 3 * (1 - t) * t**2 * p2[i] + t**3 for i in (0, 1)]
        xs, order = pts[0].sort()
        ys = pts[1][order]
        if bool(torch.rand((), generator=generator) < 0.5):
            ys = 1 - ys
        xs, ys = xs.to(x.device), ys.to(x.device)
        v = x.clamp(0, 1)
        idx = torch.bucketize(v, xs).clamp(1, len(xs) - 1)
        x0, x1, y0, y1 = xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]
        return y0 + (v - x0) / (x1 - x0).clamp_min(1e-6) * (y1 - y0)

    def local_shuffle(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = x.clone()
        size = x.shape[1:]
        for _ in range(int(self.cfg["shuffle_blocks"])):
            edge = [int(torch.randint(1, max(2, s // 8) + 1, (), generator=generator)) for s in size]
            lo = [int(torch.randint(0, s - e + 1, (), generator=generator)) for s, e in zip(size, edge)]
            sl = (slice(None),) + tuple(slice(a, a + e) for a, e in zip(lo, edge))
            block = x[sl]
            flat = block.reshape(block.shape[0], -1)
            perm = torch.randperm(flat.shape[1], generator=generator).to(x.device)
            x[sl] = flat[:, perm].reshape(block.shape)
        return x

    @staticmethod
    def paint(x: torch.Tensor, outpaint: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        size = x.shape[1:]
        noise = torch.rand(x.shape, generator=on_device(generator, x.device), device=x.device, dtype=x.dtype)
        inside = torch.zeros(size, dtype=torch.bool, device=x.device)
        for _ in range(int(torch.randint(1, 6, (), generator=generator))):
            frac = (0.3, 0.6) if outpaint else (0.1, 0.3)
            edge = [max(1, int(s * float(torch.empty(()).uniform_(*frac, generator=generator)))) for s in size]
            lo = [int(torch.randint(0, s - e + 1, (), generator=generator)) for s, e in zip(size, edge)]
            inside[lo[0] : lo[0] + edge[0], lo[1] : lo[1] + edge[1], lo[2] : lo[2] + edge[2]] = True
        region = ~inside if outpaint else inside
        return torch.where(region, noise, x)

    def transform(self, volume: torch.Tensor) -> torch.Tensor:
        out = []
        for b, x in enumerate(volume):  # [M,D,H,W], one study at a time (the transforms are drawn per study)
            g = draws.sample_generator(b, "genesis")  # None outside a step: the process RNG

            def chance(p: float) -> bool:
                return bool(torch.rand((), generator=g) < p)

            if chance(self.cfg["p_nonlinear"]):
                x = self.bezier_curve(x, g)
            if chance(self.cfg["p_shuffle"]):
                x = self.local_shuffle(x, g)
            if chance(self.cfg["p_paint"]):
                x = self.paint(x, outpaint=chance(self.cfg["p_outpaint"]), generator=g)
            out.append(x)
        return torch.stack(out)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        volume = batch["volume"]
        present = batch["present"].to(volume.dtype)[:, :, None, None, None]
        x = self.transform(volume) * present
        restored = torch.sigmoid(self.decoder(self.encoder(x), x))
        weight = present.expand_as(volume)
        # the count of present modalities varies per study: divided by the global batch's count
        loss = draws.global_mean(((restored - volume) ** 2 * weight).sum(), weight.sum())
        return {"loss_restore": loss}
