"""Neural-network building blocks used by the KDA and GatedDeltaNet layers (mirrors ``fla.modules``;
only the symbols this port carries are re-exported)."""

from myfla.modules.convolution import ShortConvolution
from myfla.modules.fused_norm_gate import FusedRMSNormGated
from myfla.modules.l2norm import L2Norm
from myfla.modules.layernorm import RMSNorm

__all__ = [
    'ShortConvolution',
    'L2Norm',
    'RMSNorm',
    'FusedRMSNormGated',
]
