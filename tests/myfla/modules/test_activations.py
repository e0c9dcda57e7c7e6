"""``myfla.modules.activations`` (fla 0.4.0 ``fla/modules/activations.py``).

Oracles: torch's own activations in fp64 (``torch.sigmoid``, ``F.logsigmoid``, ``F.silu``,
``F.gelu(approximate='tanh')``, ``relu(x)**2``, ``F.linear``) for outputs and, through fp64 autograd,
gradients; fp64 ``gradcheck`` of every autograd Function; fla's ``ACT2FN`` keys read from the
fetched 0.4.0 source.
"""

from __future__ import annotations

import ast

import pytest
import torch
import torch.nn.functional as F

from myfla.modules import activations as act
from tests.numerics import assert_rms

F64 = torch.float64
GC = dict(eps=1e-6, atol=1e-7, rtol=1e-5)


def _ref_grad(fn, inputs, g):
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, g.double())


UNARY = [
    ("sigmoid", lambda x: act.sigmoid(x), torch.sigmoid),
    ("logsigmoid", lambda x: act.logsigmoid(x), F.logsigmoid),
    ("logsigmoid_t", lambda x: act.logsigmoid(x, 0.5), lambda x: F.logsigmoid(x) / 0.5),
    ("swish", lambda x: act.swish(x), F.silu),
    ("gelu", lambda x: act.fast_gelu_impl(x), lambda x: F.gelu(x, approximate='tanh')),
    ("sqrelu", lambda x: act.sqrelu(x), lambda x: F.relu(x) ** 2),
]


@pytest.mark.parametrize("name,fn,ref", UNARY, ids=[u[0] for u in UNARY])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 8e-3), (torch.float16, 1e-3)])
@pytest.mark.parametrize("shape", [(1, 1, 64), (3, 17, 45)])
def test_unary_activations_vs_torch(name, fn, ref, dtype, tol, shape):
    x = (torch.randn(shape) * 4).to(dtype).requires_grad_()
    y = fn(x)
    assert y.dtype == dtype and y.shape == x.shape
    g = torch.randn(shape).to(dtype)
    dx, = torch.autograd.grad(y, x, g)
    assert dx.dtype == dtype
    y_ref, (dx_ref,) = _ref_grad(ref, [x], g)
    # one rounding of the output to the input dtype
    assert_rms(f"{name} y", y_ref, y, tol)
    assert_rms(f"{name} dx", dx_ref, dx, tol * 2)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 8e-3)])
def test_swiglu_and_linear_vs_torch(dtype, tol):
    B, T, D, O = 2, 13, 37, 11
    x, y = (torch.randn(B, T, D) * 3).to(dtype).requires_grad_(), torch.randn(B, T, D).to(dtype).requires_grad_()
    g = torch.randn(B, T, D).to(dtype)
    z = act.swiglu(x, y)
    assert z.dtype == dtype
    dx, dy = torch.autograd.grad(z, (x, y), g)
    z_ref, (dx_ref, dy_ref) = _ref_grad(lambda a, b: F.silu(a) * b, [x, y], g)
    for n, r, t in (("z", z_ref, z), ("dx", dx_ref, dx), ("dy", dy_ref, dy)):
        assert_rms(n, r, t, tol * 2)

    w, b = (torch.randn(O, D) * 0.2).to(dtype).requires_grad_(), torch.randn(O).to(dtype).requires_grad_()
    go = torch.randn(B, T, O).to(dtype)
    out = act.swiglu_linear(x, y, w, b)
    grads = torch.autograd.grad(out, (x, y, w, b), go)
    out_ref, grads_ref = _ref_grad(lambda a, c, ww, bb: F.linear(F.silu(a) * c, ww, bb), [x, y, w, b], go)
    assert_rms("out", out_ref, out, tol * 4)
    for n, r, t in zip(("dx", "dy", "dw", "db"), grads_ref, grads):
        assert_rms(n, r, t, tol * 4)


def test_bias_gelu_vs_torch():
    """GeLUFunction: fla 0.4.0's backward returns (tmp, tmp) and autograd rejects it; the port
    returns (grad_y, grad_bias) as fla 0.5.1 does (manifest deviation)."""
    y, bias = torch.randn(9, 24, requires_grad=True), torch.randn(24, requires_grad=True)
    g = torch.randn(9, 24)
    out = act.bias_gelu_impl(y, bias)
    dy, db = torch.autograd.grad(out, (y, bias), g)
    out_ref, (dy_ref, db_ref) = _ref_grad(lambda a, c: F.gelu(a + c, approximate='tanh'), [y, bias], g)
    for n, r, t in (("out", out_ref, out), ("dy", dy_ref, dy), ("dbias", db_ref, db)):
        assert_rms(n, r, t, 1e-6)
    assert act.ACT2FN['bias_gelu'] is act.bias_gelu_impl


