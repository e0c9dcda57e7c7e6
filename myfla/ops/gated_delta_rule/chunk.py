"""Chunked gated delta rule (GatedDeltaNet's training path), as ``fla.ops.gated_delta_rule.chunk``.

Forward: chunk-local gate cumsum -> ``A = (I + beta K K^T G)^-1`` per chunk -> WY form ``w, u`` ->
inter-chunk state recurrence -> outputs. Backward runs fla's backward pieces in fla's order (dv_local,
bwd_dhu, dqkwg, wy backward, reverse gate cumsum) on ``w, h, v_new``: fla recomputes them (with ``u``);
here ``ChunkGatedDeltaRuleFunction`` keeps the forward's while they fit in ``MYFLA_SAVE_MB`` (see
``myfla.ops.utils.save_budget``) and recomputes beyond, with the same results bit for bit.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from myfla._torch_compat import compiler_disable, dtype_itemsize
from myfla.modules.l2norm import l2norm_bwd, l2norm_fwd
from myfla.ops.common.chunk_delta_h import (
    chunk_gated_delta_rule_bwd_dhu,
    chunk_gated_delta_rule_fwd_h,
    grid_cache
)
from myfla.ops.common.chunk_o import chunk_bwd_dqkwg, chunk_bwd_dv_local, chunk_fwd_o
from myfla.ops.common.chunk_scaled_dot_kkt import chunk_scaled_dot_kkt_fwd
from myfla.ops.gated_delta_rule.wy_fast import prepare_wy_repr_bwd, recompute_w_u_fwd
from myfla.ops.utils import chunk_local_cumsum, solve_tril
from myfla.ops.utils.chunk_layout import get_chunk_layout
from myfla.ops.utils.gva import gva_groups, repeat_qk_heads, sum_qk_heads
from myfla.ops.utils.save_budget import backward_may_run, caller_grad_mode, keeps
from myfla.ops.utils.threads import chunk_call_threads
from myfla.ops.utils.validation import check_op_inputs, warn_if_head_first
from myfla.ops.utils.workspace import new_empty, standalone
from myfla.utils import accumulation_dtype, autocast_custom_bwd, autocast_custom_fwd, input_guard


def chunk_gated_delta_rule_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor,
    output_final_state: bool,
    cu_seqlens: Optional[torch.LongTensor] = None
):
    """Returns ``(g_cumsum, o, A, final_state)``; ``A`` (in ``k.dtype``) is kept for the backward.

    Source: fla/ops/gated_delta_rule/chunk.py:L18-L69 (fla 0.4.0)
    """
    return _gdn_fwd_pass(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens)[:4]


def _gdn_fwd_pass(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, keep: bool = False):
    """``chunk_gated_delta_rule_fwd`` plus the intermediates ``(w, h, v_new)`` its backward would
    recompute when ``keep`` (else None), in one layout-conversion scope."""
    with grid_cache(), chunk_call_threads(k, v, 'chunk_gated_delta_rule forward'):
        return _chunk_gated_delta_rule_fwd(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                                           keep)


def _kept_bytes(k, v, cu_seqlens) -> int:
    """Bytes that ``_gdn_fwd_pass(..., keep=True)`` keeps: ``w`` ``[B, T, H, K]``, ``v_new``
    ``[B, T, H, V]`` (allocated on whole chunks) and the chunk states ``h`` (a view of the
    recurrence's buffer of ``NC + 1`` states)."""
    B, T, H, K, V = *k.shape, v.shape[-1]
    layout = get_chunk_layout(B, T, 64, cu_seqlens, device=k.device)
    tokens = layout.N * layout.NC * layout.BT * H
    cdt = accumulation_dtype(k, v)
    return (tokens * (K * k.element_size() + V * v.element_size())
            + (layout.NC + 1) * layout.N * H * K * V * dtype_itemsize(cdt))


def _chunk_gated_delta_rule_fwd(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, keep):
    """Body of ``_gdn_fwd_pass``; kept intermediates come from the very calls that the backward would
    repeat on the same inputs."""
    g = chunk_local_cumsum(g, chunk_size=64, cu_seqlens=cu_seqlens)
    # obtain WY representation. u is actually the new v.
    A = chunk_scaled_dot_kkt_fwd(
        k=k,
        g=g,
        beta=beta,
        cu_seqlens=cu_seqlens,
        output_dtype=torch.promote_types(k.dtype, torch.float32)     # fp32 as fla; fp64 stays fp64
    )
    A = solve_tril(
        A=A,
        cu_seqlens=cu_seqlens,
        output_dtype=k.dtype
    )
    w, h, v_new, final_state = _w_and_states(k, v, beta, A, g, initial_state, output_final_state, cu_seqlens)
    o = chunk_fwd_o(
        q=q,
        k=k,
        v=v_new,
        h=h,
        g=g,
        scale=scale,
        cu_seqlens=cu_seqlens,
    )
    kept = (w, h, v_new) if keep else None
    return g, o, A, final_state, kept


def _w_and_states(k, v, beta, A, g, initial_state, output_final_state, cu_seqlens):
    """``(w, h, v_new, final_state)``: the WY vectors and the chunk-state recurrence of the forward,
    which the backward repeats on the same inputs unless it kept them (fla's calls, in fla's order)."""
    w, u = recompute_w_u_fwd(
        k=k,
        v=v,
        beta=beta,
        A=A,
        g=g,
        cu_seqlens=cu_seqlens,
    )
    h, v_new, final_state = chunk_gated_delta_rule_fwd_h(
        k=k,
        w=w,
        u=u,
        g=g,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
    )
    return w, h, v_new, final_state


def chunk_gated_delta_rule_bwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    A: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor,
    do: torch.Tensor,
    dht: torch.Tensor,
    cu_seqlens: Optional[torch.LongTensor] = None,
):
    """Returns ``(dq, dk, dv, db, dg, dh0)``; ``g`` is the chunk-local cumulative gate of the forward.

    Source: fla/ops/gated_delta_rule/chunk.py:L72-L148 (fla 0.4.0)
    """
    return _gdn_bwd_pass(q, k, v, g, beta, A, scale, initial_state, do, dht, cu_seqlens)


