"""Chunked DPLR delta rule: ``chunk_dplr_delta_rule`` and its autograd function, following fla's
call graph.

The recurrence, per sequence and head (state ``S`` ``[K, V]``):

    S_t = (diag(exp(gk_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T,    o_t = S_t^T (scale q_t)

Forward: chunk-local cumsum of the log decay (``chunk_rwkv6_fwd_cumsum``), intra-chunk matrices
and gated inputs (``chunk_dplr_fwd_intra``), the WY representation (``prepare_wy_repr_fwd``), the
inter-chunk state recurrence (``chunk_dplr_fwd_h``) and the output (``chunk_dplr_fwd_o``). Backward
runs fla's backward functions in fla's order (``chunk_dplr_bwd_dAu``, ``_dhu``, ``_dv``, ``_o``,
``_wy``, ``_dqk_intra``) on the forward's intermediates: fla recomputes them (GPU memory is scarce,
its kernels fast); here the forward keeps them (``ForwardParts``, about 2.5x the inputs) up to
``SAVE_BYTES`` and recomputes beyond. The autograd function chains the grid-level cores (see
``chunk_grid``), so tensors cross between token layout and chunk grid once per pass, and not at all
for one unpadded sequence in fp32 (the grid is then a strided view of the token layout).

Chunk size: fla's kernels use 16-token chunks, the natural tile of a GPU. On a CPU each chunk costs
one step of a sequential Python loop plus small batched matmuls, so ``ChunkDPLRDeltaRuleFunction``
runs the same chunked algorithm on ``CHUNK_SIZE`` (32)-token chunks; the result is the same recurrence
(differences are fp32 rounding, checked against fla's references and 16-token runs in the tests).
"""

from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch

from myfla._torch_compat import compiler_disable
from myfla.ops.common.chunk_delta_h import grid_cache
from myfla.ops.generalized_delta_rule.dplr.chunk_A_bwd import bwd_intra_grid
from myfla.ops.generalized_delta_rule.dplr.chunk_A_fwd import intra_fwd_grid
from myfla.ops.generalized_delta_rule.dplr.chunk_grid import (
    chunk_cumsum,
    from_grid,
    get_chunk_layout,
    grid_view,
    rounding,
    to_grid
)
from myfla.ops.generalized_delta_rule.dplr.chunk_h_bwd import bwd_dhu_loop
from myfla.ops.generalized_delta_rule.dplr.chunk_h_fwd import fwd_h_loop
from myfla.ops.generalized_delta_rule.dplr.chunk_o_bwd import bwd_o_grid, dAu_grid, dv_grid
from myfla.ops.generalized_delta_rule.dplr.chunk_o_fwd import fwd_o_grid
from myfla.ops.generalized_delta_rule.dplr.wy_fast_bwd import bwd_wy_grid
from myfla.ops.generalized_delta_rule.dplr.wy_fast_fwd import unit_lower_inverse_grid, wu_grid
from myfla.ops.utils.chunk_layout import slab_chunk_heads
from myfla.ops.utils.denormals import flush_denormal
from myfla.ops.utils.index import check_varlen_inputs
from myfla.ops.utils.save_budget import budget_bytes, keeps
from myfla.ops.utils.threads import chunk_call_threads
from myfla.ops.utils.validation import reject_head_first, warn_head_first_layout
from myfla.ops.utils.workspace import new_empty, standalone
from myfla.utils import accumulation_dtype, autocast_custom_bwd, autocast_custom_fwd, input_guard

# Chunk size of ChunkDPLRDeltaRuleFunction on this port (fla: 16; see the module docstring).
CHUNK_SIZE = 32

# Most bytes of forward intermediates (``ForwardParts``, about 2.5x the inputs at K = V = 64 or 128)
# the autograd function keeps for its backward instead of recomputing them as fla does
# (MYFLA_DPLR_SAVE_MB; 0 = always recompute; see myfla.ops.utils.save_budget).
SAVE_BYTES = budget_bytes('MYFLA_DPLR_SAVE_MB', 2048)


# ---- fla's forward and backward call sequences on the chunk grid (port-only drivers) ---------------
def _low_precision(dtype: torch.dtype, compute_dtype: torch.dtype):
    return None if dtype == compute_dtype else rounding(dtype, compute_dtype)


