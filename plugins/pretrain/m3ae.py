"""M3AE baseline: MLM (masked text, full image) + MIM (full text, 75 % masked image, features from
fusion layer ``mim_layer``) + ITM (half the images swapped), three encoder passes per step."""

from __future__ import annotations

import copy

import torch
from torch import nn

from umdbench.api import Option, PretrainStrategy
from umdbench.kit.recipes import PRETRAIN_TRAIN_PAPER, PRETRAIN_TRAIN_SMALL, PRETRAIN_TRAIN_TINY
from umdbench.models.heads import MIMDecoder, MLMHead, itm_head
from umdbench.models.masking import mask_tokens
from umdbench.models.objectives import global_itm_sources, itm_loss, mim_loss, mlm_loss
from umdbench.models.reconstruction import resolve_special_ids

_COMMON = {
    "image_mask_ratio": 0.75,
    "text_mask_ratio": 0.15,
    "norm_pix_loss": True,
    "weights": {"mlm": 1.0, "mim": 1.0, "itm": 1.0},
}


class M3AEPretrain(PretrainStrategy):
    name = "m3ae"
    version = "1"
    task_types = ("pretrain",)
    encoders = ("coattn",)  # fusion layers, text tower and ITM pairs of the co-attention encoder
    option_schema = {
        "image_mask_ratio": Option(float, 0.75, "share of image patches dropped for MIM"),
        "text_mask_ratio": Option(float, 0.15, "share of text tokens MLM-masked"),
        "norm_pix_loss": Option(bool, True, "MIM targets are per-patch normalised pixels"),
        "weights": Option(dict, {"mlm": 1.0, "mim": 1.0, "itm": 1.0}, "term weights"),
        "mim_layer": Option(
            (int, type(None)), -1, "fusion layer whose image features MIM reads; -1 or null = the last"
        ),
        "decoder": Option(dict, {"dim": 384, "depth": 4, "heads": 6}, "MIM decoder geometry"),
    }
    presets = {
        # tiny has 2 fusion layers: the MIM decoder reads the image stream after the first one
        "tiny": {
            **copy.deepcopy(_COMMON),
            "mim_layer": 1,
            "decoder": {"dim": 64, "depth": 1, "heads": 2},
            "train": copy.deepcopy(PRETRAIN_TRAIN_TINY),
        },
        "small": {
            **copy.deepcopy(_COMMON),
            "mim_layer": 1,
            "decoder": {"dim": 128, "depth": 2, "heads": 4},
            "train": copy.deepcopy(PRETRAIN_TRAIN_SMALL),
        },
        # paper geometry: 6 fusion layers, MIM from the image stream after 3 (the M3AE setting);
        # M3AE pretrains at 288 px, the UMD comparison uses the shared 384 px encoder preset.
        "paper": {
            **copy.deepcopy(_COMMON),
            "mim_layer": 3,
            "decoder": {"dim": 384, "depth": 4, "heads": 6},
            "train": copy.deepcopy(PRETRAIN_TRAIN_PAPER),
        },
    }

    @classmethod
    def batch_coupled_terms(cls, cfg: dict) -> list[str]:
        return ["L_MLM averaged over the batch's masked tokens", "ITM negatives paired within the batch"]

    def __init__(self, encoder, cfg: dict):
        super().__init__(encoder, cfg)
        self.special_ids = resolve_special_ids(cfg, encoder)
        d = cfg.get("decoder", {})
        H = encoder.hidden_size
        self.mim_decoder = MIMDecoder(
            H,
            int(d.get("dim", 384)),
            int(d.get("depth", 4)),
            int(d.get("heads", 6)),
            encoder.patch_size,
            tuple(encoder.vision.patch_embed.grid_size),
        )
        self.mlm_head = MLMHead(H, int(encoder.text.config.vocab_size))
        self.itm_head = itm_head(H)
        layers = len(encoder.fusion.image_layers)
        ml = cfg.get("mim_layer", -1)
        self.mim_layer = None if ml in (None, -1) or ml == layers else int(ml)
        if self.mim_layer is not None and not 0 <= self.mim_layer <= layers:
            raise ValueError(f"mim_layer {ml} out of range for {layers} fusion layers")
        self.image_mask_ratio = float(cfg.get("image_mask_ratio", 0.75))
        self.text_mask_ratio = float(cfg.get("text_mask_ratio", 0.15))
        self.norm_pix_loss = bool(cfg.get("norm_pix_loss", True))
        self.weights = {"mlm": 1.0, "mim": 1.0, "itm": 1.0, **cfg.get("weights", {})}

    def compile_targets(self) -> list[nn.Module]:
        return super().compile_targets() + list(self.mim_decoder.blocks)

    def forward(self, batch: dict[str, torch.Tensor], mask_noise: torch.Tensor | None = None) -> dict:
        image, ids, mask = batch["image"], batch["text_ids"], batch["text_mask"]
        out = {}
        # MLM: masked text, full image
        mlm_ids, labels = mask_tokens(ids, mask, self.special_ids, self.text_mask_ratio)
        o = self.encoder(image, mlm_ids, mask)
        l_mlm, acc = mlm_loss(self.mlm_head, o.text_feats, labels)
        # MIM: full text, masked image
        o = self.encoder(
            image,
            ids,
            mask,
            image_mask_ratio=self.image_mask_ratio,
            mask_noise=mask_noise,
            capture_layer=self.mim_layer,
        )
        feats = o.image_feats if self.mim_layer is None else o.image_feats_at_layer
        pred = self.mim_decoder(feats, o.ids_restore)
        l_mim = mim_loss(pred, self.encoder.patchify(image), o.image_mask, self.norm_pix_loss)
        # ITM
        # negatives are checked on content: a repeated image (or caption) never gives a false "mismatch"
        # drawn over the global batch: pairs may cross data-parallel ranks, as in one process
        candidates, src, itm_labels = global_itm_sources(image, ids)
        o = self.encoder.forward_pairs(candidates, src, ids, mask, pooled_only=True)
        l_itm, itm_acc = itm_loss(self.itm_head(o.pooled), itm_labels)
        w = self.weights
        out.update(
            {
                "loss_mlm": w["mlm"] * l_mlm,
                "loss_mim": w["mim"] * l_mim,
                "loss_itm": w["itm"] * l_itm,
                "mlm": l_mlm.detach(),
                "mim": l_mim.detach(),
                "itm": l_itm.detach(),
                "mlm_acc": acc,
                "itm_acc": itm_acc,
            }
        )
        return out
