"""Per-chunk inverse of ``I + A`` for strictly lower-triangular ``A``, as ``fla.ops.utils.solve_tril``.

fla inverts 16x16 diagonal blocks by forward substitution and merges them into 32x32 / 64x64
inverses with block formulas. Here all chunks of all heads are inverted at once, in one of two ways:

- block doubling (``_unit_lower_inverse``): fla's merge rule applied from 1x1 blocks up, a pair of
  batched matmuls per level; on GPUs;
- on CPUs, LAPACK's forward substitution (``trsm``) against the identity, one matrix after another on
  one intra-op thread, the batch split over the caller's threads as worker threads
  (``_unit_lower_inverse_trsm``, ``myfla.ops.utils.batch_split``): for batches of at least
  ``TRSM_MIN_ELEMENTS``, and for smaller ones where this CPU's ``trsm`` is fast (``_trsm_for_small``).

Measured (``benchmarks/results/solve_tril_cpu.txt``), the ``solve_tril`` stage of
``chunk_gated_delta_rule`` forward+backward at B=4 T=4096 H=16 (4096 inverses of 64 x 64): on the
H100 host's Xeon 145 / 66 / 59 ms by doubling against 48 / 34 / 31 ms by ``trsm`` at 1 / 4 / 16
threads; on this project's Zen 5 VM 55 / 40-45 ms against 55 / 37 ms at 1 / 2 threads. At B=1 T=8192
H=4 (512 inverses) the host gained as much (18 / 14 / 8 ms against 7 / 6 / 4), but the VM's ``trsm``
(12 us a 64 x 64 matrix against the Xeon's 4: its LAPACK, not the work) lost at two threads (6-8 ms
against 8-9). So below ``TRSM_MIN_ELEMENTS`` a one-time probe per process decides
(``MYFLA_SOLVE_TRIL_SMALL``): ``trsm`` where it inverts a 256-matrix batch on one thread at least
``TRSM_PROBE_MARGIN`` times faster than the doubling (the Xeons: 5-7x; the VM: 1x). The two agree to
fp32 rounding (5e-8 relative): results depend on the batch size and, below the threshold, on which
way the probe went on this machine, never on the thread count (``MYFLA_SOLVE_TRIL_SMALL=doubling`` or
``trsm`` fixes it).
"""

from __future__ import annotations

import os
import time
from typing import Optional

import torch

from myfla.ops.utils.batch_split import split_batch
from myfla.ops.utils.chunk_layout import get_chunk_layout
from myfla.ops.utils.threads import at_most_threads
from myfla.ops.utils.workspace import new_empty
from myfla.utils import input_guard, is_amd

# Precision of the Triton dots (ieee / tf32 / tf32x3); the torch solve always runs in full
# precision, the setting is kept and validated as in fla.
# Source: fla/ops/utils/solve_tril.py:L15-L15 (fla 0.4.0)
FLA_TRIL_PRECISION = os.environ.get('FLA_TRIL_PRECISION', 'ieee')
# Source: fla/ops/utils/solve_tril.py:L16-L18 (fla 0.4.0)
ALLOWED_TRIL_PRECISIONS = ['ieee', 'tf32'] if is_amd else ['ieee', 'tf32', 'tf32x3']
assert FLA_TRIL_PRECISION in ALLOWED_TRIL_PRECISIONS, \
    f'FLA_TRIL_PRECISION must be one of {ALLOWED_TRIL_PRECISIONS}, but got {FLA_TRIL_PRECISION}'


# Batches of at least this many elements (1024 matrices of 64 x 64) are inverted by ``trsm`` on CPUs.
TRSM_MIN_ELEMENTS = 2 ** 22
# Fewest elements (64 matrices of 64 x 64) of one worker's share of a ``trsm`` batch.
TRSM_MIN_PART_ELEMENTS = 2 ** 18
# How CPU batches below TRSM_MIN_ELEMENTS are inverted: 'measure' (a one-time probe, see the module
# notes), 'doubling' or 'trsm' (MYFLA_SOLVE_TRIL_SMALL).
SMALL_BATCHES = os.environ.get('MYFLA_SOLVE_TRIL_SMALL', 'measure')
if SMALL_BATCHES not in ('measure', 'doubling', 'trsm'):
    raise ValueError(f"The environment variable MYFLA_SOLVE_TRIL_SMALL must be 'measure' (the default: small "
                     f"batches inverted by LAPACK where a one-time probe finds it faster on this CPU), "
                     f"'doubling' or 'trsm', got {SMALL_BATCHES!r}.")
# How much faster trsm must invert the probe's batch for small batches to take it.
TRSM_PROBE_MARGIN = 2.0
_probed: Optional[bool] = None