def _slabs(NC: int, NH: int, device: torch.device):
    """Slices of the chunk axis with about ``slab_chunk_heads`` chunk-heads each (64 on a CPU with up
    to four threads, 16 per thread beyond: the rule of the KDA / GDN slab passes): the chunk-local
    elementwise work runs slab by slab so its temporaries stay in cache (whole-grid passes run from
    DRAM), while every slab costs the same number of op calls. On GPUs the whole grid is one slab, as
    for KDA / GDN: every slab costs the same launches whatever its size, so one slab keeps a call's
    launches independent of its length (the state loops replay as CUDA graphs, ``fwd_h_loop``)."""
    per_slab = slab_chunk_heads(device)
    if per_slab == 0:
        return [slice(0, NC)]
    step = max(1, per_slab // max(1, NH))
    return [slice(c, min(c + step, NC)) for c in range(0, NC, step)]


def _buffer(like: torch.Tensor, *shape: int) -> torch.Tensor:
    return new_empty(shape, like.dtype, like.device)


class ForwardParts:
    """What the forward computes on the chunk grid and the backward reads: the gated inputs stacked
    per chunk, ``QA = [qg; ag]``, ``KB = [kg; bg]`` ``[NC, NH, 2BT, K]``, ``VV = [v; v_new]``, the score
    matrices ``P = [[A_qk, A_qb], [A_ak, A_ab]]`` ``[NC, NH, 2BT, 2BT]`` (``A_q = [A_qk | A_qb]`` its
    top rows), the WY factors ``A_ab_inv``, ``A_tmp = A_ab_inv A_ak`` and ``w``, the last cumulative
    gates ``g_last`` ``[NC, NH, K]``, the states entering every chunk and the final one
    ``[NC + 1, NH, K, V]``, and the intra-chunk blocks of every slab.

    The whole forward runs slab by slab (``_slabs``): a slab's chunks go through every stage, the
    state recurrence included (it carries the state from slab to slab), before the next slab starts,
    so each intermediate is read back while it is still in cache instead of making a round trip
    through memory per stage. With ``keep=False`` (no backward to feed) the intermediates live in
    slab-sized buffers reused from slab to slab and only the output and the final state remain."""

    def __init__(self, q, k, v, a, b, gk, scale: float, h0: Optional[torch.Tensor], rnd=None,
                 keep: bool = True, o: Optional[torch.Tensor] = None):
        """``v`` is a grid (possibly a strided view); ``o`` (grid-shaped, possibly a strided view of a
        token-layout tensor) receives the output when given."""
        NC, NH, BT, K = q.shape
        V = v.shape[-1]
        self.slabs = _slabs(NC, NH, q.device)
        rows = NC if keep else self.slabs[0].stop
        self.QA, self.KB = _buffer(q, rows, NH, 2 * BT, K), _buffer(q, rows, NH, 2 * BT, K)
        self.VV = _buffer(v, rows, NH, 2 * BT, V)
        self.P = _buffer(q, rows, NH, 2 * BT, 2 * BT)
        self.A_ak, self.A_ab_inv, self.A_tmp = (_buffer(q, rows, NH, BT, BT) for _ in range(3))
        self.w = _buffer(q, rows, NH, BT, K)
        self.g_last = _buffer(q, rows, NH, K)
        self.states = _buffer(q, rows + 1, NH, K, V)
        if h0 is not None:
            self.states[0].copy_(h0.reshape(NH, K, V))
        else:
            self.states[0].zero_()
        v_new = _buffer(v, self.slabs[0].stop, NH, BT, V)               # contiguous: the loop writes it
        self.blocks = []
        self.rnd = rnd
        for sl in self.slabs:
            n = sl.stop - sl.start
            part = sl if keep else slice(0, n)
            QA, KB, VV, P, w = self.QA[part], self.KB[part], self.VV[part], self.P[part], self.w[part]
            VV[:, :, :BT] = v[sl]
            gi = chunk_cumsum(gk[sl])
            blk, _, _, _, _, _ = intra_fwd_grid(q[sl], k[sl], a[sl], b[sl], gi, None, scale, rnd,
                                                out=(QA, KB), scores_out=P)
            if keep:
                self.blocks.append(blk)
            g_last = self.g_last[part].copy_(gi[..., -1, :])
            # (A_ak contiguous: batched matmuls of strided [BT, BT] views take a slow path on CPU)
            A_ak = self.A_ak[part].copy_(P[:, :, BT:, :BT])
            A_inv = unit_lower_inverse_grid(P[:, :, BT:, BT:], out=self.A_ab_inv[part])
            vn = v_new[:n]
            wu_grid(QA[:, :, BT:], VV[:, :, :BT], A_ak, A_inv, rnd, out=(w, vn, self.A_tmp[part]))
            # states[part.start] is the state entering the slab (carried from the previous one)
            states = self.states[part.start:part.stop + 1]
            fwd_h_loop(KB[:, :, :BT], VV[:, :, :BT], w, KB[:, :, BT:], g_last, states, vn, rnd)
            VV[:, :, BT:] = vn
            if o is not None:
                h = states[:-1] if rnd is None else rnd(states[:-1])
                fwd_o_grid(QA[:, :, :BT], VV, P[:, :, :BT], h, out=o[sl])
            if not keep:
                self.states[0].copy_(states[-1])
        self.final = self.states[NC if keep else 0]
        self.A_q = self.P[:, :, :BT]

    def chunk_states(self) -> torch.Tensor:
        """The states entering every chunk (rounded where fla stores them in the inputs' precision)."""
        h = self.states[:-1]
        return h if self.rnd is None else self.rnd(h)

    @staticmethod
    def nbytes(q: torch.Tensor, v: torch.Tensor) -> int:
        """Bytes of the parts for grids shaped like ``q`` ``[NC, NH, BT, K]`` and ``v``."""
        NC, NH, BT, K = q.shape
        V = v.shape[-1]
        # QA, KB, VV, P, A_ab_inv and A_tmp, w, g_last, a state, the gates gi, exp(gi) and 1 / exp(gi)
        per_chunk = 4 * BT * K + 2 * BT * V + 4 * BT * BT + 2 * BT * BT + BT * K + K + K * V + 3 * BT * K
        return (NC * per_chunk + K * V) * NH * q.element_size()


def dplr_fwd_grid(q, k, v, a, b, gk, scale: float, h0: Optional[torch.Tensor], rnd=None, keep: bool = False,
                  out: Optional[torch.Tensor] = None):
    """``chunk_dplr_fwd`` on the chunk grid ``[NC, NH, BT, ...]`` (``gk`` the raw log decay,
    zero-padded): returns ``(o, final_state, parts)`` with ``final_state`` ``[NH, K, V]`` and
    ``parts`` the ``ForwardParts`` when ``keep`` (else None), which spare the backward its recompute.

    fla's functions run in fla's order, slab by slab (see ``ForwardParts``). The gated inputs live
    stacked per chunk, ``QA = [qg; ag]`` and ``KB = [kg; bg]``, next to ``VV = [v; v_new]`` and
    ``A_q = [A_qk | A_qb]``, so the output takes one matmul for what fla computes as two (and the
    backward likewise, see ``dplr_bwd_grid``; ``o`` is written into ``out`` when given)."""
    if out is None:
        out = _buffer(q, *v.shape)
    parts = ForwardParts(q, k, v, a, b, gk, scale, h0, rnd, keep=keep, o=out)
    return out, parts.final, (parts if keep else None)


def dplr_bwd_grid(grids, scale: float, h0: Optional[torch.Tensor], do, dht: Optional[torch.Tensor],
                  rnd=None, parts: Optional[ForwardParts] = None, out=None):
    """``ChunkDPLRDeltaRuleFunction.backward`` on the chunk grid: recomputes the forward (unless its
    ``parts`` are given), then runs the backward cores in fla's order (chunk-local ones slab by slab),
    on the stacked layout of ``dplr_fwd_grid``; the score gradients are assembled in place as
    ``dP = [[dA_qk, dA_qb], [dA_ak, dA_ab]]``, what ``chunk_dplr_bwd_dqk_intra`` reads. ``grids()``
    gives the inputs ``(q, k, v, a, b, gk)`` on the grid, called only where they are read (with the
    parts and decaying gates, never). Returns ``(dq, dk, dv, da, db, dgk, dh0)`` (``dh0`` ``[NH, K, V]``),
    the first six written into ``out`` (grid-shaped, possibly strided views) when given."""
    converted = []

    def inputs():
        if not converted:
            converted.extend(grids())
        return converted

    if parts is None:
        parts = ForwardParts(*inputs(), scale, h0, rnd)
    NC, NH, twoBT, K = parts.QA.shape
    BT, V = twoBT // 2, parts.VV.shape[-1]
    q, v = parts.QA, parts.VV[:, :, :BT]                                # (q: dtype and device of the grads)
    QA, KB, VV, A_q, g_last, w = parts.QA, parts.KB, parts.VV, parts.A_q, parts.g_last, parts.w
    h = parts.chunk_states()
    dstates = _buffer(q, NC + 1, NH, K, V)
    if dht is not None:
        dstates[NC].copy_(dht.reshape(NH, K, V))
    else:
        dstates[NC].zero_()
    if out is None:
        out = [_buffer(q, NC, NH, BT, K) for _ in range(2)] + [_buffer(v, NC, NH, BT, V)] + \
            [_buffer(q, NC, NH, BT, K) for _ in range(3)]
    dq, dk, dv, da, db, dgk = out
    # slab by slab from the last (the state-gradient recurrence runs backwards, carried in dstates),
    # each slab's stages back to back so its intermediates are read from cache
    step = parts.slabs[0].stop
    AqT_do_buf, dv_new_buf = _buffer(q, step, NH, 2 * BT, V), _buffer(q, step, NH, BT, V)
    dP = None
    for sl, blk in reversed(list(zip(parts.slabs, parts.blocks))):
        n = sl.stop - sl.start
        # [A_qk^T do; A_qb^T do]: chunk_dplr_bwd_dv's intra part and chunk_dplr_bwd_dAu's dv_new
        AqT_do = torch.matmul(A_q[sl].transpose(-1, -2), do[sl], out=AqT_do_buf[:n])
        dv_new = bwd_dhu_loop(QA[sl, :, :BT], KB[sl, :, BT:], w[sl], g_last[sl], do[sl], AqT_do[:, :, BT:],
                              dstates[sl.start:sl.stop + 1], dv_new_buf[:n])[1]
        dh = dstates[sl.start + 1:sl.stop + 1]
        dh = dh if rnd is None else rnd(dh)
        if dP is None or dP.shape[0] != n:
            dP = _buffer(q, n, NH, 2 * BT, 2 * BT)
        _, dP[:, :, :BT] = dAu_grid(VV[sl], do[sl], A_q[sl, ..., BT:], scale, need_dv_new=False)
        dv_s = dv_grid(A_q[sl, ..., :BT], KB[sl, :, :BT], do[sl], dh, intra=AqT_do[:, :, :BT])
        dqg, dKB, dw, dgk_last = bwd_o_grid(KB[sl], VV[sl], g_last[sl], do[sl], h[sl], dh, dv_new, w[sl])
        dP[:, :, BT:, BT:], dP[:, :, BT:, :BT], dv[sl], dag = bwd_wy_grid(
            parts.A_ab_inv[sl], parts.A_ak[sl], v[sl], QA[sl, :, BT:], dw, dv_new, dv_s, parts.A_tmp[sl])
        xs = [None] * 4 if blk.decay else [inputs()[i][sl] for i in (0, 1, 3, 4)]
        bwd_intra_grid(*xs, blk._gates[0], blk._gates[1], dP, dqg, dKB, dag, dgk_last, scale, blk,
                       QA=QA[sl], KB=KB[sl], out=(dq[sl], dk[sl], da[sl], db[sl], dgk[sl]))
    return dq, dk, dv, da, db, dgk, dstates[0]


def _grids(layout, tensors, dtype):
    return [to_grid(layout, x, dtype=dtype) for x in tensors]


def _grid_or_view(layout, x, dtype):
    view = grid_view(layout, x, dtype)
    return view if view is not None else to_grid(layout, x, dtype=dtype)


def chunk_dplr_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor,
    output_final_state: bool,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
):
    """``(o, final_state)``: ``o`` ``[B, T, H, V]`` in ``v.dtype``, the fp32 final state ``[N, H, K, V]``
    (None unless ``output_final_state``).

    Source: fla/ops/generalized_delta_rule/dplr/chunk.py:L21-L86 (fla 0.4.0)
    """
    o, final_state, _ = _chunk_dplr_fwd(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens,
                                        chunk_size)
    return o, final_state


