"""Layer / RMS / group normalisation with an optional fused residual add (``prenorm``), alone or
followed by a linear layer (``*Linear``), plus fla's pure-torch reference norms.

fla's four Triton kernels (row-blocked for ``D <= 512``, one row per program above) evaluate one
per-row formula; here it is one batched computation per direction, accumulated in fp32 as in the
kernels (fp64 for fp64 inputs). With ``num_groups = G`` every row of ``G * D`` channels is normalised
as ``G`` independent rows of ``D`` (row ``i`` of the reshaped input belongs to group ``i % G``) and
the affine parameters are per channel. GatedDeltaNet with ``use_gate=False`` normalises its output
with :class:`RMSNorm`.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from myfla.ops.utils.calls import autograd_records
from myfla.utils import accumulation_dtype, caller_autocast_enabled, input_guard, without_autocast

# Tensor parallelism (NormParallel) needs torch.distributed's DTensor API (torch >= 2.4); without it
# the names are None and NormParallel raises a clear error when built.
try:
    from torch.distributed import DeviceMesh
    from torch.distributed.tensor import Replicate, Shard, distribute_module
    from torch.distributed.tensor.parallel import ParallelStyle
except (ImportError, AttributeError):
    DeviceMesh = Replicate = Shard = distribute_module = None
    ParallelStyle = object

try:
    from torch.distributed.tensor import DTensor
except (ImportError, AttributeError):
    # Source: fla/modules/layernorm.py:L32-L32 (fla 0.4.0)
    DTensor = None


def _next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _check_feature_dim(x: torch.Tensor, D: int) -> None:
    """fla's kernels hold one row in at most 64 KB."""
    if D > min(65536 // x.element_size(), _next_power_of_2(D)):
        raise RuntimeError("This layer norm doesn't support feature dim >= 64KB.")



def _per_group(p: torch.Tensor, T: int, G: int, D: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-channel parameter ``[G*D]`` laid out against rows ``[T, D]`` (row i uses group i % G)."""
    return p.to(dtype).view(1, G, D).expand(T // G, G, D).reshape(T, D)


def _norm_repr(module: nn.Module, num_groups: int = None, is_rms_norm: bool = False) -> str:
    """fla's norm ``__repr__``: ``Name([G, ]hidden[, elementwise_affine=False][, is_rms_norm=True], eps=...)``."""
    s = f"{module.__class__.__name__}("
    if num_groups is not None:
        s += f"{num_groups}, "
    s += f"{module.hidden_size}"
    if not module.elementwise_affine:
        s += f", elementwise_affine={module.elementwise_affine}"
    if is_rms_norm:
        s += f", is_rms_norm={is_rms_norm}"
    s += f", eps={module.eps}"
    s += ")"
    return s


def layer_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    upcast: bool = False
):
    """Pure-torch layer norm (``F.layer_norm`` in the weight's dtype) after an optional residual add;
    ``upcast`` computes in fp32. ``prenorm`` also returns the residual stream.

    Source: fla/modules/layernorm.py:L35-L56 (fla 0.4.0)
    """
    dtype = x.dtype
    if upcast:
        weight = weight.float()
        bias = bias.float() if bias is not None else None
        x = x.float()
        residual = residual.float() if residual is not None else residual
    if residual is not None:
        x = (x + residual).to(x.dtype)
    out = F.layer_norm(x.to(weight.dtype), x.shape[-1:], weight=weight, bias=bias, eps=eps).to(dtype)
    return out if not prenorm else (out, x)


def rms_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    upcast: bool = False
):
    """Pure-torch RMS norm ``x / sqrt(mean(x^2) + eps) * weight (+ bias)`` after an optional residual
    add; ``upcast`` computes in fp32. ``prenorm`` also returns the residual stream.

    Source: fla/modules/layernorm.py:L59-L80 (fla 0.4.0)
    """
    dtype = x.dtype
    if upcast:
        weight = weight.float()
        bias = bias.float() if bias is not None else None
        x = x.float()
        residual = residual.float() if residual is not None else residual
    if residual is not None:
        x = (x + residual).to(x.dtype)
    rstd = 1 / torch.sqrt((x.square()).mean(dim=-1, keepdim=True) + eps)
    out = x * rstd * weight
    if bias is not None:
        out = out + bias
    out = out.to(dtype)
    return out if not prenorm else (out, x)


