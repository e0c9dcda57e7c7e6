"""Output of the chunked DPLR delta rule, as ``fla.ops.generalized_delta_rule.dplr.chunk_o_fwd``:
``o = qg @ h + A_qk @ v + A_qb @ v_new`` per chunk (the state part and the two intra-chunk parts).
"""

from __future__ import annotations

from typing import Optional

import torch

from myfla.ops.generalized_delta_rule.dplr.chunk_grid import chunks_to_grid, from_grid, grid_layout, to_grid, tril
from myfla.ops.utils.workspace import new_empty
from myfla.utils import accumulation_dtype, check_shared_mem, is_amd

# Warp counts and block sizes of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/generalized_delta_rule/dplr/chunk_o_fwd.py:L13-L13 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [2, 4, 8, 16] if is_amd else [2, 4, 8, 16, 32]

# Source: fla/ops/generalized_delta_rule/dplr/chunk_o_fwd.py:L15-L15 (fla 0.4.0)
BK_LIST = [32, 64, 128] if check_shared_mem() else [16, 32]


def fwd_o_grid(qg, VV, A_q, h, out: Optional[torch.Tensor] = None):
    """Port-only core on the chunk grid: ``o = qg @ h + A_q @ VV`` with ``A_q = [A_qk | A_qb]``
    ``[..., BT, 2BT]`` (each zero above its diagonal), ``VV = [v; v_new]`` ``[..., 2BT, V]`` and ``h``
    ``[NC, NH, K, V]`` the chunk-start states; the sum is written into ``out`` (grid-shaped, possibly
    a strided view of a token-layout tensor) when given."""
    o = torch.matmul(A_q, VV, out=new_empty(out.shape if out is not None else (*A_q.shape[:-1], VV.shape[-1]),
                                            VV.dtype, VV.device))
    if qg.dim() >= 3:
        # qg @ h accumulated in place (one bmm over all chunks, no second temporary)
        BT, K = qg.shape[-2:]
        o.view(-1, BT, o.shape[-1]).baddbmm_(qg.reshape(-1, BT, K), h.reshape(-1, K, h.shape[-1]))
    else:
        o.add_(torch.matmul(qg, h))
    return o if out is None else out.copy_(o)


def chunk_dplr_fwd_o(
    qg: torch.Tensor,
    v: torch.Tensor,
    v_new: torch.Tensor,
    A_qk: torch.Tensor,
    A_qb: torch.Tensor,
    h: torch.Tensor,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
) -> torch.Tensor:
    """``o`` ``[B, T, H, V]`` in ``v.dtype``; ``h`` are the chunk-start states ``[B, NT, H, K, V]``.

    Source: fla/ops/generalized_delta_rule/dplr/chunk_o_fwd.py:L92-L126 (fla 0.4.0)
    Source: fla/ops/generalized_delta_rule/dplr/chunk_o_fwd.py:L17-L98 (fla 0.4.0)
    """
    B, T, H, K, V = *qg.shape, v.shape[-1]
    BT = chunk_size
    layout = grid_layout(qg, BT, cu_seqlens)
    if layout.NC == 0:
        return torch.empty_like(v)
    cdt = accumulation_dtype(qg, v, v_new, A_qk, A_qb, h)
    qg_c, v_c, vn_c, Aqk_c, Aqb_c = (to_grid(layout, x, dtype=cdt) for x in (qg, v, v_new, A_qk, A_qb))
    A_q = torch.cat((tril(Aqk_c), tril(Aqb_c)), -1)
    o = fwd_o_grid(qg_c, torch.cat((v_c, vn_c), -2), A_q, chunks_to_grid(layout, h, dtype=cdt))
    return from_grid(layout, o, H, v.dtype)
