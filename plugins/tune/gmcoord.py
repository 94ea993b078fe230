"""``gmcoord``: Gradient-guided Modality Coordination (UMD paper Sec. 3.3.2, Eq. 9-13).

Supervised tuning of encoder + task head with cross-entropy on ``H(E(I,T))`` (as ``direct``), plus
a gradient hook. Each training forward also measures, without gradient, how well each modality
alone predicts the ground truth (Eq. 10, summed over the batch); after backward the core calls
:meth:`GMCoord.modulate_gradients`, which computes rho (Eq. 11) and k (Eq. 12) and rewrites the
gradients of every parameter of the faster modality (Eq. 13). Which parameters belong to which
modality comes only from ``encoder.modality_parameters()``; heads are never touched.

Options (top level of the stage config):

* ``variant``: "paper" (default) or "upstream" (released UMD code); it sets the defaults of
* ``unimodal``: how ``H^u(Z^u)`` is formed -- "masked" (paper: the whole trained head applied to the
  features with the other modality's half zeroed) or "last_linear" (upstream: pooled half x the
  matching input half of the head's last Linear + bias/2, skipping Linear/LayerNorm/GELU);
* ``rule``: "paper" (k < 1 only for a strictly faster modality, ties leave both at 1) or "upstream"
  (``1 - tanh(beta*relu(rho))``, branch on ``rho^T > 1``, so a tie damps the image);
* ``noise``: "modulated" (paper: Eq. 13 on the modulated modality only), "both" (upstream: noise on
  both modalities, including the one with k = 1) or "none" (plain OGM rescaling);
* ``std_eps``: added to the noise std (0 paper, 1e-8 upstream);
* ``beta``: 0.1.

``modulate_gradients`` returns ``{"k_I", "k_T", "rho_I", "rho_T"}`` every step. Contributions of
several forwards before one ``modulate_gradients`` (gradient accumulation) are summed, so one
coefficient is used per optimiser step (upstream modulates after every micro-batch backward).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from umdbench.api import Option, TaskInfo
from umdbench.kit import draws, gradmod
from umdbench.kit.recipes import (
    FINETUNE_TRAIN_PAPER,
    FINETUNE_TRAIN_SMALL,
    FINETUNE_TRAIN_TINY,
    SMALL_FINETUNE_EPOCHS,
    iters_for,
    m3ae_per_dataset,
    small_per_dataset,
)
from umdbench.kit.supervised import SupervisedTune
from umdbench.kit.tasks import TaskForward, group_scores, last_linear

VARIANTS = {
    "paper": {"unimodal": "masked", "rule": "paper", "noise": "modulated", "std_eps": 0.0},
    "upstream": {"unimodal": "last_linear", "rule": "upstream", "noise": "both", "std_eps": 1e-8},
}
UNIMODAL = ("masked", "last_linear")
NOISE = ("modulated", "both", "none")


def _gmcoord_per_dataset() -> dict:
    # UMD gmcoord run scripts: M3AE batch sizes except ROCO at 128; epochs 60/25/20/30/20.
    per = m3ae_per_dataset({"vqa-rad": 60, "slake": 25, "vqa-med-2019": 20, "melinda": 30})
    per["roco"] = {"train": {"batch_size": 128, "max_iters": iters_for("roco", 128, 20), "lr_mult": {"head": 5.0}}}
    # Paper Sec. 4.2.2: wd 0.01 SLAKE/MELINDA, 0.1 otherwise; linear decay for VQA-Med-2019, cosine otherwise.
    for ds, wd in {"vqa-rad": 0.1, "slake": 0.01, "vqa-med-2019": 0.1, "melinda": 0.01, "roco": 0.1}.items():
        per[ds]["train"]["weight_decay"] = wd
    per["vqa-med-2019"]["train"]["schedule"] = "linear"
    return per


# unimodal / rule / noise / std_eps: None = as the variant says; listed so --cfg-options can set them
# pooling "mean": for GM-Coord the paper (Sec. 3.1.2) gives H the mean of Z^I concatenated with the
# mean of Z^T; the released code reads the poolers ("pooler", listed as a deviation)
_OPTIONS = {
    "variant": "paper",
    "beta": gradmod.DEFAULT_BETA,
    "loss": "ce",
    "pooling": "mean",
    "unimodal": None,
    "rule": None,
    "noise": None,
    "std_eps": None,
}


class GMCoord(SupervisedTune):
    """Supervised tuning with GM-Coord gradient modulation."""

    name = "gmcoord"
    version = "2"  # 2: pooling "mean" by default (paper text), was the poolers
    paper_pooling = "mean"
    encoders = ("coattn",)  # the modalities' parameters come from MultimodalEncoder.modality_parameters()
    option_schema = {
        **SupervisedTune.option_schema,
        "pooling": Option(str, "mean", "what the head reads: pooler | mean (paper: mean)"),
        "variant": Option(str, "paper", f"defaults of unimodal / rule / noise / std_eps: {' | '.join(VARIANTS)}"),
        "beta": Option(float, gradmod.DEFAULT_BETA, "Eq. 12's beta"),
        "unimodal": Option(str, None, f"{' | '.join(UNIMODAL)}; null = as the variant says"),
        "rule": Option(str, None, f"{' | '.join(gradmod.RULES)}; null = as the variant says"),
        "noise": Option(str, None, f"{' | '.join(NOISE)}; null = as the variant says"),
        "std_eps": Option(float, None, "added to the noise std; null = as the variant says"),
    }
    presets = {
        "tiny": {
            **_OPTIONS,
            "train": {**FINETUNE_TRAIN_TINY, "schedule": "cosine"},
            "per_dataset": {"roco": {"train": {"batch_size": 16}}},
        },
        "small": {
            **_OPTIONS,
            "train": {**FINETUNE_TRAIN_SMALL, "schedule": "cosine"},
            "per_dataset": small_per_dataset(SMALL_FINETUNE_EPOCHS),
        },
        "paper": {
            **_OPTIONS,
            "train": {
                **FINETUNE_TRAIN_PAPER,
                "max_iters": iters_for("vqa-rad", 64, 60),
                "weight_decay": 0.1,
                "schedule": "cosine",
            },
            "per_dataset": _gmcoord_per_dataset(),
        },
    }

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        found = super().deviations(cfg)
        if cfg.get("variant", "paper") != "paper":
            found.append(
                f"GM-Coord variant {cfg['variant']!r} (released code: head's last Linear split, relu(rho), "
                f"noise on both modalities) instead of Eq. 10-13"
            )
        paper = VARIANTS["paper"]
        for key in paper:
            if cfg.get(key) is not None and cfg[key] != paper[key]:
                found.append(f"GM-Coord {key}={cfg[key]!r} instead of the paper's {paper[key]!r}")
        return found

    @staticmethod
    def variant_options(cfg: dict) -> dict:
        """The variant's unimodal / rule / noise / std_eps, with the config's explicit values on top."""
        variant = cfg.get("variant", "paper")
        if variant not in VARIANTS:
            raise ValueError(f"gmcoord: variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        opts = {**VARIANTS[variant], **{k: cfg[k] for k in VARIANTS[variant] if cfg.get(k) is not None}}
        if opts["unimodal"] not in UNIMODAL:
            raise ValueError(f"gmcoord: unimodal must be one of {UNIMODAL}, got {opts['unimodal']!r}")
        if opts["rule"] not in gradmod.RULES:
            raise ValueError(f"gmcoord: rule must be one of {gradmod.RULES}, got {opts['rule']!r}")
        if opts["noise"] not in NOISE:
            raise ValueError(f"gmcoord: noise must be one of {NOISE}, got {opts['noise']!r}")
        return opts

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        super().check_config(cfg)
        cls.variant_options(cfg)

    def __init__(self, encoder: nn.Module, cfg: dict, task: TaskInfo):
        super().__init__(encoder, cfg, task)
        opts = self.variant_options(cfg)
        variant = cfg.get("variant", "paper")
        self.variant = variant
        self.unimodal = opts["unimodal"]
        self.rule = opts["rule"]
        self.noise = opts["noise"]
        self.std_eps = float(opts["std_eps"])
        self.beta = float(cfg.get("beta", gradmod.DEFAULT_BETA))
        self._contrib: list[float] | None = None  # [sum C^I, sum C^T] since the last modulation

    # -- Eq. 10 ------------------------------------------------------------------------------
    def unimodal_logits(self, fwd: TaskForward) -> tuple[torch.Tensor, torch.Tensor]:
        """``(H^I(Z^I), H^T(Z^T))`` shaped like the task logits (``[B,C]`` or ``[B,1+K]``)."""
        if self.unimodal == "masked":
            li, lt = gradmod.unimodal_logits_masked(self.head, fwd.text_feat, fwd.image_feat)
        else:
            li, lt = gradmod.unimodal_logits_last_linear(last_linear(self.head), fwd.text_feat, fwd.image_feat)
        return group_scores(li, self.task, fwd.group), group_scores(lt, self.task, fwd.group)

    def contributions(self, fwd: TaskForward) -> tuple[float, float]:
        """``(sum C^I, sum C^T)`` of one batch (no gradient), in fp32 even under bf16 autocast: rho
        (Eq. 11) is a ratio of sums of probabilities, which bf16's 8-bit mantissa would round."""
        device = fwd.text_feat.device.type
        with torch.no_grad(), torch.autocast(device_type=device, enabled=False):
            wide = torch.promote_types(fwd.text_feat.dtype, torch.float32)  # fp32, or fp64 where it runs in fp64
            fwd = dataclasses.replace(fwd, text_feat=fwd.text_feat.to(wide), image_feat=fwd.image_feat.to(wide))
            li, lt = self.unimodal_logits(fwd)
            if li.dim() == 1:  # retrieval pairs without negatives: nothing to rank against
                return 0.0, 0.0
            return float(gradmod.contribution(li, fwd.target)), float(gradmod.contribution(lt, fwd.target))

    def after_task_forward(self, fwd: TaskForward, logits: torch.Tensor) -> None:
        if not (self.training and torch.is_grad_enabled()) or fwd.target is None:
            return
        c_i, c_t = self.contributions(fwd)
        if self._contrib is None:
            self._contrib = [0.0, 0.0]
        self._contrib[0] += c_i
        self._contrib[1] += c_t

    # -- Eq. 11-13 ---------------------------------------------------------------------------
    def coefficients(self, c_image: float, c_text: float) -> dict[str, float]:
        rho_i, rho_t = gradmod.ratios(c_image, c_text)
        k_i, k_t = gradmod.coefficients(rho_i, rho_t, self.beta, self.rule)
        return {"k_I": k_i, "k_T": k_t, "rho_I": rho_i, "rho_T": rho_t}

    def modulate_gradients(self) -> dict[str, float]:
        if self._contrib is None:
            return {}
        # the sums of every rank's samples: rho is a ratio over the global batch
        c_i, c_t = (float(v) for v in draws.all_sum(torch.tensor(self._contrib, dtype=torch.float64)))
        self._contrib = None
        if c_i <= 0.0 and c_t <= 0.0:  # no usable row (all labels -1): leave gradients alone
            return {"k_I": 1.0, "k_T": 1.0, "rho_I": 1.0, "rho_T": 1.0}
        logs = self.coefficients(c_i, c_t)
        groups = self.encoder.modality_parameters()
        for modality, k in (("image", logs["k_I"]), ("text", logs["k_T"])):
            noise = self.noise == "both" or (self.noise == "modulated" and k < 1.0)
            gradmod.modulate_(
                (p for _, p in groups[modality] if p.requires_grad),
                k,
                noise=noise,
                std_eps=self.std_eps,
                generator=draws.step_generator(f"gmcoord-{modality}"),  # the same noise on every rank
            )
        return logs
