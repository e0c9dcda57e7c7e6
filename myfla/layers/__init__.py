"""Token-mixing layers (mirrors ``fla.layers`` for the layers this port carries)."""

from .attn import Attention
from .gated_deltanet import GatedDeltaNet
from .kda import KimiDeltaAttention

__all__ = [
    'Attention',
    'GatedDeltaNet',
    'KimiDeltaAttention',
]