def _gdn_bwd_pass(q, k, v, g, beta, A, scale, initial_state, do, dht, cu_seqlens, kept=None):
    """``chunk_gated_delta_rule_bwd``, reading the forward's ``kept`` intermediates (see
    ``_gdn_fwd_pass``) instead of recomputing them where given, in one layout-conversion scope."""
    with grid_cache(), chunk_call_threads(k, v, 'chunk_gated_delta_rule backward'):
        return _chunk_gated_delta_rule_bwd(q, k, v, g, beta, A, scale, initial_state, do, dht, cu_seqlens, kept)


def _chunk_gated_delta_rule_bwd(q, k, v, g, beta, A, scale, initial_state, do, dht, cu_seqlens, kept):
    """Body of ``_gdn_bwd_pass``."""
    if kept is not None:
        w, h, v_new = kept
    else:
        w, h, v_new, _ = _w_and_states(k, v, beta, A, g, initial_state, False, cu_seqlens)
    dv = chunk_bwd_dv_local(
        q=q,
        k=k,
        g=g,
        do=do,
        scale=scale,
        cu_seqlens=cu_seqlens,
    )
    dh, dh0, dv = chunk_gated_delta_rule_bwd_dhu(
        q=q,
        k=k,
        w=w,
        g=g,
        h0=initial_state,
        dht=dht,
        do=do,
        dv=dv,
        scale=scale,
        cu_seqlens=cu_seqlens,
    )
    dq, dk, dw, dg = chunk_bwd_dqkwg(
        q=q,
        k=k,
        v=v_new,
        w=w,
        g=g,
        h=h,
        dv=dv,
        do=do,
        dh=dh,
        scale=scale,
        cu_seqlens=cu_seqlens,
    )
    dk2, dv, db, dg2 = prepare_wy_repr_bwd(
        k=k,
        v=v,
        beta=beta,
        g=g,
        A=A,
        dw=dw,
        du=dv,
        cu_seqlens=cu_seqlens,
    )
    dk.add_(dk2)
    dg.add_(dg2)
    dg = chunk_local_cumsum(dg, chunk_size=64, reverse=True, cu_seqlens=cu_seqlens)
    return dq, dk, dv, db, dg, dh0


# Cache blocking (port-only): on a CPU the chunked algorithm is memory-bound once its [T, H, D]
# operands outgrow the caches, so long equal-length inputs run as consecutive time segments of whole
# chunks, each through fla's forward/backward functions, with the state carried across segments
# (exactly the resume invariant: chunk boundaries and results are unchanged). With up to four
# threads a segment holds about _SEGMENT_BYTES per fp32 [T, H, D] operand; more threads share a
# segment, so it grows with them. Every segment repeats the whole sequence of ops, so a segment has
# at least _MIN_SEGMENT_CHUNKS chunks (wide inputs, B * H large, would otherwise run one or two chunks
# at a time). GPUs run one segment: there every segment costs the same launches, whatever its size.
_SEGMENT_BYTES = 4 * 1024 * 1024
_MIN_SEGMENT_CHUNKS = 4