def test_helper_functions():
    x = torch.tensor([-2.0, -0.0, 0.0, 1.5])
    g = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # fla counts x == 0 as active
    torch.testing.assert_close(act.relu_bwd(g, x), torch.tensor([0.0, 2.0, 3.0, 4.0]))
    x = torch.randn(50, dtype=F64)
    torch.testing.assert_close(act.gelu_fwd(x), F.gelu(x, approximate='tanh'), rtol=1e-8, atol=1e-8)
    # the tanh constants are rounded (0.79788456), so the gradient matches to ~1e-8
    xg = x.clone().requires_grad_()
    ref, = torch.autograd.grad(F.gelu(xg, approximate='tanh').sum(), xg)
    torch.testing.assert_close(act.gelu_bwd(torch.ones_like(x), x), ref, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(act.sqrelu_bwd(torch.ones_like(x), x), 2 * F.relu(x))
    dx, dy, z = act.swiglu_fwdbwd(x, x.flip(0), torch.ones_like(x), use_weight=True)
    torch.testing.assert_close(z, F.silu(x) * x.flip(0))
    assert len(act.swiglu_fwdbwd(x, x, x)) == 2
    torch.testing.assert_close(act.logsigmoid_fwd(torch.tensor([-200.0, 0.0, 200.0])),
                               F.logsigmoid(torch.tensor([-200.0, 0.0, 200.0])))


def test_noncontiguous_inputs():
    """fla 0.4.0's kernels read inputs as flat memory (fixed in 0.4.2); the port computes on the
    tensors as given, so a strided slice gives the same numbers as its contiguous copy."""
    base = torch.randn(6, 40)
    x, y = base[:, ::2], base[:, 1::2]
    assert not x.is_contiguous()
    for f in (act.sigmoid, act.swish, act.logsigmoid, act.sqrelu, act.fast_gelu_impl):
        torch.testing.assert_close(f(x), f(x.contiguous()))
    torch.testing.assert_close(act.swiglu(x, y), act.swiglu(x.contiguous(), y.contiguous()))


GRADCHECK = [
    ("sigmoid", act.SigmoidFunction.apply, 1),
    ("logsigmoid", lambda x: act.LogSigmoidFunction.apply(x, 0.7), 1),
    ("swish", act.SwishFunction.apply, 1),
    ("fast_gelu", act.FastGeLUFunction.apply, 1),
    ("sqrelu", act.SquaredReLUFunction.apply, 1),
    ("swiglu", act.SwiGLUFunction.apply, 2),
]


@pytest.mark.parametrize("name,fn,n", GRADCHECK, ids=[g[0] for g in GRADCHECK])
def test_gradcheck_fp64(name, fn, n):
    # keep away from relu's kink at 0, where finite differences are meaningless
    inputs = [(torch.rand(3, 5, 7, dtype=F64) + 0.05) * torch.randn(3, 5, 7, dtype=F64).sign()
              for _ in range(n)]
    inputs = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(fn, tuple(inputs), **GC)


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_swiglu_linear_and_bias_gelu_fp64(bias):
    x, y = torch.randn(2, 3, 5, dtype=F64, requires_grad=True), torch.randn(2, 3, 5, dtype=F64, requires_grad=True)
    w = torch.randn(4, 5, dtype=F64, requires_grad=True)
    b = torch.randn(4, dtype=F64, requires_grad=True) if bias else None
    assert torch.autograd.gradcheck(act.SwiGLULinearFunction.apply, (x, y, w, b), **GC)
    yy, bb = torch.randn(6, 5, dtype=F64, requires_grad=True), torch.randn(5, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(act.GeLUFunction.apply, (yy, bb), **GC)


def test_act2fn_has_fla_keys(fla040_root):
    tree = ast.parse((fla040_root / "fla/modules/activations.py").read_text())
    keys = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ACT2FN" for t in node.targets):
            keys = [k.value for k in node.value.keys]
    assert keys is not None
    assert list(act.ACT2FN) == keys
    assert act.ACT2FN['relu'] is F.relu and act.ACT2FN['silu'] is act.ACT2FN['swish'] is act.swish
    assert act.ACT2FN['gelu'] is act.fast_gelu_impl and act.ACT2FN['sqrelu'] is act.sqrelu