def group_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_groups: int,
    residual: torch.Tensor = None,
    eps: float = 1e-5,
    is_rms_norm: bool = False,
    prenorm: bool = False,
    upcast: bool = False
):
    """Pure-torch group norm over the last dimension split into ``num_groups`` contiguous groups
    (layer norm, or RMS norm with ``is_rms_norm``, per group; per-channel affine parameters).

    Source: fla/modules/layernorm.py:L83-L116 (fla 0.4.0)
    """
    dtype = x.dtype
    if upcast:
        weight = weight.float()
        bias = bias.float() if bias is not None else None
        x = x.float()
        residual = residual.float() if residual is not None else residual
    if residual is not None:
        x = (x + residual).to(x.dtype)
    residual = x
    x = rearrange(x, "... (g d) -> ... g d", g=num_groups)
    weight = rearrange(weight, "... (g d) -> ... g d", g=num_groups)
    if bias is not None:
        bias = rearrange(bias, "... (g d) -> ... g d", g=num_groups)
    if not is_rms_norm:
        x = x - x.mean(dim=-1, keepdim=True)
    rstd = 1 / torch.sqrt((x.square()).mean(dim=-1, keepdim=True) + eps)
    out = x * rstd * weight
    if bias is not None:
        out = out + bias
    out = rearrange(out, "... g d -> ... (g d)").to(dtype)
    return out if not prenorm else (out, residual)


class GroupNormRef(nn.Module):
    """Group norm module evaluating :func:`group_norm_ref` in fp32 (``upcast=True``).

    Source: fla/modules/layernorm.py:L119-L177 (fla 0.4.0)
    """

    def __init__(
        self,
        num_groups: int,
        hidden_size: int,
        elementwise_affine: bool = True,
        bias: bool = False,
        eps: float = 1e-5,
        is_rms_norm: bool = False
    ) -> GroupNormRef:
        super().__init__()

        if hidden_size % num_groups != 0:
            raise ValueError('num_channels must be divisible by num_groups')

        self.num_groups = num_groups
        self.hidden_size = hidden_size
        self.elementwise_affine = elementwise_affine
        self.eps = eps
        self.is_rms_norm = is_rms_norm

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
        return _norm_repr(self, self.num_groups, self.is_rms_norm)

    def forward(self, x, residual=None, prenorm=False):
        return group_norm_ref(
            x,
            self.weight,
            self.bias,
            num_groups=self.num_groups,
            residual=residual,
            eps=self.eps,
            is_rms_norm=self.is_rms_norm,
            prenorm=prenorm,
            upcast=True
        )


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
    b_x = x if x.dtype == acc else x.to(acc)
    if residual is not None:
        b_x = b_x + residual.to(acc)
    res_out = None
    if residual is not None or (residual_dtype is not None and residual_dtype != x.dtype):
        res_out = b_x.to(residual_dtype)

    # few ops (a one-token call costs what its ops dispatch): statistics with keepdim, and the
    # affine steps in place on the fresh normalised rows
    if is_rms_norm:
        mean = None
        b_xbar = b_x
    else:
        mean = b_x.mean(-1, keepdim=True)
        b_xbar = b_x - mean
        mean = mean.squeeze(-1)
    rstd = b_xbar.square().mean(-1, keepdim=True).add_(eps).rsqrt_()
    b_y = b_xbar * rstd
    rstd = rstd.squeeze(-1)
    if weight is not None:
        b_y.mul_(weight if G == 1 and weight.dtype == acc else _per_group(weight, T, G, D, acc))
    if bias is not None:
        b_y.add_(bias if G == 1 and bias.dtype == acc else _per_group(bias, T, G, D, acc))
    out_dtype = x.dtype if out_dtype is None else out_dtype
    y = b_y if b_y.dtype == out_dtype else b_y.to(out_dtype)
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
        x_shape_og, y, mean, rstd, res_out = _layer_norm_rows(x, weight, bias, residual, eps, residual_in_fp32,
                                                             is_rms_norm, num_groups)
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


