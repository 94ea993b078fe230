"""BrainMVP (Rui et al., arXiv 2410.10604): multi-modal vision pre-training on 3-D brain MRI with
learnable modality templates, and fine-tuning that uses the templates.

Pre-training (``brainmvp``), per step and per study: one present modality ``m`` of a random crop
is the target; two block-masked views of it are built, the masked blocks filled from the template
of ``m`` at the crop's position (view A) or from another modality of the same study at the same
voxels (view B); both go through the encoder in one pass, a skip-free decoder reconstructs ``m``
from the deepest map of each, and a symmetric InfoNCE pulls the two views' features together.
Loss = w_template x MSE(A) + w_cross x MSE(B) + w_contrast x InfoNCE (released 10, 1, 1).

Fine-tuning (``seg-tmpl``, ``cls-tmpl``): the parent's templates (``templates.weight``, declared
in ``head_state_prefixes``) fill absent modalities and replace 0..M-1 random input modalities
(modality-template mixing); ``seg-tmpl`` adds an L2 consistency term between two template-mixed
copies of each crop.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from umdbench import draws
from umdbench.api import Option, PretrainStrategy, train_config
from umdbench.errors import ConfigError
from umdbench_brain.strategies import (
    FINETUNE_PAPER,
    PRETRAIN_SMALL,
    VOLUME_ENCODERS,
    ClsTune,
    SegTune,
    budget_deviations,
)
from umdbench_brain.tasks import seg_loss
from umdbench_brain.templates import ModalityTemplates, block_mask, canvas_start, info_nce, wide

__all__ = ["BrainMVP", "SegTemplateTune", "ClsTemplateTune", "PRETRAIN_PAPER", "PRETRAIN_SMALL", "PRETRAIN_TINY"]

# notes 1.5: AdamW 3e-4 / wd 1e-5, cosine without warm-up, 3 x 4 GPUs x accumulation 2 = 24 studies
# per optimiser step, 1500 epochs of the 500 studies the released script keeps = 31,250 steps
PRETRAIN_PAPER = train_config(
    max_iters=31250,
    batch_size=24,
    lr=3e-4,
    weight_decay=1e-5,
    betas=[0.9, 0.999],
    warmup_ratio=0.0,
    schedule="cosine",
    checkpoint_interval=2000,
    log_interval=50,
    amp=False,
)
PRETRAIN_TINY = train_config(
    max_iters=150,
    batch_size=4,
    lr=2e-3,
    weight_decay=1e-5,
    betas=[0.9, 0.999],
    warmup_ratio=0.0,
    schedule="cosine",
    checkpoint_interval=75,
    log_interval=10,
)

# released epochs: contrastive term from epoch 1000 of 1500 (help text: "1000 in paper");
# second view a template view up to epoch 300 (code only)
CONTRAST_START_PAPER = 1000 / 1500
RELEASED_CANVAS = [240, 240, 155]
TEMPLATE_ONLY_RELEASED = 300 / 1500

_COMMON = {
    "mask_rate": 0.8,
    "w_template": 10.0,
    "w_cross": 1.0,
    "w_contrast": 1.0,
    "template_eps": 1e-9,
    "temperature": 0.1,
    "projection": "mlp",
    "contrast_features": "pooled",
    "contrast_start_frac": CONTRAST_START_PAPER,
    "template_only_frac": 0.0,
}

BRAINMVP_GAPS = [
    "the reconstruction decoder halves widths per transposed conv (released: 512-320-128-64-64 then a 1x1 conv); "
    "the backbone is the run's encoder (its own deviations say whether it is the released UniFormer-S)",
    "one M-channel encoder for all stages: the masked view sits in its modality's input channel, the other "
    "channels are zero (released: a 1-channel stem re-initialised for fine-tuning)",
    "the target modality is drawn per study among its present modalities, the cross-modal filler among the "
    "study's other present ones (released: one slot of a shuffled, repeat-padded list of 4, shared by the batch); "
    "a study with one modality fills view B from the template",
    "a study is centred in the template canvas on its pre-processed grid (RAS, 1 mm and foreground crop are the "
    "dataset's pre-processing: BraTS readers apply them unless preprocess=none, a dataset deviation)",
    "one device batch per optimiser step (released: 3 per GPU x 4 GPUs x accumulation 2, the first micro-step "
    "of each epoch alone; SyncBatchNorm); the corpus is not truncated to the 500 studies of the released "
    "--debug run (the paper budget counts 1500 epochs of 500 studies)",
]
CONTRAST_READING = (
    "contrastive head: {features} deepest features, {projection}, temperature {temperature} "
    "(the paper's head and temperature are not reachable offline; released: flattened deepest "
    "map, no projection, temperature 1.0)"
)


def _pick(allowed: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the ``floor(u x count)``-th allowed entry: a uniform choice among the
    row's allowed entries from one uniform draw ``u`` in [0, 1)."""
    count = allowed.sum(1)
    k = (u * count).long().clamp(max=count - 1)
    return (allowed.long().cumsum(1) <= k[:, None]).sum(1)


