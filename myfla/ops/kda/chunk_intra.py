"""Intra-chunk attention matrices of KDA and their backward.

Within a chunk (``BT = 64`` tokens) with chunk-local cumulative gates ``G`` the two matrices are
``Aqk[i, j] = scale * sum_d q[i,d] k[j,d] exp(G[i,d] - G[j,d])`` (``j <= i``) and
``Akk[i, j] = beta[i] * sum_d k[i,d] k[j,d] exp(G[i,d] - G[j,d])`` (``j < i``), after which ``Akk`` is
inverted as ``(I + Akk)^-1`` by ``solve_tril``.

As fla's kernels, blocks below the diagonal factorise through a reference gate ``gn`` (the gate at
the first row of the row block): ``exp(G_i - G_j) = exp(G_i - gn) * exp(gn - G_j)``, both factors
``<= 1`` because cumulative log-gates do not increase, so each block is a batched matmul with bounded
``exp``. fla does this for 16-token sub-chunks and evaluates the 16x16 diagonal blocks pairwise; here
the same factorisation is applied by bisection down to single tokens (see ``GatedTril``), which gives
the same sums without the ``[.., 16, 16, K]`` pairwise tensors. All chunks of all heads are processed
at once on the padded chunk grid ``[N, H, NC, BT, ...]`` (see ``myfla.ops.utils.chunk_grid``).

Where every channel's gates span at most ``DENSE_GATE_RANGE`` inside each chunk of a slab (as fla
0.6.0's ``safe_gate`` path assumes of bounded gates), one reference per chunk and channel suffices:
the midpoint ``gm`` of the channel's range, with factors ``exp(G - gm)`` on rows and ``exp(gm - G)`` on
columns, both within ``exp(+-DENSE_GATE_RANGE / 2)`` (no overflow, no subnormals). Each matrix and
each gradient is then one dense ``[BT, BT]`` batched matmul masked to its triangle, the shape CPUs
run fastest; the bisection stays for slabs with wider gates.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from myfla.ops.utils.chunk_grid import from_grid, grid_empty, slab, slab_out, to_grid
from myfla.ops.utils.chunk_layout import chunk_slabs, get_chunk_layout
from myfla.ops.utils.cumsum import chunk_local_cumsum
from myfla.ops.utils.gated_tril import GatedTril
from myfla.ops.utils.solve_tril import solve_tril


# Widest per-channel spread (max - min) of the chunk-local cumulative gates inside a chunk for which
# the single-reference factorisation is used: its factors stay within exp(+-40).
DENSE_GATE_RANGE = 80.0


def dense_factors(G: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """Port-only helper: ``(exp(G - gm), exp(gm - G))`` with ``gm`` the midpoint of each chunk's and
    channel's gate range (``G`` ``[..., BT, K]``), or None when some channel of the slab spans more
    than ``DENSE_GATE_RANGE`` (then the caller uses ``GatedTril``)."""
    hi, lo = G.amax(-2, keepdim=True), G.amin(-2, keepdim=True)
    if not bool(((hi - lo) <= DENSE_GATE_RANGE).all()):
        return None
    d = G - (hi + lo).mul_(0.5)
    return d.exp(), d.neg_().exp_()


def _stacked(x: torch.Tensor, y: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """``[x fx; y fy]`` along the rows (dim -2), the products written in place of a concatenation."""
    BT = x.shape[-2]
    out = x.new_empty(*x.shape[:-2], 2 * BT, x.shape[-1])
    torch.mul(x, fx, out=out[..., :BT, :])
    torch.mul(y, fy, out=out[..., BT:, :])
    return out


def _scaled_scores(Aqk, Akk, scale, beta, out):
    """``(Aqk * scale, Akk * beta)``: in place, or written into ``out`` (two slab views) when given."""
    if out is None:
        return Aqk.mul_(scale), Akk.mul_(beta.unsqueeze(-1))
    return torch.mul(Aqk, scale, out=out[0]), torch.mul(Akk, beta.unsqueeze(-1), out=out[1])


def intra_scores(q, k, beta, G, scale, out=None):
    """Port-only helper: ``(Aqk, Akk)`` of one chunk grid (fp32, ``Akk`` strictly lower, before the inverse),
    written into ``out`` (two views, e.g. ``slab_out``) when given.

    Dense path (see the module docstring): ``[q a; k a] (k b)^T`` in one matmul, masked to the
    triangles. Otherwise ``GatedTril.scores`` for ``Xs = [q, k]``, ``Y = k`` with the rows of ``q``
    and ``k`` interleaved (``[..., BT, 2, K]``): each bisection level is then one matmul, one
    row-factor product and one block write for both matrices.
    """
    BT = q.shape[-2]
    factors = dense_factors(G)
    if factors is not None:
        a, b = factors
        A = torch.matmul(_stacked(q, k, a, a), (k * b).transpose(-1, -2))    # [..., 2 BT, BT]
        # above the diagonal a*b = exp(G_i - G_j) may be huge: those entries are dropped, not masked
        Aqk, Akk = A[..., :BT, :].tril_(), A[..., BT:, :].tril_(-1)
        return _scaled_scores(Aqk, Akk, scale, beta, out)
    tri = GatedTril(G)
    lead, K = q.shape[:-2], q.shape[-1]
    qk = torch.stack((q, k), dim=-2)                                    # [..., BT, 2, K]
    A = q.new_zeros(*lead, BT, 2, BT)                                   # [..., i, (qk), j]
    A[..., 0, :].diagonal(0, -2, -1).copy_((q * k).sum(-1))             # Akk's diagonal stays 0
    for s, row, col in tri.levels:
        M = BT // (2 * s)
        Yc = tri._pairs(k, s)[..., 0, :, :] * col                       # [..., M, s, K]
        rows = qk.view(*lead, M, 2, s, 2, K)[..., 1, :, :, :]           # [..., M, s, 2, K]
        rows = rows * row.unsqueeze(-2) if row is not None else rows
        P = rows.reshape(*lead, M, 2 * s, K) @ Yc.transpose(-1, -2)     # [..., M, (s, 2), s]
        blocks = A.view(*lead, M, 2, s, 2, M, 2, s).diagonal(0, -7, -3)[..., 1, :, :, 0, :, :]
        blocks.copy_(P.view(*lead, M, s, 2, s).movedim(-4, -1))         # [..., s, 2, s, M]
    Aqk, Akk = A.unbind(-2)
    # scale and beta act on whole rows, so they are applied to the [BT, BT] results
    return _scaled_scores(Aqk, Akk, scale, beta, out)


def intra_grads(q, k, b, G, dAqk, dAkk, dq_out=None):
    """Port-only helper: ``(dq, dk_rows, dk_cols)`` of one chunk grid: the gradient of ``q`` through
    ``Aqk``, of the rows ``beta k`` of ``Akk`` (before ``beta``), and of the columns ``k`` of both
    (``b`` is ``beta`` ``[..., BT, 1]``). Only the lower triangles of ``dAqk`` and ``dAkk`` are read,
    diagonals included, as in the kernel (``o_i >= j`` for both; ``Akk`` itself is strictly lower, and
    ``chunk_kda``'s own ``dAkk`` has a zero diagonal, but a direct call may pass one). ``dq`` is written into
    ``dq_out`` when given."""
    BT = q.shape[-2]
    factors = dense_factors(G)
    if factors is None:
        tri = GatedTril(G)
        dq, dk_rows = tri.grad_rows([dAqk, dAkk], k)
        dq = dq if dq_out is None else dq_out.copy_(dq)
        return dq, dk_rows, tri.grad_cols([dAqk, dAkk], [q, k * b])
    a, c = factors
    dA = dAqk.new_empty(*dAqk.shape[:-2], 2 * BT, BT)                  # [dAqk; dAkk], lower triangles
    torch.tril(dAqk, out=dA[..., :BT, :])
    torch.tril(dAkk, out=dA[..., BT:, :])
    dq_rows, dk_rows = torch.matmul(dA, k * c).view(*q.shape[:-2], 2, BT, q.shape[-1]).unbind(-3)
    dq = dq_rows.mul_(a) if dq_out is None else torch.mul(dq_rows, a, out=dq_out)
    dk_rows.mul_(a)
    dk_cols = torch.matmul(dA.transpose(-1, -2), _stacked(q, k * b, a, a)).mul_(c)
    return dq, dk_rows, dk_cols


def chunk_kda_fwd_intra(
    q: torch.Tensor,
    k: torch.Tensor,
    gk: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64,
    output_dtype: torch.dtype = torch.float32
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Intra-chunk ``Aqk`` (``output_dtype``) and ``Akk`` (``(I + Akk)^-1`` in ``k.dtype``), both
    ``[B, T, H, BT]``; ``gk`` is the chunk-local cumulative gate.

    Source: fla/ops/kda/chunk_intra.py:L389-L479 (fla 0.4.0)
    Source: fla/ops/kda/chunk_intra.py:L15-L104 (fla 0.4.0)
    Source: fla/ops/kda/chunk_intra.py:L107-L179 (fla 0.4.0)
    """
    B, T, H, K = k.shape
    assert K <= 256
    BT = chunk_size
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=k.device)
    qc, kc, bc, Gc = to_grid(layout, q), to_grid(layout, k), to_grid(layout, beta), to_grid(layout, gk, 'last')
    Aqk, Akk = grid_empty(qc, BT), grid_empty(qc, BT)
    for sl in chunk_slabs(qc):
        # the slab's scores land in the grids directly (no store copy)
        intra_scores(slab(qc, sl), slab(kc, sl), slab(bc, sl), slab(Gc, sl), scale,
                     out=(slab_out(Aqk, sl), slab_out(Akk, sl)))
    Aqk = from_grid(layout, Aqk).to(output_dtype)
    Akk = from_grid(layout, Akk).to(output_dtype)
    Akk = solve_tril(
        A=Akk,
        cu_seqlens=cu_seqlens,
        output_dtype=k.dtype
    )
    return Aqk, Akk


