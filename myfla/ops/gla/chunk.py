"""Chunked gated linear attention (GLA), as ``fla.ops.gla.chunk``: ``chunk_gla`` with its forward
and backward passes, and the chunk helpers KDA reuses.

Per chunk with chunk-local cumulative key gates ``G`` and the state ``h`` entering the chunk:
``o = scale * (q exp(G)) h + tril(A) v`` with ``A[i, j] = scale * sum_d q[i,d] k[j,d] exp(G[i,d] - G[j,d])``
(``j <= i``); the state then becomes ``diag(exp(G_last)) h + (k exp(G_last - G))^T v``
(``myfla.ops.common.chunk_h``). fla runs one kernel per (chunk, head) for each piece; here each piece
is batched matmuls over the padded chunk grid, processed in slabs of chunks.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla._torch_compat import compiler_disable
from myfla.ops.common.chunk_h import chunk_bwd_dh, chunk_fwd_h
from myfla.ops.utils.chunk_grid import chunks_to_grid, from_grid, grid_empty, slab, slab_out, store, to_grid
from myfla.ops.utils.chunk_layout import chunk_slabs, get_chunk_layout
from myfla.ops.utils.cumsum import chunk_local_cumsum
from myfla.ops.utils.dot import dot, dot_add, operand, operand_dtype
from myfla.ops.utils.gated_tril import GatedTril
from myfla.ops.utils.workspace import standalone
from myfla.utils import accumulation_dtype, check_shared_mem, input_guard

# Block sizes of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/gla/chunk.py:L16-L16 (fla 0.4.0)
BK_LIST = [32, 64] if check_shared_mem() else [16, 32]
# Source: fla/ops/gla/chunk.py:L17-L17 (fla 0.4.0)
BV_LIST = [64, 128] if check_shared_mem('ampere') else [16, 32]


def _reverse_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``sum_{s >= t} x[s]`` along ``dim`` (fla's ``x - cumsum(x) + sum(x)``)."""
    return x - x.cumsum(dim) + x.sum(dim, keepdim=True)


def chunk_gla_fwd_intra_gk(
    q: torch.Tensor,
    k: torch.Tensor,
    g: torch.Tensor,
    scale: float,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
):
    """Intra-chunk scores ``A[i, j] = scale * sum_d q[i,d] k[j,d] exp(g[i,d] - g[j,d])`` for ``j <= i``
    (``g`` the chunk-local cumulative gate), fp32 ``[B, T, H, BT]`` (fp64 for fp64 inputs); entries
    above the diagonal are 0 (fla leaves them unwritten and reads only the lower triangle).

    fla splits each chunk into 16-token sub-chunks: blocks below the diagonal factorise through the
    gate at the first row of their row block (``..._sub_inter``), the 16x16 diagonal blocks are
    evaluated pairwise (``..._sub_intra``, or split over K and merged for ``K > 256``). The same
    factorisation, applied by bisection down to single tokens, gives these sums here.

    Source: fla/ops/gla/chunk.py:L748-L839 (fla 0.4.0)
    Source: fla/ops/gla/chunk.py:L20-L93 (fla 0.4.0)
    Source: fla/ops/gla/chunk.py:L95-L159 (fla 0.4.0)
    Source: fla/ops/gla/chunk.py:L162-L232 (fla 0.4.0)
    Source: fla/ops/gla/chunk.py:L233-L279 (fla 0.4.0)
    """
    B, T, H, K = k.shape
    BT = chunk_size
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=k.device)
    qc, kc, Gc = to_grid(layout, q), to_grid(layout, k), to_grid(layout, g, 'last')
    A = grid_empty(qc, BT)
    for sl in chunk_slabs(qc):
        store(A, sl, GatedTril(slab(Gc, sl)).scores([slab(qc, sl)], slab(kc, sl))[0].mul_(scale))
    return from_grid(layout, A)



