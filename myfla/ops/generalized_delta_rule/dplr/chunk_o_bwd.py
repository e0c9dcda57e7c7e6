"""Backward of the DPLR output and of the per-chunk state reads, as
``fla.ops.generalized_delta_rule.dplr.chunk_o_bwd``.

With ``o = qg h + A_qk v + A_qb v_new`` and the chunk-end state
``h' = exp(g_last) h + kg^T v + bg^T v_new``:

* ``chunk_dplr_bwd_dAu``: ``dv_new = A_qb^T do`` (intra-chunk part) and the score gradients
  ``dA_qk = scale * tril(do v^T)``, ``dA_qb = scale * tril(do v_new^T)`` (gradients of the unscaled
  scores, as ``chunk_dplr_bwd_dqk_intra`` reads them);
* ``chunk_dplr_bwd_dv``: ``dv = A_qk^T do + kg dh``;
* ``chunk_dplr_bwd_o``: ``dqg = do h^T``, ``dkg = v dh^T``, ``dbg = v_new dh^T``, ``dw = dv_new h^T``
  and the gradient of the chunk's last cumulative gate
  ``dg_last = exp(g_last) * sum_v(h * dh) + sum_t(kg * dkg) + sum_t(bg * dbg)``,

where ``h`` is the state entering a chunk and ``dh`` the gradient of the state leaving it.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.generalized_delta_rule.dplr.chunk_grid import (
    chunks_from_grid,
    chunks_to_grid,
    from_grid,
    grid_layout,
    to_grid,
    keep_lower_,
    tril
)
from myfla.utils import accumulation_dtype, check_shared_mem, is_amd

# Warp counts and block sizes of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/generalized_delta_rule/dplr/chunk_o_bwd.py:L14-L14 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [2, 4, 8, 16] if is_amd else [2, 4, 8, 16, 32]

# Source: fla/ops/generalized_delta_rule/dplr/chunk_o_bwd.py:L16-L16 (fla 0.4.0)
BK_LIST = [32, 64, 128] if check_shared_mem() else [16, 32]


def dAu_grid(VV, do, A_qb, scale: float, need_dv_new: bool = True):
    """Port-only core of ``chunk_dplr_bwd_dAu`` on the chunk grid, with ``VV = [v; v_new]``
    ``[..., 2BT, V]`` and ``A_qb`` zero above its diagonal: ``(dv_new, dA_q)``,
    ``dA_q = [dA_qk | dA_qb]`` ``[..., BT, 2BT]`` (``dv_new`` None when ``need_dv_new`` is off: the
    autograd function forms it before the state recurrence, which needs it)."""
    dv_new = torch.matmul(A_qb.transpose(-1, -2), do) if need_dv_new else None
    dA_q = keep_lower_(torch.matmul(do, VV.transpose(-1, -2)), scale=scale)
    return dv_new, dA_q


def dv_grid(A_qk, kg, do, dh, intra: Optional[torch.Tensor] = None):
    """Port-only core of ``chunk_dplr_bwd_dv`` (``dh`` ``[NC, NH, K, V]``, chunk-end gradients);
    ``intra``, when given, is ``A_qk^T do`` already formed (``A_qk`` zero above its diagonal)."""
    dv = torch.matmul(kg, dh)
    return dv.add_(intra if intra is not None else torch.matmul(A_qk.transpose(-1, -2), do))


def bwd_o_grid(KB, VV, g_last, do, h, dh, dv_new, w):
    """Port-only core of ``chunk_dplr_bwd_o`` with ``KB = [kg; bg]``, ``VV = [v; v_new]``
    ``[..., 2BT, *]``: ``(dqg, dKB, dw, dg_last)``, ``dKB = [dkg; dbg]`` (``g_last`` ``[NC, NH, K]``,
    ``h`` chunk-start states, ``dh`` chunk-end gradients, ``dv_new`` the full gradient of ``v_new``)."""
    hT = h.transpose(-1, -2)
    dqg = torch.matmul(do, hT)
    dKB = torch.matmul(VV, dh.transpose(-1, -2))
    dw = torch.matmul(dv_new, hT)
    dg_last = (h * dh).sum(-1).mul_(torch.exp(g_last))
    dg_last.add_((KB * dKB).sum(-2))
    return dqg, dKB, dw, dg_last


def chunk_dplr_bwd_dv(
    A_qk: torch.Tensor,
    kg: torch.Tensor,
    do: torch.Tensor,
    dh: torch.Tensor,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
) -> torch.Tensor:
    """``dv = A_qk^T do + kg dh`` ``[B, T, H, V]`` (``do.dtype``); ``dh`` ``[B, NT, H, K, V]``.

    Source: fla/ops/generalized_delta_rule/dplr/chunk_o_bwd.py:L295-L326 (fla 0.4.0)
    Source: fla/ops/generalized_delta_rule/dplr/chunk_o_bwd.py:L220-L292 (fla 0.4.0)
    """
    B, T, H, K, V = *kg.shape, do.shape[-1]
    BT = chunk_size
    layout = grid_layout(kg, BT, cu_seqlens)
    if layout.NC == 0:
        return torch.empty_like(do)
    cdt = accumulation_dtype(A_qk, kg, do, dh)
    A_c, kg_c, do_c = (to_grid(layout, x, dtype=cdt) for x in (A_qk, kg, do))
    dv = dv_grid(tril(A_c), kg_c, do_c, chunks_to_grid(layout, dh, dtype=cdt))
    return from_grid(layout, dv, H, do.dtype)


def chunk_dplr_bwd_o(
    k: torch.Tensor,
    b: torch.Tensor,
    v: torch.Tensor,
    v_new: torch.Tensor,
    gk: torch.Tensor,
    do: torch.Tensor,
    h: torch.Tensor,
    dh: torch.Tensor,
    dv: torch.Tensor,
    w: torch.Tensor,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64,
    scale: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dw, db, dgk_last)``: the gradients of the gated inputs (``k``/``b`` are ``kg``/``bg``,
    ``dq`` is the gradient of ``qg``) in their dtypes, and the fp32 gradient of every chunk's last
    cumulative gate ``[B, NT, H, K]``. ``gk`` is the chunk-local inclusive cumulative gate, ``h`` the
    chunk-start states, ``dh`` the chunk-end state gradients, ``dv`` the gradient of ``v_new``;
    ``scale`` is unused (as in fla).

    Source: fla/ops/generalized_delta_rule/dplr/chunk_o_bwd.py:L329-L388 (fla 0.4.0)
    Source: fla/ops/generalized_delta_rule/dplr/chunk_o_bwd.py:L92-L217 (fla 0.4.0)
    """
    B, T, H, K, V = *w.shape, v.shape[-1]
    BT = chunk_size
    layout = grid_layout(w, BT, cu_seqlens)
    cdt = accumulation_dtype(k, b, v, v_new, gk, do, h, dh, dv, w)
    if layout.NC == 0:
        return (torch.empty_like(k), torch.empty_like(k), torch.empty_like(w), torch.empty_like(b),
                torch.empty(B, 0, H, K, dtype=cdt, device=w.device))
    k_c, b_c, v_c, vn_c, do_c, dv_c, w_c = (to_grid(layout, x, dtype=cdt) for x in (k, b, v, v_new, do, dv, w))
    g_last = to_grid(layout, gk, fill='last', dtype=cdt)[..., -1, :]
    h_c, dh_c = chunks_to_grid(layout, h, dtype=cdt), chunks_to_grid(layout, dh, dtype=cdt)
    dqg, dKB, dw, dg_last = bwd_o_grid(torch.cat((k_c, b_c), -2), torch.cat((v_c, vn_c), -2), g_last, do_c,
                                       h_c, dh_c, dv_c, w_c)
    dkg, dbg = dKB[..., :BT, :], dKB[..., BT:, :]
    return (from_grid(layout, dqg, H, k.dtype), from_grid(layout, dkg, H, k.dtype),
            from_grid(layout, dw, H, w.dtype), from_grid(layout, dbg, H, b.dtype),
            chunks_from_grid(layout, dg_last, H))


