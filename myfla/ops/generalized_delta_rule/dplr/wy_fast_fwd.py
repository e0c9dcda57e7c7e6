"""WY representation of the DPLR chunk updates, as ``fla.ops.generalized_delta_rule.dplr.wy_fast_fwd``.

Inside a chunk the pseudo-values ``v2_t = a_t^T S_{t-1}`` solve ``(I - A_ab) v2 = ag S_0 + A_ak v``, so
with ``A_ab_inv = (I - A_ab)^-1``: ``v2 = u + w S_0``, ``w = A_ab_inv ag`` and ``u = (A_ab_inv A_ak) v``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.generalized_delta_rule.dplr.chunk_grid import from_grid, grid_layout, keep_lower_, strict_tril, to_grid, tril
from myfla.ops.utils.workspace import new_empty
from myfla.utils import accumulation_dtype


# Size of the diagonal blocks that ``unit_lower_inverse_grid`` inverts by a product of powers.
POWER_BLOCK = 16


def _unit_lower_inverse_by_powers(L: torch.Tensor) -> torch.Tensor:
    """``(I - L)^-1`` for strictly lower ``L`` ``[B, n, n]`` (contiguous, ``n`` a power of two):
    ``L`` is nilpotent, so ``(I - L)^-1 = I + L + ... + L^(n-1) = (I + L)(I + L^2)(I + L^4)...``,
    two batched matmuls per doubling (into reused buffers: fresh large CPU tensors page-fault)."""
    n = L.shape[-1]
    X = new_empty(L.shape, L.dtype, L.device).copy_(L)
    X.diagonal(0, -2, -1).add_(1)
    P, s = L, 2
    spare_P, spare_X = new_empty(L.shape, L.dtype, L.device), new_empty(L.shape, L.dtype, L.device)
    while s < n:
        P, spare_P = torch.bmm(P, P, out=spare_P), (P if P is not L else None)      # L^s
        X, spare_X = torch.baddbmm(X, X, P, out=spare_X), X                         # X (I + L^s)
        if spare_P is None:
            spare_P = new_empty(L.shape, L.dtype, L.device)
        s *= 2
    return X


def unit_lower_inverse_grid(A: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Port-only core: ``(I - A)^-1`` ``[..., n, n]`` (contiguous, zero above the diagonal) for the
    strict lower triangle of every ``[..., n, n]`` block (``n`` a power of two; the diagonal and upper
    triangle of ``A`` are not read), written into ``out`` (contiguous, shaped like ``A``) when given.

    fla substitutes row by row inside 16/32-row blocks and merges two blocks with
    ``[[X1, 0], [L21, L22]] -> [[X1, 0], [X2 L21 X1, X2]]`` (``X = (I - L)^-1``). Here the diagonal
    ``POWER_BLOCK``-row blocks are inverted by a product of powers (``_unit_lower_inverse_by_powers``,
    batched over every block of every chunk: on CPU, row substitution or merges of tiny strided
    blocks cost far more than the few extra flops), then merged up to the whole matrix, one pair of
    batched matmuls per level, every operand contiguous.
    """
    n = A.shape[-1]
    batch = A.shape[:-2]
    A = A.reshape(-1, n, n)
    B = A.shape[0]
    s = min(n, POWER_BLOCK)
    m = n // s
    # the strictly lower diagonal [s, s] blocks, [B * m, s, s], and their inverses
    L = A.view(B, m, s, m, s).diagonal(0, 1, 3).permute(0, 3, 1, 2).reshape(B * m, s, s)
    X = _unit_lower_inverse_by_powers(keep_lower_(L.contiguous(), strict=True)).view(B, m, s, s)
    if s == n and out is not None:
        return out.copy_(X.view(out.shape))
    while s < n:
        nb = n // (2 * s)
        X11, X22 = X[:, 0::2], X[:, 1::2]
        L21 = A.view(B, nb, 2 * s, nb, 2 * s).diagonal(0, 1, 3)[:, s:, :s].permute(0, 3, 1, 2)
        if 2 * s == n and out is not None:
            merged = out.view(B, nb, 2 * s, 2 * s)                       # the last level: straight into out
        else:
            merged = new_empty((B, nb, 2 * s, 2 * s), A.dtype, A.device)
        merged[..., :s, s:] = 0
        merged[..., :s, :s] = X11
        merged[..., s:, s:] = X22
        merged[..., s:, :s] = torch.matmul(X22, torch.matmul(L21.contiguous(), X11))
        X = merged
        s *= 2
    return X.view(*batch, n, n)


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
