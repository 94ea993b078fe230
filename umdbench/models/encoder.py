"""The shared multi-modal encoder E = (E^I, E^T, F) of the UMD paper (M3AE architecture)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

from umdbench.api import Encoder

from .fusion import Fusion
from .presets import ENCODER_PRESETS
from .text import build_text_tower, text_forward, text_layers, text_width
from .vision import build_vision_tower, grid_of, vision_forward

log = logging.getLogger(__name__)


@dataclass
class EncoderOutput:
    text_feats: torch.Tensor | None  # [B, L, D] fused
    image_feats: torch.Tensor | None  # [B, 1+Nvis, D] fused, CLS first
    text_pooled: torch.Tensor | None  # [B, D]
    image_pooled: torch.Tensor | None  # [B, D]
    uni_text: torch.Tensor | None  # [B, L, Dt] language encoder output
    uni_image: torch.Tensor | None  # [B, 1+Nvis, Dv] vision encoder output
    ids_restore: torch.Tensor | None = None  # [B, N]
    image_mask: torch.Tensor | None = None  # [B, N], 1 = masked / dropped
    image_feats_at_layer: torch.Tensor | None = None  # image stream after `capture_layer` fusion layers

    @property
    def pooled(self) -> torch.Tensor:
        return torch.cat([self.text_pooled, self.image_pooled], dim=-1)


def _init_new_module(module: nn.Module) -> None:
    """normal(0, 0.02) Linear/Embedding, zero bias, LayerNorm (1, 0): the M3AE init of new modules."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MultimodalEncoder(Encoder):
    """Vision tower ``vision`` (timm ViT), language tower ``text`` (transformers), modality-type
    embedding ``type_embed`` and co-attention ``fusion``. Strategy heads are not part of it.

    Registered as the encoder ``coattn`` (the built-in, and the default of the image + text datasets).
    """

    name = "coattn"
    presets = ENCODER_PRESETS

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        from .availability import init_deviations

        return init_deviations(_complete(cfg))

    @classmethod
    def from_config(cls, cfg: dict) -> "MultimodalEncoder":
        return build_encoder({k: v for k, v in cfg.items() if k != "type"})

    @classmethod
    def build_tokenizer(cls, cfg: dict):
        from .text import build_tokenizer

        return build_tokenizer(cfg)

    def compile_targets(self) -> list[nn.Module]:
        # the blocks that dominate a step; names and state dicts are unchanged by nn.Module.compile
        return list(self.vision.blocks) + [self.text] + list(self.fusion.text_layers) + list(self.fusion.image_layers)

    def checkpoint_targets(self) -> list[nn.Module]:
        # what train.activation_checkpointing recomputes in backward: every block of the three
        # stacks, each a function of its inputs and weights only (umdbench.models.activation_checkpointing)
        return (
            list(self.vision.blocks)
            + text_layers(self.text)
            + list(self.fusion.text_layers)
            + list(self.fusion.image_layers)
        )

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = copy.deepcopy(cfg)
        self.image_size = int(cfg["image_size"])
        self.patch_size = int(cfg["patch_size"])
        self.max_text_len = int(cfg["max_text_len"])
        self.vision = build_vision_tower(cfg["vision"], self.image_size, self.patch_size)
        self.text = build_text_tower(cfg["text"], self.max_text_len)
        self.vision_width = int(self.vision.embed_dim)
        self.text_width = text_width(self.text)
        self.fusion = Fusion(self.text_width, self.vision_width, cfg["fusion"])
        self.hidden_size = self.fusion.hidden_size
        # type 0 = text, 1 = image (kept outside `fusion` so it gets the base lr, as upstream)
        self.type_embed = nn.Embedding(2, self.hidden_size)
        _init_new_module(self.fusion)
        _init_new_module(self.type_embed)
        self.num_patches = int(self.vision.patch_embed.num_patches)
        # "drop" (default): only visible patches enter the ViT; "mask_tokens": the slow reference
        # (see umdbench.models.reference), used by the benchmarks only
        self.masked_path = "drop"
        # forward_pairs: each distinct image through the ViT once (False: the reference, one per pair)
        self.share_pair_images = True
        # pooled_only forwards skip the unread positions of the last fusion layer (False: reference)
        self.trim_pooled_only = True
        self._register_load_state_dict_pre_hook(self._resample_pos_embed_hook)

    # -- weights ------------------------------------------------------------------------------
    def _resample_pos_embed_hook(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "vision.pos_embed"
        if key in state_dict and state_dict[key].shape != self.vision.pos_embed.shape:
            old = state_dict[key]
            n_old = old.shape[1] - 1
            side = int(round(n_old**0.5))
            if side * side != n_old:
                return  # not a square grid: let load_state_dict report the mismatch
            from timm.layers import resample_abs_pos_embed  # lazily: see vision.py

            state_dict[key] = resample_abs_pos_embed(
                old, new_size=list(grid_of(self.vision)), old_size=[side, side], num_prefix_tokens=1
            )
            log.info("resampled %s from %dx%d to %s", key, side, side, grid_of(self.vision))

    # -- parts --------------------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor, mask_ratio: float = 0.0, noise: torch.Tensor | None = None):
        """Vision tower only: ``(uni_image [B,1+K,Dv], image_mask, ids_restore)``."""
        return vision_forward(self.vision, image, mask_ratio, noise, self.masked_path)

    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return text_forward(self.text, text_ids, text_mask)

    def fuse(self, uni_text, text_mask, uni_image, capture_layer: int | None = None, pooled_only: bool = False):
        """``pooled_only``: the caller reads only the pooled features, so the last fusion layer
        computes the first tokens only (``text_feats``/``image_feats`` are then ``[B,1,D]``)."""
        t = self.fusion.text_proj(uni_text) + self.type_embed.weight[0]
        i = self.fusion.image_proj(uni_image) + self.type_embed.weight[1]
        trim = pooled_only and self.trim_pooled_only and capture_layer is None
        text, image, captured = self.fusion(t, text_mask, i, capture_layer, first_tokens_only=trim)
        return text, image, self.fusion.text_pooler(text), self.fusion.image_pooler(image), captured

    def forward(
        self,
        image: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        image_mask_ratio: float = 0.0,
        fuse: bool = True,
        *,
        mask_noise: torch.Tensor | None = None,
        capture_layer: int | None = None,
        pooled_only: bool = False,
    ) -> EncoderOutput:
        """``mask_noise`` [B, N] fixes the patch shuffle; ``capture_layer`` k also returns the image
        stream after k fusion layers (M3AE's ``mim_layer``)."""
        uni_image, image_mask, ids_restore = self.encode_image(image, image_mask_ratio, mask_noise)
        return self._text_and_fusion(
            uni_image, image_mask, ids_restore, text_ids, text_mask, fuse, capture_layer, pooled_only
        )

    def _text_and_fusion(
        self,
        uni_image,
        image_mask,
        ids_restore,
        text_ids,
        text_mask,
        fuse: bool = True,
        capture_layer: int | None = None,
        pooled_only: bool = False,
    ) -> EncoderOutput:
        """The rest of a forward once the vision tower has run: text tower, then fusion."""
        uni_text = self.encode_text(text_ids, text_mask)
        out = EncoderOutput(None, None, None, None, uni_text, uni_image, ids_restore, image_mask)
        if fuse:
            (out.text_feats, out.image_feats, out.text_pooled, out.image_pooled, out.image_feats_at_layer) = self.fuse(
                uni_text, text_mask, uni_image, capture_layer, pooled_only
            )
        return out

    def forward_pairs(
        self,
        image: torch.Tensor,
        src: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        pooled_only: bool = False,
    ) -> EncoderOutput:
        """Fused pairs (``image[src[i]]``, text ``i``), e.g. ITM's half-mismatched batch.

        The ViT works per image, so when the batch repeats images (ITM rolls half of them onto
        their neighbours, leaving about a quarter unused) each distinct image is encoded once and
        its output indexed: same outputs, and the same gradients, as encoding ``image[src]``, for
        a quarter (batch 2: half) less vision work. Falls back to encoding ``image[src]`` when the
        ViT is stochastic (drop path in training), where a repeat would share its random draws.
        """
        stochastic = self.training and float(self.cfg["vision"].get("drop_path", 0.0)) > 0
        if not self.share_pair_images or stochastic:
            return self(image[src], text_ids, text_mask, pooled_only=pooled_only)
        used, inverse = torch.unique(src, return_inverse=True)
        uni_image, image_mask, ids_restore = self.encode_image(image[used])
        return self._text_and_fusion(
            uni_image[inverse], image_mask, ids_restore, text_ids, text_mask, pooled_only=pooled_only
        )

    # -- helpers ------------------------------------------------------------------------------
    def patchify(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, N, p*p*3], patches row-major, channel-last inside a patch."""
        p = self.patch_size
        B, C, H, W = image.shape
        h, w = H // p, W // p
        x = image.reshape(B, C, h, p, w, p)
        x = torch.einsum("bchpwq->bhwpqc", x)
        return x.reshape(B, h * w, p * p * C)

    def unpatchify(self, patches: torch.Tensor, height: int | None = None) -> torch.Tensor:
        p = self.patch_size
        B, N, _ = patches.shape
        h = (height // p) if height else int(round(N**0.5))
        w = N // h
        x = patches.reshape(B, h, w, p, p, 3)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(B, 3, h * p, w * p)

    def modality_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Which parameters belong to which modality (GM-Coord): each tower plus its fusion
        projection and fusion stream. Poolers and the type embedding belong to neither (upstream)."""
        out: dict[str, list] = {"image": [], "text": []}
        for name, p in self.named_parameters():
            if name.startswith(("vision.", "fusion.image_proj.", "fusion.image_layers.")):
                out["image"].append((name, p))
            elif name.startswith(("text.", "fusion.text_proj.", "fusion.text_layers.")):
                out["text"].append((name, p))
        return out


def _complete(cfg: dict) -> dict:
    """Fill missing keys from the preset named by ``cfg.get('preset', 'tiny')``."""
    from umdbench.api import deep_merge

    base = ENCODER_PRESETS[cfg.get("preset", "tiny")] if cfg.get("preset", "tiny") in ENCODER_PRESETS else {}
    return deep_merge(base, {k: v for k, v in cfg.items() if k != "preset"})


def build_encoder(cfg: dict) -> MultimodalEncoder:
    """Build the encoder from an encoder config (an ``ENCODER_PRESETS`` entry, possibly overridden;
    an optional ``preset`` key names the base preset for missing keys). Loads vision weights when
    ``vision.pretrained == "clip"`` or ``vision.checkpoint`` is set."""
    cfg = _complete(cfg)
    enc = MultimodalEncoder(cfg)
    vcfg = cfg["vision"]
    from .weights import load_clip_vit_b16, load_vision_state_dict, read_state_dict  # imports timm: see vision.py

    if vcfg.get("checkpoint"):
        load_vision_state_dict(enc.vision, read_state_dict(vcfg["checkpoint"]), str(vcfg["checkpoint"]))
        log.info("vision tower loaded from %s", vcfg["checkpoint"])
    elif vcfg.get("pretrained") == "clip":
        from .availability import clip_available

        if clip_available() or vcfg.get("on_missing", "error") != "random":
            load_clip_vit_b16(enc.vision)
        else:  # opted in; resolve() recorded it in the run's deviations
            log.warning("vision tower: CLIP ViT-B/16 not available offline; random init (vision.on_missing=random)")
    elif vcfg.get("pretrained"):
        raise ValueError(
            f"vision.pretrained must be None or 'clip', got {vcfg['pretrained']!r} "
            "(use vision.checkpoint for a local file)"
        )
    return enc