def chunk_gla_fwd_o_gk(
    q: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    A: torch.Tensor,
    h: torch.Tensor,
    scale: float,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
):
    """``o = scale * (q exp(g)) @ h[chunk] + tril(A) @ v`` in ``v.dtype``; ``A`` ``[B, T, H, BT]`` (it
    already carries ``scale``), ``h`` ``[B, NT, H, K, V]``.

    Source: fla/ops/gla/chunk.py:L842-L876 (fla 0.4.0)
    Source: fla/ops/gla/chunk.py:L282-L359 (fla 0.4.0)
    """
    B, T, H, K, V = *q.shape, v.shape[-1]
    BT = chunk_size
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=q.device)
    qc, Gc, Ac = to_grid(layout, q), to_grid(layout, g, 'last'), to_grid(layout, A)
    vc = to_grid(layout, v, dtype=operand_dtype(v.dtype, v.device))
    # h is stored in the inputs' dtype; the kernel reads it in q's dtype
    hc = chunks_to_grid(layout, operand(h, q.dtype), operand_dtype(q.dtype, q.device))   # [N, H, NC, K, V]
    o = grid_empty(qc, V)
    for sl in chunk_slabs(qc):
        q_s, G_s, A_s, v_s, h_s = (slab(x, sl) for x in (qc, Gc, Ac, vc, hc))
        # fla rounds q * scale and then q * exp(g) to q's dtype before the dot with h; tril(A) is
        # rounded to v's dtype (out of place: a contiguous slice is the caller's own memory)
        qg = operand(operand(q_s * scale, q.dtype) * G_s.exp(), q.dtype)
        o_s = dot(operand(A_s.tril(), v.dtype), v_s)
        store(o, sl, dot_add(o_s, qg, h_s, out=o_s))
    return from_grid(layout, o).to(v.dtype)


def chunk_gla_bwd_dA(
    v: torch.Tensor,
    do: torch.Tensor,
    scale: float,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
):
    """``dA = scale * tril(do @ v^T)`` per chunk, fp32 ``[B, T, H, BT]`` (fp64 for fp64 inputs).

    Source: fla/ops/gla/chunk.py:L879-L908 (fla 0.4.0)
    Source: fla/ops/gla/chunk.py:L498-L546 (fla 0.4.0)
    """
    B, T, H, V = v.shape
    BT = chunk_size
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=v.device)
    doc = to_grid(layout, do, dtype=operand_dtype(do.dtype, do.device))
    vc = to_grid(layout, v, dtype=operand_dtype(v.dtype, v.device))
    acc = accumulation_dtype(do, v)                                     # fp32; fp64 for fp64 inputs
    dA = grid_empty(doc, BT, dtype=acc)
    for sl in chunk_slabs(doc):
        d_s, v_s = (slab(x, sl) for x in (doc, vc))
        torch.mul(dot(d_s, v_s.transpose(-1, -2)).tril_(), scale, out=slab_out(dA, sl))
    return from_grid(layout, dA)


def chunk_gla_bwd_dv(
    k: torch.Tensor,
    g: torch.Tensor,
    A: torch.Tensor,
    do: torch.Tensor,
    dh: torch.Tensor,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
):
    """``dv = tril(A)^T do + (k exp(g_last - g)) dh[chunk]`` in ``do.dtype``; ``dh`` ``[B, NT, H, K, V]``
    is the gradient of the state at the end of every chunk.

    Source: fla/ops/gla/chunk.py:L911-L943 (fla 0.4.0)
    Source: fla/ops/gla/chunk.py:L549-L625 (fla 0.4.0)
    """
    B, T, H, K, V = *k.shape, do.shape[-1]
    BT = chunk_size
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=k.device)
    kc, Gc, Ac, doc = to_grid(layout, k), to_grid(layout, g, 'last'), to_grid(layout, A), to_grid(layout, do)
    dhc = chunks_to_grid(layout, dh, kc.dtype)                          # [N, H, NC, K, V]
    dv = grid_empty(doc, V)
    for sl in chunk_slabs(kc):
        k_s, G_s, A_s, do_s, dh_s = (slab(x, sl) for x in (kc, Gc, Ac, doc, dhc))
        kg = torch.exp(G_s[..., -1:, :] - G_s).mul_(k_s)
        store(dv, sl, torch.matmul(kg, dh_s).add_(A_s.tril().transpose(-1, -2) @ do_s))
    return from_grid(layout, dv).to(do.dtype)


