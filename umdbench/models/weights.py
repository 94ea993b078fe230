"""Loading vision weights: local timm-style checkpoints and CLIP ViT-B/16 by name."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from .availability import CLIP_TIMM_NAME

log = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file or a torch file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vision checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


def load_vision_state_dict(vit: VisionTransformer, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load timm-named (or OpenAI-CLIP-named) weights into ``vit``.

    The position embedding is resampled to the tower's grid, blocks beyond the tower's depth are
    dropped (the 11-block upstream option), classifier/projection heads are ignored. Missing tower
    weights are an error.
    """
    sd = checkpoint_filter_fn(dict(state_dict), vit)
    depth = len(vit.blocks)
    own = vit.state_dict()
    out, ignored = {}, []
    for k, v in sd.items():
        m = re.match(r"blocks\.(\d+)\.", k)
        if m and int(m.group(1)) >= depth:
            ignored.append(k)
            continue
        if k not in own:
            ignored.append(k)
            continue
        out[k] = v
    missing = sorted(set(own) - set(out))
    if missing:
        raise ValueError(
            f"vision checkpoint {source} lacks {len(missing)} tower weights, e.g. {missing[:5]}; "
            "is it a timm ViT (or OpenAI CLIP) state dict with the same geometry?"
        )
    bad = [k for k, v in out.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(
            f"vision checkpoint {source} has shapes that do not fit the tower: "
            + ", ".join(f"{k} {tuple(out[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:5])
        )
    vit.load_state_dict(out, strict=True)
    if ignored:
        log.info("vision checkpoint %s: ignored %d keys (e.g. %s)", source, len(ignored), ignored[:3])


def load_clip_vit_b16(vit: VisionTransformer) -> None:
    """Fill ``vit`` with OpenAI CLIP ViT-B/16 weights fetched through timm / the HF hub."""
    import timm

    try:
        ref = timm.create_model(CLIP_TIMM_NAME, pretrained=True, num_classes=0)
    except Exception as exc:  # offline, hub blocked, ...
        raise RuntimeError(
            f"could not fetch CLIP ViT-B/16 weights ({CLIP_TIMM_NAME!r} through timm / the Hugging Face hub): "
            f"{type(exc).__name__}: {exc}. This needs network access (or a populated HF cache). Offline, "
            "set vision.checkpoint to a local timm-style .safetensors / torch file, or vision.pretrained=None "
            "for random init."
        ) from exc
    load_vision_state_dict(vit, ref.state_dict(), CLIP_TIMM_NAME)
