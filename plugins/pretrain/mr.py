"""MR-Pretrain (UMD, Section 3.2): multi-level reconstruction pre-training.

L = (1 - alpha) (L_MIM + L_MLM) + alpha (L_FeaMIM + L_FeaMLM) + L_ITM      (Eq. 7)

One student pass on the masked pair (75 % of patches dropped, 15 % of tokens MLM-masked) gives
L_MIM, L_MLM and the student features; a no-grad EMA teacher pass on the unmasked pair gives the
feature targets; a separate unmasked student pass with half the images swapped gives L_ITM.
"""

from __future__ import annotations

import copy

import torch

from umdbench.api import Option, PretrainStrategy
from umdbench.kit.recipes import PRETRAIN_TRAIN_PAPER, PRETRAIN_TRAIN_SMALL, PRETRAIN_TRAIN_TINY
from umdbench.models.heads import itm_head
from umdbench.models.objectives import global_itm_sources, itm_loss
from umdbench.models.reconstruction import RECONSTRUCTION_OPTIONS, MultiLevelReconstruction

_COMMON = {
    "image_mask_ratio": 0.75,
    "text_mask_ratio": 0.15,
    "alpha": 0.5,
    "ema_decay": 0.995,
    # Eq. 1 regresses raw pixels (here: the CLIP-normalised input patches); the released code
    # normalises each target patch (set true to match it).
    "norm_pix_loss": False,
    "itm": True,
    "upstream_quirks": False,
    "quirks": {},
}


class MRPretrain(MultiLevelReconstruction, PretrainStrategy):
    name = "mr"
    version = "1"
    task_types = ("pretrain",)  # image-text pairs
    encoders = ("coattn",)  # MIM, MLM and ITM through the co-attention encoder and its text tower
    option_schema = {
        **RECONSTRUCTION_OPTIONS,
        "alpha": Option(float, 0.5, "Eq. 7: weight of the feature-level terms"),
        "itm": Option(bool, True, "add the image-text matching term"),
        "freeze_text": Option(
            bool,
            False,
            "keep the text tower's weights fixed (a probe of whether "
            "MLM on a small corpus pulls a pretrained tower away)",
        ),
    }
    presets = {
        "tiny": {
            **copy.deepcopy(_COMMON),
            "decoder": {"dim": 64, "depth": 1, "heads": 2},
            "fea_dim": 64,
            "train": copy.deepcopy(PRETRAIN_TRAIN_TINY),
        },
        "small": {
            **copy.deepcopy(_COMMON),
            "decoder": {"dim": 128, "depth": 2, "heads": 4},
            "fea_dim": 128,
            "train": copy.deepcopy(PRETRAIN_TRAIN_SMALL),
        },
        "paper": {
            **copy.deepcopy(_COMMON),
            "decoder": {"dim": 384, "depth": 4, "heads": 6},
            "fea_dim": 384,
            "train": copy.deepcopy(PRETRAIN_TRAIN_PAPER),
        },
    }

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        extra = (
            ["freeze_text: the text tower is not trained during MR-Pretrain (the paper trains every tower)"]
            if cfg.get("freeze_text")
            else []
        )
        return super().deviations(cfg) + extra

    @classmethod
    def batch_coupled_terms(cls, cfg: dict) -> list[str]:
        extra = ["ITM negatives paired within the batch"] if cfg.get("itm", True) else []
        return super().batch_coupled_terms(cfg) + extra

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        if not 0.0 <= float(cfg.get("alpha", 0.5)) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {cfg.get('alpha')}")

    def __init__(self, encoder, cfg: dict):
        super().__init__(encoder, cfg)
        self._setup_reconstruction(encoder, cfg)
        self.alpha = float(cfg.get("alpha", 0.5))
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        self.use_itm = bool(cfg.get("itm", True))
        if cfg.get("freeze_text"):
            encoder.text.requires_grad_(False)  # the optimiser then skips it; MLM still trains head and fusion
        self.itm_head = itm_head(encoder.hidden_size)

    def term_weights(self) -> dict[str, float]:
        if self.quirks["fixed_half_weights"]:
            return {"mim": 0.5, "mlm": 0.5, "feamim": 0.5, "feamlm": 0.5}
        a = self.alpha
        return {"mim": 1.0 - a, "mlm": 1.0 - a, "feamim": a, "feamlm": a}

    def forward(self, batch: dict[str, torch.Tensor], mask_noise: torch.Tensor | None = None) -> dict:
        r = self.reconstruction_terms(batch, mask_noise)
        w = self.term_weights()
        out = {f"loss_{k}": w[k] * r[k] for k in ("mim", "mlm", "feamim", "feamlm")}
        out.update({k: r[k].detach() for k in ("mim", "mlm", "feamim", "feamlm", "mlm_acc")})
        if self.use_itm:
            # negatives are checked on content: a repeated image (or caption) never gives a false "mismatch"
            # drawn over the global batch: pairs may cross data-parallel ranks, as in one process
            candidates, src, labels = global_itm_sources(batch["image"], batch["text_ids"])
            o = self.encoder.forward_pairs(candidates, src, batch["text_ids"], batch["text_mask"], pooled_only=True)
            l_itm, acc = itm_loss(self.itm_head(o.pooled), labels)
            out["loss_itm"] = l_itm
            out["itm"] = l_itm.detach()
            out["itm_acc"] = acc
        return out
