"""3-D encoders (registered kind ``encoder``), random init: a residual CNN and MONAI's Swin
transformer (``resunet3d``, ``swinvit3d``), BrainMVP's default backbone written from its description
(``uniformer3d``), and one wrapper over MONAI's networks (``monai3d``: SwinUNETR, UNETR, BasicUNet).

Contract of this package's volume encoders (beyond :class:`umdbench.api.Encoder`):

* config keys ``modalities`` (the input channel order; ``in_channels = len(modalities)``) and
  ``roi_size`` (training crop and sliding-window edge, in voxels);
* ``forward(volume [B,M,D,H,W]) -> list of feature maps``, shallow to deep;
* ``in_channels``, ``feature_channels`` (channels per returned map), ``feature_strides`` and
  ``hidden_size`` (= the deepest map's channels, what a pooled classification head reads).

The segmentation decoder (:class:`~umdbench_brain.heads.SegDecoder`) makes its own full-resolution
skip from the raw input, so a pyramid may start at stride 1 or 2; the reconstruction decoder reads
the deepest map and its stride only.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from umdbench import draws
from umdbench.api import Encoder

__all__ = ["VolumeEncoder", "ResUNetEncoder", "SwinViTEncoder", "UniFormerEncoder", "MonaiEncoder", "BRATS_MODALITIES"]

BRATS_MODALITIES = ["t1", "t1c", "t2", "flair"]


class VolumeEncoder(Encoder):
    """Common base: reads the channel layout and crop size from the config."""

    family = "volume-3d"  # what the package's strategies declare in Strategy.encoders
    feature_channels: tuple[int, ...] = ()
    feature_strides: tuple[int, ...] = ()

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.modalities = list(cfg["modalities"])
        self.in_channels = len(self.modalities)
        self.roi_size = int(cfg["roi_size"])
        multiple = max(self.stride_multiple(cfg), 1)
        if self.roi_size <= 0 or self.roi_size % multiple:
            raise ValueError(
                f"encoder {self.name!r}: roi_size={self.roi_size} must be a multiple of {multiple} "
                f"(the encoder's total stride) for this configuration; set model.roi_size to one, "
                f"e.g. {max(multiple, multiple * round(max(self.roi_size, 1) / multiple))}"
            )

    @classmethod
    def stride_multiple(cls, cfg: dict) -> int:
        return 1

    # BrainMVP's released backbone is UniFormer-S (the released code's geometry); every other
    # volume encoder is recorded as a departure from it
    released_backbone: ClassVar[bool] = False

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        if cls.released_backbone:
            return []
        return [f"backbone {cls.name} (BrainMVP's released backbone: UniFormer-S, `--encoder uniformer3d`)"]


class ResUNetEncoder(VolumeEncoder):
    """A residual 3-D CNN encoder (the UNet variant of the released code in shape: a
    full-resolution stage then stride-2 stages with ``blocks`` residual blocks each), built from
    MONAI's ``UnetResBlock`` (conv-norm-act x2 with a residual path, instance norm)."""

    name = "resunet3d"
    presets: ClassVar[dict[str, dict]] = {
        "tiny": {
            "modalities": BRATS_MODALITIES,
            "roi_size": 32,
            "channels": [8, 16, 32, 64],
            "blocks": [1, 1, 1, 1],
            "norm": "instance",
        },
        # the CPU budget's crop at twice tiny's widths (the brain suites use uniformer3d at small)
        "small": {
            "modalities": BRATS_MODALITIES,
            "roi_size": 32,
            "channels": [16, 32, 64, 128],
            "blocks": [1, 1, 1, 1],
            "norm": "instance",
        },
        # the released UNet variant's widths and depths at the released 96^3 crop
        "paper": {
            "modalities": BRATS_MODALITIES,
            "roi_size": 96,
            "channels": [32, 64, 128, 256],
            "blocks": [1, 2, 2, 4],
            "norm": "instance",
        },
    }

    @classmethod
    def stride_multiple(cls, cfg: dict) -> int:
        return 2 ** (len(cfg["channels"]) - 1)

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        from monai.networks.blocks.dynunet_block import UnetResBlock

        channels, blocks = list(cfg["channels"]), list(cfg["blocks"])
        if len(channels) != len(blocks) or not channels:
            raise ValueError(f"resunet3d: channels {channels} and blocks {blocks} must be non-empty and equally long")
        norm = cfg.get("norm", "instance")
        stages = []
        prev = self.in_channels
        for i, (ch, n) in enumerate(zip(channels, blocks)):
            layers = [UnetResBlock(3, prev, ch, kernel_size=3, stride=1 if i == 0 else 2, norm_name=norm)]
            layers += [UnetResBlock(3, ch, ch, kernel_size=3, stride=1, norm_name=norm) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            prev = ch
        self.stages = nn.ModuleList(stages)
        self.feature_channels = tuple(channels)
        self.feature_strides = tuple(2**i for i in range(len(channels)))
        self.hidden_size = channels[-1]

    def forward(self, volume: torch.Tensor) -> list[torch.Tensor]:
        features, x = [], volume
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def compile_targets(self) -> list[nn.Module]:
        return list(self.stages)


class SwinViTEncoder(VolumeEncoder):
    """MONAI's Swin transformer (the SwinUNETR encoder), returning its five hidden states
    (strides 2..32, channels feature_size x 1, 2, 4, 8, 16). The input edge must be a multiple of 32."""

    name = "swinvit3d"
    presets: ClassVar[dict[str, dict]] = {
        "tiny": {
            "modalities": BRATS_MODALITIES,
            "roi_size": 32,
            "feature_size": 12,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 2, 4, 8],
            "window_size": 4,
        },
        "small": {
            "modalities": BRATS_MODALITIES,
            "roi_size": 32,
            "feature_size": 24,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 2, 4, 8],
            "window_size": 4,
        },
        # SwinUNETR's BraTS configuration (feature size 48, depths 2, heads 3/6/12/24, window 7) at 96^3
        "paper": {
            "modalities": BRATS_MODALITIES,
            "roi_size": 96,
            "feature_size": 48,
            "depths": [2, 2, 2, 2],
            "num_heads": [3, 6, 12, 24],
            "window_size": 7,
        },
    }

    @classmethod
    def stride_multiple(cls, cfg: dict) -> int:
        return 32

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.swin, self.feature_channels, self.feature_strides = _swin_transformer(self.in_channels, cfg)
        self.hidden_size = self.feature_channels[-1]

    def forward(self, volume: torch.Tensor) -> list[torch.Tensor]:
        return list(self.swin(volume, normalize=True))

    def compile_targets(self) -> list[nn.Module]:
        return [self.swin]


