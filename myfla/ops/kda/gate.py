"""KDA forget gate: ``g = -exp(A)[h] * softplus(f + g_bias; beta, threshold)``, per head and key channel.

fla evaluates the gate with one forward and one backward Triton kernel over ``[tokens, H*D]`` rows;
both are elementwise (plus a per-head reduction for ``dA``), so here each is one batched torch
expression in fp32. As in fla the gate is fp32 for fp16/bf16/fp32 ``g``; for fp64 ``g`` it is
computed and returned in fp64 (the natural extension, which makes fp64 gradchecks possible). 2-D (``[tokens, H*D]``, vLLM) and 3-D (``[B, T, H*D]``) inputs are accepted, ``A``
may be ``[H]`` or ``[1, 1, H, 1]``.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from myfla.ops.utils.calls import autograd_records
from myfla.ops.utils.validation import check_softplus_beta
from myfla.utils import accumulation_dtype, autocast_off_like_kernels, input_guard, is_amd

# Source: fla/ops/kda/gate.py:L14-L14 (fla 0.4.0)
BT_LIST_AUTOTUNE = [32, 64, 128]
# Source: fla/ops/kda/gate.py:L15-L15 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [2, 4, 8, 16] if is_amd else [4, 8, 16, 32]


def kda_gate_ref(
    g: torch.Tensor,
    A: torch.Tensor,
    head_k_dim: int,
    g_bias: torch.Tensor | None = None,
    beta=1.0, threshold=20.0
) -> torch.Tensor:
    """Plain-torch KDA gate: ``-exp(A)[..., None] * softplus(g + g_bias)`` with heads split out.

    ``g`` is ``[..., H*D]``, ``A`` is ``[H]`` or ``[1, 1, H, 1]``, ``g_bias`` is ``[H*D]``; returns fp32
    ``[..., H, D]`` (fp64 for fp64 ``g``).

    Source: fla/ops/kda/gate.py:L18-L54 (fla 0.4.0)
    """
    A = A.view(-1)
    if g_bias is not None:
        g = g + g_bias
    g = rearrange(g, '... (h d) -> ... h d', d=head_k_dim)
    dtype = accumulation_dtype(g)
    decay = -A.to(dtype).exp().unsqueeze(-1)
    return decay * F.softplus(g.to(dtype), beta, threshold)



def _softplus(x: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    """The kernels' softplus: linear where ``beta * x > threshold``, else ``log(1 + exp(beta x)) / beta``."""
    scaled = x * beta
    return torch.where(scaled > threshold, x, torch.log1p(torch.exp(scaled.clamp(max=threshold))) / beta)


def kda_gate_fwd(
    g: torch.Tensor,
    A: torch.Tensor,
    head_k_dim: int,
    g_bias: torch.Tensor | None = None,
    beta: float = 1.0,
    threshold: float = 20.0
) -> torch.Tensor:
    """Forward of the KDA gate: ``g`` ``[..., H*D]`` -> fp32 ``[..., H, D]`` (fp64 for fp64 ``g``).

    Source: fla/ops/kda/gate.py:L213-L250 (fla 0.4.0)
    Source: fla/ops/kda/gate.py:L57-L123 (fla 0.4.0)
    """
    orig_shape = g.shape[:-1]

    g = g.view(-1, g.shape[-1])
    HD = g.shape[1]
    H = A.numel()
    assert HD == H * head_k_dim

    dtype = accumulation_dtype(g)
    b_g = g.to(dtype).view(-1, H, head_k_dim)
    if g_bias is not None:
        b_g = b_g + g_bias.to(dtype).view(H, head_k_dim)
    neg_exp_a = -A.to(dtype).view(H, 1).exp()
    y = neg_exp_a * _softplus(b_g, beta, threshold)
    return y.view(*orig_shape, H, head_k_dim)


