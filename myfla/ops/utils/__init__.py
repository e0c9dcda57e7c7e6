"""Shared helpers of the chunked ops (``fla.ops.utils``): index maps, chunk-local cumsum, the
per-chunk triangular inverse, and the port's chunk-grid layout."""

from .cumsum import chunk_local_cumsum, chunk_local_cumsum_scalar, chunk_local_cumsum_vector
from .index import (
    prepare_chunk_indices,
    prepare_chunk_offsets,
    prepare_cu_seqlens_from_lens,
    prepare_cu_seqlens_from_mask,
    prepare_lens,
    prepare_lens_from_mask,
    prepare_position_ids,
    prepare_sequence_ids
)
from .solve_tril import solve_tril

__all__ = [
    'chunk_local_cumsum',
    'chunk_local_cumsum_scalar',
    'chunk_local_cumsum_vector',
    'prepare_chunk_indices',
    'prepare_chunk_offsets',
    'prepare_cu_seqlens_from_lens',
    'prepare_cu_seqlens_from_mask',
    'prepare_lens',
    'prepare_lens_from_mask',
    'prepare_position_ids',
    'prepare_sequence_ids',
    'solve_tril',
]
