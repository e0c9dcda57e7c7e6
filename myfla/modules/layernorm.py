"""Layer / RMS / group normalisation with an optional fused residual add (``prenorm``).

GatedDeltaNet with ``use_gate=False`` normalises its output with :class:`RMSNorm`. fla's four Triton
kernels (row-blocked for ``D <= 512``, one row per program above) evaluate one per-row formula; here
it is one batched computation per direction, accumulated in fp32 as in the kernels (fp64 for fp64
inputs). With ``num_groups = G`` every row of ``G * D`` channels is normalised as ``G`` independent
rows of ``D`` (row ``i`` of the reshaped input belongs to group ``i % G``) and the affine parameters
are per channel.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from myfla.utils import accumulation_dtype, input_guard


def _next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _check_feature_dim(x: torch.Tensor, D: int) -> None:
    """fla's kernels hold one row in at most 64 KB."""
    if D > min(65536 // x.element_size(), _next_power_of_2(D)):
        raise RuntimeError("This layer norm doesn't support feature dim >= 64KB.")



def _per_group(p: torch.Tensor, T: int, G: int, D: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-channel parameter ``[G*D]`` laid out against rows ``[T, D]`` (row i uses group i % G)."""
    return p.to(dtype).view(1, G, D).expand(T // G, G, D).reshape(T, D)


def layer_norm_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
    residual: torch.Tensor = None,
    out_dtype: torch.dtype = None,
    residual_dtype: torch.dtype = None,
    is_rms_norm: bool = False,
    num_groups: int = 1,
):
    """Norm forward on 2-D ``x`` ``[T, D]``; returns ``(y, mean, rstd, residual_out)`` (``mean`` None
    for RMS norm; ``residual_out`` = ``x + residual`` in ``residual_dtype``, or ``x`` itself when
    there is no residual and no dtype change). ``mean``/``rstd`` are fp32, fp64 for fp64 ``x``.

    Source: fla/modules/layernorm.py:L530-L610 (fla 0.4.0)
    Source: fla/modules/layernorm.py:L180-L252 (fla 0.4.0)
    Source: fla/modules/layernorm.py:L255-L321 (fla 0.4.0)
    """
    if residual is not None:
        residual_dtype = residual.dtype
    T, D, G = *x.shape, num_groups
    if residual is not None:
        assert residual.shape == (T, D)
    if weight is not None:
        assert weight.shape == (G * D,)
    if bias is not None:
        assert bias.shape == (G * D,)
    _check_feature_dim(x, D)

    acc = accumulation_dtype(x)
    b_x = x.to(acc)
    if residual is not None:
        b_x = b_x + residual.to(acc)
    res_out = None
    if residual is not None or (residual_dtype is not None and residual_dtype != x.dtype):
        res_out = b_x.to(residual_dtype)

    if is_rms_norm:
        mean = None
        b_xbar = b_x
    else:
        mean = b_x.mean(-1)
        b_xbar = b_x - mean[:, None]
    rstd = 1 / torch.sqrt(b_xbar.square().mean(-1) + eps)
    b_y = b_xbar * rstd[:, None]
    if weight is not None:
        b_y = b_y * _per_group(weight, T, G, D, acc)
    if bias is not None:
        b_y = b_y + _per_group(bias, T, G, D, acc)
    y = b_y.to(x.dtype if out_dtype is None else out_dtype)
    return y, mean, rstd, res_out if res_out is not None else x


def layer_norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor = None,
    rstd: torch.Tensor = None,
    dres: torch.Tensor = None,
    has_residual: bool = False,
    is_rms_norm: bool = False,
    x_dtype: torch.dtype = None,
    recompute_output: bool = False,
    num_groups: int = 1,
):
    """Norm backward from the saved ``x`` (the forward's ``residual_out``), ``mean`` and ``rstd``.

    Returns ``(dx, dw, db, dres_in)`` (plus the recomputed ``y`` when ``recompute_output``); ``dres``
    (prenorm) is added to ``dx``.

    Source: fla/modules/layernorm.py:L613-L713 (fla 0.4.0)
    Source: fla/modules/layernorm.py:L324-L432 (fla 0.4.0)
    Source: fla/modules/layernorm.py:L435-L527 (fla 0.4.0)
    """
    T, D, G = *x.shape, num_groups
    assert dy.shape == (T, D)
    if dres is not None:
        assert dres.shape == (T, D)
    if weight is not None:
        assert weight.shape == (G * D,)
    if bias is not None:
        assert bias.shape == (G * D,)
    _check_feature_dim(x, D)
    dx_dtype = x.dtype if x_dtype is None else x_dtype

    acc = accumulation_dtype(x)
    b_x = x.to(acc)
    b_xhat = (b_x - mean[:, None]) * rstd[:, None] if not is_rms_norm else b_x * rstd[:, None]
    b_dy = dy.to(acc)
    b_wdy = b_dy
    dw = db = None
    if weight is not None:
        b_wdy = b_dy * _per_group(weight, T, G, D, acc)
        dw = (b_dy * b_xhat).view(-1, G, D).sum(0).to(weight).view_as(weight)
    if bias is not None:
        db = b_dy.view(-1, G, D).sum(0).to(bias).view_as(bias)
    b_c1 = (b_xhat * b_wdy).mean(-1, keepdim=True)
    if is_rms_norm:
        b_dx = (b_wdy - b_xhat * b_c1) * rstd[:, None]
    else:
        b_dx = (b_wdy - (b_xhat * b_c1 + b_wdy.mean(-1, keepdim=True))) * rstd[:, None]
    if dres is not None:
        b_dx = b_dx + dres.to(acc)

    dx = b_dx.to(dx_dtype)
    dres_in = None
    if has_residual:
        # the residual's gradient is dx itself, in the dtype of the saved residual stream
        dres_in = dx if dx.dtype == x.dtype else b_dx.to(x.dtype)
    if recompute_output:
        b_y = b_xhat * _per_group(weight, T, G, D, acc) if weight is not None else b_xhat
        if bias is not None:
            b_y = b_y + _per_group(bias, T, G, D, acc)
        return dx, dw, db, dres_in, b_y.to(dy.dtype)
    return dx, dw, db, dres_in


class LayerNormFunction(torch.autograd.Function):
    """Autograd wrapper of :func:`layer_norm_fwd` / :func:`layer_norm_bwd` for inputs of any leading
    shape.

    Source: fla/modules/layernorm.py:L716-L802 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(
        ctx,
        x,
        weight,
        bias,
        residual: torch.Tensor = None,
        eps: float = 1e-5,
        prenorm: bool = False,
        residual_in_fp32: bool = False,
        is_rms_norm: bool = False,
        num_groups: int = 1
    ):
        x_shape_og = x.shape
        if x.shape[-1] % num_groups != 0:
            raise ValueError('num_channels must be divisible by num_groups')
        x = x.reshape(-1, (x.shape[-1] // num_groups))
        if residual is not None:
            assert residual.shape == x_shape_og
            residual = residual.reshape_as(x)
        if residual is not None:
            residual_dtype = residual.dtype
        else:
            residual_dtype = torch.float32 if residual_in_fp32 else None
        y, mean, rstd, res_out = layer_norm_fwd(
            x,
            weight,
            bias,
            eps,
            residual,
            residual_dtype=residual_dtype,
            is_rms_norm=is_rms_norm,
            num_groups=num_groups
        )
        ctx.save_for_backward(res_out, weight, bias, mean, rstd)
        ctx.x_shape_og = x_shape_og
        ctx.eps = eps
        ctx.is_rms_norm = is_rms_norm
        ctx.num_groups = num_groups
        ctx.has_residual = residual is not None
        ctx.prenorm = prenorm
        ctx.x_dtype = x.dtype
        y = y.reshape(x_shape_og)
        return y if not prenorm else (y, res_out.reshape(x_shape_og))

    @staticmethod
    @input_guard
    def backward(ctx, dy, *args):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dy = dy.reshape(-1, (dy.shape[-1] // ctx.num_groups))
        assert dy.shape == x.shape
        dresidual = None
        if ctx.prenorm:
            dresidual = args[0].reshape(-1, x.shape[-1])
            assert dresidual.shape == x.shape
        dx, dw, db, dresidual_in = layer_norm_bwd(
            dy,
            x,
            weight,
            bias,
            mean,
            rstd,
            dresidual,
            ctx.has_residual,
            ctx.is_rms_norm,
            x_dtype=ctx.x_dtype,
            num_groups=ctx.num_groups
        )
        return (
            dx.reshape(ctx.x_shape_og),
            dw,
            db,
            dresidual_in.reshape(ctx.x_shape_og) if ctx.has_residual else None,
            None,
            None,
            None,
            None,
            None
        )


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False
):
    """RMS norm over the last dimension (``prenorm`` also returns the residual stream).

    Source: fla/modules/layernorm.py:L851-L869 (fla 0.4.0)
    """
    return LayerNormFunction.apply(
        x,
        weight,
        bias,
        residual,
        eps,
        prenorm,
        residual_in_fp32,
        True
    )


class RMSNorm(nn.Module):
    """RMS norm with an optional learnable scale (and bias).

    Source: fla/modules/layernorm.py:L1064-L1111 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int,
        elementwise_affine: bool = True,
        bias: bool = False,
        eps: float = 1e-5
    ) -> RMSNorm:
        super().__init__()

        self.hidden_size = hidden_size
        self.elementwise_affine = elementwise_affine
        self.eps = eps

        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(hidden_size))
            if bias:
                self.bias = nn.Parameter(torch.empty(hidden_size))

        self.reset_parameters()

    def reset_parameters(self):
        if self.elementwise_affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def __repr__(self) -> str:
        extra = "" if self.elementwise_affine else f", elementwise_affine={self.elementwise_affine}"
        return f"{self.__class__.__name__}({self.hidden_size}{extra}, eps={self.eps})"

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return rms_norm(
            x,
            self.weight,
            self.bias,
            residual=residual,
            eps=self.eps,
            prenorm=prenorm,
            residual_in_fp32=residual_in_fp32,
        )