def chunk_gla_bwd_dqk_intra(
    q: torch.Tensor,
    k: torch.Tensor,
    g: torch.Tensor,
    dA: torch.Tensor,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
):
    """Intra-chunk gradients from ``dA`` (the gradient of the unscaled scores, lower triangle read):
    ``dq[i] = sum_{j<=i} dA[i,j] k[j] exp(g[i] - g[j])`` and ``dk[j] = sum_{i>=j} dA[i,j] q[i] exp(g[i] - g[j])``,
    both fp32 (fp64 for fp64 inputs).

    Source: fla/ops/gla/chunk.py:L946-L984 (fla 0.4.0)
    Source: fla/ops/gla/chunk.py:L362-L495 (fla 0.4.0)
    """
    B, T, H, K = q.shape
    BT = chunk_size
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=q.device)
    qc, kc, Gc, dAc = to_grid(layout, q), to_grid(layout, k), to_grid(layout, g, 'last'), to_grid(layout, dA)
    dq, dk = grid_empty(qc, K), grid_empty(qc, K)
    for sl in chunk_slabs(qc):
        tri = GatedTril(slab(Gc, sl))
        dA_s = slab(dAc, sl)
        store(dq, sl, tri.grad_rows([dA_s], slab(kc, sl))[0])
        store(dk, sl, tri.grad_cols([dA_s], [slab(qc, sl)]))
    return from_grid(layout, dq), from_grid(layout, dk)


def chunk_gla_bwd_dqkg(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    h: torch.Tensor,
    g: torch.Tensor,
    do: torch.Tensor,
    dh: torch.Tensor,
    dq: torch.Tensor,
    dk: torch.Tensor,
    scale: Optional[float] = None,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
):
    """Adds the inter-chunk gradients to the intra ones and forms the gate gradient:
    ``dq2 = dq + scale exp(g) (do h^T)``, ``dk2 = dk + exp(g_last - g) (v dh^T)`` (both in ``dq``'s
    dtype) and ``dg`` (``g``'s dtype), the reverse chunk-local cumsum of ``q dq2 - k dk2`` plus, on
    every row, the gradient reaching ``g_last`` through the state
    (``exp(g_last) sum_v h dh + sum_t k exp(g_last - g) (v dh^T)``). ``dg`` is the gradient of the raw
    gate, not of its cumulative sum.

    Source: fla/ops/gla/chunk.py:L987-L1033 (fla 0.4.0)
    Source: fla/ops/gla/chunk.py:L627-L745 (fla 0.4.0)
    """
    B, T, H, K, V = *k.shape, v.shape[-1]
    BT = chunk_size
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=q.device)
    qc, kc, vc, Gc, doc = (to_grid(layout, x) for x in (q, k, v, g, do))
    Gc = to_grid(layout, g, 'last')
    dqc, dkc = to_grid(layout, dq), to_grid(layout, dk)
    hc, dhc = chunks_to_grid(layout, h, qc.dtype), chunks_to_grid(layout, dh, qc.dtype)
    dq2, dk2, dg = grid_empty(qc, K), grid_empty(qc, K), grid_empty(qc, K)
    for sl in chunk_slabs(qc):
        q_s, k_s, v_s, G_s, do_s, dq_s, dk_s, h_s, dh_s = (
            slab(x, sl) for x in (qc, kc, vc, Gc, doc, dqc, dkc, hc, dhc))
        G_last = G_s[..., -1:, :]                                          # [.., 1, K]
        # gradient of the state's dependence on g_last: decay term, then the keys' gates below
        dgk = (h_s * dh_s).sum(-1).unsqueeze(-2).mul_(torch.exp(G_last))   # [.., 1, K]
        dq_i = torch.matmul(do_s, h_s.transpose(-1, -2)).mul_(torch.exp(G_s)).mul_(scale)
        dk_i = torch.matmul(v_s, dh_s.transpose(-1, -2)).mul_(torch.exp(G_last - G_s))
        dgk.add_((dk_i * k_s).sum(-2, keepdim=True))
        dq_i.add_(dq_s)
        dk_i.add_(dk_s)
        dg_raw = q_s * dq_i - k_s * dk_i
        store(dg, sl, _reverse_cumsum(dg_raw, -2).add_(dgk))
        store(dq2, sl, dq_i)
        store(dk2, sl, dk_i)
    return (from_grid(layout, dq2).to(dq.dtype), from_grid(layout, dk2).to(dk.dtype),
            from_grid(layout, dg).to(g.dtype))


