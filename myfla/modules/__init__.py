"""Neural-network building blocks (mirrors ``fla.modules``; re-exports what fla 0.4.0's
``fla/modules/__init__.py`` exports from the modules this port carries)."""

from myfla.modules.convolution import ShortConvolution
from myfla.modules.fused_cross_entropy import FusedCrossEntropyLoss
from myfla.modules.fused_linear_cross_entropy import FusedLinearCrossEntropyLoss
from myfla.modules.fused_norm_gate import FusedRMSNormGated
from myfla.modules.l2norm import L2Norm
from myfla.modules.layernorm import GroupNorm, GroupNormLinear, LayerNorm, LayerNormLinear, RMSNorm, RMSNormLinear
from myfla.modules.mlp import GatedMLP
from myfla.modules.rotary import RotaryEmbedding

__all__ = [
    'ShortConvolution',
    'FusedCrossEntropyLoss', 'FusedLinearCrossEntropyLoss',
    'L2Norm',
    'GroupNorm', 'GroupNormLinear', 'LayerNorm', 'LayerNormLinear', 'RMSNorm', 'RMSNormLinear',
    'FusedRMSNormGated',
    'GatedMLP',
    'RotaryEmbedding',
]
