"""The delta rule with a diagonal-plus-low-rank transition (``fla.ops.generalized_delta_rule.dplr``)."""

from .chunk import chunk_dplr_delta_rule
from .fused_recurrent import fused_recurrent_dplr_delta_rule

__all__ = [
    'chunk_dplr_delta_rule',
    'fused_recurrent_dplr_delta_rule'
]
