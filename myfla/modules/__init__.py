"""Neural-network building blocks used by the KDA and GatedDeltaNet layers and models (mirrors
``fla.modules``; only the symbols this port carries are re-exported)."""

from myfla.modules.convolution import ShortConvolution
from myfla.modules.fused_cross_entropy import FusedCrossEntropyLoss
from myfla.modules.fused_linear_cross_entropy import FusedLinearCrossEntropyLoss
from myfla.modules.fused_norm_gate import FusedRMSNormGated
from myfla.modules.l2norm import L2Norm
from myfla.modules.layernorm import RMSNorm
from myfla.modules.mlp import GatedMLP
from myfla.modules.rotary import RotaryEmbedding

__all__ = [
    'ShortConvolution',
    'FusedCrossEntropyLoss', 'FusedLinearCrossEntropyLoss',
    'L2Norm',
    'RMSNorm',
    'FusedRMSNormGated',
    'GatedMLP',
    'RotaryEmbedding',
]