def chunk_gla_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    g_cumsum: Optional[torch.Tensor],
    scale: float,
    initial_state: torch.Tensor,
    output_final_state: bool,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GLA forward: returns ``(g_cumsum, A, h, ht, o)`` (five values, as fla's despite its
    annotation): the chunk-local cumulative gate (fp32), the intra scores (fp32), the chunk-start
    states (``k.dtype``), the fp32 final state (or None) and the output (``v.dtype``).

    Source: fla/ops/gla/chunk.py:L1036-L1084 (fla 0.4.0)
    """
    if g_cumsum is None:
        g_cumsum = chunk_local_cumsum(g, chunk_size, cu_seqlens=cu_seqlens)

    h, ht = chunk_fwd_h(
        k=k,
        v=v,
        g=None,
        gk=g_cumsum,
        gv=None,
        h0=initial_state,
        output_final_state=output_final_state,
        states_in_fp32=False,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size
    )

    # the intra scores are kept in fp32
    A = chunk_gla_fwd_intra_gk(
        q=q,
        k=k,
        g=g_cumsum,
        scale=scale,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size
    )
    o = chunk_gla_fwd_o_gk(
        q=q,
        v=v,
        g=g_cumsum,
        A=A,
        h=h,
        scale=scale,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size
    )
    return g_cumsum, A, h, ht, o


def chunk_gla_bwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    g_cumsum: Optional[torch.Tensor],
    scale: float,
    initial_state: torch.Tensor,
    h: torch.Tensor,
    A: torch.Tensor,
    do: torch.Tensor,
    dht: torch.Tensor,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
):
    """GLA backward: ``(dq, dk, dv, dg, dh0)``; the states are recomputed in fp32 when ``h`` is None
    and the cumulative gate when ``g_cumsum`` is None.

    Source: fla/ops/gla/chunk.py:L1087-L1174 (fla 0.4.0)
    """
    if g_cumsum is None:
        g_cumsum = chunk_local_cumsum(g, chunk_size, cu_seqlens=cu_seqlens)

    if h is None:
        h, _ = chunk_fwd_h(
            k=k,
            v=v,
            g=None,
            gk=g_cumsum,
            gv=None,
            h0=initial_state,
            output_final_state=False,
            cu_seqlens=cu_seqlens,
            chunk_size=chunk_size,
            states_in_fp32=True
        )
    dh, dh0 = chunk_bwd_dh(
        q=q,
        k=k,
        v=v,
        g=None,
        gk=g_cumsum,
        gv=None,
        do=do,
        h0=initial_state,
        dht=dht,
        scale=scale,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size,
        states_in_fp32=True
    )

    dv = chunk_gla_bwd_dv(
        k=k,
        g=g_cumsum,
        A=A,
        do=do,
        dh=dh,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size
    )

    # dq, dk in fp32
    dA = chunk_gla_bwd_dA(
        v=v,
        do=do,
        scale=scale,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size
    )
    dq, dk = chunk_gla_bwd_dqk_intra(
        q=q,
        k=k,
        g=g_cumsum,
        dA=dA,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size
    )
    dq, dk, dg = chunk_gla_bwd_dqkg(
        q=q,
        k=k,
        v=v,
        h=h,
        g=g_cumsum,
        do=do,
        dh=dh,
        dq=dq,
        dk=dk,
        scale=scale,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size
    )
    return dq, dk, dv, dg, dh0


def _next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


class ChunkGLAFunction(torch.autograd.Function):
    """Autograd wrapper of :func:`chunk_gla_fwd` / :func:`chunk_gla_bwd`. The chunk size is
    ``min(64, max(16, next_power_of_2(T)))``; the backward recomputes the states, and the cumulative
    gate too unless ``g`` is fp32.

    Source: fla/ops/gla/chunk.py:L1177-L1238 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(
        ctx,
        q,
        k,
        v,
        g,
        scale,
        initial_state,
        output_final_state,
        cu_seqlens,
    ):
        chunk_size = min(64, max(16, _next_power_of_2(q.shape[1])))

        g_cumsum, A, _, ht, o = chunk_gla_fwd(
            q=q,
            k=k,
            v=v,
            g=g,
            g_cumsum=None,
            scale=scale,
            initial_state=initial_state,
            output_final_state=output_final_state,
            cu_seqlens=cu_seqlens,
            chunk_size=chunk_size
        )
        # keep whichever of g / g_cumsum is cheaper to hold: the cumulative gate is fp32
        if g.dtype != torch.float:
            g_cumsum = None
        else:
            g = None
        ctx.save_for_backward(q, k, v, g, g_cumsum, initial_state, A)
        ctx.chunk_size = chunk_size
        ctx.scale = scale
        ctx.cu_seqlens = cu_seqlens
        return standalone(o), standalone(ht)

    @staticmethod
    @input_guard
    def backward(ctx, do, dht):
        q, k, v, g, g_cumsum, initial_state, A = ctx.saved_tensors
        chunk_size, scale, cu_seqlens = ctx.chunk_size, ctx.scale, ctx.cu_seqlens
        dq, dk, dv, dg, dh0 = chunk_gla_bwd(
            q=q,
            k=k,
            v=v,
            g=g,
            g_cumsum=g_cumsum,
            scale=scale,
            h=None,
            A=A,
            initial_state=initial_state,
            do=do,
            dht=dht,
            cu_seqlens=cu_seqlens,
            chunk_size=chunk_size
        )
        return dq.to(q), dk.to(k), dv.to(v), dg, None, dh0, None, None


