"""The Hiera model core. It imports torch only."""

from .hiera import ATTENTION_LAYOUTS, STEMS, Hiera, HieraBlock
from .mae import MAEOutput, MaskedAutoencoderHiera, build_mae
from .pos_embed import POS_EMBED_MODES
from .specs import ARCHITECTURES, WINDOW_PRESETS, architecture_size, build_hiera, hiera_kwargs

__all__ = [
    "ARCHITECTURES",
    "ATTENTION_LAYOUTS",
    "STEMS",
    "POS_EMBED_MODES",
    "WINDOW_PRESETS",
    "Hiera",
    "HieraBlock",
    "MAEOutput",
    "MaskedAutoencoderHiera",
    "architecture_size",
    "build_mae",
    "build_hiera",
    "hiera_kwargs",
]
