"""Where the coattn encoder's towers start from, and whether those weights can be had here.

Read when a run is resolved (``--dry-run`` included), so an offline paper run without CLIP weights
fails before anything trains, and a fallback to random init the user opted into is recorded in the
run's deviations instead of only logged.
"""

from __future__ import annotations

import os
from pathlib import Path

from umdbench.errors import ConfigError

# timm's name of CLIP ViT-B/16 (the coattn encoder's vision tower in the paper). Defined here, not in
# .weights, which imports timm (~2 CPU-s through torchvision): resolving a run needs only the name.
CLIP_TIMM_NAME = "vit_base_patch16_clip_224.openai"
CLIP_REPO = f"timm/{CLIP_TIMM_NAME}"
CLIP_FILES = ("open_clip_model.safetensors", "model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ) not in ("0", "", "false")


def _cached(repo: str, files) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def clip_available() -> bool:
    """CLIP ViT-B/16 can be loaded: online (the hub is tried at build time) or in the HF cache."""
    return not offline() or _cached(CLIP_REPO, CLIP_FILES)


def text_available(source: str | None) -> bool:
    if not source or source == "minilm" or Path(source).is_dir():
        return True
    return not offline() or _cached(source, ("config.json",))


def vision_init(vcfg: dict) -> str:
    if vcfg.get("checkpoint"):
        return f"vision.checkpoint {vcfg['checkpoint']}"
    if vcfg.get("pretrained") == "clip":
        if not clip_available() and vcfg.get("on_missing", "error") == "random":
            return "random init (CLIP ViT-B/16 not available offline; vision.on_missing=random)"
        return f"CLIP ViT-B/16 ({CLIP_TIMM_NAME} via timm / the Hugging Face hub)"
    return "random init"


def describe_init(model: dict) -> str:
    """One line for ``--dry-run``: where each tower starts."""
    text = model.get("text", {})
    source = text.get("pretrained")
    if source and not text_available(source) and text.get("on_missing", "error") == "random":
        text_init = f"random init ({source} not available offline; text.on_missing=random)"
    else:
        text_init = f"{source or 'random init'} (tokenizer {text.get('tokenizer') or source})"
    return f"initialisation: vision {vision_init(model.get('vision', {}))}; text {text_init}"


def init_deviations(model: dict) -> list[str]:
    """Random-init fallbacks this machine forces, as deviations; a missing CLIP without the opt-in
    is a ConfigError (one paragraph: what is missing, where it goes, how to opt into random init)."""
    out = []
    vcfg, tcfg = model.get("vision", {}), model.get("text", {})
    if vcfg.get("pretrained") == "clip" and not vcfg.get("checkpoint") and not clip_available():
        if vcfg.get("on_missing", "error") != "random":
            raise ConfigError(
                f"the vision tower starts from CLIP ViT-B/16 (vision.pretrained=clip, as the paper does), but its "
                f"weights are not in the Hugging Face cache and the hub is offline (HF_HUB_OFFLINE / "
                f"TRANSFORMERS_OFFLINE). Fix: put a timm-style CLIP ViT-B/16 state dict (.safetensors or torch file) "
                f"on this machine and pass --cfg-options model.vision.checkpoint=/path/to/file, or fill the cache "
                f"where the hub is reachable (timm.create_model('{CLIP_TIMM_NAME}', pretrained=True)); or opt into "
                f"random init with --cfg-options model.vision.on_missing=random (recorded as a deviation)."
            )
        out.append(
            "vision tower: random init instead of the paper's CLIP ViT-B/16 (weights not available offline; "
            "vision.on_missing=random)"
        )
    source = tcfg.get("pretrained")
    if source and not text_available(source) and tcfg.get("on_missing", "error") == "random":
        out.append(
            f"text tower: random init (and the packaged bert-base-uncased vocabulary) instead of {source!r}, "
            f"which is not available offline (text.on_missing=random)"
        )
    return out