class BrainMVP(PretrainStrategy):
    """Options: ``mask_rate`` (0.8), ``block_size`` (8 at 96^3; 4 at the tiny 32^3), ``template_canvas``
    ([240,240,155]; tiny [48,48,48]), ``template_eps`` (1e-9), weights ``w_template``/``w_cross``/
    ``w_contrast`` (10/1/1), ``temperature``, ``projection`` (mlp | none), ``contrast_features``
    (pooled | flatten), ``contrast_start_frac`` (the contrastive term from this fraction of
    ``max_iters``; 2/3 = epoch 1000 of 1500), ``template_only_frac`` (view B is a template view
    before this fraction; released 0.2, paper 0)."""

    name = "brainmvp"
    task_types = ("volumes",)  # multi-modal studies (e.g. brainsynth-corpus), not image-text pairs
    encoders = VOLUME_ENCODERS
    option_schema: ClassVar[dict] = {
        "mask_rate": Option(float, 0.8, "share of blocks masked, within (0, 1)"),
        "block_size": Option(int, 8, "edge of a masked block in voxels"),
        "template_canvas": Option(list, [240, 240, 155], "template shape, three positive integers"),
        "template_eps": Option(float, 1e-9, "template min-max epsilon"),
        "w_template": Option(float, 10.0, "weight of the template view's reconstruction"),
        "w_cross": Option(float, 1.0, "weight of the cross-modal view's reconstruction"),
        "w_contrast": Option(float, 1.0, "weight of the InfoNCE term"),
        "temperature": Option(float, 0.1, "InfoNCE temperature, > 0"),
        "projection": Option(str, "mlp", "mlp | none"),
        "contrast_features": Option(str, "pooled", "pooled | flatten"),
        "contrast_start_frac": Option(float, CONTRAST_START_PAPER, "the contrastive term from this share of max_iters"),
        "template_only_frac": Option(float, 0.0, "view B is a template view before this share of max_iters"),
    }
    presets: ClassVar[dict] = {
        "tiny": {**_COMMON, "block_size": 4, "template_canvas": [48, 48, 48], "train": PRETRAIN_TINY},
        # the brainsynth canvas (48^3 phantoms) and blocks of 4 on 32^3 crops (released 8 on 96^3)
        "small": {**_COMMON, "block_size": 4, "template_canvas": [48, 48, 48], "train": PRETRAIN_SMALL},
        "paper": {**_COMMON, "block_size": 8, "template_canvas": [240, 240, 155], "train": PRETRAIN_PAPER},
    }

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        rate = cfg.get("mask_rate")
        if not isinstance(rate, (int, float)) or not 0.0 < float(rate) < 1.0:
            raise ValueError(f"brainmvp: mask_rate={rate!r} must be within (0, 1) (released 0.8; argparse 0.875)")
        block = cfg.get("block_size")
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"brainmvp: block_size={block!r} must be a positive integer (released 8 at 96^3)")
        canvas = cfg.get("template_canvas")
        if not (
            isinstance(canvas, (list, tuple)) and len(canvas) == 3 and all(isinstance(c, int) and c > 0 for c in canvas)
        ):
            raise ValueError(
                f"brainmvp: template_canvas={canvas!r} must be three positive integers "
                f"(released [240, 240, 155]); set pretrain.template_canvas=[D,H,W]."
            )
        for key in ("w_template", "w_cross", "w_contrast"):
            if not isinstance(cfg.get(key), (int, float)) or cfg[key] < 0:
                raise ValueError(f"brainmvp: {key}={cfg.get(key)!r} must be a number >= 0 (released 10 / 1 / 1)")
        if cfg["w_template"] == 0 and cfg["w_contrast"] > 0:
            raise ValueError(
                "brainmvp: w_contrast > 0 needs the template view (w_template > 0): the contrastive "
                "term compares the template view with the cross-modal view."
            )
        if cfg["w_template"] == 0 and cfg["w_cross"] == 0:
            raise ValueError("brainmvp: w_template and w_cross are both 0; nothing would be reconstructed.")
        if not isinstance(cfg.get("temperature"), (int, float)) or cfg["temperature"] <= 0:
            raise ValueError(f"brainmvp: temperature={cfg.get('temperature')!r} must be > 0 (released 1.0)")
        if cfg.get("projection") not in ("mlp", "none"):
            raise ValueError(f"brainmvp: projection={cfg.get('projection')!r}; allowed: mlp, none (released)")
        if cfg.get("contrast_features") not in ("pooled", "flatten"):
            raise ValueError(
                f"brainmvp: contrast_features={cfg.get('contrast_features')!r}; allowed: pooled, flatten (released)"
            )
        for key in ("contrast_start_frac", "template_only_frac"):
            v = cfg.get(key)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(
                    f"brainmvp: {key}={v!r} must be a fraction of train.max_iters within [0, 1] "
                    f"(released: contrast from 2/3, template-only second view up to 0.2)"
                )
        if not isinstance(cfg.get("template_eps"), (int, float)) or cfg["template_eps"] <= 0:
            raise ValueError(f"brainmvp: template_eps={cfg.get('template_eps')!r} must be > 0 (released 1e-9)")

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        found = list(BRAINMVP_GAPS)
        found.append(
            CONTRAST_READING.format(
                features=cfg.get("contrast_features"),
                temperature=cfg.get("temperature"),
                projection="a 2-layer projection MLP" if cfg.get("projection") == "mlp" else "no projection",
            )
        )
        if cfg.get("mask_rate") != 0.8:
            found.append(f"mask rate {cfg.get('mask_rate')} (released script 0.8; 0.875 is the argparse default)")
        if abs(float(cfg.get("contrast_start_frac", 0)) - CONTRAST_START_PAPER) > 1e-6:
            found.append(
                f"contrastive term from {cfg.get('contrast_start_frac'):.3g} of the steps (paper/released: "
                f"from epoch 1000 of 1500)"
            )
        if cfg.get("template_only_frac", 0) > 0:
            found.append(
                f"released quirk: view B is a second template view for the first "
                f"{cfg['template_only_frac']:.3g} of the steps (released: epochs <= 300 of 1500, 'for faster "
                f"template learning')"
            )
        weights = (cfg.get("w_template"), cfg.get("w_cross"), cfg.get("w_contrast"))
        if weights != (10.0, 1.0, 1.0):
            found.append(f"loss weights template/cross/contrast {weights} (paper: 10/1/1); an ablation")
        if cfg.get("template_eps") != 1e-9:
            found.append(
                f"template min-max epsilon {cfg.get('template_eps')} (released 1e-9: at zero init the raw "
                f"gradient is scaled by 1e9, which AdamW's normalisation hides)"
            )
        if cfg.get("block_size") != 8:
            found.append(f"masked blocks of {cfg.get('block_size')} voxels (released 8 on 96^3 crops)")
        if list(cfg.get("template_canvas") or ()) != list(RELEASED_CANVAS):
            found.append(
                f"template canvas {cfg.get('template_canvas')} (released {RELEASED_CANVAS}, the BraTS grid; "
                f"the canvas must hold the dataset's pre-processed volumes)"
            )
        return found + budget_deviations(cfg.get("train"), PRETRAIN_PAPER, "pre-training")

    @classmethod
    def batch_coupled_terms(cls, cfg: dict) -> list[str]:
        if not cfg.get("w_contrast"):
            return []
        return [
            "modality-aware InfoNCE between the two views, the batch's other studies as negatives "
            "(from contrast_start_frac of the steps)"
        ]

    def __init__(self, encoder: nn.Module, cfg: dict):
        super().__init__(encoder, cfg)
        self.check_config(cfg)
        self.mask_rate = float(cfg["mask_rate"])
        self.block = int(cfg["block_size"])
        if int(encoder.roi_size) % self.block:
            raise ValueError(
                f"brainmvp: block_size={self.block} must divide the encoder's roi_size="
                f"{encoder.roi_size}; set pretrain.block_size or model.roi_size."
            )
        from umdbench_brain.heads import ReconDecoder

        width = int(encoder.hidden_size)
        self.decoder = ReconDecoder(width, int(encoder.feature_strides[-1]), 1)
        self.templates = ModalityTemplates(
            encoder.modalities, cfg["template_canvas"], trainable=True, eps=float(cfg["template_eps"])
        )
        self.projection = (
            nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, 128))
            if cfg["projection"] == "mlp" and cfg["contrast_features"] == "pooled"
            else nn.Identity()
        )
        max_iters = int(cfg.get("train", {}).get("max_iters", 1))
        self.contrast_start = int(round(float(cfg["contrast_start_frac"]) * max_iters))
        self.template_only_until = int(round(float(cfg["template_only_frac"]) * max_iters))
        # optimiser steps taken; stored so a resumed stage keeps its phase
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def after_optimizer_step(self) -> None:
        self.steps_done += 1

    def contrast_on(self) -> bool:
        return float(self.cfg["w_contrast"]) > 0 and int(self.steps_done) >= self.contrast_start

    def template_only(self) -> bool:
        return int(self.steps_done) < self.template_only_until

    def draw_modalities(self, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(target m [B], filler o [B], has_other [B]): m uniform among a study's present modalities,
        o uniform among its other present ones (o = m where there is none); two keyed uniforms per
        study, so a study's choice does not depend on the rest of the batch."""
        avail = present.bool()
        if not avail.any(1).all():
            raise ConfigError(
                "brainmvp: a study in the batch has no modality at all (present is all 0); the data "
                "set yields empty studies. Check the corpus with `umdbench data check`."
            )
        u = draws.rand(len(avail), 2, stream="modality", device=avail.device)
        m = _pick(avail, u[:, 0])
        others = avail.clone()
        others[torch.arange(len(m)), m] = False
        has_other = others.any(1)
        o = _pick(torch.where(has_other[:, None], others, avail), u[:, 1])
        return m, o, has_other

    def contrast_embedding(self, deepest: torch.Tensor) -> torch.Tensor:
        if self.cfg["contrast_features"] == "flatten":
            return deepest.flatten(1)
        return self.projection(deepest.mean(dim=(2, 3, 4)))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        volume = batch["volume"]
        B, M = volume.shape[:2]
        shape = tuple(volume.shape[2:])
        rows = torch.arange(B, device=volume.device)
        m, o, has_other = self.draw_modalities(batch["present"])
        target = volume[rows, m][:, None]
        tmpl = self.templates.crop(canvas_start(batch, self.templates.canvas), shape)[rows, m][:, None]
        views, names = [], []
        if self.cfg["w_template"] > 0:
            mask_a = block_mask(B, shape, self.block, self.mask_rate, volume.device, stream="mask_template")
            views.append(target * (1 - mask_a) + tmpl * mask_a)
            names.append("template")
        if self.cfg["w_cross"] > 0 or self.contrast_on():
            mask_b = block_mask(B, shape, self.block, self.mask_rate, volume.device, stream="mask_cross")
            use_tmpl = (~has_other) | self.template_only()
            filler = torch.where(use_tmpl[:, None, None, None, None], tmpl, volume[rows, o][:, None])
            views.append(target * (1 - mask_b) + filler * mask_b)
            names.append("cross")
        # each view in its modality's channel of the M-channel stem, the others zero
        x = torch.zeros(len(views) * B, M, *shape, device=volume.device, dtype=volume.dtype)
        slot = m.repeat(len(views))
        x[torch.arange(len(views) * B, device=volume.device), slot] = torch.cat(views)[:, 0]
        deepest = self.encoder(x)[-1]
        recon = self.decoder(deepest)
        if recon.shape[2:] != shape:
            recon = F.interpolate(recon, size=shape, mode="trilinear", align_corners=False)
        out = {}
        weights = {"template": float(self.cfg["w_template"]), "cross": float(self.cfg["w_cross"])}
        for i, view in enumerate(names):
            mse = F.mse_loss(wide(recon[i * B : (i + 1) * B]), wide(target))  # every voxel, as released
            if weights[view] > 0:
                out[f"loss_{view}"] = weights[view] * mse
        if self.contrast_on() and len(names) == 2:
            # over the global batch: every rank's term is the one-process loss (draws.gather)
            za = draws.gather(self.contrast_embedding(deepest[:B]))
            zb = draws.gather(self.contrast_embedding(deepest[B:]))
            out["loss_contrast"] = float(self.cfg["w_contrast"]) * info_nce(za, zb, float(self.cfg["temperature"]))
        return out


# --------------------------------------------------------------------------------------------
# fine-tuning with templates
# --------------------------------------------------------------------------------------------
_TMPL_COMMON = {
    "template_canvas": [48, 48, 48],
    "template_mix": True,
    "fill_missing": "templates",
    "template_minmax": True,
}
TEMPLATE_TUNE_GAPS = [
    "templates are mixed into the crop after cropping, flips and intensity jitter, at the crop's canvas "
    "position (released: whole templates replace channels before cropping and augmentation)",
]


class _TemplateTune:
    """What ``seg-tmpl`` and ``cls-tmpl`` add to their base: the parent's templates (a buffer, not
    trained), missing-modality filling and modality-template mixing."""

    template_options: ClassVar[dict] = {
        "template_canvas": Option(list, [48, 48, 48], "template shape: the brainmvp parent's pretrain.template_canvas"),
        "template_mix": Option(bool, True, "replace 0..M-1 random input modalities by their templates"),
        "fill_missing": Option(str, "templates", "templates | zeros for absent modalities"),
        "template_minmax": Option(bool, True, "min-max normalise the templates as pre-training did"),
    }

    @classmethod
    def check_template_config(cls, cfg: dict) -> None:
        canvas = cfg.get("template_canvas")
        if not (
            isinstance(canvas, (list, tuple)) and len(canvas) == 3 and all(isinstance(c, int) and c > 0 for c in canvas)
        ):
            raise ValueError(
                f"{cls.name}: template_canvas={canvas!r} must be three positive integers, the same "
                f"as the brainmvp parent's pretrain.template_canvas."
            )
        if cfg.get("fill_missing") not in ("templates", "zeros"):
            raise ValueError(f"{cls.name}: fill_missing={cfg.get('fill_missing')!r}; allowed: templates, zeros")
        for key in ("template_mix", "template_minmax"):
            if not isinstance(cfg.get(key), bool):
                raise ValueError(f"{cls.name}: {key}={cfg.get(key)!r} must be true or false")

    @classmethod
    def check_parent_config(cls, cfg: dict, parent: dict | None, where: str = "tune.0") -> None:
        """This stage's templates against the stage it starts from (``parent``: the resolved config
        of the pre-training stage for ``tune.0``, else of ``tune.<i-1>``; None without one), so a
        mismatch is refused when the run is planned, not at the first tuning step after hours of
        pre-training: the parent must hand on trained templates (``brainmvp`` with its template
        view, or another ``*-tmpl`` stage) on the same canvas. Called by the core's cross-stage
        hook where it exists (see the brain README, BrainMVP); ``ValueError`` = one paragraph."""
        parent_where = "pretrain" if where == "tune.0" else f"tune.{int(where.split('.')[1]) - 1}"
        kind = (parent or {}).get("type")
        other = f"tune with `{cls.name.split('-')[0]}` instead (no templates)"
        if kind is None:
            raise ValueError(
                f"{cls.name} ({where}) fills and mixes modalities with the templates its parent stage "
                f"learnt, but this run has no parent stage (--pretrain none); pre-train with "
                f"`--pretrain brainmvp`, or {other}."
            )
        if kind != "brainmvp" and not str(kind).endswith("-tmpl"):
            raise ValueError(
                f"{cls.name} ({where}) reads modality templates from its parent stage, but the parent "
                f"{parent_where} is {kind!r}, which learns none (the templates would stay zero and the "
                f"first tuning step would stop); pre-train with `--pretrain brainmvp`, or {other}."
            )
        if kind == "brainmvp" and not float(parent.get("w_template", 0) or 0) > 0:
            raise ValueError(
                f"{cls.name} ({where}): the brainmvp parent has pretrain.w_template="
                f"{parent.get('w_template')!r}, so it trains no template view and hands on zero "
                f"templates; set pretrain.w_template > 0 (released 10), or {other}."
            )
        mine, theirs = cfg.get("template_canvas"), parent.get("template_canvas")
        if theirs is not None and [int(c) for c in mine] != [int(c) for c in theirs]:
            shape = "[" + ",".join(str(int(c)) for c in theirs) + "]"
            raise ValueError(
                f"{cls.name} ({where}): template_canvas={list(mine)} differs from its parent's "
                f"{parent_where}.template_canvas={list(theirs)}: the parent's templates would not fit "
                f"and the first tuning step would stop after the parent trained. Set both to one shape, "
                f"e.g. --cfg-options {parent_where}.template_canvas={shape} "
                f"{where}.template_canvas={shape}."
            )

    @classmethod
    def template_deviations(cls, cfg: dict) -> list[str]:
        found = list(TEMPLATE_TUNE_GAPS)
        if not cfg.get("template_minmax", True):
            found.append(
                "released quirk: templates are used raw downstream, without the min-max normalisation "
                "pre-training applied"
            )
        if not cfg.get("template_mix", True):
            found.append("no modality-template mixing (released: 0..M-1 channels replaced by templates)")
        if cfg.get("fill_missing") == "zeros":
            found.append("absent modalities stay zero instead of being filled from the templates")
        return found

    def init_templates(self, encoder: nn.Module, cfg: dict) -> None:
        self.templates = ModalityTemplates(
            encoder.modalities, cfg["template_canvas"], trainable=False, normalise=bool(cfg["template_minmax"])
        )
        self._templates_checked = False

    def head_state_prefixes(self) -> tuple[str, ...]:
        return ("templates.",)

    def template_crops(self, batch: dict, volume: torch.Tensor) -> torch.Tensor:
        if not self._templates_checked:
            if not bool(self.templates.weight.abs().sum() > 0):
                raise ConfigError(
                    f"tuning strategy {self.name!r}: the modality templates are all zero, so the parent stage "
                    f"handed on no `templates.weight` of shape {list(self.templates.weight.shape)}. Pre-train with "
                    f"`--pretrain brainmvp` and the same template canvas (pretrain.template_canvas = "
                    f"tune.0.template_canvas), or tune with `{self.name.split('-')[0]}` instead."
                )
            self._templates_checked = True
        start = canvas_start(batch, self.templates.canvas)
        return self.templates.crop(start, volume.shape[2:], batch.get("flips")).to(volume.dtype)

    def fill_missing(self, volume: torch.Tensor, present: torch.Tensor, tmpl: torch.Tensor) -> torch.Tensor:
        if self.cfg["fill_missing"] != "templates":
            return volume
        keep = present.bool()[:, :, None, None, None]
        return torch.where(keep, volume, tmpl)

    @staticmethod
    def mix(volume: torch.Tensor, tmpl: torch.Tensor, stream: str = "mix") -> torch.Tensor:
        """Per sample: k ~ U{0..M-1} random channels replaced by their templates (released
        RandomChannelCutmix); drawn from the sample's keyed ``stream``."""
        B, M = volume.shape[:2]
        u = draws.rand(B, M + 1, stream=stream)
        k = (u[:, 0] * M).long()  # uniform on 0..M-1
        order = u[:, 1:].argsort(1)
        chosen = order < k[:, None]  # the first k positions of a random permutation
        chosen = chosen.to(volume.device)[:, :, None, None, None]
        return torch.where(chosen, tmpl, volume)

    def prepared(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        volume = batch["volume"]
        tmpl = self.template_crops(batch, volume)
        return self.fill_missing(volume, batch["present"], tmpl), tmpl

    def head_logits(self, volume: torch.Tensor, training: bool) -> torch.Tensor:
        spec = self.task.spec
        fwd = spec.encode(self.encoder, {"volume": volume}, self.task, self.options(), training=training)
        return spec.logits(self.head, fwd, self.task)


class SegTemplateTune(_TemplateTune, SegTune):
    """``seg`` with the parent's templates: absent modalities filled, modality-template mixing, and
    ``consistency`` between two mixed copies of each crop: ``tile`` (paper reading: each copy holds
    every modality, independently mixed), ``interleave`` (released: channels repeated and split, so
    the copies are (c0,c0,c1,c1) and (c2,c2,c3,c3)) or ``none``; weight ``consistency_weight`` (0.1)
    on the MSE between the copies' logits."""

    name = "seg-tmpl"
    option_schema: ClassVar[dict] = {
        **SegTune.option_schema,
        **_TemplateTune.template_options,
        "consistency": Option(str, "tile", "tile | interleave | none"),
        "consistency_weight": Option(float, 0.1, "weight of the consistency MSE, >= 0"),
    }
    presets: ClassVar[dict] = {
        "tiny": {**SegTune.presets["tiny"], **_TMPL_COMMON, "consistency": "tile", "consistency_weight": 0.1},
        # the canvas of brainmvp's small preset (planning refuses a mismatch)
        "small": {**SegTune.presets["small"], **_TMPL_COMMON, "consistency": "tile", "consistency_weight": 0.1},
        "paper": {
            **SegTune.presets["paper"],
            **_TMPL_COMMON,
            "template_canvas": [240, 240, 155],
            "consistency": "tile",
            "consistency_weight": 0.1,
            "train": FINETUNE_PAPER,
        },
    }

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        cls.check_template_config(cfg)
        if cfg.get("consistency") not in ("tile", "interleave", "none"):
            raise ValueError(
                f"seg-tmpl: consistency={cfg.get('consistency')!r}; allowed: tile (paper reading), "
                f"interleave (released channel split), none"
            )
        w = cfg.get("consistency_weight")
        if not isinstance(w, (int, float)) or w < 0:
            raise ValueError(f"seg-tmpl: consistency_weight={w!r} must be a number >= 0 (released 0.1)")

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        found = SegTune.deviations(cfg) + cls.template_deviations(cfg)
        if cfg.get("consistency") == "interleave":
            found.append(
                "released quirk: the two consistency copies are the channel-repeated volume split in "
                "halves, (c0,c0,c1,c1) and (c2,c2,c3,c3), not two mixed copies of every modality"
            )
        elif cfg.get("consistency") == "none":
            found.append("no L2 consistency term (the paper's Fig. 5 adds it)")
        if cfg.get("consistency") != "none":
            found.append(
                "the consistency MSE compares the final logits (released: the 1/4-scale deep-supervision logits)"
            )
            if cfg.get("consistency_weight") != 0.1:
                found.append(f"consistency weight {cfg.get('consistency_weight')} (released 0.1)")
        return found

    def __init__(self, encoder, cfg, task):
        super().__init__(encoder, cfg, task)
        self.init_templates(encoder, cfg)

    def options(self) -> dict:
        return {k: v for k, v in self.cfg.items() if k != "train"}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        volume, tmpl = self.prepared(batch)
        target = batch["seg"]
        mode = self.cfg["consistency"]
        mix = self.mix if self.cfg["template_mix"] else (lambda v, t, stream="mix": v)
        if mode == "none":
            logits = self.head_logits(mix(volume, tmpl), True)
            return {"loss_task": seg_loss(logits, target, self.cfg["dice_weight"], self.cfg["bce_weight"])}
        if mode == "tile":
            first, second = mix(volume, tmpl), mix(volume, tmpl, "mix_second")
        else:  # released: np.repeat(image, 2, axis=0) then the channel halves
            repeated = mix(volume, tmpl).repeat_interleave(2, dim=1)
            M = volume.shape[1]
            first, second = repeated[:, :M], repeated[:, M:]
        logits = self.head_logits(torch.cat([first, second]), True)
        B = volume.shape[0]
        out = {
            "loss_task": seg_loss(logits, torch.cat([target, target]), self.cfg["dice_weight"], self.cfg["bce_weight"])
        }
        if float(self.cfg["consistency_weight"]) > 0:
            out["loss_consistency"] = float(self.cfg["consistency_weight"]) * F.mse_loss(logits[:B], logits[B:])
        return out

    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        volume, _ = self.prepared(batch)
        spec = self.task.spec
        logits = spec.sliding_logits(
            self.encoder, self.head, {"volume": volume}, self.task, self.options(), int(self.encoder.roi_size)
        )
        return spec.predict(self.task, logits)


class ClsTemplateTune(_TemplateTune, ClsTune):
    """``cls`` with the parent's templates: absent modalities filled and modality-template mixing
    (no classification code was released; the segmentation recipe's template use is carried over)."""

    name = "cls-tmpl"
    option_schema: ClassVar[dict] = {**ClsTune.option_schema, **_TemplateTune.template_options}
    presets: ClassVar[dict] = {
        "tiny": {**ClsTune.presets["tiny"], **_TMPL_COMMON},
        "small": {**ClsTune.presets["small"], **_TMPL_COMMON},
        "paper": {**ClsTune.presets["paper"], **_TMPL_COMMON, "template_canvas": [240, 240, 155]},
    }

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        cls.check_template_config(cfg)

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        return (
            ClsTune.deviations(cfg)
            + cls.template_deviations(cfg)
            + ["template mixing for classification is our carry-over of the segmentation recipe (no released code)"]
        )

    def __init__(self, encoder, cfg, task):
        super().__init__(encoder, cfg, task)
        self.init_templates(encoder, cfg)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        volume, tmpl = self.prepared(batch)
        if self.cfg["template_mix"]:
            volume = self.mix(volume, tmpl)
        logits = self.head_logits(volume, True)
        return {"loss_task": self.task.spec.loss(self.task, logits, batch["label"], self.options())}

    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        volume, _ = self.prepared(batch)
        return self.task.spec.predict(self.task, self.head_logits(volume, False))
