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
from myfla.utils import input_guard, is_amd

# Precision of the Triton dots (ieee / tf32 / tf32x3); the torch solve always runs in full
# precision, the setting is kept and validated as in fla.
# Source: fla/ops/utils/solve_tril.py:L15-L15 (fla 0.4.0)
FLA_TRIL_PRECISION = os.environ.get('FLA_TRIL_PRECISION', 'ieee')
# Source: fla/ops/utils/solve_tril.py:L16-L18 (fla 0.4.0)
ALLOWED_TRIL_PRECISIONS = ['ieee', 'tf32'] if is_amd else ['ieee', 'tf32', 'tf32x3']
assert FLA_TRIL_PRECISION in ALLOWED_TRIL_PRECISIONS, \
    f'FLA_TRIL_PRECISION must be one of {ALLOWED_TRIL_PRECISIONS}, but got {FLA_TRIL_PRECISION}'


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
    eye = torch.eye(BT, dtype=compute_dtype, device=A.device)
    # (I + L) X = I with L the strict lower triangle: a unit lower-triangular solve reads neither
    # the diagonal nor the upper triangle of Ac, exactly as the kernels mask them out.
    Ai = torch.linalg.solve_triangular(Ac, eye.expand_as(Ac), upper=False, unitriangular=True)
    return from_grid(layout, Ai, H, output_dtype)
