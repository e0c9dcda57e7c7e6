"""Matrix multiply with a fused activation and ``addmm`` with scaling, as ``fla.ops.utils.matmul``.

fla's Triton kernel accumulates ``a @ b`` in fp32 (no TF32 for fp32 inputs), applies the optional
activation and ``alpha`` while still in fp32, adds ``beta * input``, and stores in ``a``'s dtype. Here
the same steps are batched torch code in the accumulation dtype (fp32, fp64 for fp64 inputs).
"""

from __future__ import annotations

from typing import Optional

import torch

from myfla.ops.utils.op import exp
from myfla.utils import accumulation_dtype, input_guard


def leaky_relu(x):
    """``x`` where ``x >= 0``, else ``0.01 x``.

    Source: fla/ops/utils/matmul.py:L153-L156 (fla 0.4.0)
    """
    return torch.where(x >= 0, x, 0.01 * x)


def sigmoid(x):
    """``1 / (1 + exp(-x))``.

    Source: fla/ops/utils/matmul.py:L159-L162 (fla 0.4.0)
    """
    return 1.0 / (1.0 + exp(-x))


def tanh(x):
    """``(exp(x) - exp(-x)) / (exp(x) + exp(-x))``, fla's formula (it overflows to NaN for
    ``|x| > 88`` in fp32, as fla's kernel does).

    Source: fla/ops/utils/matmul.py:L165-L169 (fla 0.4.0)
    """
    return (exp(x) - exp(-x)) / (exp(x) + exp(-x))


def relu(x):
    """``max(x, 0)``.

    Source: fla/ops/utils/matmul.py:L172-L175 (fla 0.4.0)
    """
    return torch.clamp(x, min=0.0)


_ACTIVATIONS = {"leaky_relu": leaky_relu, "relu": relu, "sigmoid": sigmoid, "tanh": tanh}


def _scalar(v):
    """fla loads ``alpha``/``beta`` through a pointer (``tl.load``): a tensor's first element; the
    port also takes a Python number."""
    return v.reshape(-1)[0] if isinstance(v, torch.Tensor) else v


def _matmul_kernel(a, b, x, alpha, beta, activation):
    """The kernel's math: ``act(a @ b) * alpha + beta * x`` in the accumulation dtype, stored in
    ``a``'s dtype. ``a`` is ``[B, M, K]``, ``b`` ``[K, N]``; ``x`` is added per output row when it is
    2-D (``[M, N]``), otherwise its first ``N`` elements are added to every row (the kernel indexes it
    with the output's column stride only).

    Source: fla/ops/utils/matmul.py:L22-L150 (fla 0.4.0)
    """
    acc = accumulation_dtype(a, b)
    c = torch.matmul(a.to(acc), b.to(acc))
    if activation in _ACTIVATIONS:
        c = _ACTIVATIONS[activation](c)
    if alpha is not None:
        c = c * _scalar(alpha)
    if x is not None:
        M, N = c.shape[-2:]
        b_i = x.reshape(M, N) if x.dim() == 2 else x.reshape(-1)[:N]
        b_i = b_i.to(acc)
        if beta is not None:
            b_i = b_i * _scalar(beta)
        c = c + b_i
    return c.to(a.dtype)


@input_guard
def matmul(a, b, activation=''):
    """``act(a @ b)`` for ``a`` ``[M, K]`` or ``[B, M, K]`` and ``b`` ``[K, N]``; ``activation`` is
    '' (none), 'leaky_relu', 'relu', 'sigmoid' or 'tanh'.

    Source: fla/ops/utils/matmul.py:L178-L207 (fla 0.4.0)
    """
    assert a.dim() in [2, 3], "a must be 2D or 3D"
    assert b.dim() == 2, "b must be 2D"
    assert a.shape[-1] == b.shape[0], f"Incompatible dimensions: A {a.shape}, B {b.shape}"

    if a.dim() == 2:
        a_dim = 2
        a = a.unsqueeze(0).contiguous()  # (1, M, K)
    else:
        a_dim = 3

    B, M, K = a.shape[0], a.shape[1], a.shape[2]
    K_b, N = b.shape
    assert K == K_b, f"Incompatible K dimension: A {K} vs B {K_b}"
    c = _matmul_kernel(a, b, None, None, None, activation)
    return c.squeeze(0) if a_dim == 2 else c


@input_guard
def addmm(
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    alpha: Optional[float] = None,
    beta: Optional[float] = None,
) -> torch.Tensor:
    """``alpha * (a @ b) + beta * x`` (``alpha``/``beta`` default to 1) in ``a``'s dtype; ``x`` is
    ``[N]`` (a bias broadcast over rows) or ``[M, N]``.

    Source: fla/ops/utils/matmul.py:L210-L246 (fla 0.4.0)
    """
    assert a.dim() in [2, 3], "a must be 2D or 3D"
    assert b.dim() == 2, "b must be 2D"
    assert a.shape[-1] == b.shape[0], f"Incompatible dimensions: A {a.shape}, B {b.shape}"

    if a.dim() == 2:
        a_dim = 2
        a = a.unsqueeze(0).contiguous()  # (1, M, K)
    else:
        a_dim = 3

    B, M, K = a.shape[0], a.shape[1], a.shape[2]
    K_b, N = b.shape
    assert K == K_b, f"Incompatible K dimension: A {K} vs B {K_b}"
    c = _matmul_kernel(a, b, x, alpha, beta, None)
    return c.squeeze(0) if a_dim == 2 else c
