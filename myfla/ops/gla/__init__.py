"""GLA chunk helpers used by KDA (``fla.ops.gla.chunk``: ``chunk_gla_fwd_o_gk``, ``chunk_gla_bwd_dA``)."""

from .chunk import chunk_gla_bwd_dA, chunk_gla_fwd_o_gk

__all__ = ["chunk_gla_fwd_o_gk", "chunk_gla_bwd_dA"]
