"""Encoder geometry presets.

``tiny`` is a CPU-sized model (random init) used by tests and quick runs; ``small`` is the CPU
preset that learns (pretrained MiniLM-L6 text tower, small random-init vision tower); ``paper`` is the UMD
paper's geometry: ViT-B/16 at 384 px, RoBERTa-base, 6 co-attention layers of width 768 / 12 heads.
Every value can be overridden with :func:`umdbench.api.deep_merge`.
"""

from __future__ import annotations

ENCODER_PRESETS: dict[str, dict] = {
    "tiny": {
        "image_size": 96,
        "patch_size": 16,
        "max_text_len": 32,
        "vision": {
            # "clip" = CLIP-style ViT (pre-norm, QuickGELU, LN eps 1e-5), as in the paper;
            # "vit" = plain timm ViT (post-embedding norm off, GELU, eps 1e-6).
            "style": "clip",
            "embed_dim": 128,
            "depth": 2,
            "num_heads": 4,
            "mlp_ratio": 4.0,
            "drop_path": 0.0,
            "num_blocks_upstream_11": False,
            # None = random init; "clip" = OpenAI CLIP ViT-B/16 via timm (needs network)
            "pretrained": None,
            # a local timm-style vision checkpoint (.safetensors or torch file)
            "checkpoint": None,
        },
        "text": {
            "arch": "bert",  # bert | roberta (geometry used for random init)
            # None = random init; a local dir, a hub name, or "minilm" (the packaged MiniLM-L6 BERT)
            "pretrained": None,
            # tokenizer source: a local dir, a hub name, or "minilm" (bert-base-uncased vocab)
            "tokenizer": "minilm",
            "hidden_size": 128,
            "num_layers": 2,
            "num_heads": 2,
            "intermediate_size": 512,
            "dropout": 0.0,
            # what to do when `pretrained` / `tokenizer` cannot be loaded: "error" | "random"
            "on_missing": "error",
        },
        "fusion": {
            "hidden_size": 128,
            "num_layers": 2,
            "num_heads": 2,
            "mlp_ratio": 4.0,
            "dropout": 0.0,
        },
    },
    # small: learns on 2 CPU cores. The text tower is the packaged pretrained MiniLM-L6 BERT (real
    # weights, bert-base-uncased vocab; the paper also starts from a pretrained text encoder);
    # the vision tower and fusion are CPU-sized and random-init (no image weights are obtainable
    # offline). Geometry of the text tower comes from the checkpoint; the values here match it.
    # Sized for 2 CPU cores (issue 17 asked for Table 4 on two datasets x 3 seeds within 3 h; with
    # the recipes' bf16 autocast it is about 2.2 h on one 2-core machine, 4 h on a slower one;
    # results/small/NOTES.md):
    # 112 px (49 patches), 24 text tokens (99 % of VQA-RAD / SLAKE questions fit in 22).
    "small": {
        "image_size": 112,
        "patch_size": 16,
        "max_text_len": 24,
        "vision": {
            "style": "clip",
            "embed_dim": 192,
            "depth": 4,
            "num_heads": 3,
            "mlp_ratio": 4.0,
            "drop_path": 0.0,
            "num_blocks_upstream_11": False,
            "pretrained": None,
            "checkpoint": None,
        },
        "text": {
            "arch": "bert",
            "pretrained": "minilm",
            "tokenizer": "minilm",
            "hidden_size": 384,
            "num_layers": 6,
            "num_heads": 12,
            "intermediate_size": 1536,
            "dropout": 0.1,
            "on_missing": "error",
        },
        "fusion": {
            "hidden_size": 192,
            "num_layers": 2,
            "num_heads": 4,
            "mlp_ratio": 4.0,
            "dropout": 0.1,
        },
    },
    "paper": {
        "image_size": 384,
        "patch_size": 16,
        "max_text_len": 64,
        "vision": {
            "style": "clip",
            "embed_dim": 768,
            "depth": 12,
            "num_heads": 12,
            "mlp_ratio": 4.0,
            "drop_path": 0.0,
            # upstream builds only 11 of CLIP's 12 blocks; opt-in
            "num_blocks_upstream_11": False,
            # The paper starts from CLIP ViT-B/16 (from the hub or its cache; `checkpoint` = a local
            # copy). Offline without it: an error, unless on_missing="random" (a recorded deviation).
            "pretrained": "clip",
            "checkpoint": None,
            "on_missing": "error",
        },
        "text": {
            "arch": "roberta",
            "pretrained": "roberta-base",
            "tokenizer": "roberta-base",
            "hidden_size": 768,
            "num_layers": 12,
            "num_heads": 12,
            "intermediate_size": 3072,
            "dropout": 0.1,
            # offline: fall back to random init (and the packaged bert vocab) with a log line
            "on_missing": "random",
        },
        "fusion": {
            "hidden_size": 768,
            "num_layers": 6,
            "num_heads": 12,
            "mlp_ratio": 4.0,
            "dropout": 0.1,
        },
    },
}
