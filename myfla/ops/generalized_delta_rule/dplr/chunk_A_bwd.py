"""Backward of the DPLR intra-chunk matrices and gated inputs, as
``fla.ops.generalized_delta_rule.dplr.chunk_A_bwd``.

Adds to the gradients of the gated inputs (``dqg, dkg, dag, dbg``, turned into gradients of
``q, k, a, b``) those of the four score matrices (``DPLRIntraBlocks.grads``), then forms the gate
gradient: ``dgi = dq q + da a - dk k - db b`` is the gradient of the inclusive cumulative gate (the
exclusive one, ``ge = gi - g``, is counted there and its direct ``-da a`` taken back as the
offset), so the raw gate's gradient is the reverse chunk-local cumsum of ``dgi`` plus the chunk's
``dg_last`` minus ``da a``.
"""

from __future__ import annotations

from typing import Optional

import torch

from myfla.ops.generalized_delta_rule.dplr.chunk_grid import (
    chunk_cumsum,
    chunks_to_grid,
    from_grid,
    grid_layout,
    strict_tril,
    to_grid,
    tril
)
from myfla.ops.generalized_delta_rule.dplr.intra_blocks import DPLRIntraBlocks
from myfla.utils import accumulation_dtype, is_amd

# Warp counts of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/generalized_delta_rule/dplr/chunk_A_bwd.py:L14-L14 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [2, 4, 8, 16] if is_amd else [2, 4, 8, 16, 32]


def _decay_grads(q, k, a, b, blocks: DPLRIntraBlocks, dP, dqg, dKB, dag, dg_last, scale: float, QA=None, KB=None,
                 out=None):
    """``(dq, dk, da, db, dg)`` in ``decay`` mode, from ``E, R`` and the forward's gated rows
    ``QA = [qg; ag]`` and keys ``KB = [kg; bg]`` (recomputed from ``q, k, a, b`` when not given; the
    inputs are not read otherwise). The scores are ``QA KBr^T`` with ``KBr = KB R_last``, so with
    ``dP'`` = ``dP`` with its ``A_q`` rows over ``scale``, the gradients of the gated rows and keys are
    ``dQA = [dqg; dag] + (dP' KB) R_last`` and ``dKBt = dKB + (dP'^T QA) R_last``; the inputs' follow
    by the factors of ``DPLRIntraBlocks.decay_inputs`` and the gate's from ``dq q = dQA qg`` etc.
    Written into ``out`` (five ``[..., BT, K]`` tensors) when given."""
    E, R = blocks.exp_gates
    BT = E.shape[-2]
    E_last, R_last = E[..., -1:, :], R[..., -1:, :]
    if QA is None or KB is None:
        QA, KB = q.new_empty(*q.shape[:-2], 2 * BT, q.shape[-1]), q.new_empty(*q.shape[:-2], 2 * BT, q.shape[-1])
        blocks.decay_inputs(q, k, a, b, scale, QA, KB)
        KB.mul_(E_last)
    if scale != 1.0:
        dP = dP.clone()
        dP[..., :BT, :].div_(scale)
    dQA = torch.cat((dqg, dag), -2).addcmul_(torch.matmul(dP, KB), R_last)
    dKBt = torch.matmul(dP.transpose(-1, -2), QA).mul_(R_last).add_(dKB)
    if out is None:
        out = [torch.empty_like(E) for _ in range(5)]
    dq, dk, da, db, dg = out
    # gate: dgi = dq q + da a - dk k - db b, with dq q = dQA qg, ..., dk k = dKBt kg, ...
    t, u = dQA * QA, dKBt * KB
    offset = t[..., BT:, :]                                             # da a
    dgi = t[..., :BT, :].add_(offset).sub_(u[..., :BT, :]).sub_(u[..., BT:, :])
    torch.add(chunk_cumsum(dgi, reverse=True), dg_last.unsqueeze(-2), out=dg).sub_(offset)
    torch.mul(dQA[..., :BT, :], E, out=dq)
    if scale != 1.0:
        dq.mul_(scale)
    da[..., :1, :] = dQA[..., BT:BT + 1, :]                                # exp(ge) = 1 at a chunk start
    torch.mul(dQA[..., BT + 1:, :], E[..., :-1, :], out=da[..., 1:, :])
    key_decay = R.mul(E_last)                                           # exp(g_last - gi)
    torch.mul(dKBt[..., :BT, :], key_decay, out=dk)
    torch.mul(dKBt[..., BT:, :], key_decay, out=db)
    return dq, dk, da, db, dg