def _swin_transformer(in_channels: int, cfg: dict) -> tuple[nn.Module, tuple[int, ...], tuple[int, ...]]:
    """MONAI's Swin transformer as SwinUNETR builds it (patch 2, LayerNorm, merging downsample),
    with its channels and strides per hidden state (one per stage plus the patch embedding)."""
    from monai.networks.nets.swin_unetr import SwinTransformer

    depths, heads = [int(d) for d in cfg["depths"]], [int(h) for h in cfg["num_heads"]]
    if len(depths) != len(heads) or not depths:
        raise ValueError(f"swin transformer: depths {depths} and num_heads {heads} must be non-empty and equally long")
    fs, win = int(cfg["feature_size"]), int(cfg["window_size"])
    if fs % heads[0]:
        raise ValueError(f"swin transformer: feature_size={fs} must be divisible by num_heads[0]={heads[0]}")
    swin = SwinTransformer(
        in_chans=in_channels,
        embed_dim=fs,
        window_size=(win,) * 3,
        patch_size=(2, 2, 2),
        depths=depths,
        num_heads=heads,
        spatial_dims=3,
    )
    n = len(depths) + 1
    return swin, tuple(fs * 2**i for i in range(n)), tuple(2 ** (i + 1) for i in range(n))


# ------------------------------------------------------------------------------------------------
# UniFormer-S 3-D (BrainMVP's default backbone; the released code), written from the
# architecture description: conv stages with local token mixing first, global self-attention last.
# ------------------------------------------------------------------------------------------------
def _drop_path(x: torch.Tensor, p: float, training: bool, stream: str) -> torch.Tensor:
    """Stochastic depth, one keyed draw per sample (:mod:`umdbench.draws`). The rows of ``x`` may be
    several views of the step's local batch stacked view after view (BrainMVP, SimCLR): each view of
    a sample gets its own draw, whatever the split of the batch."""
    if p <= 0.0 or not training:
        return x
    n, ctx = x.shape[0], draws.current()
    views = n // len(ctx.positions) if ctx is not None and n % len(ctx.positions) == 0 else 1
    u = draws.rand(n // views, views, stream=stream, device=x.device)  # raises unless rows are views of the batch
    keep = (u.t().reshape(n) >= p).to(x.dtype).view(n, *(1,) * (x.dim() - 1))
    return x * keep / (1.0 - p)


class _PatchEmbed3d(nn.Module):
    """Downsampling between stages: a ``stride``-cubed conv of the same stride, then LayerNorm
    over channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.proj = nn.Conv3d(in_ch, out_ch, kernel_size=stride, stride=stride)
        self.norm = nn.LayerNorm(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class _LocalBlock(nn.Module):
    """Conv stage block: dynamic position encoding (depthwise 3^3 conv, residual), local relation
    aggregation (BatchNorm -> 1x1 -> depthwise ``kernel``^3 -> 1x1, residual), conv MLP (BatchNorm ->
    1x1 -> GELU -> 1x1, residual)."""

    def __init__(self, dim: int, mlp_ratio: float, kernel: int, drop_path: float, index: int):
        super().__init__()
        self.pos = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm3d(dim)
        self.mix = nn.Sequential(
            nn.Conv3d(dim, dim, 1), nn.Conv3d(dim, dim, kernel, padding=kernel // 2, groups=dim), nn.Conv3d(dim, dim, 1)
        )
        self.norm2 = nn.BatchNorm3d(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Conv3d(dim, hidden, 1), nn.GELU(), nn.Conv3d(hidden, dim, 1))
        self.drop_path = drop_path
        self.stream = f"drop_path.{index}"  # the block's own keyed draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        x = x + _drop_path(self.mix(self.norm1(x)), self.drop_path, self.training, f"{self.stream}.mix")
        return x + _drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training, f"{self.stream}.mlp")


class _GlobalBlock(nn.Module):
    """Attention stage block: the same dynamic position encoding, then a pre-norm transformer
    block (LayerNorm -> multi-head self-attention over every voxel token -> residual; LayerNorm ->
    MLP -> residual). Attention by ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float, qkv_bias: bool, drop_path: float, index: int):
        super().__init__()
        self.heads = dim // head_dim
        self.pos = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = drop_path
        self.stream = f"drop_path.{index}"  # the block's own keyed draws

    def attention(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        q, k, v = self.qkv(t).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        b, c, d, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + _drop_path(self.attention(self.norm1(t)), self.drop_path, self.training, f"{self.stream}.attn")
        t = t + _drop_path(self.mlp(self.norm2(t)), self.drop_path, self.training, f"{self.stream}.mlp")
        return t.transpose(1, 2).reshape(b, c, d, h, w)


class UniFormerEncoder(VolumeEncoder):
    """UniFormer-style 3-D encoder: a patch-embedding step (stride ``stem_stride``, then 2) before
    each stage; ``local_stages`` conv stages with local relation aggregation, then global
    self-attention stages (``head_dim`` channels per head); a final BatchNorm on the deepest map.
    Returns every stage's output (strides ``stem_stride`` x 1, 2, 4, 8). ``paper`` is the released
    ``uniformer_small`` geometry (the released code: widths 64/128/320/512, depths
    3/4/8/3, head_dim 64, MLP ratio 4, qkv bias, stem stride 2, 96^3 -> 48/24/12/6); the
    full-resolution skip of the released UNETR decoder is a conv on the raw input, which is the
    segmentation decoder's stem here. Convs start Kaiming-normal (fan_out), the rest PyTorch's
    defaults, as released. ``tiny`` is the notes' 2-core sizing (widths 16/32/64/128, depth 1, 32^3)."""

    name = "uniformer3d"
    released_backbone = True

    @classmethod
    def batch_coupled_terms(cls, cfg: dict) -> list[str]:
        # under DDP the core swaps these for global-batch BatchNorm; micro-batches cannot share statistics
        return ["BatchNorm statistics of the batch"]

    presets: ClassVar[dict[str, dict]] = {
        "tiny": {
            "modalities": BRATS_MODALITIES,
            "roi_size": 32,
            "widths": [16, 32, 64, 128],
            "depths": [1, 1, 1, 1],
            "local_stages": 2,
            "head_dim": 32,
            "mlp_ratio": 4.0,
            "qkv_bias": True,
            "local_kernel": 5,
            "stem_stride": 2,
            "drop_path": 0.0,
        },
        # the released layout (two conv stages, then two attention stages, patch-embed before each)
        # at a quarter of its widths with the released head counts (5 and 8 heads of 16 channels),
        # about a third of its depths and a third of its crop edge: what the brain suites' boards
        # train on 2 CPU cores (the brain README, "The small preset")
        "small": {
            "modalities": BRATS_MODALITIES,
            "roi_size": 32,
            "widths": [16, 32, 80, 128],
            "depths": [1, 1, 2, 1],
            "local_stages": 2,
            "head_dim": 16,
            "mlp_ratio": 4.0,
            "qkv_bias": True,
            "local_kernel": 5,
            "stem_stride": 2,
            "drop_path": 0.0,
        },
        "paper": {
            "modalities": BRATS_MODALITIES,
            "roi_size": 96,
            "widths": [64, 128, 320, 512],
            "depths": [3, 4, 8, 3],
            "local_stages": 2,
            "head_dim": 64,
            "mlp_ratio": 4.0,
            "qkv_bias": True,
            "local_kernel": 5,
            "stem_stride": 2,
            "drop_path": 0.0,
        },
    }

    @classmethod
    def stride_multiple(cls, cfg: dict) -> int:
        return int(cfg["stem_stride"]) * 2 ** (len(cfg["widths"]) - 1)

    # what a run's geometry is compared with: the released UniFormer-S and its 96^3 crop
    GEOMETRY_KEYS: ClassVar[tuple[str, ...]] = (
        "roi_size",
        "widths",
        "depths",
        "local_stages",
        "head_dim",
        "mlp_ratio",
        "qkv_bias",
        "local_kernel",
        "stem_stride",
        "drop_path",
    )

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        released = cls.presets["paper"]
        diffs = [f"{k} {cfg.get(k)} (released {released[k]})" for k in cls.GEOMETRY_KEYS if cfg.get(k) != released[k]]
        return ["UniFormer-S reduced: " + ", ".join(diffs)] if diffs else []

    @classmethod
    def check(cls, cfg: dict) -> None:
        widths, depths = [int(w) for w in cfg["widths"]], [int(d) for d in cfg["depths"]]
        if len(widths) != len(depths) or not widths or min(depths) < 1:
            raise ValueError(
                f"uniformer3d: widths {widths} and depths {depths} must be equally long and every depth "
                f">= 1; set model.widths and model.depths"
            )
        local = int(cfg["local_stages"])
        if not 0 <= local <= len(widths):
            raise ValueError(f"uniformer3d: local_stages={local} must lie in 0..{len(widths)} (the number of stages)")
        head_dim = int(cfg["head_dim"])
        bad = [w for w in widths[local:] if head_dim <= 0 or w % head_dim]
        if bad:
            raise ValueError(
                f"uniformer3d: attention stage widths {bad} are not multiples of head_dim={head_dim}; "
                f"set model.head_dim to a divisor of {widths[local:]}"
            )
        if int(cfg["stem_stride"]) < 1 or int(cfg["local_kernel"]) % 2 == 0:
            raise ValueError(
                f"uniformer3d: stem_stride={cfg['stem_stride']} must be >= 1 and local_kernel={cfg['local_kernel']} odd"
            )
        if not 0.0 <= float(cfg["drop_path"]) < 1.0:
            raise ValueError(f"uniformer3d: drop_path={cfg['drop_path']} must lie in [0, 1)")

    def __init__(self, cfg: dict):
        self.check(cfg)
        super().__init__(cfg)
        widths, depths = [int(w) for w in cfg["widths"]], [int(d) for d in cfg["depths"]]
        local, stem = int(cfg["local_stages"]), int(cfg["stem_stride"])
        mlp_ratio, kernel = float(cfg["mlp_ratio"]), int(cfg["local_kernel"])
        total = sum(depths)  # stochastic depth grows linearly with depth, 0 at the first block
        rates = [float(cfg["drop_path"]) * j / max(total - 1, 1) for j in range(total)]
        embeds, stages, prev, k = [], [], self.in_channels, 0
        for i, (width, depth) in enumerate(zip(widths, depths)):
            embeds.append(_PatchEmbed3d(prev, width, stem if i == 0 else 2))
            if i < local:
                blocks = [_LocalBlock(width, mlp_ratio, kernel, rates[k + j], k + j) for j in range(depth)]
            else:
                blocks = [
                    _GlobalBlock(width, int(cfg["head_dim"]), mlp_ratio, bool(cfg["qkv_bias"]), rates[k + j], k + j)
                    for j in range(depth)
                ]
            stages.append(nn.Sequential(*blocks))
            prev, k = width, k + depth
        self.embeds, self.stages = nn.ModuleList(embeds), nn.ModuleList(stages)
        self.norm = nn.BatchNorm3d(widths[-1])
        self.feature_channels = tuple(widths)
        self.feature_strides = tuple(stem * 2**i for i in range(len(widths)))
        self.hidden_size = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, volume: torch.Tensor) -> list[torch.Tensor]:
        features, x = [], volume
        for embed, stage in zip(self.embeds, self.stages):
            x = stage(embed(x))
            features.append(x)
        features[-1] = self.norm(features[-1])
        return features

    def compile_targets(self) -> list[nn.Module]:
        return list(self.stages)