def _chunk_dplr_fwd(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens, chunk_size,
                    keep: bool = False):
    """``chunk_dplr_fwd`` plus the grid's ``ForwardParts`` when ``keep`` and they fit in
    ``SAVE_BYTES`` (else None)."""
    B, T, H, K, V = *q.shape, v.shape[-1]
    layout = get_chunk_layout(B, T, chunk_size, cu_seqlens, device=q.device)
    cdt = accumulation_dtype(q, k, v, a, b, gk)
    h0 = initial_state.to(cdt).reshape(layout.N * H, K, V) if initial_state is not None else None
    parts = None
    if layout.NC == 0:
        o = torch.empty_like(v)
        final = h0 if h0 is not None else q.new_zeros(layout.N * H, K, V, dtype=cdt)
    else:
        # the chunk-local work reads q, k, a, b, gk in place where the grid is a view of them
        q_c, k_c, v_c, a_c, b_c, gk_c = (_grid_or_view(layout, x, cdt) for x in (q, k, v, a, b, gk))
        keep = keep and keeps(ForwardParts.nbytes(q_c, v_c), SAVE_BYTES, device=q.device,
                              variable='MYFLA_DPLR_SAVE_MB')
        # the output goes straight into token layout where the grid is a view of it
        o = new_empty(v.shape, cdt, v.device)
        o_view = grid_view(layout, o, cdt)
        o_c, final, parts = dplr_fwd_grid(q_c, k_c, v_c, a_c, b_c, gk_c, scale, h0, _low_precision(q.dtype, cdt),
                                          keep=keep, out=o_view)
        o = o.to(v.dtype) if o_view is not None else from_grid(layout, o_c, H, v.dtype)
    final_state = final.reshape(layout.N, H, K, V).clone() if output_final_state else None
    return o, final_state, parts


