"""Port-only helper (fla computes this inside its kernels): the four gated intra-chunk score
matrices of the DPLR delta rule and their backward, on the chunk grid ``[..., BT, K]``.

With chunk-local cumulative log decays ``gi`` (inclusive) and ``ge = gi - g`` (exclusive), fla's
``chunk_dplr_fwd_A_kernel_intra_sub_intra`` forms, for rows ``i`` and columns ``j`` of a chunk,

    A_qk[i, j] = sum_d q[i,d] k[j,d] exp(gi[i,d] - gi[j,d])     (j <= i)
    A_qb[i, j] = sum_d q[i,d] b[j,d] exp(gi[i,d] - gi[j,d])     (j <= i)
    A_ak[i, j] = sum_d a[i,d] k[j,d] exp(ge[i,d] - gi[j,d])     (j <  i)
    A_ab[i, j] = sum_d a[i,d] b[j,d] exp(ge[i,d] - gi[j,d])     (j <  i)

one column at a time with the pairwise factors ``exp(g_i - g_j)``. Here the rows (``q`` with gate
``gi``, ``a`` with gate ``ge``) and the columns (``k``, ``b``, gate ``gi``) are interleaved as
``[..., BT, 2, K]`` and every product is a batched matmul of gated rows and columns, with the
factorisation ``exp(G_i - G_j) = exp(G_i - r) * exp(r - G_j)`` around a reference gate ``r``:

* blocks strictly below the diagonal are visited by bisection (block sizes ``BT/2, BT/4, ...``);
  for a pair (row block ``2m+1``, column block ``2m``) the reference is ``gi`` at the last row of
  the column block, so for decaying gates (``g <= 0``) both factors are ``<= 1`` whatever the
  gate values (``ge[i] = gi[i-1]`` never exceeds it for a row ``i`` after the column block);
* the bisection stops at the largest block size ``s`` whose diagonal blocks span a gate range of
  at most ``SAFE_GATE_RANGE`` (per channel); those diagonal blocks are one matmul each around the
  middle of their range, so no factor leaves ``[exp(-30), exp(30)]``. Entries above the diagonal
  (which may be huge there) are dropped by the triangular masks, never multiplied.

The sums are exact whatever the split (each product ``x exp(G_i - r) * y exp(r - G_j)`` carries
the rounding of one pairwise term), so the split only changes speed: RWKV-7's decays
(``w >= -0.61`` per token) keep a 64-token chunk within range and need one matmul per chunk. In that
single-block case the reference is the chunk's last gate ``g_last``: the columns are then exactly the
gated inputs ``kg = k exp(g_last - gi)``, ``bg = b exp(g_last - gi)`` that the inter-chunk recurrence
uses, and the rows are ``[qg; ag] * exp(-g_last)`` (``direct_scores`` / ``direct_grads``).

Decaying gates (every ``gi`` of the grid in ``[-SAFE_GATE_RANGE, 0]``, the RWKV-7 case) take the
cheapest form of that single block: the reference is the chunk start, every factor comes from one
exponential ``E = exp(gi)`` and its reciprocal ``R = 1 / E`` (``exp(ge)`` is ``E`` one row down,
``exp(g_last - gi) = E_last R``), so the chunk's gated rows ``[q E; a exp(ge)]`` times the columns
``[k R; b R]`` give all four score matrices in one matmul (``decay_scores`` / ``decay_grads``).
Both factors stay within ``[exp(-SAFE_GATE_RANGE), exp(SAFE_GATE_RANGE)]``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from myfla.ops.generalized_delta_rule.dplr.chunk_grid import keep_score_triangles_

# Widest gate range (per channel, in log space) that one diagonal block may span; both factors of
# the block's products then stay within exp(+-30) ~ 1e13, far from fp32 overflow and underflow.
SAFE_GATE_RANGE = 60.0


def _base_block_size(gi: torch.Tensor, ge: torch.Tensor) -> int:
    """Largest power-of-two block size whose diagonal blocks all span at most
    ``SAFE_GATE_RANGE``; 1 when even single tokens exceed it (their diagonal needs no factor)."""
    BT = gi.shape[-2]
    if BT == 0 or gi.numel() == 0:
        return BT
    # a block's gates are consecutive partial sums (ge[i] = gi[i-1]), so the total variation
    # sum |g| bounds the chunk's span: one cheap pass settles the common case
    if (gi - ge).abs_().sum(-2).amax().item() <= SAFE_GATE_RANGE:
        return BT
    both = torch.stack((gi, ge), dim=-2)                                 # [..., BT, 2, K]
    hi = both.amax(-2)
    lo = both.amin(-2)
    s = 1
    while s <= BT:
        span = (hi - lo).amax().item()
        if span > SAFE_GATE_RANGE:
            return max(1, s // 2)
        if s == BT:
            return BT
        # merge pairs of blocks: the next size's range per block
        hi = hi.unflatten(-2, (-1, 2)).amax(-2)
        lo = lo.unflatten(-2, (-1, 2)).amin(-2)
        s *= 2
    return BT


def decay_form_holds(stored_dtype: Optional[torch.dtype]) -> bool:
    """Whether the ``decay`` form may be used when the gated inputs are stored in ``stored_dtype``
    (None: the accumulation dtype). Its backward recovers ``k exp(-gi)`` as the stored gated key
    ``kg = k exp(g_last - gi)`` times ``exp(-g_last)``, so the stored values must keep factors down
    to ``exp(-SAFE_GATE_RANGE)`` (~1e-26): fp32, bf16 and fp64 do; fp16 (smallest normal 6e-5)
    flushes them to zero, so fp16 inputs take the blocked forms, which recompute from the inputs."""
    return stored_dtype is None or torch.finfo(stored_dtype).tiny <= math.exp(-SAFE_GATE_RANGE)


def _decays_in_range(gi: torch.Tensor) -> bool:
    """Whether every chunk-local cumulative gate lies in ``[-SAFE_GATE_RANGE, 0]`` (then so do the
    exclusive ones, ``ge[i] = gi[i-1]`` and ``0``)."""
    if gi.numel() == 0:
        return False
    lo, hi = torch.aminmax(gi)
    return bool(hi.item() <= 0.0) and bool(lo.item() >= -SAFE_GATE_RANGE)


def exclusive_gates(gi: torch.Tensor) -> torch.Tensor:
    """``ge`` from ``gi`` ``[..., BT, K]``: the chunk-local sums before each token (``gi`` one row
    down, zero at the chunk's first token)."""
    ge = torch.empty_like(gi)
    ge[..., :1, :] = 0
    ge[..., 1:, :] = gi[..., :-1, :]
    return ge


def _pairs(x: torch.Tensor, s: int) -> torch.Tensor:
    """``[..., BT, *rest]`` viewed as ``[..., M, 2, s, *rest]`` (pairs of blocks of ``s`` rows)."""
    lead = x.shape[:-3]
    BT = x.shape[-3]
    return x.view(*lead, BT // (2 * s), 2, s, *x.shape[-2:])


class DPLRIntraBlocks:
    """Gate factors of every block product of one chunk grid, built once from ``gi``/``ge``
    ``[..., BT, K]`` (fp32 or fp64) and reused for the scores and their gradients."""

    def __init__(self, gi: torch.Tensor, ge: Optional[torch.Tensor] = None, base: Optional[int] = None,
                 stored_dtype: Optional[torch.dtype] = None):
        BT = gi.shape[-2]
        assert BT & (BT - 1) == 0, "chunk size must be a power of two"
        self.BT = BT
        # decaying gates: one block per chunk from exp(gi) alone (see the module notes), where the
        # precision the gated inputs are stored in allows it (decay_form_holds)
        self.decay = base is None and decay_form_holds(stored_dtype) and _decays_in_range(gi)
        if ge is None and not self.decay:
            ge = exclusive_gates(gi)
        self.base = BT if self.decay else (_base_block_size(gi, ge) if base is None else base)
        self._gates = (gi, ge)
        self._levels: Optional[List[Tuple[int, torch.Tensor, torch.Tensor]]] = None
        self._diag = None
        self._exp: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    @property
    def exp_gates(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(E, R)`` = ``(exp(gi), 1 / exp(gi))`` ``[..., BT, K]`` (``decay`` mode), built once."""
        if self._exp is None:
            E = torch.exp(self._gates[0])
            self._exp = (E, torch.reciprocal(E))
        return self._exp

    def _factors(self):
        """The block factors, built on first use (``direct_scores`` / ``direct_grads`` need none)."""
        if self._levels is not None:
            return self._levels, self._diag
        gi, ge = self._gates
        BT = self.BT
        self._levels = []
        Grow = torch.stack((gi, ge), dim=-2)                             # row gates [..., BT, 2, K]
        # bisection levels: (s, row factors [..., M, s, 2, K], column factors [..., M, s, 1, K])
        s = BT // 2
        while s >= self.base:
            gp = _pairs(gi.unsqueeze(-2), s)                             # [..., M, 2, s, 1, K]
            ref = gp[..., 0, -1:, :, :]                                  # last row of column block
            row = (_pairs(Grow, s)[..., 1, :, :, :] - ref).exp_()
            col = (ref - gp[..., 0, :, :, :]).exp_()
            self._levels.append((s, row, col))
            s //= 2
        # diagonal blocks of the base size, around the middle of each block's gate range
        if self.base > 1:
            blocks = Grow.unflatten(-3, (BT // self.base, self.base))    # [..., Mb, s, 2, K]
            mid = (blocks.amax((-3, -2), keepdim=True) + blocks.amin((-3, -2), keepdim=True)) * 0.5
            row = (blocks - mid).exp_()
            col = (mid - blocks[..., 0:1, :]).exp_()                     # column gate is gi
            self._diag = (row, col)
        return self._levels, self._diag

    @property
    def single(self) -> bool:
        """Whether every chunk is one block (no split needed)."""
        return self.base == self.BT

    # ---- one block per chunk from exp(gi) (``decay``) -------------------------------------------
    def decay_inputs(self, q, k, a, b, scale: float, QA: torch.Tensor, KBr: torch.Tensor):
        """Writes the gated rows ``QA = [scale q E; a exp(ge)]`` and the columns ``KBr = [k R; b R]``
        ``[..., 2BT, K]`` (``decay`` mode); ``KBr * E_last`` are the gated keys ``[kg; bg]``."""
        BT = self.BT
        E, R = self.exp_gates
        qg, ag = QA[..., :BT, :], QA[..., BT:, :]
        torch.mul(q, E, out=qg)
        if scale != 1.0:
            qg.mul_(scale)
        ag[..., :1, :] = a[..., :1, :]                                   # exp(ge) = 1 at a chunk start
        torch.mul(a[..., 1:, :], E[..., :-1, :], out=ag[..., 1:, :])
        torch.mul(k, R, out=KBr[..., :BT, :])
        torch.mul(b, R, out=KBr[..., BT:, :])

    @staticmethod
    def decay_scores(QA, KBr, out: Optional[torch.Tensor] = None):
        """``P = QA @ KBr^T`` ``[..., 2BT, 2BT]`` kept on the four triangles,
        ``[[A_qk, A_qb], [A_ak, A_ab]]`` (``A_qk``, ``A_qb`` scaled as ``QA``); entries above the
        diagonals (up to ``exp(SAFE_GATE_RANGE)`` times the inputs, finite) are zeroed by the masks."""
        P = torch.matmul(QA, KBr.transpose(-1, -2), out=out)
        keep_score_triangles_(P)
        return P

    # ---- one block per chunk, around g_last ---------------------------------------------------
    @staticmethod
    def direct_scores(QA, KB, g_last):
        """``P`` ``[..., 2BT, 2BT]`` when ``single``, from the gated inputs stacked per chunk as
        ``QA = [qg; ag]`` and ``KB = [kg; bg]`` ``[..., 2BT, K]`` (``qg`` carries the scale):
        ``P = QA exp(-g_last) @ KB^T`` kept on the four triangles, ``[[A_qk, A_qb], [A_ak, A_ab]]``
        (the rows of ``[A_qk | A_qb]`` and of ``[A_ak | A_ab]`` are contiguous). Every entry is
        finite: the row factors are at most ``exp(SAFE_GATE_RANGE)``, the column ones at most 1."""
        P = torch.matmul(QA * torch.exp(-g_last), KB.transpose(-1, -2))   # [..., 2BT, 2BT]
        keep_score_triangles_(P)
        return P

    @staticmethod
    def direct_grads(QAe, KB, dP):
        """Gradients ``(drows, dcols)`` ``[..., 2BT, K]`` of ``sum(dP * P)`` when ``single``, for the
        stacked rows ``QAe = [q exp(gi - g_last); a exp(ge - g_last)]`` (unscaled) and columns
        ``KB = [kg; bg]``; ``dP = [[dA_qk, dA_qb], [dA_ak, dA_ab]]`` zero outside the triangles. The
        row gradients still need the factors ``exp(gi - g_last)`` / ``exp(ge - g_last)``, the column
        ones ``exp(g_last - gi)``."""
        return torch.matmul(dP, KB), torch.matmul(dP.transpose(-1, -2), QAe)

    # ---- layout of the interleaved score tensor S[..., i, r, j, c] ------------------------------
    @staticmethod
    def _level_blocks(S: torch.Tensor, s: int) -> torch.Tensor:
        """View ``[..., s, 2, s, 2, M]`` of the (row block ``2m+1``, column block ``2m``) blocks."""
        lead, BT = S.shape[:-4], S.shape[-4]
        M = BT // (2 * s)
        Sv = S.view(*lead, M, 2, s, 2, M, 2, s, 2)
        return Sv.diagonal(0, -8, -4)[..., 1, :, :, 0, :, :, :]

    @staticmethod
    def _diag_blocks(S: torch.Tensor, s: int) -> torch.Tensor:
        """View ``[..., s, 2, s, 2, Mb]`` of the diagonal blocks of size ``s``."""
        lead, BT = S.shape[:-4], S.shape[-4]
        Mb = BT // s
        return S.view(*lead, Mb, s, 2, Mb, s, 2).diagonal(0, -6, -3)

    def _gated(self, X: torch.Tensor, Y: torch.Tensor):
        """Yields ``(kind, s, Xr, Yc, row, col)`` for every block product: ``Xr`` ``[..., M, s, 2, K]``
        gated rows, ``Yc`` gated columns, and the factors (for the backward)."""
        levels, diag = self._factors()
        for s, row, col in levels:
            Xr = _pairs(X, s)[..., 1, :, :, :] * row
            Yc = _pairs(Y, s)[..., 0, :, :, :] * col
            yield 'level', s, Xr, Yc, row, col
        if diag is not None:
            row, col = diag
            s = self.base
            Xr = X.unflatten(-3, (self.BT // s, s)) * row
            Yc = Y.unflatten(-3, (self.BT // s, s)) * col
            yield 'diag', s, Xr, Yc, row, col

    # ---- forward ------------------------------------------------------------------------------
    def scores(self, q: torch.Tensor, k: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
        """``(A_qk, A_qb, A_ak, A_ab)`` ``[..., BT, BT]`` (contiguous; unscaled)."""
        BT = self.BT
        lead = q.shape[:-2]
        X = torch.stack((q, a), dim=-2)                                  # [..., BT, 2, K]
        Y = torch.stack((k, b), dim=-2)
        S = q.new_zeros(*lead, BT, 2, BT, 2)
        if self.base == 1:                                               # the diagonal needs no factor
            Sd = S.diagonal(0, -4, -2)                                   # [..., 2, 2, BT]
            Sd[..., 0, 0, :] = (q * k).sum(-1)
            Sd[..., 0, 1, :] = (q * b).sum(-1)
        for kind, s, Xr, Yc, _, _ in self._gated(X, Y):
            P = Xr.flatten(-3, -2) @ Yc.flatten(-3, -2).transpose(-1, -2)    # [..., M, (s,2), (s,2)]
            P = P.unflatten(-1, (s, 2)).unflatten(-3, (s, 2))                # [..., M, s, 2, s, 2]
            target = self._level_blocks(S, s) if kind == 'level' else self._diag_blocks(S, s)
            target.copy_(P.movedim(-5, -1))
        A_qk = torch.tril(S[..., 0, :, 0])
        A_qb = torch.tril(S[..., 0, :, 1])
        A_ak = torch.tril(S[..., 1, :, 0], -1)
        A_ab = torch.tril(S[..., 1, :, 1], -1)
        return A_qk, A_qb, A_ak, A_ab

    # ---- backward -----------------------------------------------------------------------------
    def grads(self, q, k, a, b, dA_qk, dA_qb, dA_ak, dA_ab):
        """Gradients ``(dq, dk, da, db)`` ``[..., BT, K]`` of ``sum(dA * A)`` over the four score
        matrices (each ``dA`` is read on its own triangle only), with fixed gates."""
        BT = self.BT
        lead = q.shape[:-2]
        dS = q.new_empty(*lead, BT, 2, BT, 2)
        dS[..., 0, :, 0].copy_(torch.tril(dA_qk))
        dS[..., 0, :, 1].copy_(torch.tril(dA_qb))
        dS[..., 1, :, 0].copy_(torch.tril(dA_ak, -1))
        dS[..., 1, :, 1].copy_(torch.tril(dA_ab, -1))
        X = torch.stack((q, a), dim=-2)
        Y = torch.stack((k, b), dim=-2)
        dX = torch.zeros_like(X)
        dY = torch.zeros_like(Y)
        if self.base == 1:
            dd = dS.diagonal(0, -4, -2)                                  # [..., 2, 2, BT]
            dX[..., 0, :] = dd[..., 0, 0, :].unsqueeze(-1) * k + dd[..., 0, 1, :].unsqueeze(-1) * b
            dY[..., 0, :] = dd[..., 0, 0, :].unsqueeze(-1) * q
            dY[..., 1, :] = dd[..., 0, 1, :].unsqueeze(-1) * q
        for kind, s, Xr, Yc, row, col in self._gated(X, Y):
            blocks = self._level_blocks(dS, s) if kind == 'level' else self._diag_blocks(dS, s)
            dP = blocks.movedim(-1, -5).flatten(-2, -1).flatten(-3, -2)     # [..., M, (s,2), (s,2)]
            dXr = (dP @ Yc.flatten(-3, -2)).unflatten(-2, (s, 2)).mul_(row)
            dYc = (dP.transpose(-1, -2) @ Xr.flatten(-3, -2)).unflatten(-2, (s, 2)).mul_(col)
            if kind == 'level':
                _pairs(dX, s)[..., 1, :, :, :].add_(dXr)
                _pairs(dY, s)[..., 0, :, :, :].add_(dYc)
            else:
                dX.add_(dXr.flatten(-4, -3))
                dY.add_(dYc.flatten(-4, -3))
        dq, da = dX.unbind(-2)
        dk, db = dY.unbind(-2)
        return dq, dk, da, db
