"""Intra-chunk matrices and gated inputs of the DPLR delta rule, as
``fla.ops.generalized_delta_rule.dplr.chunk_A_fwd``.

Per chunk, with the chunk-local cumulative log decays ``gi`` (inclusive), ``ge`` (exclusive) and
``g_last = gi`` at the chunk's last token: the four score matrices ``A_qk, A_qb`` (``j <= i``) and
``A_ak, A_ab`` (``j < i``) of ``DPLRIntraBlocks`` (``q`` scaled by ``scale``), and the gated
inputs ``qg = scale q exp(gi)``, ``kg = k exp(g_last - gi)``, ``ag = a exp(ge)``,
``bg = b exp(g_last - gi)``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from myfla.ops.generalized_delta_rule.dplr.chunk_grid import from_grid, grid_layout, to_grid
from myfla.ops.generalized_delta_rule.dplr.intra_blocks import DPLRIntraBlocks
from myfla.utils import accumulation_dtype, is_amd

# Warp counts of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/generalized_delta_rule/dplr/chunk_A_fwd.py:L14-L14 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [2, 4, 8, 16] if is_amd else [2, 4, 8, 16, 32]


def intra_fwd_grid(q, k, a, b, gi, ge, scale: float, rnd: Callable = None,
                   blocks: Optional[DPLRIntraBlocks] = None):
    """Port-only core on the chunk grid ``[..., BT, K]``: ``(blocks, A_qk, A_qb, A_ak, A_ab, qg, kg,
    ag, bg)``; ``rnd`` rounds what fla stores in the inputs' precision (``A_qk``, ``A_qb`` and the
    gated inputs; ``A_ak``, ``A_ab`` stay fp32)."""
    if blocks is None:
        blocks = DPLRIntraBlocks(gi, ge)
    BT, K = q.shape[-2:]
    g_last = gi[..., -1:, :]
    # the gated inputs are written stacked per chunk, [qg; ag] and [kg; bg], the operands of the
    # single-block score product
    QA = q.new_empty(*q.shape[:-2], 2 * BT, K)
    KB = q.new_empty(*q.shape[:-2], 2 * BT, K)
    qg, ag, kg, bg = QA[..., :BT, :], QA[..., BT:, :], KB[..., :BT, :], KB[..., BT:, :]
    torch.exp(gi, out=qg).mul_(q).mul_(scale)
    torch.exp(ge, out=ag).mul_(a)
    key_decay = torch.exp(g_last - gi)                                  # exp(g_last - gi)
    torch.mul(k, key_decay, out=kg)
    torch.mul(b, key_decay, out=bg)
    if blocks.single:
        A_qk, A_qb, A_ak, A_ab = blocks.direct_scores(QA, KB, g_last)
    else:
        A_qk, A_qb, A_ak, A_ab = blocks.scores(q, k, a, b)
        A_qk.mul_(scale)
        A_qb.mul_(scale)
    if rnd is not None:
        A_qk, A_qb, qg, kg, ag, bg = (rnd(x) for x in (A_qk, A_qb, qg, kg, ag, bg))
    return blocks, A_qk, A_qb, A_ak, A_ab, qg, kg, ag, bg


def chunk_dplr_fwd_intra(
    q: torch.Tensor,
    k: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gi: torch.Tensor,
    ge: torch.Tensor,
    scale: float,
    chunk_size: int,
    cu_seqlens: Optional[torch.LongTensor] = None,
):
    """``(A_ab, A_qk, A_ak, A_qb, qg, kg, ag, bg)``: the matrices ``[B, T, H, BT]`` (row ``t`` holds
    token ``t``'s row of its chunk; ``A_ab``/``A_ak`` fp32, ``A_qk``/``A_qb`` in ``q.dtype``) and the
    gated inputs ``[B, T, H, K]`` in ``q.dtype``. ``gi``/``ge`` are the chunk-local cumulative gates
    of ``chunk_rwkv6_fwd_cumsum``. Entries outside a matrix's triangle are zero.

    Source: fla/ops/generalized_delta_rule/dplr/chunk_A_fwd.py:L144-L199 (fla 0.4.0)
    Source: fla/ops/generalized_delta_rule/dplr/chunk_A_fwd.py:L17-L141 (fla 0.4.0)
    """
    B, T, H, K = k.shape
    BT = chunk_size
    layout = grid_layout(k, BT, cu_seqlens)
    cdt = accumulation_dtype(q, k, a, b, gi, ge)
    if layout.NC == 0:
        empty = q.new_empty(B, T, H, BT)
        return (empty.to(cdt), empty, empty.to(cdt), empty, torch.empty_like(q), torch.empty_like(k, dtype=q.dtype),
                torch.empty_like(a, dtype=q.dtype), torch.empty_like(b, dtype=q.dtype))
    grids = [to_grid(layout, x, dtype=cdt) for x in (q, k, a, b)]
    gi_c, ge_c = (to_grid(layout, x, fill='last', dtype=cdt) for x in (gi, ge))
    _, A_qk, A_qb, A_ak, A_ab, qg, kg, ag, bg = intra_fwd_grid(*grids, gi_c, ge_c, scale)
    return (from_grid(layout, A_ab, H, cdt), from_grid(layout, A_qk, H, q.dtype),
            from_grid(layout, A_ak, H, cdt), from_grid(layout, A_qb, H, q.dtype),
            from_grid(layout, qg, H, q.dtype), from_grid(layout, kg, H, q.dtype),
            from_grid(layout, ag, H, q.dtype), from_grid(layout, bg, H, q.dtype))