def kda_gate_bwd(
    grad_output: torch.Tensor,
    g: torch.Tensor,
    A: torch.Tensor,
    head_k_dim: int,
    g_bias: torch.Tensor | None = None,
    beta: float = 1.0,
    threshold: float = 20.0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Backward of the KDA gate; returns ``(dg, dA, dg_bias)``.

    As fla's kernel, ``dg = dy * (-exp(A)) * sigmoid(beta * (g + g_bias))`` (the sigmoid is used on
    the linear branch too) and ``dA`` sums ``dy * (-exp(A)) * softplus(...)`` per head.

    Source: fla/ops/kda/gate.py:L253-L290 (fla 0.4.0)
    Source: fla/ops/kda/gate.py:L126-L210 (fla 0.4.0)
    """
    g_flat = g.view(-1, g.shape[-1])
    T = g_flat.shape[0]
    A_ori_shape = A.shape

    H = A.numel()
    D = head_k_dim

    dtype = accumulation_dtype(g)
    dy = grad_output.reshape(T, H, D).to(dtype)
    b_g = g_flat.to(dtype).view(T, H, D)
    if g_bias is not None:
        b_g = b_g + g_bias.to(dtype).view(H, D)
    neg_exp_a = -A.to(dtype).view(H, 1).exp()
    sp = _softplus(b_g, beta, threshold)
    sig = torch.sigmoid(b_g * beta)

    dg = (dy * (neg_exp_a * sig)).view(T, H * D)
    dA = (dy * (neg_exp_a * sp)).sum((0, 2))

    dA = dA.view(A_ori_shape).type_as(A)
    dgbias = dg.sum(0).type_as(g_bias) if g_bias is not None else None
    dg = dg.view(g.shape).type_as(g)
    return dg, dA, dgbias


class KDAGateFunction(torch.autograd.Function):
    """Autograd function of the KDA gate (``[B, T, H*D]`` or ``[tokens, H*D]`` inputs).

    Source: fla/ops/kda/gate.py:L293-L326 (fla 0.4.0)
    """

    # fla stacks these the other way round; a staticmethod object is callable only from Python 3.10 on
    @staticmethod
    @input_guard
    def forward(ctx, g: torch.Tensor, A: torch.Tensor, head_k_dim: int,
                g_bias: torch.Tensor | None = None,
                beta: float = 1.0,
                threshold: float = 20.0) -> torch.Tensor:
        ctx.save_for_backward(g, A)
        ctx.g_bias = g_bias
        ctx.head_k_dim = head_k_dim
        ctx.beta = beta
        ctx.threshold = threshold

        return kda_gate_fwd(g, A, head_k_dim, g_bias, beta, threshold)

    @staticmethod
    @input_guard
    def backward(ctx, grad_output: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, None, None, None]:
        g, A = ctx.saved_tensors
        grad_g, grad_A, grad_gbias = kda_gate_bwd(
            grad_output, g, A, ctx.head_k_dim, ctx.g_bias, ctx.beta, ctx.threshold)
        return grad_g, grad_A, None, grad_gbias, None, None


def fused_kda_gate(g: torch.Tensor, A: torch.Tensor, head_k_dim: int,
                   g_bias: torch.Tensor | None = None,
                   beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    """KDA gate with autograd: ``g`` ``[..., H*D]`` -> fp32 ``[..., H, D]`` (fp64 for fp64 ``g``).

    Source: fla/ops/kda/gate.py:L329-L349 (fla 0.4.0)
    """
    check_softplus_beta(beta)
    if not autograd_records(g, A, g_bias):
        # nothing for autograd to record (decoding): the Function's forward on the same contiguous
        # inputs, without its per-call cost
        with autocast_off_like_kernels(g):
            return kda_gate_fwd(g.contiguous(), A.contiguous(), head_k_dim,
                                None if g_bias is None else g_bias.contiguous(), beta, threshold)
    return KDAGateFunction.apply(g, A, head_k_dim, g_bias, beta, threshold)
