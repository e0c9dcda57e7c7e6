"""Backward of the DPLR WY representation, as ``fla.ops.generalized_delta_rule.dplr.wy_fast_bwd``.

With ``A_inv = (I - A_ab)^-1``, ``A_tmp = A_inv A_ak``, ``w = A_inv ag`` and ``u = A_tmp v``:
``dv = dv0 + A_tmp^T du``, ``dA_ak = A_inv^T (du v^T)``, ``dag = A_inv^T dw`` and, through the
inverse (``d(A_inv) = A_inv dA_ab A_inv``), ``dA_ab = A_inv^T (du v^T A_ak^T + dw ag^T) A_inv^T``,
each kept on its strict lower triangle.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.generalized_delta_rule.dplr.chunk_grid import (
    from_grid,
    grid_layout,
    keep_lower_,
    strict_tril,
    to_grid,
    tril
)
from myfla.utils import accumulation_dtype, is_intel_alchemist

# Triton compile options for Intel Alchemist GPUs (kept for API parity; unused by torch code).
# Source: fla/ops/generalized_delta_rule/dplr/wy_fast_bwd.py:L14-L14 (fla 0.4.0)
triton_config = {'grf_mode': 'large'} if is_intel_alchemist else {}


def bwd_wy_grid(A_ab_inv, A_ak, v, ag, dw, du, dv0, A_tmp: Optional[torch.Tensor] = None):
    """Port-only core on the chunk grid: ``(dA_ab, dA_ak, dv, dag)``, ``dA_ab`` and ``dA_ak`` kept on
    their strict lower triangles. ``A_ab_inv`` is zero above its diagonal, ``A_ak`` on and above it
    (as the forward leaves them); ``A_tmp = A_ab_inv @ A_ak`` may be passed from the forward
    (``wu_grid``) instead of recomputed."""
    A_inv_T = A_ab_inv.transpose(-1, -2)
    if A_tmp is None:
        A_tmp = torch.matmul(A_ab_inv, A_ak)
    dv = torch.matmul(A_tmp.transpose(-1, -2), du).add_(dv0)
    dA_tmp = keep_lower_(torch.matmul(du, v.transpose(-1, -2)), strict=True)
    dA_inv = torch.matmul(dA_tmp, A_ak.transpose(-1, -2))
    keep_lower_(dA_inv.add_(torch.matmul(dw, ag.transpose(-1, -2))))
    dag = torch.matmul(A_inv_T, dw)
    dA_ak = keep_lower_(torch.matmul(A_inv_T, dA_tmp), strict=True)
    dA_ab = keep_lower_(torch.matmul(torch.matmul(A_inv_T, dA_inv), A_inv_T), strict=True)
    return dA_ab, dA_ak, dv, dag


def chunk_dplr_bwd_wy(
    A_ab_inv: torch.Tensor,
    A_ak: torch.Tensor,
    v: torch.Tensor,
    ag: torch.Tensor,
    dw: torch.Tensor,
    du: torch.Tensor,
    dv0: torch.Tensor,
    cu_seqlens: Optional[torch.LongTensor],
    chunk_size: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dA_ab, dA_ak, dv, dag)``: fp32 gradients of the pre-inverse ``A_ab`` and of ``A_ak``
    ``[B, T, H, BT]``, ``dv = dv0 + (A_ab_inv A_ak)^T du`` (``v.dtype``) and ``dag`` (``ag.dtype``).

    Source: fla/ops/generalized_delta_rule/dplr/wy_fast_bwd.py:L118-L165 (fla 0.4.0)
    Source: fla/ops/generalized_delta_rule/dplr/wy_fast_bwd.py:L17-L115 (fla 0.4.0)
    """
    B, T, H, K, V = *dw.shape, du.shape[-1]
    BT = chunk_size
    layout = grid_layout(dw, BT, cu_seqlens)
    cdt = accumulation_dtype(A_ab_inv, A_ak, v, ag, dw, du, dv0)
    if layout.NC == 0:
        return (torch.empty_like(A_ab_inv, dtype=cdt), torch.empty_like(A_ak, dtype=cdt),
                torch.empty_like(v), torch.empty_like(ag))
    A_inv_c, A_ak_c, *grids = [to_grid(layout, x, dtype=cdt) for x in (A_ab_inv, A_ak, v, ag, dw, du, dv0)]
    dA_ab, dA_ak, dv, dag = bwd_wy_grid(tril(A_inv_c), strict_tril(A_ak_c), *grids)
    return (from_grid(layout, dA_ab, H), from_grid(layout, dA_ak, H),
            from_grid(layout, dv, H, v.dtype), from_grid(layout, dag, H, ag.dtype))
