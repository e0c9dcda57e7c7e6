"""Gated linear attention (mirrors ``fla.ops.gla``). fla 0.4.0 also exports ``fused_chunk_gla`` and
``fused_recurrent_gla`` from its ``fused_chunk`` and ``fused_recurrent`` modules, which this port
does not carry."""

from .chunk import chunk_gla, chunk_gla_bwd_dA, chunk_gla_fwd_o_gk

__all__ = ["chunk_gla", "chunk_gla_fwd_o_gk", "chunk_gla_bwd_dA"]