def _unit_lower_inverse(L: torch.Tensor) -> torch.Tensor:
    """``(I + L)^-1`` for the strict lower triangle ``L`` of ``[..., n, n]`` (``n`` a power of 2; the
    diagonal and upper triangle are never read).

    Block doubling, the merge rule of fla's 16 -> 32 -> 64 kernels applied from 1x1 blocks up:
    ``[[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]``; every level is one pair of
    batched matmuls over all diagonal blocks of all chunks (log2(n) levels; a batched LAPACK solve
    on several intra-op threads is erratic on CPU, 2-500x slower from call to call, hence
    ``_unit_lower_inverse_trsm`` runs it on one thread per worker).
    """
    n = L.shape[-1]
    batch = L.shape[:-2]
    X = torch.ones(*batch, n, 1, 1, dtype=L.dtype, device=L.device)   # inverses of the 1x1 blocks
    s = 1
    while s < n:
        nb = n // (2 * s)
        # the lower-left [s, s] block of each [2s, 2s] diagonal block: [..., nb, s, s]
        C = torch.diagonal(L.reshape(*batch, nb, 2 * s, nb, 2 * s), dim1=-4, dim2=-2)[..., s:, :s, :]
        C = C.movedim(-1, -3)
        A, D = X[..., 0::2, :, :], X[..., 1::2, :, :]
        lower_left = torch.matmul(D, torch.matmul(C, A))
        # the [2s, 2s] inverses written block by block into one (pooled) buffer
        merged = new_empty((*batch, nb, 2 * s, 2 * s), L.dtype, L.device)
        merged[..., :s, :s].copy_(A)
        merged[..., :s, s:].zero_()
        torch.neg(lower_left, out=merged[..., s:, :s])
        merged[..., s:, s:].copy_(D)
        X = merged
        s *= 2
    return X.squeeze(-3)


def _unit_lower_inverse_trsm(L: torch.Tensor) -> torch.Tensor:
    """``(I + L)^-1`` for the strict lower triangle ``L`` of ``[M, n, n]`` on a CPU: LAPACK's unit
    lower-triangular solve against the identity (it reads neither the diagonal nor the upper
    triangle), the batch split over worker threads (``split_batch``; each matrix is solved by the same
    code whatever the split)."""
    M, n = L.shape[0], L.shape[-1]
    out = new_empty(L.shape, L.dtype, L.device)
    eye = torch.eye(n, dtype=L.dtype, device=L.device).expand(L.shape)

    def solve(start: int, stop: int) -> None:
        torch.linalg.solve_triangular(L[start:stop], eye[start:stop], upper=False, unitriangular=True,
                                      out=out[start:stop])
    split_batch(solve, M, max(1, TRSM_MIN_PART_ELEMENTS // (n * n)))
    return out


def _probe_trsm() -> bool:
    """Whether ``trsm`` inverts 256 matrices of 64 x 64 on one intra-op thread at least
    ``TRSM_PROBE_MARGIN`` times faster than the doubling here (best of three each, after one call)."""
    gen = torch.Generator().manual_seed(0)
    L = torch.randn(256, 64, 64, generator=gen).mul_(0.1)
    best = {}
    with at_most_threads(1):
        for name, invert in (('doubling', _unit_lower_inverse), ('trsm', _unit_lower_inverse_trsm)):
            invert(L)
            times = []
            for _ in range(3):
                start = time.perf_counter()
                invert(L)
                times.append(time.perf_counter() - start)
            best[name] = min(times)
    return TRSM_PROBE_MARGIN * best['trsm'] <= best['doubling']


def _trsm_for_small() -> bool:
    """Whether CPU batches below ``TRSM_MIN_ELEMENTS`` are inverted by ``trsm`` (``SMALL_BATCHES``;
    'measure': ``_probe_trsm``, once per process)."""
    global _probed
    if SMALL_BATCHES != 'measure':
        return SMALL_BATCHES == 'trsm'
    if _probed is None:
        _probed = _probe_trsm()
    return _probed


def _uses_trsm(L: torch.Tensor) -> bool:
    """Whether ``L`` ``[M, n, n]`` is inverted by ``_unit_lower_inverse_trsm`` (see the module notes)."""
    return L.device.type == 'cpu' and (L.numel() >= TRSM_MIN_ELEMENTS or _trsm_for_small())


@input_guard
def solve_tril(
    A: torch.Tensor,
    cu_seqlens: Optional[torch.Tensor] = None,
    output_dtype: torch.dtype = torch.float
) -> torch.Tensor:
    """Compute ``(I + A)^-1`` for every chunk of ``A`` ``[B, T, H, BT]`` (BT in 16, 32, 64).

    Only the strictly lower triangle of each chunk's ``[BT, BT]`` block is read (as the kernels'
    masks do); rows past the end of a sequence are zero in the output.

    Source: fla/ops/utils/solve_tril.py:L336-L384 (fla 0.4.0)
    Source: fla/ops/utils/solve_tril.py:L21-L82 (fla 0.4.0)
    Source: fla/ops/utils/solve_tril.py:L85-L170 (fla 0.4.0)
    Source: fla/ops/utils/solve_tril.py:L173-L333 (fla 0.4.0)
    """
    assert A.shape[-1] in [16, 32, 64]
    output_dtype = A.dtype if output_dtype is None else output_dtype

    B, T, H, BT = A.shape
    # imported here: myfla.ops.common imports this package
    from myfla.ops.common.chunk_delta_h import from_grid, to_grid
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=A.device)
    if layout.NC == 0:
        return torch.zeros_like(A, dtype=output_dtype)
    compute_dtype = torch.promote_types(A.dtype, torch.float32)
    Ac = to_grid(layout, A, dtype=compute_dtype)                         # [NC, N*H, BT, BT]
    flat = Ac.flatten(0, 1)                                             # [M, BT, BT]
    # both read only the strict lower triangle; as fla's kernel, no autograd graph (an input that
    # requires grad gives a result that does not)
    with torch.no_grad():
        Ai = (_unit_lower_inverse_trsm(flat) if _uses_trsm(flat) else _unit_lower_inverse(flat)).view_as(Ac)
    return from_grid(layout, Ai, H, output_dtype)
