"""Activation functions with hand-written backward passes: sigmoid, logsigmoid (with temperature),
swish/SiLU, the tanh approximation of GeLU (with and without a bias), squared ReLU, SwiGLU and
SwiGLU followed by a linear layer, and fla's ``ACT2FN`` table.

fla evaluates these with elementwise Triton kernels (sigmoid, logsigmoid, swish, swiglu) or
``torch.compile``d functions (gelu, sqrelu), both computing in fp32 and rounding once on store; here
each is the same formula as tensor code in the accumulation dtype (fp32, fp64 for fp64 inputs),
rounded once to the output dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from myfla.utils import accumulation_dtype, autocast_custom_bwd, autocast_custom_fwd, input_guard, is_amd

try:
    from torch.distributed.tensor import DTensor
except (ImportError, AttributeError):
    # Source: fla/modules/activations.py:L15-L15 (fla 0.4.0)
    DTensor = None

# Triton autotuning space of the elementwise kernels (fla keeps it as a module constant).
# Source: fla/modules/activations.py:L17-L17 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [1, 2, 4, 8, 16] if is_amd else [1, 2, 4, 8, 16, 32]


def _sigmoid(b_x: torch.Tensor) -> torch.Tensor:
    """The kernels' ``1 / (1 + exp(-x))`` (in the accumulation dtype of ``b_x``)."""
    return 1.0 / (1.0 + torch.exp(-b_x))


def sigmoid_fwd(x: torch.Tensor) -> torch.Tensor:
    """``sigmoid(x)`` in fp32, stored in ``x``'s dtype.

    Source: fla/modules/activations.py:L70-L74 (fla 0.4.0)
    Source: fla/modules/activations.py:L20-L41 (fla 0.4.0)
    """
    b_x = x.to(accumulation_dtype(x))
    return _sigmoid(b_x).to(x.dtype)


