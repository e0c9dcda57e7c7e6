"""RWKV-7's key update ``k * (1 + (a - 1) * ka)``, as ``fla.ops.rwkv7.fused_k_update``, with its
backward ``dk = g (1 + (a - 1) ka)``, ``da = g k ka``, ``dka = sum_{B,T} g k (a - 1)``.

fla picks a per-token ("short", ``T <= 512``) or per-block ("long") kernel; both compute the same
elementwise formula in fp32, which is one broadcast expression here (``use_short`` is kept because
fla's backward receives it).
"""

from __future__ import annotations

from typing import Optional

import torch

from myfla.utils import input_guard, is_amd

# Warp counts of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/rwkv7/fused_k_update.py:L12-L12 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [2, 4, 8, 16] if is_amd else [2, 4, 8, 16, 32]


def k_update_ref(k: torch.Tensor, a: torch.Tensor, ka: torch.Tensor) -> torch.Tensor:
    """fla's torch reference (the single-token path of ``fused_k_rwkv7``).

    Source: fla/ops/rwkv7/fused_k_update.py:L15-L17 (fla 0.4.0)
    """
    return k.addcmul(k * (a - 1), ka)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def k_update_fwd(
    k: torch.Tensor,
    a: torch.Tensor,
    ka: torch.Tensor,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``(out, use_short, N, T)``: ``out = k * (1 + (a - 1) * ka)`` (``k.dtype``, computed in fp32) and
    the launch facts fla's backward receives.

    Source: fla/ops/rwkv7/fused_k_update.py:L213-L261 (fla 0.4.0)
    Source: fla/ops/rwkv7/fused_k_update.py:L20-L60 (fla 0.4.0)
    Source: fla/ops/rwkv7/fused_k_update.py:L63-L106 (fla 0.4.0)
    """
    B, T, D = k.shape
    use_short = T <= 512
    N = len(cu_seqlens) - 1 if cu_seqlens is not None else B
    dtype = _compute_dtype(k, a, ka)
    kc = k.to(dtype)
    out = kc * (1 + (a.to(dtype) - 1) * ka.to(dtype).reshape(-1))
    return out.to(k.dtype), use_short, N, T


def k_update_bwd(
    grad_out: torch.Tensor,
    k: torch.Tensor,
    a: torch.Tensor,
    ka: torch.Tensor,
    cu_seqlens: Optional[torch.Tensor],
    use_short: bool,
    N: int,
    T: int,
):
    """``(dk, da, dka)``: ``dk``/``da`` in the inputs' dtypes; ``dka`` summed over batch and time in
    fp32 and returned as ``[1, 1, D]`` in ``ka.dtype`` (fla's shape, whatever ``ka``'s; autograd sums
    it down to ``ka``'s shape).

    Source: fla/ops/rwkv7/fused_k_update.py:L264-L318 (fla 0.4.0)
    Source: fla/ops/rwkv7/fused_k_update.py:L109-L159 (fla 0.4.0)
    Source: fla/ops/rwkv7/fused_k_update.py:L162-L210 (fla 0.4.0)
    """
    dtype = _compute_dtype(grad_out, k, a, ka)
    go, kc, am1 = grad_out.to(dtype), k.to(dtype), a.to(dtype) - 1
    kav = ka.to(dtype).reshape(-1)
    dk = go * (1 + am1 * kav)
    gk = go * kc
    da = gk * kav
    dka_tmp = gk * am1                                                   # [B, T, D], fp32 as in fla
    dka = dka_tmp.sum(dim=(0, 1), keepdim=True).type_as(ka)
    return dk.to(k.dtype), da.to(a.dtype), dka


class KUpdateFunction(torch.autograd.Function):
    """Autograd function of ``fused_k_rwkv7``.

    Source: fla/ops/rwkv7/fused_k_update.py:L321-L344 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(ctx, k, a, ka, cu_seqlens=None):
        out, use_short, N, T = k_update_fwd(k, a, ka, cu_seqlens)
        ctx.save_for_backward(k, a, ka)
        ctx.use_short = use_short
        ctx.N = N
        ctx.T = T
        ctx.cu_seqlens = cu_seqlens
        return out

    @staticmethod
    @input_guard
    def backward(ctx, grad_output):
        k, a, ka = ctx.saved_tensors
        dk, da, dka = k_update_bwd(
            grad_output, k, a, ka,
            ctx.cu_seqlens,
            ctx.use_short,
            ctx.N,
            ctx.T,
        )
        return dk, da, dka, None


def fused_k_rwkv7(k, a, ka, cu_seqlens=None):
    """``k * (1 + (a - 1) * ka)`` for ``k``, ``a`` ``[B, T, D]`` and ``ka`` ``[D]`` or ``[1, 1, D]``.

    Source: fla/ops/rwkv7/fused_k_update.py:L347-L350 (fla 0.4.0)
    """
    if k.shape[1] == 1:
        return k_update_ref(k, a, ka)
    return KUpdateFunction.apply(k, a, ka, cu_seqlens)
