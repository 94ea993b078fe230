"""Multi-level reconstruction (UMD MR-Pretrain Eq. 1-5, reused by TD-Calib Eq. 8).

A mixin for strategy modules that have ``self.encoder`` and ``self.cfg``: it owns the MIM decoder,
the MLM head, the feature projections h^I / h^T and the EMA teacher, and computes the four
reconstruction terms from one masked student pass and one unmasked teacher pass.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import torch
from torch import nn

from umdbench.api import Option

from .ema import copy_weights_, ema_update_
from .heads import MIMDecoder, MLMHead, projection
from .masking import ids_keep_from_restore, mask_tokens
from .objectives import feature_mse, mim_loss, mlm_loss
from .text import build_tokenizer, special_ids_from_tokenizer

log = logging.getLogger(__name__)

# Released-code behaviours, each off unless `upstream_quirks: true` or set explicitly under `quirks`.
QUIRKS = {
    "fresh_teacher": "teacher built from the config (freshly initialised fusion) instead of a copy of the student",
    "ema_per_micro_batch": "EMA update on every forward (micro-batch) instead of after each optimiser step",
    "teacher_train_mode": "teacher follows train()/eval() of the strategy (dropout active in the teacher)",
    "feamim_bypass_decoder": "FeaMIM through the decoder's input embedding + mask tokens on masked patches "
    "(no decoder blocks, no h^I)",
    "fea_target_grad": "feature projections also receive gradient through the teacher side",
    "fea_all_text_tokens": "FeaMLM averaged over all positions, padding included",
    "fixed_half_weights": "MIM, MLM, FeaMIM, FeaMLM all weighted 0.5 regardless of alpha",
}

SPECIAL_ID_KEYS = ("mask", "pad", "cls", "sep", "vocab_size", "all_special")

# options of MultiLevelReconstruction that MR-Pretrain and TD-Calib declare (their option_schema)
RECONSTRUCTION_OPTIONS = {
    "image_mask_ratio": Option(float, 0.75, "share of image patches dropped before the ViT"),
    "text_mask_ratio": Option(float, 0.15, "share of text tokens MLM-masked"),
    "ema_decay": Option(float, 0.995, "EMA teacher decay (Eq. 5)"),
    "norm_pix_loss": Option(bool, False, "MIM targets are per-patch normalised pixels (released code)"),
    "upstream_quirks": Option(bool, False, "switch on every released-code quirk"),
    # its keys are QUIRKS' (a misspelt quirk is refused when the run is planned); null = as upstream_quirks
    "quirks": Option(dict, dict.fromkeys(QUIRKS), "released-code behaviours by name, true/false each"),
    "decoder": Option(dict, {"dim": 384, "depth": 4, "heads": 6}, "MIM decoder geometry"),
    "fea_dim": Option(int, 384, "width of the feature projections h^I, h^T"),
}


def resolve_quirks(cfg: dict, allowed=tuple(QUIRKS)) -> dict[str, bool]:
    default = bool(cfg.get("upstream_quirks", False))
    explicit = cfg.get("quirks") or {}
    unknown = set(explicit) - set(QUIRKS)
    if unknown:
        raise KeyError(f"unknown quirks {sorted(unknown)}; known: {sorted(QUIRKS)}")
    return {k: bool(explicit[k]) if explicit.get(k) is not None else (default and k in allowed) for k in QUIRKS}


def resolve_special_ids(cfg: dict, encoder: nn.Module) -> dict:
    special = cfg.get("special_ids")
    if special is None:
        special = special_ids_from_tokenizer(build_tokenizer(encoder.cfg))
    missing = [k for k in SPECIAL_ID_KEYS if k not in special]
    if missing:
        raise KeyError(f"cfg['special_ids'] lacks {missing}; expected keys {list(SPECIAL_ID_KEYS)}")
    return special


class MultiLevelReconstruction:
    """Mixin; call :meth:`_setup_reconstruction` from ``__init__`` after ``Strategy.__init__``."""

    @classmethod
    def deviations(cls, cfg: dict) -> list[str]:
        """Released-code behaviours switched on in ``cfg``, in words (recorded with each run)."""
        found = [f"released-code quirk: {QUIRKS[k]}" for k, on in resolve_quirks(cfg).items() if on]
        if cfg.get("norm_pix_loss"):
            found.append("MIM targets are per-patch normalised pixels (released code) instead of raw pixels (Eq. 1)")
        if cfg.get("upstream_feature_weight") is not None:
            found.append(f"feature-level terms weighted {cfg['upstream_feature_weight']} (released TD-Calib code)")
        return found

    quirk_names: tuple[str, ...] = tuple(QUIRKS)

    @classmethod
    def batch_coupled_terms(cls, cfg: dict) -> list[str]:
        terms = ["L_MLM averaged over the batch's masked tokens"]
        if not resolve_quirks(cfg).get("fea_all_text_tokens"):
            terms.append("L_FeaMLM averaged over the batch's real text tokens")
        return terms

    def _setup_reconstruction(self, encoder: nn.Module, cfg: dict) -> None:
        self.special_ids = resolve_special_ids(cfg, encoder)
        self.quirks = resolve_quirks(cfg, self.quirk_names)
        H = encoder.hidden_size
        dcfg = cfg.get("decoder", {})
        grid = tuple(encoder.vision.patch_embed.grid_size)
        self.mim_decoder = MIMDecoder(
            H, int(dcfg.get("dim", 384)), int(dcfg.get("depth", 4)), int(dcfg.get("heads", 6)), encoder.patch_size, grid
        )
        self.mlm_head = MLMHead(H, int(encoder.text.config.vocab_size))
        fea_dim = int(cfg.get("fea_dim", H // 2))
        self.fea_proj_image = projection(H, fea_dim)  # h^I
        self.fea_proj_text = projection(H, fea_dim)  # h^T
        if self.quirks["fresh_teacher"]:
            from .encoder import build_encoder

            teacher = build_encoder(encoder.cfg)
        else:
            teacher = copy.deepcopy(encoder)
        teacher.requires_grad_(False)
        teacher.eval()
        self.teacher = teacher
        # 0 until the teacher has been made a copy of the (possibly since re-loaded) student; saved
        # with resumable checkpoints so a resumed run does not re-copy.
        self.register_buffer("teacher_synced", torch.tensor(1 if self.quirks["fresh_teacher"] else 0))
        self.ema_decay = float(cfg.get("ema_decay", 0.995))
        self.image_mask_ratio = float(cfg.get("image_mask_ratio", 0.75))
        self.text_mask_ratio = float(cfg.get("text_mask_ratio", 0.15))
        self.norm_pix_loss = bool(cfg.get("norm_pix_loss", False))
        self._forwards = 0
        # False only in the benchmarks' eager reference (teacher pass recorded by autograd)
        self.teacher_no_grad = True

    # -- teacher ------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        nn.Module.train(self, mode)
        if not self.quirks["teacher_train_mode"]:
            self.teacher.eval()
        return self

    def head_state_prefixes(self) -> tuple[str, ...]:
        """Reconstruction heads shared (same names) by MR-Pretrain and TD-Calib."""
        return ("mim_decoder.", "mlm_head.", "fea_proj_image.", "fea_proj_text.")

    def transient_state_prefixes(self) -> tuple[str, ...]:
        """The EMA teacher is rebuilt from the student at the start of each stage."""
        return ("teacher.",)

    def compile_targets(self) -> list[nn.Module]:
        return super().compile_targets() + list(self.mim_decoder.blocks)

    @torch.no_grad()
    def sync_teacher(self) -> None:
        """Make the teacher an exact copy of the student encoder (the paper's initialisation)."""
        copy_weights_(self.teacher, self.encoder)
        self.teacher_synced.fill_(1)

    @torch.no_grad()
    def update_teacher(self) -> None:
        """Eq. 5: theta_bar <- lambda * theta_bar + (1 - lambda) * theta."""
        ema_update_(self.teacher, self.encoder, self.ema_decay)

    def after_optimizer_step(self) -> None:
        if not self.quirks["ema_per_micro_batch"]:
            self.update_teacher()

    # -- losses -------------------------------------------------------------------------------
    def reconstruction_terms(self, batch: dict[str, torch.Tensor], mask_noise: torch.Tensor | None = None) -> dict:
        """Raw (unweighted) L_MIM, L_MLM, L_FeaMIM, L_FeaMLM plus accuracies.

        Never reads ``batch["label"]``.
        """
        image, ids, mask = batch["image"], batch["text_ids"], batch["text_mask"]
        if self.training:
            if not bool(self.teacher_synced):
                self.sync_teacher()
            if self.quirks["ema_per_micro_batch"] and self._forwards > 0:
                self.update_teacher()  # = after the previous micro-batch, as the released code
            self._forwards += 1
        mlm_ids, labels = mask_tokens(ids, mask, self.special_ids, self.text_mask_ratio)
        s = self.encoder(image, mlm_ids, mask, image_mask_ratio=self.image_mask_ratio, mask_noise=mask_noise)
        with self._teacher_mode():
            t = self.teacher(image, ids, mask)  # under the student's autocast too: bf16 where it uses bf16
        pred = self.mim_decoder(s.image_feats, s.ids_restore)
        l_mim = mim_loss(pred, self.encoder.patchify(image), s.image_mask, self.norm_pix_loss)
        l_mlm, mlm_acc = mlm_loss(self.mlm_head, s.text_feats, labels)
        l_feamim = self._feamim(s, t)
        l_feamlm = self._feamlm(s, t, mask)
        return {
            "mim": l_mim,
            "mlm": l_mlm,
            "feamim": l_feamim,
            "feamlm": l_feamlm,
            "mlm_acc": mlm_acc,
            "student": s,
            "teacher": t,
            "mlm_ids": mlm_ids,
            "mlm_labels": labels,
            "mim_pred": pred,
        }

    def _teacher_mode(self):
        """The cheapest mode the teacher pass allows: ``inference_mode`` (no graph, no version
        counters) when its outputs only ever feed targets computed under ``no_grad`` and index ops
        (the default); ``no_grad`` with ``fea_target_grad``, whose target projections record a graph
        on the teacher features (inference tensors cannot be saved for backward); autograd on in
        the benchmarks' eager reference. Under the student's autocast either way (bf16 where the
        student computes in bf16)."""
        if not self.teacher_no_grad:
            return contextlib.nullcontext()
        return torch.no_grad() if self.quirks["fea_target_grad"] else torch.inference_mode()

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.quirks["fea_target_grad"] else x.detach()

    def _target_proj(self, proj: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``h(x)`` of teacher features as a target: without ``fea_target_grad`` it is detached,
        so it is computed under ``no_grad`` (no graph recorded only to be dropped); the teacher's
        inference tensors are fine as inputs there (nothing is saved for backward)."""
        if self.quirks["fea_target_grad"] or not self.teacher_no_grad:
            return self._target(proj(x))
        with torch.no_grad():
            return proj(x)

    def _feamim(self, s, t) -> torch.Tensor:
        if self.quirks["feamim_bypass_decoder"]:
            dec = self.mim_decoder
            pred = dec.unshuffle(dec.embed(s.image_feats), s.ids_restore)[:, 1:]
            target = self._target_proj(dec.embed, t.image_feats)[:, 1:]
            return feature_mse(pred, target, s.image_mask)
        # Eq. 4 as written: h^I on the student's image tokens (CLS + the visible patches it has)
        # against h^I on the teacher's tokens at the same positions (teacher saw the whole image).
        D = t.image_feats.shape[-1]
        keep = s.image_feats.shape[1] - 1
        ids_keep = ids_keep_from_restore(s.ids_restore, keep)
        t_vis = torch.gather(t.image_feats[:, 1:], 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        t_sel = torch.cat([t.image_feats[:, :1], t_vis], dim=1)
        return feature_mse(self.fea_proj_image(s.image_feats), self._target_proj(self.fea_proj_image, t_sel))

    def _feamlm(self, s, t, mask) -> torch.Tensor:
        weight = None if self.quirks["fea_all_text_tokens"] else mask
        return feature_mse(
            self.fea_proj_text(s.text_feats), self._target_proj(self.fea_proj_text, t.text_feats), weight
        )