def sigmoid_bwd(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """``dy * s * (1 - s)`` with ``s = sigmoid(x)``, in ``x``'s dtype.

    Source: fla/modules/activations.py:L77-L81 (fla 0.4.0)
    Source: fla/modules/activations.py:L44-L67 (fla 0.4.0)
    """
    acc = accumulation_dtype(x, dy)
    s = _sigmoid(x.to(acc))
    return (dy.to(acc) * s * (1.0 - s)).to(x.dtype)


class SigmoidFunction(torch.autograd.Function):
    """Sigmoid with the backward :func:`sigmoid_bwd`.

    Source: fla/modules/activations.py:L84-L94 (fla 0.4.0)
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sigmoid_fwd(x)

    @staticmethod
    def backward(ctx, dout):
        x, = ctx.saved_tensors
        return sigmoid_bwd(x, dout)


# Source: fla/modules/activations.py:L97-L97 (fla 0.4.0)
sigmoid = SigmoidFunction.apply


def logsigmoid_fwd(x: torch.Tensor, temperature: float = 1.) -> torch.Tensor:
    """``logsigmoid(x) / temperature`` as ``(min(0, x) - log(1 + exp(-|x|))) / temperature``.

    Source: fla/modules/activations.py:L158-L168 (fla 0.4.0)
    Source: fla/modules/activations.py:L100-L126 (fla 0.4.0)
    """
    b_x = x.to(accumulation_dtype(x))
    b_m = torch.clamp(b_x, max=0.)
    b_z = 1. + torch.exp(-b_x.abs())
    return ((b_m - torch.log(b_z)) / temperature).to(x.dtype)


def logsigmoid_bwd(x: torch.Tensor, dy: torch.Tensor, temperature: float = 1.) -> torch.Tensor:
    """``dy * (1 - sigmoid(x)) / temperature``, in ``x``'s dtype.

    Source: fla/modules/activations.py:L171-L182 (fla 0.4.0)
    Source: fla/modules/activations.py:L129-L155 (fla 0.4.0)
    """
    acc = accumulation_dtype(x, dy)
    b_x = x.to(acc)
    return (dy.to(acc) * ((1. - torch.sigmoid(b_x)) / temperature)).to(x.dtype)


class LogSigmoidFunction(torch.autograd.Function):
    """Log-sigmoid with a temperature, backward :func:`logsigmoid_bwd`.

    Source: fla/modules/activations.py:L185-L198 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(ctx, x, temperature):
        ctx.save_for_backward(x,)
        ctx.temperature = temperature
        return logsigmoid_fwd(x, temperature)

    @staticmethod
    @input_guard
    def backward(ctx, dy):
        x, = ctx.saved_tensors
        return logsigmoid_bwd(x, dy, ctx.temperature), None


def logsigmoid(x: torch.Tensor, temperature: float = 1.) -> torch.Tensor:
    """Source: fla/modules/activations.py:L201-L202 (fla 0.4.0)"""
    return LogSigmoidFunction.apply(x, temperature)


def swish_fwd(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(x)`` (SiLU) in fp32, stored in ``x``'s dtype.

    Source: fla/modules/activations.py:L256-L260 (fla 0.4.0)
    Source: fla/modules/activations.py:L205-L227 (fla 0.4.0)
    """
    b_x = x.to(accumulation_dtype(x))
    return (b_x * _sigmoid(b_x)).to(x.dtype)


def swish_bwd(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """``dy * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``, in ``x``'s dtype.

    Source: fla/modules/activations.py:L263-L267 (fla 0.4.0)
    Source: fla/modules/activations.py:L230-L253 (fla 0.4.0)
    """
    acc = accumulation_dtype(x, dy)
    b_x = x.to(acc)
    s = _sigmoid(b_x)
    return (dy.to(acc) * s * (1.0 + b_x * (1.0 - s))).to(x.dtype)


class SwishFunction(torch.autograd.Function):
    """Swish / SiLU with the backward :func:`swish_bwd`.

    Source: fla/modules/activations.py:L270-L280 (fla 0.4.0)
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return swish_fwd(x)

    @staticmethod
    def backward(ctx, dout):
        x, = ctx.saved_tensors
        return swish_bwd(x, dout)


# Source: fla/modules/activations.py:L283-L283 (fla 0.4.0)
swish = SwishFunction.apply


# Constants of the tanh approximation of GeLU:
#   sqrt(2/pi) = 0.79788456, and sqrt(2/pi) * 3 * 0.044715 = 0.1070322243 in its derivative.
# (The exact GeLU is x * 0.5 * (1 + erf(x / sqrt(2))).)

def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))


def _gelu_tanh_grad(x: torch.Tensor) -> torch.Tensor:
    tanh_out = torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x))
    return 0.5 * x * ((1 - tanh_out * tanh_out) * (0.79788456 + 0.1070322243 * x * x)) + 0.5 * (1 + tanh_out)


def bias_gelu(y, bias):
    """Tanh-approximated GeLU of ``y + bias``, in ``y``'s dtype (fla compiles it with torch.compile,
    which computes low-precision inputs in fp32).

    Source: fla/modules/activations.py:L293-L296 (fla 0.4.0)
    """
    acc = accumulation_dtype(y, bias)
    x = bias.to(acc) + y.to(acc)
    return _gelu_tanh(x).to(dtype=y.dtype)


def bias_gelu_bwd(g, y, bias):
    """Gradients of :func:`bias_gelu`: ``(grad_y, grad_bias)``, ``grad_bias`` summed over dim 0
    (``y`` is ``(B, D)`` and ``bias`` ``(D,)``).

    Source: fla/modules/activations.py:L302-L312 (fla 0.4.0)
    """
    acc = accumulation_dtype(g, y, bias)
    x = bias.to(acc) + y.to(acc)
    grad_y = _gelu_tanh_grad(x) * g.to(acc)
    return grad_y.to(dtype=y.dtype), grad_y.sum(dim=(0), dtype=acc).to(bias.dtype)


