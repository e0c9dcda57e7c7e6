"""WY representation of the DPLR chunk updates, as ``fla.ops.generalized_delta_rule.dplr.wy_fast_fwd``.

Inside a chunk the pseudo-values ``v2_t = a_t^T S_{t-1}`` solve ``(I - A_ab) v2 = ag S_0 + A_ak v``, so
with ``A_ab_inv = (I - A_ab)^-1``: ``v2 = u + w S_0``, ``w = A_ab_inv ag`` and ``u = (A_ab_inv A_ak) v``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.generalized_delta_rule.dplr.chunk_grid import from_grid, grid_layout, strict_tril, to_grid, tril
from myfla.ops.utils.threads import at_most_threads
from myfla.ops.utils.workspace import new_empty
from myfla.utils import accumulation_dtype


def unit_lower_inverse_grid(A: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Port-only core: ``(I - A)^-1`` ``[..., n, n]`` (contiguous, zero above the diagonal) for the
    strict lower triangle of every ``[..., n, n]`` block (the diagonal and upper triangle of ``A``
    are not read), written into ``out`` (contiguous, shaped like ``A``) when given.

    fla substitutes row by row inside 16/32-row blocks and merges the blocks; here every matrix is
    one unit-lower-triangular solve against the identity (forward substitution, LAPACK's ``trsm``),
    batched over all chunks of all heads: on CPU several times faster than inverting blocks by
    batched matmuls (whose many small ops and copies of strided blocks dominate), run on one
    thread.
    """
    n = A.shape[-1]
    neg = torch.neg(A, out=new_empty(A.shape, A.dtype, A.device))     # (I - A) = I + (-A): unit diagonal
    if out is None:
        out = new_empty(A.shape, A.dtype, A.device)
    eye = torch.eye(n, dtype=A.dtype, device=A.device).expand(A.shape)
    # one thread: a batched triangular solve runs one small LAPACK call per matrix, and across several
    # threads those calls stall on the pool's barriers (measured 2-1000x slower from call to call on a
    # busy 2-core machine, stable on one thread)
    with at_most_threads(1 if A.device.type == 'cpu' else None):
        return torch.linalg.solve_triangular(neg, eye, upper=False, unitriangular=True, out=out)


def wu_grid(ag: torch.Tensor, v: torch.Tensor, A_ak: torch.Tensor, A_ab_inv: torch.Tensor, rnd=None,
            out: Optional[Tuple[torch.Tensor, ...]] = None):
    """Port-only core: ``(w, u, A_tmp)`` with ``A_tmp = A_ab_inv @ A_ak`` (rounded to the values'
    precision as the kernel does; the backward reuses it). ``A_ak`` is zero on and above its
    diagonal, ``A_ab_inv`` above it (as ``intra_fwd_grid`` and ``unit_lower_inverse_grid`` leave
    them); ``w``, ``u`` (and ``A_tmp``, a third entry) are written into ``out`` (contiguous) when given."""
    A_inv = A_ab_inv
    A_tmp = torch.matmul(A_inv, A_ak, out=out[2] if out is not None and len(out) > 2 else None)
    if rnd is not None:
        A_tmp, A_inv = A_tmp.copy_(rnd(A_tmp)), rnd(A_inv)
    if out is None:
        w, u = torch.matmul(A_inv, ag), torch.matmul(A_tmp, v)
    else:
        w, u = torch.matmul(A_inv, ag, out=out[0]), torch.matmul(A_tmp, v, out=out[1])
    if rnd is not None:
        w.copy_(rnd(w))
        u.copy_(rnd(u))
    return w, u, A_tmp


def wu_fwd(
    ag: torch.Tensor,
    v: torch.Tensor,
    A_ak: torch.Tensor,
    A_ab_inv: torch.Tensor,
    cu_seqlens: Optional[torch.LongTensor],
    chunk_size: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``w = A_ab_inv @ ag`` (``ag.dtype``) and ``u = (A_ab_inv @ A_ak) @ v`` (``v.dtype``) per chunk.

    Source: fla/ops/generalized_delta_rule/dplr/wy_fast_fwd.py:L210-L245 (fla 0.4.0)
    Source: fla/ops/generalized_delta_rule/dplr/wy_fast_fwd.py:L140-L207 (fla 0.4.0)
    """
    B, T, H, K, V = *ag.shape, v.shape[-1]
    BT = chunk_size
    layout = grid_layout(ag, BT, cu_seqlens)
    if layout.NC == 0:
        return torch.empty_like(ag), torch.empty_like(v)
    cdt = accumulation_dtype(ag, v, A_ak, A_ab_inv)
    ag_c, v_c, A_ak_c, A_inv_c = (to_grid(layout, x, dtype=cdt) for x in (ag, v, A_ak, A_ab_inv))
    w, u, _ = wu_grid(ag_c, v_c, strict_tril(A_ak_c), tril(A_inv_c))
    return from_grid(layout, w, H, ag.dtype), from_grid(layout, u, H, v.dtype)


def prepare_wy_repr_fwd(
    ag: torch.Tensor,
    v: torch.Tensor,
    A_ak: torch.Tensor,
    A_ab: torch.Tensor,
    cu_seqlens: Optional[torch.LongTensor],
    chunk_size: int = 64
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(w, u, A_ab_inv)`` with ``A_ab_inv = (I - A_ab)^-1`` per chunk (``A_ab.dtype``, ``[B, T, H, BT]``).

    Source: fla/ops/generalized_delta_rule/dplr/wy_fast_fwd.py:L248-L282 (fla 0.4.0)
    Source: fla/ops/generalized_delta_rule/dplr/wy_fast_fwd.py:L15-L57 (fla 0.4.0)
    Source: fla/ops/generalized_delta_rule/dplr/wy_fast_fwd.py:L60-L137 (fla 0.4.0)
    """
    B, T, H, _ = ag.shape
    BT = chunk_size
    layout = grid_layout(ag, BT, cu_seqlens)
    if layout.NC == 0:
        return torch.empty_like(ag), torch.empty_like(v), torch.empty_like(A_ab)
    cdt = accumulation_dtype(A_ab)
    A_ab_inv = from_grid(layout, unit_lower_inverse_grid(to_grid(layout, A_ab, dtype=cdt)), H, A_ab.dtype)
    w, u = wu_fwd(
        ag=ag,
        v=v,
        A_ak=A_ak,
        A_ab_inv=A_ab_inv,
        cu_seqlens=cu_seqlens,
        chunk_size=BT
    )
    return w, u, A_ab_inv


# Source: fla/ops/generalized_delta_rule/dplr/wy_fast_fwd.py:L285-L285 (fla 0.4.0)
fwd_prepare_wy_repr = prepare_wy_repr_fwd

# Source: fla/ops/generalized_delta_rule/dplr/wy_fast_fwd.py:L287-L287 (fla 0.4.0)
fwd_wu = wu_fwd
