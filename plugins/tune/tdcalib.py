"""TD-Calib (UMD Section 3.3.1, Eq. 8): task-oriented distribution calibration.

Continues the S = 4 reconstruction objectives of MR-Pretrain (MIM, MLM, FeaMIM, FeaMLM) on the
downstream training split (images + questions / captions), with 75 % / 15 % masking and an EMA
teacher, using no labels. The hand-off to the next stage is the encoder only.
"""

from __future__ import annotations

import copy

import torch

from umdbench.api import Option, TuneStrategy, train_config
from umdbench.models.reconstruction import RECONSTRUCTION_OPTIONS, MultiLevelReconstruction

UPSTREAM_FEATURE_WEIGHT = 1e-5

_TRAIN_PAPER = train_config(
    max_iters=5760,
    batch_size=32,
    lr=1e-5,
    lr_mult={"encoder": 1.0, "fusion": 5.0, "head": 50.0},
    checkpoint_interval=1000,
    log_interval=50,
    amp="auto",
)

_COMMON = {
    "image_mask_ratio": 0.75,
    "text_mask_ratio": 0.15,
    "ema_decay": 0.995,
    "norm_pix_loss": False,
    # Eq. 8 sums the four terms: equal weights. `alpha` (if set) uses MR-Pretrain's trade-off
    # instead: (1 - alpha) for MIM/MLM, alpha for FeaMIM/FeaMLM.
    "weights": {"mim": 1.0, "mlm": 1.0, "feamim": 1.0, "feamlm": 1.0},
    "alpha": None,
    # the released code multiplies FeaMIM / FeaMLM by 1e-5; None = follow `upstream_quirks`
    "upstream_feature_weight": None,
    "upstream_quirks": False,
    "quirks": {},
}


class TDCalib(MultiLevelReconstruction, TuneStrategy):
    name = "tdcalib"
    version = "1"
    supervised = False
    encoders = ("coattn",)  # the reconstruction heads read the co-attention encoder and its text tower
    option_schema = {
        **RECONSTRUCTION_OPTIONS,
        "weights": Option(dict, {"mim": 1.0, "mlm": 1.0, "feamim": 1.0, "feamlm": 1.0}, "Eq. 8's term weights"),
        "alpha": Option(float, None, "null = Eq. 8's sum; a number in [0, 1] = Eq. 7's trade-off"),
        "upstream_feature_weight": Option(
            (bool, float),
            None,
            f"weight the feature terms {UPSTREAM_FEATURE_WEIGHT} (released code); null = as upstream_quirks",
        ),
    }
    # fresh_teacher / fixed_half_weights are MR-Pretrain-only behaviours
    quirk_names = (
        "ema_per_micro_batch",
        "teacher_train_mode",
        "feamim_bypass_decoder",
        "fea_target_grad",
        "fea_all_text_tokens",
    )
    presets = {
        "tiny": {
            **copy.deepcopy(_COMMON),
            "decoder": {"dim": 64, "depth": 1, "heads": 2},
            "fea_dim": 64,
            "train": {
                **copy.deepcopy(_TRAIN_PAPER),
                "max_iters": 100,
                "batch_size": 16,
                "lr": 2e-4,
                "lr_mult": {"encoder": 1.0, "fusion": 1.0, "head": 5.0},
                "checkpoint_interval": 50,
                "log_interval": 10,
                "grad_clip": 1.0,
                "amp": False,
            },
        },
        # small: reconstruction on the target data before the supervised stage, about half its steps
        "small": {
            **copy.deepcopy(_COMMON),
            "decoder": {"dim": 128, "depth": 2, "heads": 4},
            "fea_dim": 128,
            "train": {
                **copy.deepcopy(_TRAIN_PAPER),
                "max_iters": 150,
                "batch_size": 32,
                "lr": 1e-4,
                "lr_mult": {"encoder": 1.0, "fusion": 2.0, "head": 5.0},
                "checkpoint_interval": 50,
                "log_interval": 20,
                "grad_clip": 1.0,
                "amp": "auto",
            },
        },
        "paper": {
            **copy.deepcopy(_COMMON),
            "decoder": {"dim": 384, "depth": 4, "heads": 6},
            "fea_dim": 384,
            "train": copy.deepcopy(_TRAIN_PAPER),
            # lr from the paper; batch, steps (epochs x steps/epoch) and head multiplier from the
            # released TD-Calib run scripts
            "per_dataset": {
                "vqa-rad": {"train": {"lr": 1e-5, "batch_size": 32, "max_iters": 5760}},
                "slake": {"train": {"lr": 5e-6, "batch_size": 32, "max_iters": 3850}},
                "vqa-med-2019": {"train": {"lr": 5e-6, "batch_size": 32, "max_iters": 6000}},
                "roco": {"train": {"lr": 1e-5, "batch_size": 128, "max_iters": 5400, "lr_mult": {"head": 5.0}}},
                "melinda": {"train": {"lr": 1e-5, "batch_size": 16, "max_iters": 8160, "lr_mult": {"head": 10.0}}},
            },
        },
    }

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        alpha = cfg.get("alpha")
        if alpha is None:
            return
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(
                f"alpha must be null (Eq. 8: the four terms summed) or a number in [0, 1] "
                f"(Eq. 7's trade-off, as Fig. 5 varies it), got {alpha!r}"
            )
        upstream_fw = cfg.get("upstream_feature_weight")
        if upstream_fw is None:
            upstream_fw = bool(cfg.get("upstream_quirks", False))
        if upstream_fw:
            raise ValueError(
                f"alpha={alpha} weights the feature-level terms by alpha, but upstream_feature_weight "
                f"(also turned on by upstream_quirks) fixes them at {UPSTREAM_FEATURE_WEIGHT}: the alpha "
                f"would have no effect on them. Set tune.<i>.upstream_feature_weight=false, or drop alpha"
            )

    def __init__(self, encoder, cfg: dict, task=None):
        super().__init__(encoder, cfg, task)
        # Strategy.__init__ stores the encoder; now the heads and the EMA teacher
        self._setup_reconstruction(encoder, cfg)
        upstream_fw = cfg.get("upstream_feature_weight")
        if upstream_fw is None:
            upstream_fw = bool(cfg.get("upstream_quirks", False))
        w = {"mim": 1.0, "mlm": 1.0, "feamim": 1.0, "feamlm": 1.0, **(cfg.get("weights") or {})}
        alpha = cfg.get("alpha")
        if alpha is not None:
            a = float(alpha)
            w = {"mim": 1.0 - a, "mlm": 1.0 - a, "feamim": a, "feamlm": a}
        if upstream_fw:
            w["feamim"] = w["feamlm"] = UPSTREAM_FEATURE_WEIGHT
        self.weights = w

    def forward(self, batch: dict[str, torch.Tensor], mask_noise: torch.Tensor | None = None) -> dict:
        r = self.reconstruction_terms(batch, mask_noise)
        out = {f"loss_{k}": self.weights[k] * r[k] for k in ("mim", "mlm", "feamim", "feamlm")}
        out.update({k: r[k].detach() for k in ("mim", "mlm", "feamim", "feamlm", "mlm_acc")})
        return out