@without_autocast
def _layer_norm_no_grad(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm, num_groups=1):
    """:class:`LayerNormFunction`'s forward for calls autograd would not record: the same computation
    on the same contiguous rows, without the Function's per-call cost (most of a one-token call's, as
    in decoding).

    Source: fla/modules/layernorm.py:L716-L765 (fla 0.4.0)
    """
    x_shape_og, y, _, _, res_out = _layer_norm_rows(x, weight, bias, residual, eps, residual_in_fp32,
                                                   is_rms_norm, num_groups)
    y = y.view(x_shape_og)
    return y if not prenorm else (y, res_out.view(x_shape_og))


def _layer_norm_rows(x, weight, bias, residual, eps, residual_in_fp32, is_rms_norm, num_groups):
    """The forward of :class:`LayerNormFunction` on contiguous rows of ``num_channels / num_groups``
    (what ``input_guard`` gives the Function): ``(x_shape_og, y, mean, rstd, res_out)``, shared by the
    Function and the no-grad path.

    Source: fla/modules/layernorm.py:L716-L765 (fla 0.4.0)
    """
    x_shape_og = x.shape
    if x.shape[-1] % num_groups != 0:
        raise ValueError('num_channels must be divisible by num_groups')
    x = x.contiguous().view(-1, (x.shape[-1] // num_groups))
    if residual is not None:
        assert residual.shape == x_shape_og
        residual = residual.contiguous().view_as(x)
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
    return x_shape_og, y, mean, rstd, res_out


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    is_rms_norm: bool = False
):
    """Layer norm (RMS norm with ``is_rms_norm``) over the last dimension; ``prenorm`` also returns
    the residual stream ``x + residual``.

    Source: fla/modules/layernorm.py:L805-L824 (fla 0.4.0)
    """
    if not autograd_records(x, weight, bias, residual):
        return _layer_norm_no_grad(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm)
    return LayerNormFunction.apply(
        x,
        weight,
        bias,
        residual,
        eps,
        prenorm,
        residual_in_fp32,
        is_rms_norm
    )


def group_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    is_rms_norm: bool = False,
    num_groups: int = 1
):
    """Group norm: the last dimension is normalised as ``num_groups`` contiguous groups.

    Source: fla/modules/layernorm.py:L827-L848 (fla 0.4.0)
    """
    if not autograd_records(x, weight, bias, residual):
        return _layer_norm_no_grad(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm,
                                   num_groups)
    return LayerNormFunction.apply(
        x,
        weight,
        bias,
        residual,
        eps,
        prenorm,
        residual_in_fp32,
        is_rms_norm,
        num_groups
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
    if not autograd_records(x, weight, bias, residual):
        return _layer_norm_no_grad(x, weight, bias, residual, eps, prenorm, residual_in_fp32, True)
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


def layer_norm_linear(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor,
    residual: torch.Tensor = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    is_rms_norm: bool = False,
    num_groups: int = 1
):
    """Norm followed by ``F.linear(y, linear_weight, linear_bias)``; the normalised ``y`` is not
    saved but recomputed in the backward pass.

    Source: fla/modules/layernorm.py:L872-L897 (fla 0.4.0)
    """
    return LayerNormLinearFunction.apply(
        x,
        norm_weight,
        norm_bias,
        linear_weight,
        linear_bias,
        residual,
        eps,
        prenorm,
        residual_in_fp32,
        is_rms_norm,
        num_groups
    )


def rms_norm_linear(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor,
    residual: torch.Tensor = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False
):
    """RMS norm followed by a linear layer.

    Source: fla/modules/layernorm.py:L900-L922 (fla 0.4.0)
    """
    return layer_norm_linear(
        x=x,
        norm_weight=norm_weight,
        norm_bias=norm_bias,
        linear_weight=linear_weight,
        linear_bias=linear_bias,
        residual=residual,
        eps=eps,
        prenorm=prenorm,
        residual_in_fp32=residual_in_fp32,
        is_rms_norm=True
    )


def group_norm_linear(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor,
    residual: torch.Tensor = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    is_rms_norm: bool = False,
    num_groups: int = 1
):
    """Group norm followed by a linear layer.

    Source: fla/modules/layernorm.py:L925-L950 (fla 0.4.0)
    """
    return layer_norm_linear(
        x=x,
        norm_weight=norm_weight,
        norm_bias=norm_bias,
        linear_weight=linear_weight,
        linear_bias=linear_bias,
        residual=residual,
        eps=eps,
        prenorm=prenorm,
        residual_in_fp32=residual_in_fp32,
        is_rms_norm=is_rms_norm,
        num_groups=num_groups
    )


class LayerNorm(nn.Module):
    """Layer norm with an optional learnable scale (and bias) and a fused residual add.

    Source: fla/modules/layernorm.py:L953-L1000 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int,
        elementwise_affine: bool = True,
        bias: bool = False,
        eps: float = 1e-5
    ) -> LayerNorm:
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
        return _norm_repr(self)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return layer_norm(
            x,
            self.weight,
            self.bias,
            residual=residual,
            eps=self.eps,
            prenorm=prenorm,
            residual_in_fp32=residual_in_fp32
        )


class GroupNorm(nn.Module):
    """Group norm (layer or RMS norm per group of ``hidden_size // num_groups`` channels).

    Source: fla/modules/layernorm.py:L1003-L1061 (fla 0.4.0)
    """

    def __init__(
        self,
        num_groups: int,
        hidden_size: int,
        elementwise_affine: bool = True,
        bias: bool = False,
        eps: float = 1e-5,
        is_rms_norm: bool = False
    ) -> GroupNorm:
        super().__init__()

        if hidden_size % num_groups != 0:
            raise ValueError('num_channels must be divisible by num_groups')

        self.num_groups = num_groups
        self.hidden_size = hidden_size
        self.elementwise_affine = elementwise_affine
        self.eps = eps
        self.is_rms_norm = is_rms_norm

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
        return _norm_repr(self, self.num_groups, self.is_rms_norm)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return group_norm(
            x,
            self.weight,
            self.bias,
            residual=residual,
            eps=self.eps,
            prenorm=prenorm,
            residual_in_fp32=residual_in_fp32,
            is_rms_norm=self.is_rms_norm,
            num_groups=self.num_groups
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
        return _norm_repr(self)

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


def _autocast_gpu_dtype() -> torch.dtype:
    """The CUDA autocast dtype: ``torch.get_autocast_gpu_dtype()`` (fla's call), spelt
    ``torch.get_autocast_dtype('cuda')`` since torch 2.4 (the old name warns there)."""
    if hasattr(torch, 'get_autocast_dtype'):
        return torch.get_autocast_dtype('cuda')
    return torch.get_autocast_gpu_dtype()


class LayerNormLinearFunction(torch.autograd.Function):
    """Norm + linear layer. The forward keeps only the norm statistics; the backward recomputes the
    normalised ``y`` with :func:`layer_norm_bwd` (``recompute_output=True``) for the weight gradient.
    Under CUDA autocast the norm output and the linear layer run in the autocast dtype, as in fla.

    Source: fla/modules/layernorm.py:L1114-L1216 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(
        ctx,
        x,
        norm_weight,
        norm_bias,
        linear_weight,
        linear_bias,
        residual=None,
        eps=1e-5,
        prenorm=False,
        residual_in_fp32=False,
        is_rms_norm=False,
        num_groups=1
    ):
        x_shape_og = x.shape

        if x.shape[-1] % num_groups != 0:
            raise ValueError('num_channels must be divisible by num_groups')
        # rows of one group each
        x = x.reshape(-1, (x.shape[-1] // num_groups))
        if residual is not None:
            assert residual.shape == x_shape_og
            residual = residual.reshape_as(x)
        if residual is not None:
            residual_dtype = residual.dtype
        else:
            residual_dtype = torch.float32 if residual_in_fp32 else None
        autocast = caller_autocast_enabled()
        y, mean, rstd, res_out = layer_norm_fwd(
            x,
            norm_weight,
            norm_bias,
            eps,
            residual,
            out_dtype=_autocast_gpu_dtype() if autocast else None,
            residual_dtype=residual_dtype,
            is_rms_norm=is_rms_norm,
            num_groups=num_groups
        )
        y = y.reshape(x_shape_og)
        dtype = _autocast_gpu_dtype() if autocast else y.dtype
        linear_weight = linear_weight.to(dtype)
        linear_bias = linear_bias.to(dtype) if linear_bias is not None else None
        out = F.linear(y.to(linear_weight.dtype), linear_weight, linear_bias)
        # y is not saved: the backward recomputes it from the statistics
        ctx.save_for_backward(res_out, norm_weight, norm_bias, linear_weight, mean, rstd)
        ctx.x_shape_og = x_shape_og
        ctx.eps = eps
        ctx.is_rms_norm = is_rms_norm
        ctx.num_groups = num_groups
        ctx.has_residual = residual is not None
        ctx.prenorm = prenorm
        ctx.x_dtype = x.dtype
        ctx.linear_bias_is_none = linear_bias is None
        return out if not prenorm else (out, res_out.reshape(x_shape_og))

    @staticmethod
    @input_guard
    def backward(ctx, dout, *args):
        x, norm_weight, norm_bias, linear_weight, mean, rstd = ctx.saved_tensors
        dout = dout.reshape(-1, dout.shape[-1])
        dy = F.linear(dout, linear_weight.t())
        dy = dy.reshape(-1, (dy.shape[-1] // ctx.num_groups))
        dlinear_bias = None if ctx.linear_bias_is_none else dout.sum(0)
        assert dy.shape == x.shape
        dresidual = None
        if ctx.prenorm:
            dresidual = args[0].reshape(-1, x.shape[-1])
            assert dresidual.shape == x.shape
        dx, dnorm_weight, dnorm_bias, dresidual_in, y = layer_norm_bwd(
            dy,
            x,
            norm_weight,
            norm_bias,
            mean,
            rstd,
            dresidual,
            ctx.has_residual,
            ctx.is_rms_norm,
            x_dtype=ctx.x_dtype,
            recompute_output=True,
            num_groups=ctx.num_groups
        )
        dlinear_weight = torch.einsum("bo,bi->oi", dout, y.view(-1, linear_weight.shape[-1]))
        return (
            dx.reshape(ctx.x_shape_og),
            dnorm_weight,
            dnorm_bias,
            dlinear_weight,
            dlinear_bias,
            dresidual_in.reshape(ctx.x_shape_og) if ctx.has_residual else None,
            None,
            None,
            None,
            None,
            None
        )


class LayerNormLinear(nn.Module):
    """Layer norm whose output feeds a linear layer given at call time (``forward(x, weight, bias)``).

    Source: fla/modules/layernorm.py:L1219-L1269 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size,
        elementwise_affine: bool = True,
        bias: bool = False,
        eps: float = 1e-5
    ) -> LayerNormLinear:
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
        return _norm_repr(self)

    def forward(self, x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False):
        return layer_norm_linear(
            x=x,
            norm_weight=self.weight,
            norm_bias=self.bias,
            linear_weight=weight,
            linear_bias=bias,
            residual=residual,
            eps=self.eps,
            prenorm=prenorm,
            residual_in_fp32=residual_in_fp32,
            is_rms_norm=False
        )


class GroupNormLinear(nn.Module):
    """Group norm whose output feeds a linear layer given at call time.

    Source: fla/modules/layernorm.py:L1272-L1332 (fla 0.4.0)
    """

    def __init__(
        self,
        num_groups: int,
        hidden_size: int,
        elementwise_affine: bool = True,
        bias: bool = False,
        eps: float = 1e-5,
        is_rms_norm: bool = False
    ) -> GroupNormLinear:
        super().__init__()

        if hidden_size % num_groups != 0:
            raise ValueError('num_channels must be divisible by num_groups')

        self.num_groups = num_groups
        self.hidden_size = hidden_size
        self.elementwise_affine = elementwise_affine
        self.eps = eps
        self.is_rms_norm = is_rms_norm

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
        return _norm_repr(self, self.num_groups, self.is_rms_norm)

    def forward(self, x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False):
        return layer_norm_linear(
            x=x,
            norm_weight=self.weight,
            norm_bias=self.bias,
            linear_weight=weight,
            linear_bias=bias,
            residual=residual,
            eps=self.eps,
            prenorm=prenorm,
            residual_in_fp32=residual_in_fp32,
            is_rms_norm=self.is_rms_norm,
            num_groups=self.num_groups
        )


class RMSNormLinear(nn.Module):
    """RMS norm whose output feeds a linear layer given at call time.

    Source: fla/modules/layernorm.py:L1335-L1385 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size,
        elementwise_affine: bool = True,
        bias: bool = False,
        eps: float = 1e-5
    ) -> RMSNormLinear:
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
        return _norm_repr(self)

    def forward(self, x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False):
        return layer_norm_linear(
            x=x,
            norm_weight=self.weight,
            norm_bias=self.bias,
            linear_weight=weight,
            linear_bias=bias,
            residual=residual,
            eps=self.eps,
            prenorm=prenorm,
            residual_in_fp32=residual_in_fp32,
            is_rms_norm=True
        )


class NormParallel(ParallelStyle):
    """Tensor-parallel style for the norm modules: parameters are replicated DTensors, the input is
    sharded along ``sequence_dim`` (redistributed if it is a DTensor sharded otherwise), and the
    output stays a DTensor unless ``use_local_output``. Needs ``torch.distributed.tensor``.

    Source: fla/modules/layernorm.py:L1388-L1437 (fla 0.4.0)
    """

    def __init__(self, *, sequence_dim: int = 1, use_local_output: bool = False):
        if ParallelStyle is object or DTensor is None:
            raise ImportError("NormParallel needs torch.distributed.tensor (DTensor, ParallelStyle), "
                              f"which this torch build ({torch.__version__}) does not provide")
        super().__init__()
        self.sequence_sharding = (Shard(sequence_dim),)
        self.use_local_output = use_local_output

    def _replicate_module_fn(
        self, name: str, module: nn.Module, device_mesh: DeviceMesh
    ):
        for p_name, param in module.named_parameters():
            # the norms initialise their parameters identically on every rank (ones/zeros), so the
            # local tensor is already the replicated value
            replicated_param = torch.nn.Parameter(
                DTensor.from_local(param, device_mesh, [Replicate()], run_check=False)
            )
            module.register_parameter(p_name, replicated_param)

    @staticmethod
    def _prepare_input_fn(sequence_sharding, mod, inputs, device_mesh):
        input_tensor = inputs[0]
        if isinstance(input_tensor, DTensor):
            # a DTensor not sharded on the sequence dim is redistributed
            if input_tensor.placements != sequence_sharding:
                input_tensor = input_tensor.redistribute(
                    placements=sequence_sharding, async_op=True
                )
            return input_tensor
        elif isinstance(input_tensor, torch.Tensor):
            # a plain tensor is taken as this rank's sequence shard
            return DTensor.from_local(
                input_tensor, device_mesh, sequence_sharding, run_check=False
            )
        else:
            raise ValueError(
                f"expecting input of {mod} to be a torch.Tensor or DTensor, but got {input_tensor}"
            )

    @staticmethod
    def _prepare_output_fn(use_local_output, mod, outputs, device_mesh):
        return outputs.to_local() if use_local_output else outputs

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(
            module,
            device_mesh,
            self._replicate_module_fn,
            partial(self._prepare_input_fn, self.sequence_sharding),
            partial(self._prepare_output_fn, self.use_local_output),
        )
