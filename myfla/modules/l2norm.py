"""L2 normalisation over the last dimension: ``y = x * (sum(x^2) + eps)^-1/2``.

fla computes this with four Triton kernels (a row-blocked pair for ``D <= 512`` and a one-row-per-
program pair for larger ``D``). Both pairs evaluate the same per-row formula, so here one batched
torch expression per direction implements all four; accumulation is fp32 as in the kernels (fp64
for fp64 inputs, so fp64 gradcheck sees the exact math).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from myfla.utils import input_guard, is_amd

# Source: fla/modules/l2norm.py:L13-L13 (fla 0.4.0)
BT_LIST = [8, 16, 32, 64, 128]
# Source: fla/modules/l2norm.py:L14-L14 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [1, 2, 4, 8, 16] if is_amd else [1, 2, 4, 8, 16, 32]


def _next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (triton.next_power_of_2)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _block_width(D: int, element_size: int) -> int:
    """Feature block width BD the kernels would use: one row must fit in 64 KB."""
    max_fused_size = 65536 // element_size
    return min(max_fused_size, _next_power_of_2(D))


def l2norm_fwd(
    x: torch.Tensor,
    eps: float = 1e-6,
    output_dtype: Optional[torch.dtype] = None
):
    """L2-normalise the last dimension of ``x``; returns ``(y, rstd)``.

    ``y`` has ``x``'s shape and ``output_dtype`` (``x.dtype`` when None); ``rstd`` (fp32, fp64 for
    fp64 ``x``) has shape ``x.shape[:-1]`` and is what the backward needs.

    Source: fla/modules/l2norm.py:L149-L192 (fla 0.4.0)
    Source: fla/modules/l2norm.py:L80-L111 (fla 0.4.0)
    Source: fla/modules/l2norm.py:L17-L45 (fla 0.4.0)
    """
    x_shape_og = x.shape
    x = x.reshape(-1, x.shape[-1])
    D = x.shape[-1]
    if D > _block_width(D, x.element_size()):
        raise RuntimeError("This layer doesn't support feature dim >= 64KB.")

    b_x = x.to(torch.promote_types(x.dtype, torch.float32))
    rstd = 1 / torch.sqrt(b_x.square().sum(-1) + eps)
    y = (b_x * rstd[:, None]).to(x.dtype if output_dtype is None else output_dtype)
    return y.view(x_shape_og), rstd.view(x_shape_og[:-1])


def l2norm_bwd(
    y: torch.Tensor,
    rstd: torch.Tensor,
    dy: torch.Tensor,
    eps: float = 1e-6
):
    """Gradient of :func:`l2norm_fwd` from its output ``y`` and ``rstd``:
    ``dx = rstd * (dy - (dy . y) y)``, returned in ``y``'s dtype.

    Source: fla/modules/l2norm.py:L195-L239 (fla 0.4.0)
    Source: fla/modules/l2norm.py:L114-L146 (fla 0.4.0)
    Source: fla/modules/l2norm.py:L48-L77 (fla 0.4.0)
    """
    y_shape_og = y.shape
    y = y.reshape(-1, dy.shape[-1])
    dy = dy.reshape(-1, dy.shape[-1])
    assert dy.shape == y.shape
    D = y.shape[-1]
    if D > _block_width(D, y.element_size()):
        raise RuntimeError("This layer norm doesn't support feature dim >= 64KB.")

    acc = torch.promote_types(y.dtype, torch.float32)
    b_y = y.to(acc)
    b_dy = dy.to(acc)
    b_rstd = rstd.reshape(-1, 1).to(acc)
    b_dx = b_dy * b_rstd - (b_dy * b_y).sum(-1, keepdim=True) * b_y * b_rstd
    return b_dx.to(y.dtype).view(y_shape_og)


class L2NormFunction(torch.autograd.Function):
    """Autograd wrapper of :func:`l2norm_fwd` / :func:`l2norm_bwd`.

    Source: fla/modules/l2norm.py:L242-L263 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(
        ctx,
        x,
        eps=1e-6,
        output_dtype=None
    ):
        y, rstd = l2norm_fwd(x, eps, output_dtype)
        ctx.eps = eps
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    @input_guard
    def backward(ctx, dy):
        y, rstd = ctx.saved_tensors
        dx = l2norm_bwd(y, rstd, dy, ctx.eps)
        return dx, None, None


def l2norm(
    x: torch.Tensor,
    eps: float = 1e-6,
    output_dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Differentiable L2 normalisation over the last dimension.

    Source: fla/modules/l2norm.py:L266-L271 (fla 0.4.0)
    """
    return L2NormFunction.apply(x, eps, output_dtype)


# Source: fla/modules/l2norm.py:L274-L274 (fla 0.4.0)
l2_norm = l2norm


class L2Norm(nn.Module):
    """Module form of :func:`l2norm`.

    Source: fla/modules/l2norm.py:L277-L289 (fla 0.4.0)
    """

    def __init__(
        self,
        eps: float = 1e-6,
        output_dtype: Optional[torch.dtype] = None
    ):
        super().__init__()
        self.eps = eps
        self.output_dtype = output_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2norm(x, self.eps, self.output_dtype)