def _time_segments(B: int, T: int, H: int, D: int, cu_seqlens: Optional[torch.LongTensor],
                   device: torch.device = torch.device('cpu')):
    """Token ranges ``[(start, end), ...]`` (multiples of the 64-token chunk) covering ``[0, T)``."""
    if cu_seqlens is not None or B * H * D == 0 or torch.device(device).type != 'cpu':
        return [(0, T)]
    budget = _SEGMENT_BYTES * max(1, torch.get_num_threads() // 4)
    seg = max(64 * _MIN_SEGMENT_CHUNKS, (budget // (B * H * D * 4)) // 64 * 64)
    if T <= seg:
        return [(0, T)]
    return [(s, min(s + seg, T)) for s in range(0, T, seg)]


def _gather_segment(outs, parts, s: int, e: int, T: int, n_segments: int):
    """Write one segment's token-layout results into full-length buffers (allocated on the first
    segment seen); a single segment's results are used as they are."""
    if n_segments == 1:
        return parts
    if outs is None:
        outs = tuple(new_empty((p.shape[0], T, *p.shape[2:]), p.dtype, p.device) for p in parts)
    for out, p in zip(outs, parts):
        out[:, s:e].copy_(p)
    return outs


class ChunkGatedDeltaRuleFunction(torch.autograd.Function):
    """Autograd function of the chunked gated delta rule (optional in-kernel q/k L2 norm).

    Long equal-length inputs are processed in time segments (see ``_time_segments``); the initial
    state of every segment after the first is kept for the backward, which walks the segments in
    reverse and hands each segment's ``dh0`` to the previous one as its ``dht``. Within
    ``MYFLA_SAVE_MB`` (all kept segments together) the first segments' ``w, h, v_new`` are kept too;
    the backward recomputes those of the others.

    Grouped value heads (q/k with ``H`` heads, v/g/beta/state with ``HV``) as fla 0.5.0: the passes
    run on ``HV`` heads with q/k repeated per group (after the in-kernel L2 norm, which is per head),
    and the backward sums the repeated heads' gradients (see ``myfla.ops.utils.gva``).

    Source: fla/ops/gated_delta_rule/chunk.py:L151-L215 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    @autocast_custom_fwd
    def forward(
        ctx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        g: torch.Tensor,
        beta: torch.Tensor,
        scale: float,
        initial_state: torch.Tensor,
        output_final_state: bool,
        cu_seqlens: Optional[torch.LongTensor] = None,
        use_qk_l2norm_in_kernel: bool = False,
    ):
        groups = gva_groups(q, k, v)
        q_rstd, k_rstd = None, None
        if use_qk_l2norm_in_kernel:
            q, q_rstd = l2norm_fwd(q)
            k, k_rstd = l2norm_fwd(k)
        q_v, k_v = repeat_qk_heads(q, groups), repeat_qk_heads(k, groups)   # on the value heads

        segments = _time_segments(q.shape[0], q.shape[1], v.shape[2], max(k.shape[-1], v.shape[-1]), cu_seqlens,
                                   q.device)
        # the forward's intermediates spare the backward its recompute where they fit (MYFLA_SAVE_MB):
        # segment by segment, as long as the segments kept so far and this one fit together
        keep, kept_bytes = backward_may_run(ctx), 0
        outs, boundary_states, kept = None, [], []
        state = initial_state
        for i, (s, e) in enumerate(segments):
            last = i == len(segments) - 1
            if i > 0:
                boundary_states.append(state)
            if keep:
                kept_bytes += _kept_bytes(k_v[:, s:e], v[:, s:e], cu_seqlens)
                keep = keeps(kept_bytes, device=v.device)
            g_i, o_i, A_i, state, kept_i = _gdn_fwd_pass(
                q=q_v[:, s:e],
                k=k_v[:, s:e],
                v=v[:, s:e],
                g=g[:, s:e],
                beta=beta[:, s:e],
                scale=scale,
                initial_state=state,
                output_final_state=output_final_state or not last,
                cu_seqlens=cu_seqlens,
                keep=keep,
            )
            outs = _gather_segment(outs, (g_i, o_i, A_i), s, e, q.shape[1], len(segments))
            kept.extend(kept_i or ())
            del g_i, o_i, A_i, kept_i
        del q_v, k_v
        final_state = state
        g, o, A = outs
        ctx.n_boundary = len(boundary_states)
        ctx.n_kept = len(kept) // 3                          # the first n_kept segments kept theirs
        ctx.save_for_backward(q, q_rstd, k, k_rstd, v, g, beta, A, initial_state, cu_seqlens, *boundary_states,
                              *kept)
        ctx.scale = scale
        ctx.groups = groups
        ctx.segments = segments
        ctx.use_qk_l2norm_in_kernel = use_qk_l2norm_in_kernel
        return standalone(o.to(q.dtype)), standalone(final_state)

    @staticmethod
    @input_guard
    @autocast_custom_bwd
    def backward(
        ctx,
        do: torch.Tensor,
        dht: torch.Tensor
    ):
        q, q_rstd, k, k_rstd, v, g, beta, A, initial_state, cu_seqlens, *rest = ctx.saved_tensors
        boundary_states, kept = rest[:ctx.n_boundary], rest[ctx.n_boundary:]
        del rest
        segments = ctx.segments
        groups = ctx.groups
        q_v, k_v = repeat_qk_heads(q, groups), repeat_qk_heads(k, groups)
        starts = [initial_state] + boundary_states
        grads = None
        for i in range(len(segments) - 1, -1, -1):
            s, e = segments[i]
            grads_i = _gdn_bwd_pass(
                q=q_v[:, s:e],
                k=k_v[:, s:e],
                v=v[:, s:e],
                g=g[:, s:e],
                beta=beta[:, s:e],
                A=A[:, s:e],
                scale=ctx.scale,
                initial_state=starts[i],
                do=do[:, s:e],
                dht=dht,
                cu_seqlens=cu_seqlens,
                kept=tuple(kept[3 * i:3 * i + 3]) if i < ctx.n_kept else None,
            )
            dht = grads_i[5]                                        # dh0 of this segment
            grads = _gather_segment(grads, grads_i[:5], s, e, q.shape[1], len(segments))
            del grads_i
        del q_v, k_v, kept
        dq, dk, dv, db, dg = grads
        dq, dk = sum_qk_heads(dq, groups), sum_qk_heads(dk, groups)
        dh0 = dht
        if ctx.use_qk_l2norm_in_kernel:
            dq = l2norm_bwd(q, q_rstd, dq)
            dk = l2norm_bwd(k, k_rstd, dk)
        return dq.to(q), dk.to(k), dv.to(v), dg.to(g), db.to(beta), None, dh0, None, None, None


@compiler_disable
def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float = None,
    initial_state: torch.Tensor = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: Optional[torch.LongTensor] = None,
    **kwargs,
):
    r"""Chunked gated delta rule.

    Args:
        q (torch.Tensor):
            queries of shape `[B, T, H, K]`.
        k (torch.Tensor):
            keys of shape `[B, T, H, K]`.
        v (torch.Tensor):
            values of shape `[B, T, HV, V]`.
            GVA (Grouped Value Attention) is applied if `HV > H`, where `HV` must be divisible by `H`
            (as fla 0.5.0; fla 0.4.0 requires `HV == H`).
        g (torch.Tensor):
            (forget) gating tensor (in log space!) of shape `[B, T, HV]`.
        beta (torch.Tensor):
            betas of shape `[B, T, HV]`.
        scale (Optional[float]):
            Scale factor for the attention scores.
            If not provided, it will default to `1 / sqrt(K)`. Default: `None`.
        initial_state (Optional[torch.Tensor]):
            Initial state of shape `[N, HV, K, V]` for `N` input sequences.
            For equal-length input sequences, `N` equals the batch size `B`.
            Default: `None`.
        output_final_state (Optional[bool]):
            Whether to output the final state of shape `[N, HV, K, V]`. Default: `False`.
        use_qk_l2norm_in_kernel (bool):
            Whether to apply L2norm to the q/k tensor internally. Default: `False`.
        cu_seqlens (torch.LongTensor):
            Cumulative sequence lengths of shape `[N+1]` used for variable-length training,
            consistent with the FlashAttention API.

    Returns:
        o (torch.Tensor):
            Outputs of shape `[B, T, HV, V]`.
        final_state (torch.Tensor):
            Final state of shape `[N, HV, K, V]` if `output_final_state=True` else `None`.

    Source: fla/ops/gated_delta_rule/chunk.py:L218-L325 (fla 0.4.0)
    """
    if 'head_first' in kwargs:
        warnings.warn(
            "head_first is deprecated and will be removed in a future version. "
            "Please use head_first=False for now instead."
        )

    check_op_inputs(q, k, v, g, beta, initial_state, cu_seqlens)
    warn_if_head_first(q)
    if scale is None:
        scale = k.shape[-1] ** -0.5
    with caller_grad_mode():
        o, final_state = ChunkGatedDeltaRuleFunction.apply(
            q,
            k,
            v,
            g,
            beta,
            scale,
            initial_state,
            output_final_state,
            cu_seqlens,
            use_qk_l2norm_in_kernel
        )
    return o, final_state
