"""Per-chunk inverse of ``I + A`` for strictly lower-triangular ``A``, as ``fla.ops.utils.solve_tril``.

fla inverts 16x16 diagonal blocks by forward substitution and merges them into 32x32 / 64x64
inverses with block formulas. The same inverse is one batched unit-lower-triangular solve over all
chunks of all heads here.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from myfla.ops.utils.chunk_layout import get_chunk_layout
from myfla.ops.utils.workspace import new_empty
from myfla.utils import input_guard, is_amd

# Precision of the Triton dots (ieee / tf32 / tf32x3); the torch solve always runs in full
# precision, the setting is kept and validated as in fla.
# Source: fla/ops/utils/solve_tril.py:L15-L15 (fla 0.4.0)
FLA_TRIL_PRECISION = os.environ.get('FLA_TRIL_PRECISION', 'ieee')
# Source: fla/ops/utils/solve_tril.py:L16-L18 (fla 0.4.0)
ALLOWED_TRIL_PRECISIONS = ['ieee', 'tf32'] if is_amd else ['ieee', 'tf32', 'tf32x3']
assert FLA_TRIL_PRECISION in ALLOWED_TRIL_PRECISIONS, \
    f'FLA_TRIL_PRECISION must be one of {ALLOWED_TRIL_PRECISIONS}, but got {FLA_TRIL_PRECISION}'


def _unit_lower_inverse(L: torch.Tensor) -> torch.Tensor:
    """``(I + L)^-1`` for the strict lower triangle ``L`` of ``[..., n, n]`` (``n`` a power of 2; the
    diagonal and upper triangle are never read).

    Block doubling, the merge rule of fla's 16 -> 32 -> 64 kernels applied from 1x1 blocks up:
    ``[[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]``; every level is one pair of
    batched matmuls over all diagonal blocks of all chunks (log2(n) levels, no LAPACK call: the
    batched triangular solve is erratic on CPU, 2-500x slower from call to call).
    """
    n = L.shape[-1]
    batch = L.shape[:-2]
    X = torch.ones(*batch, n, 1, 1, dtype=L.dtype, device=L.device)   # inverses of the 1x1 blocks
    s = 1
    while s < n:
        nb = n // (2 * s)
        # the lower-left [s, s] block of each [2s, 2s] diagonal block: [..., nb, s, s]
        C = torch.diagonal(L.reshape(*batch, nb, 2 * s, nb, 2 * s), dim1=-4, dim2=-2)[..., s:, :s, :]
        C = C.movedim(-1, -3)
        A, D = X[..., 0::2, :, :], X[..., 1::2, :, :]
        lower_left = torch.matmul(D, torch.matmul(C, A))
        # the [2s, 2s] inverses written block by block into one (pooled) buffer
        merged = new_empty((*batch, nb, 2 * s, 2 * s), L.dtype, L.device)
        merged[..., :s, :s].copy_(A)
        merged[..., :s, s:].zero_()
        torch.neg(lower_left, out=merged[..., s:, :s])
        merged[..., s:, s:].copy_(D)
        X = merged
        s *= 2
    return X.squeeze(-3)


@input_guard
def solve_tril(
    A: torch.Tensor,
    cu_seqlens: Optional[torch.Tensor] = None,
    output_dtype: torch.dtype = torch.float
) -> torch.Tensor:
    """Compute ``(I + A)^-1`` for every chunk of ``A`` ``[B, T, H, BT]`` (BT in 16, 32, 64).

    Only the strictly lower triangle of each chunk's ``[BT, BT]`` block is read (as the kernels'
    masks do); rows past the end of a sequence are zero in the output.

    Source: fla/ops/utils/solve_tril.py:L336-L384 (fla 0.4.0)
    Source: fla/ops/utils/solve_tril.py:L21-L82 (fla 0.4.0)
    Source: fla/ops/utils/solve_tril.py:L85-L170 (fla 0.4.0)
    Source: fla/ops/utils/solve_tril.py:L173-L333 (fla 0.4.0)
    """
    assert A.shape[-1] in [16, 32, 64]
    output_dtype = A.dtype if output_dtype is None else output_dtype

    B, T, H, BT = A.shape
    # imported here: myfla.ops.common imports this package
    from myfla.ops.common.chunk_delta_h import from_grid, to_grid
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=A.device)
    if layout.NC == 0:
        return torch.zeros_like(A, dtype=output_dtype)
    compute_dtype = torch.promote_types(A.dtype, torch.float32)
    Ac = to_grid(layout, A, dtype=compute_dtype)                         # [NC, N*H, BT, BT]
    Ai = _unit_lower_inverse(Ac.flatten(0, 1)).view_as(Ac)     # reads only the strict lower triangle
    return from_grid(layout, Ai, H, output_dtype)
