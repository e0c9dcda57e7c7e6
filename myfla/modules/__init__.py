"""Neural-network building blocks (mirrors ``fla.modules``; re-exports what fla 0.4.0's
``fla/modules/__init__.py`` exports from the modules this port carries)."""

from myfla.modules.convolution import ShortConvolution
from myfla.modules.fused_norm_gate import FusedRMSNormGated
from myfla.modules.l2norm import L2Norm
from myfla.modules.layernorm import GroupNorm, GroupNormLinear, LayerNorm, LayerNormLinear, RMSNorm, RMSNormLinear

__all__ = [
    'ShortConvolution',
    'L2Norm',
    'GroupNorm', 'GroupNormLinear', 'LayerNorm', 'LayerNormLinear', 'RMSNorm', 'RMSNormLinear',
    'FusedRMSNormGated',
]