def chunk_dplr_bwd_dAu(
    v: torch.Tensor,
    v_new: torch.Tensor,
    do: torch.Tensor,
    A_qb: torch.Tensor,
    scale: float,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
) -> torch.Tensor:
    """``(dv_new, dA_qk, dA_qb)``: ``dv_new = A_qb^T do`` (``v_new.dtype``) and the fp32 gradients of
    the unscaled intra-chunk scores ``[B, T, H, BT]`` (lower triangles, diagonal included).

    Source: fla/ops/generalized_delta_rule/dplr/chunk_o_bwd.py:L391-L433 (fla 0.4.0)
    Source: fla/ops/generalized_delta_rule/dplr/chunk_o_bwd.py:L19-L89 (fla 0.4.0)
    """
    B, T, H, V = v.shape
    BT = chunk_size
    layout = grid_layout(v, BT, cu_seqlens)
    cdt = accumulation_dtype(v, v_new, do, A_qb)
    if layout.NC == 0:
        empty = torch.empty(B, T, H, BT, dtype=cdt, device=v.device)
        return torch.empty_like(v_new), empty, empty.clone()
    v_c, vn_c, do_c, A_c = (to_grid(layout, x, dtype=cdt) for x in (v, v_new, do, A_qb))
    dv_new, dA_q = dAu_grid(torch.cat((v_c, vn_c), -2), do_c, tril(A_c), scale)
    dA_qk, dA_qb = dA_q[..., :BT], dA_q[..., BT:]
    return from_grid(layout, dv_new, H, v_new.dtype), from_grid(layout, dA_qk, H), from_grid(layout, dA_qb, H)