@compiler_disable
def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: Optional[int] = None,
    initial_state: torch.Tensor = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.LongTensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""
    Args:
        q (torch.Tensor):
            queries of shape `[B, T, H, K]`.
        k (torch.Tensor):
            keys of shape `[B, T, H, K]`.
        v (torch.Tensor):
            values of shape `[B, T, H, V]`.
        g (torch.Tensor):
            Forget gates of shape `[B, T, H, K]`.
        scale (Optional[float]):
            Scale factor for the attention scores.
            If not provided, it will default to `1 / sqrt(K)`. Default: `None`.
        initial_state (Optional[torch.Tensor]):
            Initial state of shape `[N, H, K, V]` for `N` input sequences.
            For equal-length input sequences, `N` equals the batch size `B`.
            Default: `None`.
        output_final_state (Optional[bool]):
            Whether to output the final state of shape `[N, H, K, V]`. Default: `False`.
        cu_seqlens (torch.LongTensor):
            Cumulative sequence lengths of shape `[N+1]` used for variable-length training,
            consistent with the FlashAttention API.

    Returns:
        o (torch.Tensor):
            Outputs of shape `[B, T, H, V]`.
        final_state (torch.Tensor):
            Final state of shape `[N, H, K, V]` if `output_final_state=True` else `None`.

    Examples::
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from einops import rearrange
        >>> from myfla.ops.gla import chunk_gla
        # inputs with equal lengths
        >>> B, T, H, K, V = 4, 2048, 4, 512, 512
        >>> q = torch.randn(B, T, H, K)
        >>> k = torch.randn(B, T, H, K)
        >>> v = torch.randn(B, T, H, V)
        >>> g = F.logsigmoid(torch.randn(B, T, H, K))
        >>> h0 = torch.randn(B, H, K, V)
        >>> o, ht = chunk_gla(
            q, k, v, g,
            initial_state=h0,
            output_final_state=True
        )
        # for variable-length inputs, the batch size `B` is expected to be 1 and `cu_seqlens` is required
        >>> q, k, v, g = map(lambda x: rearrange(x, 'b t h d -> 1 (b t) h d'), (q, k, v, g))
        # for a batch with 4 sequences, `cu_seqlens` with 5 start/end positions are expected
        >>> cu_seqlens = q.new_tensor([0, 2048, 4096, 6144, 8192], dtype=torch.long)
        >>> o, ht = chunk_gla(
            q, k, v, g,
            initial_state=h0,
            output_final_state=True,
            cu_seqlens=cu_seqlens
        )

    Source: fla/ops/gla/chunk.py:L1240-L1322 (fla 0.4.0)
    """
    if cu_seqlens is not None:
        if q.shape[0] != 1:
            raise ValueError(
                f"The batch size is expected to be 1 rather than {q.shape[0]} when using `cu_seqlens`."
                f"Please flatten variable-length inputs before processing."
            )
        if initial_state is not None and initial_state.shape[0] != len(cu_seqlens) - 1:
            raise ValueError(
                f"The number of initial states is expected to be equal to the number of input sequences, "
                f"i.e., {len(cu_seqlens) - 1} rather than {initial_state.shape[0]}."
            )
    if scale is None:
        scale = q.shape[-1] ** -0.5
    o, final_state = ChunkGLAFunction.apply(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
    return o, final_state
