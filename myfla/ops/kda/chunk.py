"""Chunked KimiDeltaAttention: ``chunk_kda`` and its autograd function, following fla's call graph.

Forward: chunk-local cumsum of the gate, intra-chunk ``Aqk``/``Akk`` (+ ``solve_tril``), the WY
vectors ``w, u, kg``, the inter-chunk state recurrence (``chunk_gated_delta_rule_fwd_h`` with key-wise
gate ``gk``), then the output through ``chunk_gla_fwd_o_gk``. Backward runs fla's backward functions in
fla's order on ``w, qg, kg, h, v_new``: fla recomputes them (with ``u``, which only the
recompute reads) (GPU memory is scarce, its kernels
fast); here ``ChunkKDAFunction`` keeps the forward's while they fit in ``MYFLA_SAVE_MB`` (see
``myfla.ops.utils.save_budget``) and recomputes beyond, with the same results bit for bit.

On CPU the decays ``exp(g)`` drive carried states and their gradients through the subnormal range,
where x86 arithmetic is one to two orders of magnitude slower; ``ChunkKDAFunction`` therefore runs
with flush-to-zero for subnormals (values below 1.2e-38, far under fp32 rounding of the outputs)
and restores the caller's setting afterwards. GPU code is unaffected.
"""

from __future__ import annotations

import torch

from myfla._torch_compat import compiler_disable, dtype_itemsize
from myfla.modules.l2norm import l2norm_bwd, l2norm_fwd
from myfla.ops.common.chunk_delta_h import (
    chunk_gated_delta_rule_bwd_dhu,
    chunk_gated_delta_rule_fwd_h,
    grid_cache
)
from myfla.ops.common.chunk_o import chunk_bwd_dv_local
from myfla.ops.gla.chunk import chunk_gla_bwd_dA, chunk_gla_fwd_o_gk
from myfla.ops.kda.chunk_inter import chunk_kda_bwd_dqkwg
from myfla.ops.kda.chunk_intra import chunk_kda_bwd_intra, chunk_kda_fwd_intra
from myfla.ops.kda.wy_fast import prepare_wy_repr_bwd, recompute_w_u_fwd
from myfla.ops.utils.chunk_layout import get_chunk_layout
from myfla.ops.utils.cumsum import chunk_local_cumsum
from myfla.ops.utils.denormals import flush_denormal
from myfla.ops.utils.gva import gva_groups, repeat_qk_heads, sum_qk_heads
from myfla.ops.utils.save_budget import backward_may_run, caller_grad_mode, keeps
from myfla.ops.utils.threads import chunk_call_threads
from myfla.ops.utils.validation import check_op_inputs, warn_if_head_first
from myfla.ops.utils.workspace import standalone
from myfla.utils import accumulation_dtype, autocast_custom_bwd, autocast_custom_fwd, input_guard


def chunk_kda_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor,
    output_final_state: bool,
    cu_seqlens: torch.LongTensor | None = None,
):
    """Returns ``(g_cumsum, o, Aqk, Akk_inv, final_state)``.

    Source: fla/ops/kda/chunk.py:L17-L69 (fla 0.4.0)
    """
    return _kda_fwd_pass(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens)[:5]


def _kda_fwd_pass(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, keep: bool = False):
    """``chunk_kda_fwd`` plus the intermediates ``(w, qg, kg, h, v_new)`` its backward would
    recompute when ``keep`` (else None), in one layout-conversion scope (each tensor's chunk grid is
    built once)."""
    with grid_cache(), chunk_call_threads(k, v, 'chunk_kda forward'):
        return _chunk_kda_fwd(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, keep)


def _kept_bytes(q, k, v, cu_seqlens) -> int:
    """Bytes that ``_kda_fwd_pass(..., keep=True)`` keeps: ``w``, ``qg``, ``kg`` ``[B, T, H, K]``,
    ``v_new`` ``[B, T, H, V]`` (allocated on the padded chunk grid) and the chunk states ``h`` (a view
    of the recurrence's buffer of ``NC + 1`` states)."""
    B, T, H, K, V = *k.shape, v.shape[-1]
    layout = get_chunk_layout(B, T, 64, cu_seqlens, device=k.device)
    tokens = layout.N * layout.NC * layout.BT * H
    cdt = accumulation_dtype(k, v)
    return (tokens * (K * (2 * k.element_size() + q.element_size()) + V * v.element_size())
            + (layout.NC + 1) * layout.N * H * K * V * dtype_itemsize(cdt))


def _w_and_states(q, k, v, beta, Akk, g, initial_state, output_final_state, cu_seqlens):
    """``(w, qg, kg, h, v_new, final_state)``: the WY vectors, gated inputs (``qg`` None without ``q``)
    and the chunk-state recurrence of the forward, which the backward repeats on the same inputs unless
    it kept them (fla's calls, in fla's order)."""
    w, u, qg, kg = recompute_w_u_fwd(
        k=k,
        v=v,
        beta=beta,
        A=Akk,
        q=q,
        gk=g,
        cu_seqlens=cu_seqlens,
    )
    h, v_new, final_state = chunk_gated_delta_rule_fwd_h(
        k=kg,
        w=w,
        u=u,
        gk=g,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
    )
    return w, qg, kg, h, v_new, final_state