class GeLUFunction(torch.autograd.Function):
    """GeLU (tanh approximation) of ``input + bias``.

    fla 0.4.0's backward returns ``(tmp, tmp)`` with ``tmp`` the pair of gradients, which autograd
    rejects; the port returns the pair itself, as fla 0.5.1 does.

    Source: fla/modules/activations.py:L315-L327 (fla 0.4.0)
    """

    @staticmethod
    # bias is an optional argument
    def forward(ctx, input, bias):
        ctx.save_for_backward(input, bias)
        return bias_gelu(input, bias)

    @staticmethod
    def backward(ctx, grad_output):
        input, bias = ctx.saved_tensors
        return bias_gelu_bwd(grad_output, input, bias)


# Source: fla/modules/activations.py:L330-L330 (fla 0.4.0)
bias_gelu_impl = GeLUFunction.apply


def gelu_fwd(x):
    """Tanh-approximated GeLU in ``x``'s dtype (computed in fp32 as fla's compiled function).

    Source: fla/modules/activations.py:L336-L338 (fla 0.4.0)
    """
    return _gelu_tanh(x.to(accumulation_dtype(x))).to(dtype=x.dtype)


def gelu_bwd(g, x):
    """Gradient of :func:`gelu_fwd`, in ``x``'s dtype.

    Source: fla/modules/activations.py:L344-L351 (fla 0.4.0)
    """
    acc = accumulation_dtype(g, x)
    return (_gelu_tanh_grad(x.to(acc)) * g.to(acc)).to(dtype=x.dtype)


class FastGeLUFunction(torch.autograd.Function):
    """Tanh-approximated GeLU with the backward :func:`gelu_bwd`.

    Source: fla/modules/activations.py:L354-L365 (fla 0.4.0)
    """

    @staticmethod
    # bias is an optional argument
    def forward(ctx, input):
        ctx.save_for_backward(input)
        return gelu_fwd(input)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        tmp = gelu_bwd(grad_output, input)
        return tmp


# Source: fla/modules/activations.py:L368-L368 (fla 0.4.0)
fast_gelu_impl = FastGeLUFunction.apply


def relu_bwd(g, x):
    """ReLU's gradient: ``g`` where ``x >= 0``, else 0 (fla counts ``x == 0`` as active).

    Source: fla/modules/activations.py:L371-L373 (fla 0.4.0)
    """
    return torch.where(x >= 0, g, 0.0).to(dtype=x.dtype)


def sqrelu_fwd(x):
    """``relu(x)^2`` computed in fp32, stored in ``x``'s dtype.

    Source: fla/modules/activations.py:L376-L379 (fla 0.4.0)
    """
    r = F.relu(x.to(accumulation_dtype(x)))
    return (r * r).to(dtype=x.dtype)


def sqrelu_bwd(g, x):
    """``2 g relu(x)``, in ``x``'s dtype.

    Source: fla/modules/activations.py:L382-L384 (fla 0.4.0)
    """
    acc = accumulation_dtype(g, x)
    return (2.0 * g.to(acc) * F.relu(x.to(acc))).to(dtype=x.dtype)


class SquaredReLUFunction(torch.autograd.Function):
    """Squared ReLU with the backward :func:`sqrelu_bwd`.

    Source: fla/modules/activations.py:L387-L397 (fla 0.4.0)
    """

    @staticmethod
    def forward(ctx, input):
        ctx.save_for_backward(input)
        return sqrelu_fwd(input)

    @staticmethod
    def backward(ctx, grad_output):
        input, = ctx.saved_tensors
        return sqrelu_bwd(grad_output, input)


# Source: fla/modules/activations.py:L400-L400 (fla 0.4.0)
sqrelu = SquaredReLUFunction.apply


