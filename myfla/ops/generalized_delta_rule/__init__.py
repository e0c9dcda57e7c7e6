"""Generalized delta rules (``fla.ops.generalized_delta_rule``). The DPLR form is ported (RWKV-7
is built on it); fla's IPLR variant (``chunk_iplr_delta_rule``, ``fused_recurrent_iplr_delta_rule``)
is outside this port's closure and not included."""

from .dplr import chunk_dplr_delta_rule, fused_recurrent_dplr_delta_rule

__all__ = [
    'chunk_dplr_delta_rule',
    'fused_recurrent_dplr_delta_rule',
]