def chunk_kda_bwd_intra(
    q: torch.Tensor,
    k: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    dAqk: torch.Tensor,
    dAkk: torch.Tensor,
    dq: torch.Tensor,
    dk: torch.Tensor,
    db: torch.Tensor,
    dg: torch.Tensor,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
):
    """Backward of the intra-chunk matrices: adds the contributions of ``dAqk`` (gradient of the
    unscaled ``q.k`` scores, as ``chunk_gla_bwd_dA`` returns it) and ``dAkk`` (gradient of the
    pre-inverse ``Akk``) to ``dq, dk, db``, and to ``dg``, which is then turned from the cumulative
    gate's gradient into the raw gate's by a reverse chunk-local cumsum.

    Source: fla/ops/kda/chunk_intra.py:L482-L540 (fla 0.4.0)
    Source: fla/ops/kda/chunk_intra.py:L182-L386 (fla 0.4.0)
    """
    B, T, H, K = k.shape
    BT = chunk_size
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=k.device)
    qc, kc, bc = to_grid(layout, q), to_grid(layout, k), to_grid(layout, beta)
    Gc = to_grid(layout, g, 'last')
    # only the lower triangles (diagonal included) are read, as in the kernel
    dAqk_c, dAkk_c = to_grid(layout, dAqk), to_grid(layout, dAkk)
    dq_intra, dk_intra, dg_intra = grid_empty(qc, K), grid_empty(qc, K), grid_empty(qc, K)
    db_intra = grid_empty(qc)
    for sl in chunk_slabs(qc):
        q_s, k_s, b_s = slab(qc, sl), slab(kc, sl), slab(bc, sl).unsqueeze(-1)
        dAqk_s, dAkk_s = slab(dAqk_c, sl), slab(dAkk_c, sl)
        # row side: gradients of q and of beta*k; column side: gradient of k (each result written
        # into its grid by its last op)
        dq_s, dk_rows, dk_cols = intra_grads(q_s, k_s, b_s, slab(Gc, sl), dAqk_s, dAkk_s,
                                             dq_out=slab_out(dq_intra, sl))
        torch.sum(dk_rows * k_s, -1, out=slab_out(db_intra, sl))
        dk_rows = dk_rows * b_s
        torch.addcmul(q_s * dq_s, dk_rows - dk_cols, k_s, out=slab_out(dg_intra, sl))
        torch.add(dk_rows, dk_cols, out=slab_out(dk_intra, sl))

    # the intra buffers are fresh token-order memory: accumulate into them in place
    dq = from_grid(layout, dq_intra).add_(dq)
    dk2 = from_grid(layout, dk_intra).add_(dk)
    db = from_grid(layout, db_intra).add_(db)
    dg = chunk_local_cumsum(from_grid(layout, dg_intra).add_(dg), chunk_size=chunk_size, reverse=True,
                            cu_seqlens=cu_seqlens)
    return dq.to(q.dtype), dk2.to(k.dtype), db, dg
