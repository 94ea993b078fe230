"""Models shared by every strategy: the multi-modal encoder, heads, objectives."""

from .encoder import EncoderOutput, MultimodalEncoder, build_encoder
from .presets import ENCODER_PRESETS
from .text import build_tokenizer, minilm_dir, special_ids_from_tokenizer

__all__ = [
    "ENCODER_PRESETS",
    "EncoderOutput",
    "MultimodalEncoder",
    "build_encoder",
    "build_tokenizer",
    "minilm_dir",
    "special_ids_from_tokenizer",
]