# ------------------------------------------------------------------------------------------------
# MONAI's networks as feature pyramids
# ------------------------------------------------------------------------------------------------
_MONAI_ARCHS = ("swinunetr", "unetr", "basicunet")


class MonaiEncoder(VolumeEncoder):
    """The encoder side of one of MONAI's 3-D segmentation networks, random init, chosen by
    ``arch`` (its own options under the key of the same name):

    * ``swinunetr``: SwinUNETR's Swin transformer, its hidden states (strides 2..32), built exactly
      as ``swinvit3d`` builds it;
    * ``unetr``: UNETR's ViT (patch 16) with UNETR's encoder side: the hidden states after blocks
      L/4, L/2 and 3L/4 (3, 6, 9 of 12) reshaped to the patch grid and brought to strides 2, 4, 8 by
      ``UnetrPrUpBlock`` s (feature_size x 2, 4, 8 channels), plus the normed last state at stride 16
      (hidden_size channels). UNETR's full-resolution ``encoder1`` is the segmentation decoder's stem.
      An input whose patch grid differs from ``roi_size``'s (whole-volume classification) gets the
      learned position embeddings trilinearly resized;
    * ``basicunet``: BasicUNet's down path (``TwoConv`` then four max-pool ``Down`` steps; strides
      1..16, channels ``features``).

    ``paper`` holds each network's published configuration at 96^3 (SwinUNETR's BraTS setting,
    UNETR's defaults, BasicUNet's defaults), ``tiny`` 2-core sizes at 32^3."""

    name = "monai3d"
    presets: ClassVar[dict[str, dict]] = {
        "tiny": {
            "modalities": BRATS_MODALITIES,
            "roi_size": 32,
            "arch": "swinunetr",
            "swinunetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "window_size": 4},
            "unetr": {"feature_size": 8, "hidden_size": 64, "mlp_dim": 128, "num_layers": 4, "num_heads": 4},
            "basicunet": {"features": [8, 8, 16, 32, 64]},
        },
        "small": {
            "modalities": BRATS_MODALITIES,
            "roi_size": 32,
            "arch": "swinunetr",
            "swinunetr": {"feature_size": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "window_size": 4},
            "unetr": {"feature_size": 16, "hidden_size": 192, "mlp_dim": 768, "num_layers": 4, "num_heads": 4},
            "basicunet": {"features": [16, 16, 32, 64, 128]},
        },
        "paper": {
            "modalities": BRATS_MODALITIES,
            "roi_size": 96,
            "arch": "swinunetr",
            "swinunetr": {"feature_size": 48, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24], "window_size": 7},
            "unetr": {"feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12},
            "basicunet": {"features": [32, 32, 64, 128, 256]},
        },
    }

    @staticmethod
    def arch_of(cfg: dict) -> str:
        arch = cfg.get("arch")
        if arch not in _MONAI_ARCHS:
            raise ValueError(
                f"monai3d: arch={arch!r} is not one of {', '.join(_MONAI_ARCHS)}; set model.arch to one of them"
            )
        if not isinstance(cfg.get(arch), dict):
            raise ValueError(
                f"monai3d: arch={arch!r} needs its options under model.{arch} (a mapping; the presets have one)"
            )
        return arch

    @classmethod
    def stride_multiple(cls, cfg: dict) -> int:
        arch = cls.arch_of(cfg)
        if arch == "swinunetr":
            return 2 ** (len(cfg[arch]["depths"]) + 1)
        if arch == "unetr":
            return 16
        return 2 ** (len(cfg[arch]["features"]) - 1)

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.arch = self.arch_of(cfg)
        opts = dict(cfg[self.arch])
        if self.arch == "swinunetr":
            self.swin, self.feature_channels, self.feature_strides = _swin_transformer(self.in_channels, opts)
        elif self.arch == "unetr":
            self._build_unetr(opts)
        else:
            self._build_basicunet(opts)
        self.hidden_size = self.feature_channels[-1]

    @staticmethod
    def unetr_taps(layers: int) -> tuple[int, int, int]:
        """The ViT blocks whose outputs feed UNETR's strides 2, 4, 8: 3, 6, 9 of 12, evenly spaced otherwise."""
        return tuple(k * layers // 4 for k in (1, 2, 3))

    def _build_unetr(self, opts: dict) -> None:
        from monai.networks.blocks import UnetrPrUpBlock
        from monai.networks.nets.vit import ViT

        hidden, layers, heads = int(opts["hidden_size"]), int(opts["num_layers"]), int(opts["num_heads"])
        fs = int(opts["feature_size"])
        if layers < 4 or hidden % heads:
            raise ValueError(
                f"monai3d unetr: num_layers={layers} must be >= 4 (three distinct skip layers) and "
                f"hidden_size={hidden} divisible by num_heads={heads}; set model.unetr.*"
            )
        self.vit = ViT(
            in_channels=self.in_channels,
            img_size=(self.roi_size,) * 3,
            patch_size=(16,) * 3,
            hidden_size=hidden,
            mlp_dim=int(opts["mlp_dim"]),
            num_layers=layers,
            num_heads=heads,
            proj_type="conv",
            classification=False,
            dropout_rate=0.0,
            spatial_dims=3,
            qkv_bias=False,
        )
        for block in self.vit.blocks:  # MONAI builds a cross-attention LayerNorm it never uses without cross-attention;
            block.norm_cross_attn = nn.Identity()  # drop it so every parameter gets a gradient (DDP, optimiser state)
        self.skip_layers = self.unetr_taps(layers)
        self.ups = nn.ModuleList(
            UnetrPrUpBlock(
                spatial_dims=3,
                in_channels=hidden,
                out_channels=fs * 2 ** (i + 1),
                num_layer=2 - i,
                kernel_size=3,
                stride=1,
                upsample_kernel_size=2,
                norm_name="instance",
                conv_block=True,
                res_block=True,
            )
            for i in range(3)
        )
        self.feature_channels = (fs * 2, fs * 4, fs * 8, hidden)
        self.feature_strides = (2, 4, 8, 16)

    def _build_basicunet(self, opts: dict) -> None:
        from monai.networks.nets.basic_unet import Down, TwoConv

        features = [int(f) for f in opts["features"]]
        if len(features) < 2 or min(features) < 1:
            raise ValueError(
                f"monai3d basicunet: features {features} needs at least two positive widths "
                f"(full resolution, then one per max-pool step); set model.basicunet.features"
            )
        act, norm = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}), ("instance", {"affine": True})
        down = [TwoConv(3, self.in_channels, features[0], act, norm, True, 0.0)]
        down += [Down(3, a, b, act, norm, True, 0.0) for a, b in zip(features[:-1], features[1:])]
        self.down = nn.ModuleList(down)
        self.feature_channels = tuple(features)
        self.feature_strides = tuple(2**i for i in range(len(features)))

    def _vit_tokens(self, volume: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int, int]]:
        embed = self.vit.patch_embedding
        x = embed.patch_embeddings(volume)
        grid = tuple(x.shape[2:])
        pos = embed.position_embeddings
        if grid != (self.roi_size // 16,) * 3:
            side = self.roi_size // 16
            pos = pos.transpose(1, 2).reshape(1, -1, side, side, side)
            pos = F.interpolate(pos, size=grid, mode="trilinear", align_corners=False).flatten(2).transpose(1, 2)
        t = embed.dropout(x.flatten(2).transpose(1, 2) + pos)
        states = []
        for block in self.vit.blocks:
            t = block(t)
            states.append(t)
        states.append(self.vit.norm(t))
        return states, grid

    def forward(self, volume: torch.Tensor) -> list[torch.Tensor]:
        if self.arch == "swinunetr":
            return list(self.swin(volume, normalize=True))
        if self.arch == "basicunet":
            features, x = [], volume
            for step in self.down:
                x = step(x)
                features.append(x)
            return features
        states, grid = self._vit_tokens(volume)

        def grid_map(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)

        skips = [up(grid_map(states[i])) for up, i in zip(self.ups, self.skip_layers)]
        return [*skips, grid_map(states[-1])]

    def compile_targets(self) -> list[nn.Module]:
        if self.arch == "swinunetr":
            return [self.swin]
        if self.arch == "unetr":
            return [self.vit.blocks, self.ups]
        return list(self.down)