def bwd_intra_grid(q, k, a, b, gi, ge, dP, dqg, dKB, dag, dg_last, scale: float,
                   blocks: Optional[DPLRIntraBlocks] = None, QA=None, KB=None, out=None):
    """Port-only core on the chunk grid: ``(dq, dk, da, db, dg)`` with ``dg`` the gradient of the raw
    gate. ``dP = [[dA_qk, dA_qb], [dA_ak, dA_ab]]`` ``[..., 2BT, 2BT]`` holds the score gradients
    (each zero outside its triangle), ``dKB = [dkg; dbg]`` ``[..., 2BT, K]``; ``dg_last`` ``[..., K]``
    per chunk; ``blocks`` may be passed from the forward (recompute), and in ``decay`` mode the
    forward's gated inputs ``QA = [qg; ag]``, ``KB = [kg; bg]`` (``ge`` may then be None, and
    ``q, k, a, b`` are then not read); the results go into ``out`` (five tensors) when given."""
    if blocks is None:
        blocks = DPLRIntraBlocks(gi, ge)
    if blocks.decay:
        return _decay_grads(q, k, a, b, blocks, dP, dqg, dKB, dag, dg_last, scale, QA, KB, out)
    ge = blocks._gates[1]
    BT, K = q.shape[-2:]
    g_last = gi[..., -1:, :]
    key_decay = torch.exp(g_last - gi)
    e_gi, e_ge = torch.exp(gi), torch.exp(ge)
    if blocks.single:
        # intra parts from one product per chunk around g_last, inter parts folded into the factors
        inv = torch.exp(-g_last)
        QAe = q.new_empty(*q.shape[:-2], 2 * BT, K)
        KB = q.new_empty(*q.shape[:-2], 2 * BT, K)
        torch.mul(q, e_gi, out=QAe[..., :BT, :]).mul_(inv)
        torch.mul(a, e_ge, out=QAe[..., BT:, :]).mul_(inv)
        torch.mul(k, key_decay, out=KB[..., :BT, :])
        torch.mul(b, key_decay, out=KB[..., BT:, :])
        drows, dcols = blocks.direct_grads(QAe, KB, dP)
        dq = torch.addcmul(dqg * scale, drows[..., :BT, :], inv).mul_(e_gi)
        da = torch.addcmul(dag, drows[..., BT:, :], inv).mul_(e_ge)
        dcols.add_(dKB)
        dk = dcols[..., :BT, :].mul_(key_decay)
        db = dcols[..., BT:, :].mul_(key_decay)
    else:
        dq, dk, da, db = blocks.grads(q, k, a, b, dP[..., :BT, :BT], dP[..., :BT, BT:], dP[..., BT:, :BT],
                                      dP[..., BT:, BT:])
        dq = dq.addcmul(dqg, e_gi.mul_(scale))
        da = da.addcmul(dag, e_ge)
        dk = dk.addcmul(dKB[..., :BT, :], key_decay)
        db = db.addcmul(dKB[..., BT:, :], key_decay)
    result = (dq, dk, da, db, gate_grad(q, k, a, b, dq, dk, da, db, dg_last))
    if out is not None:
        for dst, src in zip(out, result):
            dst.copy_(src)
        return tuple(out)
    return result


def gate_grad(q, k, a, b, dq, dk, da, db, dg_last):
    """Gradient of the raw log decay: ``dgi = dq q + da a - dk k - db b`` is that of the inclusive
    cumulative gate (the exclusive one, ``ge = gi - g``, is counted there and its direct ``-da a``
    taken back), so ``dg`` is the reverse chunk-local cumsum of ``dgi`` plus the chunk's ``dg_last``
    minus ``da a``."""
    offset = da * a
    dgi = (dq * q).add_(offset).sub_(dk * k).sub_(db * b)
    return chunk_cumsum(dgi, reverse=True).add_(dg_last.unsqueeze(-2)).sub_(offset)


def chunk_dplr_bwd_dqk_intra(
    q: torch.Tensor,
    k: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gi: torch.Tensor,
    ge: torch.Tensor,
    dAqk: torch.Tensor,
    dAqb: torch.Tensor,
    dAak: torch.Tensor,
    dAab: torch.Tensor,
    dqg: torch.Tensor,
    dkg: torch.Tensor,
    dag: torch.Tensor,
    dbg: torch.Tensor,
    dgk_last: torch.Tensor,
    scale: float = 1.0,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64,
):
    """``(dq, dk, da, db, dgk)``: gradients of ``q, k, a, b`` (their dtypes) and the fp32 gradient of
    the raw log decay ``gk`` ``[B, T, H, K]``. ``dAqk``/``dAqb`` are gradients of the unscaled scores
    (``chunk_dplr_bwd_dAu``), ``dAak``/``dAab`` those of ``chunk_dplr_bwd_wy``, ``dgk_last``
    ``[B, NT, H, K]`` that of ``chunk_dplr_bwd_o``.

    Source: fla/ops/generalized_delta_rule/dplr/chunk_A_bwd.py:L285-L369 (fla 0.4.0)
    Source: fla/ops/generalized_delta_rule/dplr/chunk_A_bwd.py:L17-L219 (fla 0.4.0)
    Source: fla/ops/generalized_delta_rule/dplr/chunk_A_bwd.py:L222-L282 (fla 0.4.0)
    """
    B, T, H, K = q.shape
    BT = chunk_size
    layout = grid_layout(q, BT, cu_seqlens)
    cdt = accumulation_dtype(q, k, a, b, gi, ge, dAqk, dAqb, dAak, dAab, dqg, dkg, dag, dbg, dgk_last)
    if layout.NC == 0:
        return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(a), torch.empty_like(b),
                torch.empty_like(gi, dtype=cdt))
    grids = [to_grid(layout, x, dtype=cdt) for x in (q, k, a, b)]
    gi_c, ge_c = (to_grid(layout, x, fill='last', dtype=cdt) for x in (gi, ge))
    dA_qk, dA_qb, dA_ak, dA_ab, dqg_c, dkg_c, dag_c, dbg_c = [
        to_grid(layout, x, dtype=cdt) for x in (dAqk, dAqb, dAak, dAab, dqg, dkg, dag, dbg)]
    dP = torch.cat((torch.cat((tril(dA_qk), tril(dA_qb)), -1), torch.cat((strict_tril(dA_ak), strict_tril(dA_ab)), -1)),
                   -2)
    dg_last = chunks_to_grid(layout, dgk_last, dtype=cdt)
    dq, dk, da, db, dg = bwd_intra_grid(*grids, gi_c, ge_c, dP, dqg_c, torch.cat((dkg_c, dbg_c), -2), dag_c, dg_last,
                                        scale)
    return (from_grid(layout, dq, H, q.dtype), from_grid(layout, dk, H, k.dtype),
            from_grid(layout, da, H, a.dtype), from_grid(layout, db, H, b.dtype), from_grid(layout, dg, H))