def _chunk_kda_fwd(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, keep):
    """Body of ``_kda_fwd_pass``. Kept intermediates come from the very calls that the backward would
    repeat on the same inputs (``recompute_w_u_fwd`` then with ``q``, whose ``qg`` is computed with
    the other gated products), so the backward reads exactly what it would recompute."""
    chunk_size = 64
    g = chunk_local_cumsum(g, chunk_size=chunk_size, cu_seqlens=cu_seqlens)
    # Aqk stays fp32, as in fla (fp64 inputs keep fp64)
    Aqk, Akk = chunk_kda_fwd_intra(
        q=q,
        k=k,
        gk=g,
        beta=beta,
        scale=scale,
        cu_seqlens=cu_seqlens,
        output_dtype=torch.promote_types(q.dtype, torch.float32),
    )
    w, qg, kg, h, v_new, final_state = _w_and_states(q if keep else None, k, v, beta, Akk, g, initial_state,
                                                     output_final_state, cu_seqlens)
    o = chunk_gla_fwd_o_gk(
        q=q,
        v=v_new,
        g=g,
        A=Aqk,
        h=h,
        scale=scale,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size,
    )
    kept = (w, qg, kg, h, v_new) if keep else None
    return g, o, Aqk, Akk, final_state, kept


def chunk_kda_bwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    Aqk: torch.Tensor,
    Akk: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor,
    do: torch.Tensor,
    dht: torch.Tensor,
    cu_seqlens: torch.LongTensor | None = None,
):
    """Returns ``(dq, dk, dv, db, dg, dh0)``; ``g`` is the chunk-local cumulative gate, ``dg`` is the
    gradient of the raw gate.

    Source: fla/ops/kda/chunk.py:L72-L176 (fla 0.4.0)
    """
    return _kda_bwd_pass(q, k, v, g, beta, Aqk, Akk, scale, initial_state, do, dht, cu_seqlens)


def _kda_bwd_pass(q, k, v, g, beta, Aqk, Akk, scale, initial_state, do, dht, cu_seqlens, kept=None):
    """``chunk_kda_bwd``, reading the forward's ``kept`` intermediates (see ``_kda_fwd_pass``) instead
    of recomputing them where given, in one layout-conversion scope."""
    with grid_cache(), chunk_call_threads(k, v, 'chunk_kda backward'):
        return _chunk_kda_bwd(q, k, v, g, beta, Aqk, Akk, scale, initial_state, do, dht, cu_seqlens, kept)


def _chunk_kda_bwd(q, k, v, g, beta, Aqk, Akk, scale, initial_state, do, dht, cu_seqlens, kept):
    """Body of ``_kda_bwd_pass``."""
    chunk_size = 64
    if kept is not None:
        w, qg, kg, h, v_new = kept
    else:
        w, qg, kg, h, v_new, _ = _w_and_states(q, k, v, beta, Akk, g, initial_state, False, cu_seqlens)
    dv = chunk_bwd_dv_local(
        q=q,
        k=k,
        do=do,
        A=Aqk,
        scale=scale,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size,
    )
    dh, dh0, dv = chunk_gated_delta_rule_bwd_dhu(
        q=qg,
        k=kg,
        w=w,
        gk=g,
        h0=initial_state,
        dht=dht,
        do=do,
        dv=dv,
        scale=scale,
        cu_seqlens=cu_seqlens,
    )
    # dq, dk in fp32
    dAqk = chunk_gla_bwd_dA(
        v=v_new,
        do=do,
        scale=scale,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size,
    )
    dq, dk, dw, dg = chunk_kda_bwd_dqkwg(
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
        chunk_size=chunk_size,
    )
    dk2, dv, db, dg2, dAkk = prepare_wy_repr_bwd(
        k=k,
        v=v,
        beta=beta,
        gk=g,
        A=Akk,
        dw=dw,
        du=dv,
        cu_seqlens=cu_seqlens,
    )
    dq, dk2, db, dg2 = chunk_kda_bwd_intra(
        q=q,
        k=k,
        g=g,
        beta=beta,
        dAqk=dAqk,
        dAkk=dAkk,
        dq=dq,
        dk=dk2,
        db=db,
        dg=dg2,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size,
    )
    dk = dk.add_(dk2)
    dg = dg.add_(dg2)
    return dq, dk, dv, db, dg, dh0


