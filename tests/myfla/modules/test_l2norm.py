"""l2norm against x / sqrt(sum x^2 + eps) in fp64 (fla's formula, not F.normalize)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myfla.modules import L2Norm
from myfla.modules.l2norm import l2_norm, l2norm, l2norm_bwd, l2norm_fwd
from tests.numerics import assert_rms


def _ref(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / torch.sqrt(x.square().sum(-1, keepdim=True) + eps)


@pytest.mark.parametrize("shape", [(2, 7, 3, 60), (1, 5, 64), (3, 1, 4, 128), (4, 513), (2, 3, 1)])
def test_l2norm_forward_backward_fp32(shape):
    x = torch.randn(shape)
    dy = torch.randn(shape)
    x64 = x.double().requires_grad_()
    y_ref = _ref(x64)
    (dx_ref,) = torch.autograd.grad(y_ref, x64, dy.double())

    xt = x.clone().requires_grad_()
    y = l2norm(xt)
    y.backward(dy)
    assert y.dtype == torch.float32 and xt.grad.dtype == torch.float32
    assert_rms("y", y_ref, y, 1e-6, atol=0)
    # D=1 has a gradient of order eps, so an absolute floor of 1e-6 applies there
    assert_rms("dx", dx_ref, xt.grad, 1e-5)


def test_l2norm_fwd_bwd_functions():
    x = torch.randn(3, 9, 4, 32)
    y, rstd = l2norm_fwd(x)
    assert y.shape == x.shape and rstd.shape == x.shape[:-1] and rstd.dtype == torch.float32
    x64 = x.double()
    torch.testing.assert_close(rstd.double(), 1 / torch.sqrt(x64.square().sum(-1) + 1e-6), rtol=1e-6, atol=0)
    dy = torch.randn_like(x)
    dx = l2norm_bwd(y, rstd, dy)
    x64.requires_grad_()
    (dx_ref,) = torch.autograd.grad(_ref(x64), x64, dy.double())
    assert_rms("dx", dx_ref, dx, 1e-5, atol=0)


def test_eps_is_inside_sqrt_not_a_clamp():
    # small-norm rows: fla's formula gives y = x / sqrt(|x|^2 + 1e-6), F.normalize would give unit rows
    x = torch.full((2, 8), 1e-4, dtype=torch.float64)
    y, _ = l2norm_fwd(x)
    torch.testing.assert_close(y, _ref(x))
    assert (y.norm(dim=-1) < 0.5).all()
    # and on ordinary rows it agrees with F.normalize
    z = torch.randn(4, 16, 64)
    torch.testing.assert_close(l2_norm(z), F.normalize(z, dim=-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_l2norm_low_precision(dtype):
    x = torch.randn(2, 16, 2, 64).to(dtype)
    dy = torch.randn_like(x)
    xt = x.clone().requires_grad_()
    y = l2norm(xt)
    y.backward(dy)
    assert y.dtype == dtype and xt.grad.dtype == dtype
    x64 = x.double().requires_grad_()
    y_ref = _ref(x64)
    (dx_ref,) = torch.autograd.grad(y_ref, x64, dy.double())
    # one rounding of the output to 8/11 mantissa bits
    tol = 5e-3 if dtype == torch.bfloat16 else 1e-3
    assert_rms("y", y_ref, y, tol, atol=0)
    assert_rms("dx", dx_ref, xt.grad, 2 * tol, atol=0)


def test_output_dtype_and_module():
    x = torch.randn(3, 5, 32, dtype=torch.bfloat16)
    y, rstd = l2norm_fwd(x, output_dtype=torch.float32)
    assert y.dtype == torch.float32 and rstd.dtype == torch.float32
    assert_rms("y", _ref(x.double()), y, 1e-6, atol=0)
    m = L2Norm(eps=1e-3, output_dtype=torch.float32)
    torch.testing.assert_close(m(x), _ref(x.float(), 1e-3))


def test_feature_dim_limit_message():
    x = torch.randn(1, 65537, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="This layer doesn't support feature dim >= 64KB."):
        l2norm_fwd(x)