class ChunkDPLRDeltaRuleFunction(torch.autograd.Function):
    """Autograd function of ``chunk_dplr_delta_rule``.

    Source: fla/ops/generalized_delta_rule/dplr/chunk.py:L89-L263 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    @autocast_custom_fwd
    def forward(
        ctx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        gk: torch.Tensor,
        scale: float,
        initial_state: torch.Tensor,
        output_final_state: bool,
        cu_seqlens: Optional[torch.LongTensor] = None,
    ):
        chunk_size = CHUNK_SIZE
        # grid_cache: an op pass of the buffer pool (its buffers are reused by the next passes)
        with flush_denormal(), grid_cache(), chunk_call_threads(k, v, 'chunk_dplr forward'):
            # the forward's intermediates spare the backward its recompute where they fit (SAVE_BYTES)
            o, final_state, ctx.parts = _chunk_dplr_fwd(q, k, v, a, b, gk, scale, initial_state,
                                                        output_final_state, cu_seqlens, chunk_size,
                                                        keep=any(ctx.needs_input_grad))
        ctx.save_for_backward(q, k, v, a, b, gk, initial_state)
        ctx.cu_seqlens = cu_seqlens
        ctx.scale = scale
        ctx.chunk_size = chunk_size
        return standalone(o.to(q.dtype)), standalone(final_state)

    @staticmethod
    @input_guard
    @autocast_custom_bwd
    def backward(
        ctx,
        do: torch.Tensor,
        dht: torch.Tensor
    ):
        q, k, v, a, b, gk, initial_state = ctx.saved_tensors
        chunk_size = ctx.chunk_size
        cu_seqlens = ctx.cu_seqlens
        scale = ctx.scale
        B, T, H, K, V = *q.shape, v.shape[-1]
        layout = get_chunk_layout(B, T, chunk_size, cu_seqlens, device=q.device)
        cdt = accumulation_dtype(q, k, v, a, b, gk, do)
        NH = layout.N * H
        h0 = initial_state.to(cdt).reshape(NH, K, V) if initial_state is not None else None
        dht_c = dht.to(cdt).reshape(NH, K, V) if dht is not None else None
        if layout.NC == 0:
            dh0 = None
            if initial_state is not None:
                dh0 = (dht_c if dht_c is not None else torch.zeros_like(h0)).reshape(initial_state.shape)
            return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), torch.zeros_like(a),
                    torch.zeros_like(b), torch.zeros_like(gk), None, dh0, None, None)
        with flush_denormal(), grid_cache(), chunk_call_threads(k, v, 'chunk_dplr backward'):
            parts, ctx.parts = ctx.parts, None
            # gradients written straight into token layout where the grid is a view of it
            views = None
            if not layout.varlen and not layout.pad and layout.B == 1:
                outs = [new_empty(x.shape, cdt, x.device) for x in (q, k, v, a, b, gk)]
                views = [grid_view(layout, x, cdt) for x in outs]
            grads = dplr_bwd_grid(functools.partial(_grids, layout, (q, k, v, a, b, gk), cdt), scale, h0,
                                  to_grid(layout, do, dtype=cdt), dht_c, _low_precision(q.dtype, cdt), parts=parts,
                                  out=views)
            del parts
        if views is not None:
            dq, dk, dv, da, db, dgk = outs
        else:
            dq, dk, dv, da, db, dgk = (from_grid(layout, x, H) for x in grads[:6])
        dh0 = grads[6].reshape(initial_state.shape).clone() if initial_state is not None else None
        return dq.to(q), dk.to(k), dv.to(v), da.to(a), db.to(b), dgk.to(gk), None, dh0, None, None


@compiler_disable
def chunk_dplr_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.LongTensor] = None,
    head_first: bool = False,
):
    r"""Chunked delta rule with a diagonal-plus-low-rank transition,
    ``S_t = (diag(exp(gk_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T (scale q_t)``.

    Args:
        q (torch.Tensor): queries of shape `[B, T, H, K]`.
        k (torch.Tensor): keys of shape `[B, T, H, K]`.
        v (torch.Tensor): values of shape `[B, T, H, V]`.
        a (torch.Tensor): activations of shape `[B, T, H, K]`.
        b (torch.Tensor): betas of shape `[B, T, H, K]`.
        gk (torch.Tensor): gk of shape `[B, T, H, K]`. decay term in log space!
        scale (Optional[float]): scale of the attention scores; `1 / sqrt(K)` when `None`.
        initial_state (Optional[torch.Tensor]): initial state of shape `[N, H, K, V]` for `N` input
            sequences (`N == B` for equal lengths).
        output_final_state (Optional[bool]): whether to return the final state `[N, H, K, V]`.
        cu_seqlens (torch.LongTensor): cumulative sequence lengths `[N+1]` for variable-length inputs
            (then `B` must be 1).
        head_first (Optional[bool]): deprecated; `True` raises.

    Returns:
        o (torch.Tensor): outputs of shape `[B, T, H, V]`.
        final_state (torch.Tensor): `[N, H, K, V]` (fp32) if `output_final_state` else `None`.

    Source: fla/ops/generalized_delta_rule/dplr/chunk.py:L266-L359 (fla 0.4.0)
    """
    reject_head_first(head_first)
    warn_head_first_layout(q)
    if q.dtype == torch.float32:
        warnings.warn(
            """ChunkDeltaRuleFunction does not support float32 on some platforms. Please use bfloat16/float16.
            If you want to use float32, please solve the issue by yourself.""",
            category=RuntimeWarning,
            stacklevel=2
        )
    check_varlen_inputs(q, initial_state, cu_seqlens)
    scale = k.shape[-1] ** -0.5 if scale is None else scale
    o, final_state = ChunkDPLRDeltaRuleFunction.apply(
        q,
        k,
        v,
        a,
        b,
        gk,
        scale,
        initial_state,
        output_final_state,
        cu_seqlens,
    )
    return o, final_state