class ChunkKDAFunction(torch.autograd.Function):
    """Autograd function of ``chunk_kda`` (optional in-kernel q/k L2 norm).

    Grouped value heads (q/k with ``H`` heads, v/g/beta/state with ``HV``) as fla 0.5.0: the passes
    run on ``HV`` heads with q/k repeated per group, and the backward sums the repeated heads'
    gradients (see ``myfla.ops.utils.gva``).

    Source: fla/ops/kda/chunk.py:L179-L244 (fla 0.4.0)
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
        output_final_state: bool = False,
        use_qk_l2norm_in_kernel: bool = False,
        cu_seqlens: torch.LongTensor | None = None,
    ):
        groups = gva_groups(q, k, v)
        q_rstd, k_rstd = None, None
        if use_qk_l2norm_in_kernel:
            q, q_rstd = l2norm_fwd(q)
            k, k_rstd = l2norm_fwd(k)

        q_v, k_v = repeat_qk_heads(q, groups), repeat_qk_heads(k, groups)
        # the forward's intermediates spare the backward its recompute where they fit (MYFLA_SAVE_MB)
        keep = backward_may_run(ctx) and keeps(_kept_bytes(q_v, k_v, v, cu_seqlens), device=v.device)
        with flush_denormal():
            g, o, Aqk, Akk, final_state, kept = _kda_fwd_pass(
                q=q_v,
                k=k_v,
                v=v,
                g=g,
                beta=beta,
                scale=scale,
                initial_state=initial_state,
                output_final_state=output_final_state,
                cu_seqlens=cu_seqlens,
                keep=keep,
            )
        del q_v, k_v
        ctx.save_for_backward(q, q_rstd, k, k_rstd, v, g, beta, Aqk, Akk, initial_state, cu_seqlens, *(kept or ()))
        ctx.scale = scale
        ctx.groups = groups
        ctx.use_qk_l2norm_in_kernel = use_qk_l2norm_in_kernel
        return standalone(o.to(q.dtype)), standalone(final_state)

    @staticmethod
    @input_guard
    @autocast_custom_bwd
    def backward(
        ctx,
        do: torch.Tensor,
        dht: torch.Tensor,
    ):
        q, q_rstd, k, k_rstd, v, g, beta, Aqk, Akk, initial_state, cu_seqlens, *kept = ctx.saved_tensors
        groups = ctx.groups
        with flush_denormal():
            dq, dk, dv, db, dg, dh0 = _kda_bwd_pass(
                q=repeat_qk_heads(q, groups),
                k=repeat_qk_heads(k, groups),
                v=v,
                g=g,
                beta=beta,
                Aqk=Aqk,
                Akk=Akk,
                scale=ctx.scale,
                initial_state=initial_state,
                do=do,
                dht=dht,
                cu_seqlens=cu_seqlens,
                kept=tuple(kept) if kept else None,
            )
        del kept
        dq, dk = sum_qk_heads(dq, groups), sum_qk_heads(dk, groups)
        if ctx.use_qk_l2norm_in_kernel:
            dq = l2norm_bwd(q, q_rstd, dq)
            dk = l2norm_bwd(k, k_rstd, dk)
        return dq.to(q), dk.to(k), dv.to(v), dg.to(g), db.to(beta), None, dh0, None, None, None


@compiler_disable
def chunk_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float = None,
    initial_state: torch.Tensor = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    **kwargs,
):
    r"""Chunked KimiDeltaAttention.

    Args:
        q (torch.Tensor): queries of shape `[B, T, H, K]`.
        k (torch.Tensor): keys of shape `[B, T, H, K]`.
        v (torch.Tensor): values of shape `[B, T, HV, V]`; GVA (Grouped Value Attention) is applied if
            `HV > H`, where `HV` must be divisible by `H` (as fla 0.5.0; fla 0.4.0 requires `HV == H`).
        g (torch.Tensor): (forget) gating tensor (in log space!) of shape `[B, T, HV, K]`.
        beta (torch.Tensor): betas of shape `[B, T, HV]`.
        scale (Optional[float]): scale of the attention scores; `1 / sqrt(K)` when `None`.
        initial_state (Optional[torch.Tensor]): initial state of shape `[N, HV, K, V]` for `N` input
            sequences (`N == B` for equal lengths).
        output_final_state (Optional[bool]): whether to return the final state `[N, HV, K, V]`.
        use_qk_l2norm_in_kernel (bool): L2-normalise q and k inside the op.
        cu_seqlens (torch.LongTensor): cumulative sequence lengths `[N+1]` for variable-length inputs
            (then `B` must be 1).

    Returns:
        o (torch.Tensor): outputs of shape `[B, T, HV, V]`.
        final_state (torch.Tensor): `[N, HV, K, V]` (fp32) if `output_final_state` else `None`.

    Source: fla/ops/kda/chunk.py:L247-L351 (fla 0.4.0)
    """
    check_op_inputs(q, k, v, g, beta, initial_state, cu_seqlens)
    warn_if_head_first(q)
    if scale is None:
        scale = k.shape[-1] ** -0.5
    with caller_grad_mode():
        o, final_state = ChunkKDAFunction.apply(
            q,
            k,
            v,
            g,
            beta,
            scale,
            initial_state,
            output_final_state,
            use_qk_l2norm_in_kernel,
            cu_seqlens,
        )
    return o, final_state
