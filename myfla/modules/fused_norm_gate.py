"""Layer/RMS normalisation fused with an output gate: ``y = norm(x [+ residual]) * w + b``, then
``y * g * sigmoid(g)`` (``'swish'``/``'silu'``) or ``y * sigmoid(g)`` (``'sigmoid'``), alone or
followed by a linear layer given at call time (the ``*Linear`` modules, always swish-gated).

KDA's output norm uses the sigmoid gate, GatedDeltaNet's the swish gate. fla's four Triton kernels
(row-blocked for ``D <= 512``, one row per program above) share one per-row formula; here it is one
batched computation per direction, accumulated in fp32 as in the kernels (fp64 for fp64 inputs).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from myfla.modules.layernorm import _autocast_gpu_dtype, _check_feature_dim
from myfla.ops.utils.calls import as_dtype, autograd_records
from myfla.utils import accumulation_dtype, caller_autocast_enabled, input_guard, without_autocast

_GATE_ACTIVATIONS = ('swish', 'silu', 'sigmoid')



def _normalize(b_x: torch.Tensor, eps: float, is_rms_norm: bool):
    """Row statistics of ``b_x`` ``[T, D]`` (in its accumulation dtype): ``(x_hat, mean or None, rstd)``
    (``mean``, ``rstd`` ``[T]``). Few ops: one-token calls (decoding) cost what their ops dispatch."""
    if is_rms_norm:
        mean = None
        b_xbar = b_x
    else:
        mean = b_x.mean(-1, keepdim=True)
        b_xbar = b_x - mean
        mean = mean.squeeze(-1)
    rstd = b_xbar.square().mean(-1, keepdim=True).add_(eps).rsqrt_()
    return b_xbar * rstd, mean, rstd.squeeze(-1)


def layer_norm_gated_fwd(
    x: torch.Tensor,
    g: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    activation: str = 'swish',
    eps: float = 1e-5,
    residual: torch.Tensor = None,
    out_dtype: torch.dtype = None,
    residual_dtype: torch.dtype = None,
    is_rms_norm: bool = False
):
    """Gated norm forward on 2-D ``x``, ``g`` ``[T, D]``.

    Returns ``(y, mean, rstd, residual_out)``: ``mean`` is None for RMS norm; ``residual_out`` is
    ``x + residual`` in ``residual_dtype`` (``x`` itself when there is no residual and no dtype
    change), the tensor the backward normalises again. ``mean``/``rstd`` are fp32, fp64 for fp64 ``x``.

    Source: fla/modules/fused_norm_gate.py:L450-L525 (fla 0.4.0)
    Source: fla/modules/fused_norm_gate.py:L18-L105 (fla 0.4.0)
    Source: fla/modules/fused_norm_gate.py:L108-L189 (fla 0.4.0)
    """
    if residual is not None:
        residual_dtype = residual.dtype
    T, D = x.shape
    if residual is not None:
        assert residual.shape == (T, D)
    if weight is not None:
        assert weight.shape == (D,)
    if bias is not None:
        assert bias.shape == (D,)
    _check_feature_dim(x, D)

    acc = accumulation_dtype(x)
    b_x = as_dtype(x, acc)
    if residual is not None:
        b_x = b_x + residual.to(acc)
    residual_out = None
    if residual is not None or (residual_dtype is not None and residual_dtype != x.dtype):
        residual_out = b_x.to(residual_dtype)

    # b_y is a fresh tensor from here on (x_hat), so the affine and gate steps work in place
    b_y, mean, rstd = _normalize(b_x, eps, is_rms_norm)
    if weight is not None:
        b_y.mul_(as_dtype(weight, acc))
    if bias is not None:
        b_y.add_(as_dtype(bias, acc))
    b_g = as_dtype(g, acc)
    if activation in ('swish', 'silu'):
        b_y.mul_(b_g).mul_(torch.sigmoid(b_g))
    elif activation == 'sigmoid':
        b_y.mul_(torch.sigmoid(b_g))
    y = as_dtype(b_y, x.dtype if out_dtype is None else out_dtype)
    return y, mean, rstd, residual_out if residual_out is not None else x


def layer_norm_gated_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    g: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    activation: str = 'swish',
    eps: float = 1e-5,
    mean: torch.Tensor = None,
    rstd: torch.Tensor = None,
    dresidual: torch.Tensor = None,
    has_residual: bool = False,
    is_rms_norm: bool = False,
    x_dtype: torch.dtype = None,
    recompute_output: bool = False,
):
    """Gated norm backward from the saved ``x`` (the forward's ``residual_out``), ``mean``, ``rstd``.

    Returns ``(dx, dg, dw, db, dresidual_in)`` (plus the recomputed pre-gate ``y`` when
    ``recompute_output``); ``dresidual`` (prenorm) is added to ``dx``.

    Source: fla/modules/fused_norm_gate.py:L528-L625 (fla 0.4.0)
    Source: fla/modules/fused_norm_gate.py:L192-L316 (fla 0.4.0)
    Source: fla/modules/fused_norm_gate.py:L319-L447 (fla 0.4.0)
    """
    T, D = x.shape
    assert dy.shape == (T, D)
    if dresidual is not None:
        assert dresidual.shape == (T, D)
    if weight is not None:
        assert weight.shape == (D,)
    if bias is not None:
        assert bias.shape == (D,)
    _check_feature_dim(x, D)
    dx_dtype = x.dtype if x_dtype is None else x_dtype
    dg_dtype = g.dtype if x_dtype is None else x_dtype

    acc = accumulation_dtype(x)
    b_x = x.to(acc)
    b_xhat = (b_x - mean[:, None]) * rstd[:, None] if not is_rms_norm else b_x * rstd[:, None]
    b_y = b_xhat * weight.to(acc) if weight is not None else b_xhat
    if bias is not None:
        b_y = b_y + bias.to(acc)

    b_g = g.to(acc)
    b_dy = dy.to(acc)
    b_sg = torch.sigmoid(b_g)
    if activation in ('swish', 'silu'):
        b_dg = b_dy * b_y * (b_sg + b_g * b_sg * (1 - b_sg))
        b_dy = b_dy * b_g * b_sg
    elif activation == 'sigmoid':
        b_dg = b_dy * b_y * b_sg * (1 - b_sg)
        b_dy = b_dy * b_sg
    else:
        # an ungated output does not depend on g
        b_dg = torch.zeros_like(b_g)

    b_wdy = b_dy * weight.to(acc) if weight is not None else b_dy
    dw = (b_dy * b_xhat).sum(0).to(weight.dtype) if weight is not None else None
    db = b_dy.sum(0).to(bias.dtype) if bias is not None else None
    b_c1 = (b_xhat * b_wdy).mean(-1, keepdim=True)
    if is_rms_norm:
        b_dx = (b_wdy - b_xhat * b_c1) * rstd[:, None]
    else:
        b_dx = (b_wdy - (b_xhat * b_c1 + b_wdy.mean(-1, keepdim=True))) * rstd[:, None]
    if dresidual is not None:
        b_dx = b_dx + dresidual.to(acc)

    dx = b_dx.to(dx_dtype)
    dg = b_dg.to(dg_dtype)
    dresidual_in = None
    if has_residual:
        # the residual's gradient is dx itself, in the dtype of the saved residual stream
        dresidual_in = dx if dx.dtype == x.dtype else b_dx.to(x.dtype)
    if recompute_output:
        return dx, dg, dw, db, dresidual_in, b_y.to(dy.dtype)
    return dx, dg, dw, db, dresidual_in


class LayerNormGatedFunction(torch.autograd.Function):
    """Autograd wrapper of :func:`layer_norm_gated_fwd` / :func:`layer_norm_gated_bwd` for inputs
    of any leading shape.

    Source: fla/modules/fused_norm_gate.py:L628-L719 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(
        ctx,
        x: torch.Tensor,
        g: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        activation: str,
        residual: Optional[torch.Tensor] = None,
        eps: float = 1e-6,
        prenorm: bool = False,
        residual_in_fp32: bool = False,
        is_rms_norm: bool = False,
    ):
        x_shape_og = x.shape
        g_shape_og = g.shape
        x = x.reshape(-1, x.shape[-1])
        g = g.reshape(-1, g.shape[-1])
        if residual is not None:
            assert residual.shape == x_shape_og
            residual = residual.reshape(-1, residual.shape[-1])
        if residual is not None:
            residual_dtype = residual.dtype
        else:
            residual_dtype = torch.float if residual_in_fp32 else None
        y, mean, rstd, residual_out = layer_norm_gated_fwd(
            x=x,
            g=g,
            weight=weight,
            bias=bias,
            activation=activation,
            eps=eps,
            residual=residual,
            residual_dtype=residual_dtype,
            is_rms_norm=is_rms_norm
        )
        ctx.save_for_backward(residual_out, g, weight, bias, mean, rstd)
        ctx.x_shape_og = x_shape_og
        ctx.g_shape_og = g_shape_og
        ctx.activation = activation
        ctx.eps = eps
        ctx.is_rms_norm = is_rms_norm
        ctx.has_residual = residual is not None
        ctx.prenorm = prenorm
        ctx.x_dtype = x.dtype
        y = y.reshape(x_shape_og)
        return y if not prenorm else (y, residual_out.reshape(x_shape_og))

    @staticmethod
    @input_guard
    def backward(ctx, dy, *args):
        x, g, weight, bias, mean, rstd = ctx.saved_tensors
        dy = dy.reshape(-1, dy.shape[-1])
        assert dy.shape == x.shape
        dresidual = None
        if ctx.prenorm:
            dresidual = args[0].reshape(-1, args[0].shape[-1])
            assert dresidual.shape == x.shape
        dx, dg, dw, db, dres_in = layer_norm_gated_bwd(
            dy=dy,
            x=x,
            g=g,
            weight=weight,
            bias=bias,
            activation=ctx.activation,
            eps=ctx.eps,
            mean=mean,
            rstd=rstd,
            dresidual=dresidual,
            has_residual=ctx.has_residual,
            is_rms_norm=ctx.is_rms_norm,
            x_dtype=ctx.x_dtype,
        )
        return (
            dx.reshape(ctx.x_shape_og),
            dg.reshape(ctx.g_shape_og),
            dw,
            db,
            None,
            dres_in.reshape(ctx.x_shape_og) if ctx.has_residual else None,
            None,
            None,
            None,
            None,
        )


def _gated_output(
    x: torch.Tensor,
    g: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    mean: Optional[torch.Tensor],
    rstd: torch.Tensor,
    activation: str,
    is_rms_norm: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The gated norm output ``(x_hat * w + b) * act(g)`` recomputed from the saved statistics, in the
    accumulation dtype and rounded once to ``dtype``: the input of the linear layer that follows."""
    acc = accumulation_dtype(x)
    b_x = x.to(acc)
    b_xhat = (b_x - mean[:, None]) * rstd[:, None] if not is_rms_norm else b_x * rstd[:, None]
    b_y = b_xhat * weight.to(acc) if weight is not None else b_xhat
    if bias is not None:
        b_y = b_y + bias.to(acc)
    b_g = g.to(acc)
    if activation in ('swish', 'silu'):
        b_y = b_y * b_g * torch.sigmoid(b_g)
    elif activation == 'sigmoid':
        b_y = b_y * torch.sigmoid(b_g)
    return b_y.to(dtype)


class LayerNormGatedLinearFunction(torch.autograd.Function):
    """Swish-gated norm followed by ``F.linear``. The forward keeps only the norm statistics; the
    backward recomputes the gated output for the linear weight gradient.

    fla 0.4.0 recomputes the pre-gate ``norm(x) * w + b`` here (``layer_norm_gated_bwd`` with
    ``recompute_output=True``) and so computes the linear weight gradient against the wrong input
    (off by the factor ``swish(g)``); the port uses the gated output the forward fed to the linear
    layer, as fla 0.6.0 does. Every other gradient is 0.4.0's.

    Source: fla/modules/fused_norm_gate.py:L722-L822 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(
        ctx,
        x: torch.Tensor,
        g: torch.Tensor,
        norm_weight: torch.Tensor,
        norm_bias: torch.Tensor,
        linear_weight: torch.Tensor,
        linear_bias: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
        eps: float = 1e-6,
        prenorm: bool = False,
        residual_in_fp32: bool = False,
        is_rms_norm: bool = False,
    ):
        x_shape_og = x.shape
        g_shape_og = g.shape
        x = x.reshape(-1, x.shape[-1])
        g = g.reshape(-1, g.shape[-1])
        if residual is not None:
            assert residual.shape == x_shape_og
            residual = residual.reshape(-1, residual.shape[-1])
        if residual is not None:
            residual_dtype = residual.dtype
        else:
            residual_dtype = torch.float if residual_in_fp32 else None
        y, mean, rstd, residual_out = layer_norm_gated_fwd(
            x=x,
            g=g,
            weight=norm_weight,
            bias=norm_bias,
            eps=eps,
            residual=residual,
            residual_dtype=residual_dtype,
            is_rms_norm=is_rms_norm
        )
        y = y.reshape(x_shape_og)
        dtype = _autocast_gpu_dtype() if caller_autocast_enabled() else y.dtype
        linear_weight = linear_weight.to(dtype)
        linear_bias = linear_bias.to(dtype) if linear_bias is not None else None
        out = F.linear(y.to(linear_weight.dtype), linear_weight, linear_bias)
        # y is not saved: the backward recomputes it from the statistics
        ctx.save_for_backward(residual_out, g, norm_weight, norm_bias, linear_weight, mean, rstd)
        ctx.x_shape_og = x_shape_og
        ctx.g_shape_og = g_shape_og
        ctx.eps = eps
        ctx.is_rms_norm = is_rms_norm
        ctx.has_residual = residual is not None
        ctx.prenorm = prenorm
        ctx.x_dtype = x.dtype
        ctx.linear_bias_is_none = linear_bias is None
        return out if not prenorm else (out, residual_out.reshape(x_shape_og))

    @staticmethod
    @input_guard
    def backward(ctx, dout, *args):
        x, g, norm_weight, norm_bias, linear_weight, mean, rstd = ctx.saved_tensors
        dout = dout.reshape(-1, dout.shape[-1])
        dy = F.linear(dout, linear_weight.t())
        dlinear_bias = None if ctx.linear_bias_is_none else dout.sum(0)
        assert dy.shape == x.shape
        dresidual = None
        if ctx.prenorm:
            dresidual = args[0].reshape(-1, args[0].shape[-1])
            assert dresidual.shape == x.shape
        dx, dg, dnorm_weight, dnorm_bias, dres_in = layer_norm_gated_bwd(
            dy=dy,
            x=x,
            g=g,
            weight=norm_weight,
            bias=norm_bias,
            eps=ctx.eps,
            mean=mean,
            rstd=rstd,
            dresidual=dresidual,
            has_residual=ctx.has_residual,
            is_rms_norm=ctx.is_rms_norm,
            x_dtype=ctx.x_dtype,
        )
        # the linear layer's input: the gated output (the forward's default activation, swish)
        y = _gated_output(x, g, norm_weight, norm_bias, mean, rstd, 'swish', ctx.is_rms_norm, dy.dtype)
        dlinear_weight = torch.einsum("bo,bi->oi", dout, y)
        return (
            dx.reshape(ctx.x_shape_og),
            dg.reshape(ctx.g_shape_og),
            dnorm_weight,
            dnorm_bias,
            dlinear_weight,
            dlinear_bias,
            dres_in.reshape(ctx.x_shape_og) if ctx.has_residual else None,
            None,
            None,
            None,
            None,
        )


@without_autocast
def _layer_norm_gated_no_grad(x, g, weight, bias, activation, residual, eps, prenorm, residual_in_fp32,
                              is_rms_norm):
    """:class:`LayerNormGatedFunction`'s forward for calls autograd would not record: the same
    computation on the same contiguous rows, without the Function's per-call cost (most of a
    one-token call's, as in decoding).

    Source: fla/modules/fused_norm_gate.py:L628-L679 (fla 0.4.0)
    """
    x_shape_og = x.shape
    x = x.contiguous().view(-1, x.shape[-1])
    g = g.contiguous().view(-1, g.shape[-1])
    if residual is not None:
        assert residual.shape == x_shape_og
        residual = residual.contiguous().view(-1, residual.shape[-1])
        residual_dtype = residual.dtype
    else:
        residual_dtype = torch.float if residual_in_fp32 else None
    y, _, _, residual_out = layer_norm_gated_fwd(
        x=x,
        g=g,
        weight=weight,
        bias=bias,
        activation=activation,
        eps=eps,
        residual=residual,
        residual_dtype=residual_dtype,
        is_rms_norm=is_rms_norm
    )
    y = y.view(x_shape_og)
    return y if not prenorm else (y, residual_out.view(x_shape_og))


def layer_norm_gated(
    x: torch.Tensor,
    g: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    activation: str = 'swish',
    residual: Optional[torch.Tensor] = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    eps: float = 1e-6
):
    """Gated layer norm over the last dimension (``prenorm`` also returns the residual stream).

    Source: fla/modules/fused_norm_gate.py:L825-L847 (fla 0.4.0)
    """
    if not autograd_records(x, g, weight, bias, residual):
        return _layer_norm_gated_no_grad(x, g, weight, bias, activation, residual, eps, prenorm,
                                         residual_in_fp32, False)
    return LayerNormGatedFunction.apply(
        x,
        g,
        weight,
        bias,
        activation,
        residual,
        eps,
        prenorm,
        residual_in_fp32,
        False
    )


def rms_norm_gated(
    x: torch.Tensor,
    g: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    activation: str = 'swish',
    residual: Optional[torch.Tensor] = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    eps: float = 1e-6
):
    """Gated RMS norm over the last dimension (``prenorm`` also returns the residual stream).

    Source: fla/modules/fused_norm_gate.py:L850-L872 (fla 0.4.0)
    """
    if not autograd_records(x, g, weight, bias, residual):
        return _layer_norm_gated_no_grad(x, g, weight, bias, activation, residual, eps, prenorm,
                                         residual_in_fp32, True)
    return LayerNormGatedFunction.apply(
        x,
        g,
        weight,
        bias,
        activation,
        residual,
        eps,
        prenorm,
        residual_in_fp32,
        True
    )


def layer_norm_swish_gate_linear(
    x: torch.Tensor,
    g: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    eps: float = 1e-6
):
    """Swish-gated layer norm followed by a linear layer.

    Source: fla/modules/fused_norm_gate.py:L875-L899 (fla 0.4.0)
    """
    return LayerNormGatedLinearFunction.apply(
        x,
        g,
        norm_weight,
        norm_bias,
        linear_weight,
        linear_bias,
        residual,
        eps,
        prenorm,
        residual_in_fp32,
        False
    )


def rms_norm_swish_gate_linear(
    x,
    g: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    eps: float = 1e-6
):
    """Swish-gated RMS norm followed by a linear layer.

    Source: fla/modules/fused_norm_gate.py:L902-L926 (fla 0.4.0)
    """
    return LayerNormGatedLinearFunction.apply(
        x,
        g,
        norm_weight,
        norm_bias,
        linear_weight,
        linear_bias,
        residual,
        eps,
        prenorm,
        residual_in_fp32,
        True
    )


class FusedLayerNormGated(nn.Module):
    """Layer norm with a learnable scale (and bias) and a swish/silu/sigmoid output gate.

    Source: fla/modules/fused_norm_gate.py:L929-L994 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int,
        elementwise_affine: bool = True,
        bias: bool = False,
        activation: str = 'swish',
        eps: float = 1e-5,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> FusedLayerNormGated:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()

        self.hidden_size = hidden_size
        self.elementwise_affine = elementwise_affine
        self.eps = eps
        self.activation = activation

        if self.activation not in _GATE_ACTIVATIONS:
            raise ValueError(f"Unsupported activation: {self.activation}")

        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(hidden_size, **factory_kwargs))
            if bias:
                self.bias = nn.Parameter(torch.empty(hidden_size, **factory_kwargs))

        self.reset_parameters()

    def reset_parameters(self):
        if self.elementwise_affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def __repr__(self) -> str:
        extra = "" if self.elementwise_affine else f", elementwise_affine={self.elementwise_affine}"
        return f"{self.__class__.__name__}({self.hidden_size}{extra}, eps={self.eps}, activation={self.activation})"

    def forward(
        self,
        x: torch.Tensor,
        g: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
        prenorm: bool = False,
        residual_in_fp32: bool = False
    ) -> torch.Tensor:
        return layer_norm_gated(
            x,
            g,
            self.weight,
            self.bias,
            self.activation,
            residual=residual,
            eps=self.eps,
            prenorm=prenorm,
            residual_in_fp32=residual_in_fp32
        )


class FusedRMSNormGated(nn.Module):
    """RMS norm with a learnable scale and a swish/silu/sigmoid output gate.

    Source: fla/modules/fused_norm_gate.py:L997-L1058 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int,
        elementwise_affine: bool = True,
        eps: float = 1e-5,
        activation: str = 'swish',
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> FusedRMSNormGated:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()

        self.hidden_size = hidden_size
        self.elementwise_affine = elementwise_affine
        self.eps = eps
        self.activation = activation

        if self.activation not in _GATE_ACTIVATIONS:
            raise ValueError(f"Unsupported activation: {self.activation}")

        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(hidden_size, **factory_kwargs))
        else:
            self.register_parameter("weight", None)
        self.register_parameter("bias", None)

        self.reset_parameters()

    def reset_parameters(self):
        if self.elementwise_affine:
            nn.init.ones_(self.weight)

    def __repr__(self) -> str:
        extra = "" if self.elementwise_affine else f", elementwise_affine={self.elementwise_affine}"
        return f"{self.__class__.__name__}({self.hidden_size}{extra}, eps={self.eps}, activation={self.activation})"

    def forward(
        self,
        x: torch.Tensor,
        g: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
        prenorm: bool = False,
        residual_in_fp32: bool = False
    ) -> torch.Tensor:
        return rms_norm_gated(
            x,
            g,
            self.weight,
            self.bias,
            self.activation,
            residual=residual,
            eps=self.eps,
            prenorm=prenorm,
            residual_in_fp32=residual_in_fp32
        )


class FusedLayerNormSwishGate(FusedLayerNormGated):
    """:class:`FusedLayerNormGated` with the swish gate.

    Source: fla/modules/fused_norm_gate.py:L1061-L1079 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int,
        elementwise_affine: bool = True,
        bias: bool = False,
        eps: float = 1e-5,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> FusedLayerNormSwishGate:
        super().__init__(
            hidden_size=hidden_size,
            elementwise_affine=elementwise_affine,
            bias=bias,
            eps=eps,
            device=device,
            dtype=dtype
        )


class FusedRMSNormSwishGate(FusedRMSNormGated):
    """:class:`FusedRMSNormGated` with the swish gate.

    Source: fla/modules/fused_norm_gate.py:L1082-L1098 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int,
        elementwise_affine: bool = True,
        eps: float = 1e-5,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> FusedRMSNormSwishGate:
        super().__init__(
            hidden_size=hidden_size,
            elementwise_affine=elementwise_affine,
            eps=eps,
            device=device,
            dtype=dtype
        )


class FusedLayerNormGatedLinear(nn.Module):
    """Swish-gated layer norm (learnable scale, no bias) whose output feeds a linear layer given at
    call time (``forward(x, g, weight, bias)``).

    Source: fla/modules/fused_norm_gate.py:L1101-L1159 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int,
        elementwise_affine: bool = True,
        eps: float = 1e-5,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> FusedLayerNormGatedLinear:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()

        self.hidden_size = hidden_size
        self.elementwise_affine = elementwise_affine
        self.eps = eps

        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(hidden_size, **factory_kwargs))
        else:
            self.register_parameter("weight", None)
        self.register_parameter("bias", None)

        self.reset_parameters()

    def reset_parameters(self):
        if self.elementwise_affine:
            nn.init.ones_(self.weight)

    def __repr__(self) -> str:
        extra = "" if self.elementwise_affine else f", elementwise_affine={self.elementwise_affine}"
        return f"{self.__class__.__name__}({self.hidden_size}{extra}, eps={self.eps})"

    def forward(
        self,
        x: torch.Tensor,
        g: torch.Tensor,
        weight: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
        residual: Optional[torch.Tensor] = None,
        prenorm: bool = False,
        residual_in_fp32: bool = False
    ) -> torch.Tensor:
        return layer_norm_swish_gate_linear(
            x,
            g,
            self.weight,
            self.bias,
            weight,
            bias,
            residual=residual,
            eps=self.eps,
            prenorm=prenorm,
            residual_in_fp32=residual_in_fp32
        )


class FusedLayerNormSwishGateLinear(FusedLayerNormGatedLinear):
    """Alias class of :class:`FusedLayerNormGatedLinear` (the gate is always swish).

    Source: fla/modules/fused_norm_gate.py:L1162-L1178 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int,
        elementwise_affine: bool = True,
        eps: float = 1e-5,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> FusedLayerNormSwishGateLinear:
        super().__init__(
            hidden_size=hidden_size,
            elementwise_affine=elementwise_affine,
            eps=eps,
            device=device,
            dtype=dtype
        )


class FusedRMSNormGatedLinear(nn.Module):
    """Swish-gated RMS norm whose output feeds a linear layer given at call time.

    Source: fla/modules/fused_norm_gate.py:L1181-L1238 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size,
        elementwise_affine: bool = True,
        eps: float = 1e-5,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> FusedRMSNormGatedLinear:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()

        self.hidden_size = hidden_size
        self.elementwise_affine = elementwise_affine
        self.eps = eps

        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(hidden_size, **factory_kwargs))

        self.reset_parameters()

    def reset_parameters(self):
        if self.elementwise_affine:
            nn.init.ones_(self.weight)

    def __repr__(self) -> str:
        extra = "" if self.elementwise_affine else f", elementwise_affine={self.elementwise_affine}"
        return f"{self.__class__.__name__}({self.hidden_size}{extra}, eps={self.eps})"

    def forward(
        self,
        x: torch.Tensor,
        g: torch.Tensor,
        weight: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
        residual: Optional[torch.Tensor] = None,
        prenorm: bool = False,
        residual_in_fp32: bool = False
    ) -> torch.Tensor:
        return rms_norm_swish_gate_linear(
            x,
            g,
            self.weight,
            self.bias,
            weight,
            bias,
            residual=residual,
            eps=self.eps,
            prenorm=prenorm,
            residual_in_fp32=residual_in_fp32
        )


class FusedRMSNormSwishGateLinear(FusedRMSNormGatedLinear):
    """Alias class of :class:`FusedRMSNormGatedLinear` (the gate is always swish).

    Source: fla/modules/fused_norm_gate.py:L1241-L1257 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int,
        elementwise_affine: bool = True,
        eps: float = 1e-5,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> FusedRMSNormSwishGateLinear:
        super().__init__(
            hidden_size=hidden_size,
            elementwise_affine=elementwise_affine,
            eps=eps,
            device=device,
            dtype=dtype
        )
