"""Neural-network building blocks (mirrors ``fla.modules``).

Re-exports what fla 0.4.0's ``fla/modules/__init__.py`` exports from the modules this port carries.
Not re-exported here because the module is not in this port: ``BitLinear``/``FusedBitLinear``
(fused_bitlinear) and ``FusedKLDivLoss`` (fused_kl_div).
"""

from myfla.modules.convolution import ImplicitLongConvolution, LongConvolution, ShortConvolution
from myfla.modules.fused_cross_entropy import FusedCrossEntropyLoss
from myfla.modules.fused_linear_cross_entropy import FusedLinearCrossEntropyLoss
from myfla.modules.fused_norm_gate import (
    FusedLayerNormGated,
    FusedLayerNormSwishGate,
    FusedLayerNormSwishGateLinear,
    FusedRMSNormGated,
    FusedRMSNormSwishGate,
    FusedRMSNormSwishGateLinear
)
from myfla.modules.l2norm import L2Norm
from myfla.modules.layernorm import GroupNorm, GroupNormLinear, LayerNorm, LayerNormLinear, RMSNorm, RMSNormLinear
from myfla.modules.mlp import GatedMLP
from myfla.modules.rotary import RotaryEmbedding
from myfla.modules.token_shift import TokenShift

__all__ = [
    'ImplicitLongConvolution', 'LongConvolution', 'ShortConvolution',
    'FusedCrossEntropyLoss', 'FusedLinearCrossEntropyLoss',
    'L2Norm',
    'GroupNorm', 'GroupNormLinear', 'LayerNorm', 'LayerNormLinear', 'RMSNorm', 'RMSNormLinear',
    'FusedLayerNormGated', 'FusedLayerNormSwishGate', 'FusedLayerNormSwishGateLinear',
    'FusedRMSNormGated', 'FusedRMSNormSwishGate', 'FusedRMSNormSwishGateLinear',
    'GatedMLP',
    'RotaryEmbedding',
    'TokenShift',
]
