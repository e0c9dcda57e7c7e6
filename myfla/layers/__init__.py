"""Token-mixing layers (mirrors ``fla.layers`` for the layers this port carries; ``rwkv6`` holds only
the building blocks RWKV-7 uses, not ``RWKV6Attention``)."""

from .attn import Attention
from .gated_deltanet import GatedDeltaNet
from .kda import KimiDeltaAttention
from .rwkv7 import RWKV7Attention

__all__ = [
    'Attention',
    'GatedDeltaNet',
    'KimiDeltaAttention',
    'RWKV7Attention',
]