def swiglu_fwd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``swish(x) * y`` in fp32, stored in ``x``'s dtype.

    Source: fla/modules/activations.py:L468-L472 (fla 0.4.0)
    Source: fla/modules/activations.py:L403-L426 (fla 0.4.0)
    """
    acc = accumulation_dtype(x, y)
    b_x = x.to(acc)
    return (b_x * _sigmoid(b_x) * y.to(acc)).to(x.dtype)


def swiglu_fwdbwd(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, use_weight: bool = False):
    """SwiGLU's gradients from the output gradient ``g``: ``(dx, dy)``, both in ``x``'s dtype, plus
    the recomputed output ``z = swish(x) * y`` when ``use_weight`` (for a following linear layer).

    Source: fla/modules/activations.py:L475-L487 (fla 0.4.0)
    Source: fla/modules/activations.py:L429-L465 (fla 0.4.0)
    """
    acc = accumulation_dtype(x, y, g)
    b_x, b_y, b_g = x.to(acc), y.to(acc), g.to(acc)
    s = _sigmoid(b_x)
    x_s = b_x * s
    dx = (b_g * s * (1.0 + b_x * (1.0 - s)) * b_y).to(x.dtype)
    dy = (b_g * x_s).to(x.dtype)
    if use_weight:
        return dx, dy, (x_s * b_y).to(x.dtype)
    return dx, dy


class SwiGLUFunction(torch.autograd.Function):
    r"""
    Swish-Gated Linear Unit (SwiGLU) function.

    .. math::
        \text{SwiGLU}(x, y) = swish(x) * y = \frac{x}{1 + \exp(-x)} * y

    Source: fla/modules/activations.py:L490-L506 (fla 0.4.0)
    """

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return swiglu_fwd(x, y)

    @staticmethod
    def backward(ctx, dout):
        x, y = ctx.saved_tensors
        return swiglu_fwdbwd(x, y, dout)


class SwiGLULinearFunction(torch.autograd.Function):
    r"""
    Swish-Gated Linear Unit (SwiGLU) function followed by a linear transformation.

    .. math::
        \text{SwiGLULinear}(x, y, W, b) = (swish(x) * y) W + b

    The SwiGLU output is not kept: the backward recomputes it with :func:`swiglu_fwdbwd`.

    Source: fla/modules/activations.py:L509-L538 (fla 0.4.0)
    """

    @staticmethod
    @autocast_custom_fwd
    def forward(ctx, x, y, weight, bias):
        z = swiglu_fwd(x, y)
        out = F.linear(z, weight, bias)
        # z is recomputed in the backward pass to save memory
        ctx.save_for_backward(x, y, weight)
        ctx.linear_bias_is_none = bias is None
        return out

    @staticmethod
    @autocast_custom_bwd
    def backward(ctx, dout, *args):
        x, y, weight = ctx.saved_tensors
        dout = dout.reshape(-1, dout.shape[-1])
        dz = F.linear(dout, weight.t()).view_as(x)
        dx, dy, z = swiglu_fwdbwd(x, y, dz, use_weight=True)
        dlinear_weight = torch.einsum("bo,bi->oi", dout, z.reshape(-1, z.shape[-1]))
        dlinear_bias = None if ctx.linear_bias_is_none else dout.sum(0)
        return dx, dy, dlinear_weight, dlinear_bias


# Source: fla/modules/activations.py:L541-L541 (fla 0.4.0)
swiglu = SwiGLUFunction.apply


# Source: fla/modules/activations.py:L544-L544 (fla 0.4.0)
swiglu_linear = SwiGLULinearFunction.apply


# Source: fla/modules/activations.py:L547-L556 (fla 0.4.0)
ACT2FN = {
    'relu': F.relu,
    'sigmoid': sigmoid,
    'logsigmoid': logsigmoid,
    'silu': swish,
    'swish': swish,
    'sqrelu': sqrelu,
    'gelu': fast_gelu_impl,
    'bias_gelu': bias_gelu_impl,
}
