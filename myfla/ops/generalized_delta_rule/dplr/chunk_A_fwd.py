"""Intra-chunk matrices and gated inputs of the DPLR delta rule, as
``fla.ops.generalized_delta_rule.dplr.chunk_A_fwd``.

Per chunk, with the chunk-local cumulative log decays ``gi`` (inclusive), ``ge`` (exclusive) and
``g_last = gi`` at the chunk's last token: the four score matrices ``A_qk, A_qb`` (``j <= i``) and
``A_ak, A_ab`` (``j < i``) of ``DPLRIntraBlocks`` (``q`` scaled by ``scale``), and the gated
inputs ``qg = scale q exp(gi)``, ``kg = k exp(g_last - gi)``, ``ag = a exp(ge)``,
``bg = b exp(g_last - gi)``.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from myfla.ops.generalized_delta_rule.dplr.chunk_grid import from_grid, grid_layout, to_grid
from myfla.ops.generalized_delta_rule.dplr.intra_blocks import DPLRIntraBlocks
from myfla.utils import accumulation_dtype, is_amd

# Warp counts of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/generalized_delta_rule/dplr/chunk_A_fwd.py:L14-L14 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [2, 4, 8, 16] if is_amd else [2, 4, 8, 16, 32]


def intra_fwd_grid(q, k, a, b, gi, ge, scale: float, rnd: Callable = None,
                   blocks: Optional[DPLRIntraBlocks] = None, out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                   scores_out: Optional[torch.Tensor] = None):
    """Port-only core on the chunk grid ``[..., BT, K]``: ``(blocks, A_q, A_ak, A_ab, QA, KB)`` with
    ``A_q = [A_qk | A_qb]`` ``[..., BT, 2BT]`` (scaled), and the gated inputs stacked per chunk,
    ``QA = [qg; ag]``, ``KB = [kg; bg]`` ``[..., 2BT, K]`` (written into ``out`` when given). ``rnd``
    rounds what fla stores in the inputs' precision (``A_qk``, ``A_qb`` and the gated inputs;
    ``A_ak``, ``A_ab`` stay fp32). ``ge`` may be None (formed from ``gi`` when needed); with one
    block per chunk the four matrices are views of one ``[..., 2BT, 2BT]`` tensor (``scores_out``
    when given), ``[[A_q], [A_ak | A_ab]]``."""
    if blocks is None:
        blocks = DPLRIntraBlocks(gi, ge, stored_dtype=getattr(rnd, 'dtype', None))
    BT, K = q.shape[-2:]
    g_last = gi[..., -1:, :]
    if out is None:
        out = (q.new_empty(*q.shape[:-2], 2 * BT, K), q.new_empty(*q.shape[:-2], 2 * BT, K))
    QA, KB = out
    if blocks.decay:
        # gated rows and key columns from E = exp(gi), R = 1 / E; the gated keys are R E_last
        blocks.decay_inputs(q, k, a, b, scale, QA, KB)
        P = blocks.decay_scores(QA, KB, out=scores_out)
        KB.mul_(blocks.exp_gates[0][..., -1:, :])
    else:
        ge = blocks._gates[1]
        qg, ag, kg, bg = QA[..., :BT, :], QA[..., BT:, :], KB[..., :BT, :], KB[..., BT:, :]
        torch.exp(gi, out=qg).mul_(q).mul_(scale)
        torch.exp(ge, out=ag).mul_(a)
        torch.exp(g_last - gi, out=kg)                                  # exp(g_last - gi)
        torch.mul(b, kg, out=bg)
        kg.mul_(k)
        if blocks.single:
            P = blocks.direct_scores(QA, KB, g_last)
        else:
            A_qk, A_qb, A_ak, A_ab = blocks.scores(q, k, a, b)
            P = torch.cat((torch.cat((A_qk * scale, A_qb * scale), -1), torch.cat((A_ak, A_ab), -1)), -2)
        if scores_out is not None:
            P = scores_out.copy_(P)
    A_q, A_ak, A_ab = P[..., :BT, :], P[..., BT:, :BT], P[..., BT:, BT:]
    if rnd is not None:
        for x in (A_q, QA, KB):
            x.copy_(rnd(x))
    return blocks, A_q, A_ak, A_ab, QA, KB


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
    _, A_q, A_ak, A_ab, QA, KB = intra_fwd_grid(*grids, gi_c, ge_c, scale)
    A_qk, A_qb = A_q[..., :BT], A_q[..., BT:]
    qg, ag, kg, bg = QA[..., :BT, :], QA[..., BT:, :], KB[..., :BT, :], KB[..., BT:, :]
    return (from_grid(layout, A_ab, H, cdt), from_grid(layout, A_qk, H, q.dtype),
            from_grid(layout, A_ak, H, cdt), from_grid(layout, A_qb, H, q.dtype),
            from_grid(layout, qg, H, q.dtype), from_grid(layout, kg, H, q.dtype),
            from_grid(layout, ag, H, q.dtype), from_grid(layout, bg, H, q.dtype))
