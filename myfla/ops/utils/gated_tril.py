"""Gated lower-triangular products inside chunks (port-only helper; fla computes them inside its
KDA and GLA intra-chunk kernels): ``sum_d X[i,d] Y[j,d] exp(G[i,d] - G[j,d])`` for ``j <= i`` and their
gradients, with every ``exp`` bounded. Used by ``myfla.ops.kda.chunk_intra`` and ``myfla.ops.gla.chunk``.
"""

from __future__ import annotations

from typing import List

import torch


class GatedTril:
    """Port-only helper (fla computes this inside its kernels). Products ``sum_d X[i,d] Y[j,d] exp(G[i,d] - G[j,d])`` for ``j <= i`` inside chunks, by bisection.

    ``G`` is ``[..., BT, K]`` (chunk-local cumulative, non-increasing along BT for log-gates). fla's
    reference-gate factorisation is applied at every level of a bisection of the chunk
    (block sizes ``BT/2, ..., 16 (fla's sub-chunk), 8, 4, 2, 1``): at size ``s`` each pair of adjacent
    blocks ``(2m, 2m+1)`` contributes the block below the diagonal through the gate ``gn`` at the first
    row of block ``2m+1``: rows take ``exp(G_i - gn)``, columns ``exp(gn - G_j)``, both ``<= 1``, so
    every ``exp`` is bounded and the block is one batched matmul. The remaining diagonal ``i == j``
    needs no decay. This is the exact sum; it replaces fla's pairwise ``exp(G_i - G_j)`` inside the
    16x16 diagonal blocks (same values, without a ``[.., 16, 16, K]`` tensor per sub-chunk).
    """

    def __init__(self, G: torch.Tensor):
        BT = G.shape[-2]
        self.BT = BT
        self.levels = []                      # (s, row factor [.., M, s, K], col factor [.., M, s, K])
        s = 1
        while s < BT:
            s *= 2
        s //= 2
        while s >= 1:
            if BT % (2 * s) == 0:
                pairs = G.unflatten(-2, (BT // (2 * s), 2, s))                # [..., M, 2, s, K]
                gn = pairs[..., 1, :1, :]                                     # [..., M, 1, K]
                # at s = 1 the row block is its own reference row: the factor is exactly 1
                row = (pairs[..., 1, :, :] - gn).exp_() if s > 1 else None
                col = (gn - pairs[..., 0, :, :]).exp_()
                self.levels.append((s, row, col))
            s //= 2
        assert sum(s for s, _, _ in self.levels) == BT - 1, "chunk size must be a power of two"

    @staticmethod
    def _pairs(x: torch.Tensor, s: int) -> torch.Tensor:
        return x.unflatten(-2, (x.shape[-2] // (2 * s), 2, s))               # [..., M, 2, s, K]

    @classmethod
    def _rows(cls, X: torch.Tensor, s: int, row) -> torch.Tensor:
        """Rows of the odd blocks of level ``s`` times their factor (``row`` None means 1)."""
        rows = cls._pairs(X, s)[..., 1, :, :]
        return rows if row is None else rows * row

    @staticmethod
    def _blocks(A: torch.Tensor, s: int) -> torch.Tensor:
        """View of the below-diagonal ``s x s`` blocks of pair level ``s`` of ``A`` ``[..., BT, BT]``:
        ``[..., s, s, M]`` (row block ``2m+1``, column block ``2m``)."""
        BT = A.shape[-1]
        M = BT // (2 * s)
        Av = A.view(*A.shape[:-2], M, 2, s, M, 2, s)
        return Av.diagonal(0, -6, -3)[..., 1, :, 0, :, :]

    def scores(self, Xs: List[torch.Tensor], Y: torch.Tensor, diagonals=None) -> List[torch.Tensor]:
        """For each ``X`` in ``Xs``: ``A[i, j] = sum_d X[i,d] Y[j,d] exp(G[i,d] - G[j,d])`` for
        ``j <= i``, ``[..., BT, BT]`` (the gated ``Y`` columns are shared by all ``Xs``); where
        ``diagonals`` says False for an ``X``, its diagonal is left 0 (strictly lower result)."""
        BT = self.BT
        As = []
        for n, X in enumerate(Xs):
            A = X.new_zeros(*X.shape[:-2], BT, BT)
            if diagonals is None or diagonals[n]:
                A.diagonal(0, -2, -1).copy_((X * Y).sum(-1))
            As.append(A)
        for s, row, col in self.levels:
            Yc = self._pairs(Y, s)[..., 0, :, :] * col                        # [..., M, s, K]
            for X, A in zip(Xs, As):
                Xr = self._rows(X, s, row)
                self._blocks(A, s).copy_((Xr @ Yc.transpose(-1, -2)).movedim(-3, -1))
        return As

    def grad_rows(self, dAs: List[torch.Tensor], Y: torch.Tensor) -> List[torch.Tensor]:
        """For each ``dA``: ``dX[i] = sum_{j<=i} dA[i,j] Y[j] exp(G_i - G_j)`` (``dA`` masked to its
        triangle)."""
        dXs = [dA.diagonal(0, -2, -1).unsqueeze(-1) * Y for dA in dAs]
        for s, row, col in self.levels:
            Yc = self._pairs(Y, s)[..., 0, :, :] * col
            for dA, dX in zip(dAs, dXs):
                dAb = self._blocks(dA, s).movedim(-1, -3)                     # [..., M, s, s]
                if row is None:
                    self._pairs(dX, s)[..., 1, :, :].add_(dAb @ Yc)
                else:
                    self._pairs(dX, s)[..., 1, :, :].addcmul_(dAb @ Yc, row)
        return dXs

    def grad_cols(self, dAs: List[torch.Tensor], Xs: List[torch.Tensor]) -> torch.Tensor:
        """``dY[j] = sum over pairs (dA, X) of sum_{i>=j} dA[i,j] X[i] exp(G_i - G_j)``."""
        dY = sum(dA.diagonal(0, -2, -1).unsqueeze(-1) * X for dA, X in zip(dAs, Xs))
        for s, row, col in self.levels:
            acc = None
            for dA, X in zip(dAs, Xs):
                Xr = self._rows(X, s, row)
                part = self._blocks(dA, s).movedim(-1, -3).transpose(-1, -2) @ Xr
                acc = part if acc is None else acc.add_(part)
            self._pairs(dY, s)[..., 0, :, :].addcmul_(acc, col)
        return dY
