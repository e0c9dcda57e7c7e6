"""The whole of ``myfla.modules.fused_norm_gate`` (fla 0.4.0 ``fla/modules/fused_norm_gate.py``):
FusedLayerNormGated, FusedRMSNormGated, the Swish-gate aliases, the ``*Linear`` modules, their
functions and ``LayerNormGatedLinearFunction``.

Oracles: ``F.layer_norm`` / the RMS formula times ``F.silu(g)`` / ``sigmoid(g)``, then ``F.linear``,
all in fp64 with fp64 autograd gradients; fp64 ``gradcheck`` of ``LayerNormGatedLinearFunction``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myfla.modules import fused_norm_gate as fng
from tests.numerics import assert_rms

F64 = torch.float64
GC = dict(eps=1e-6, atol=1e-7, rtol=1e-5)


def _leaf(t, dtype=None):
    return None if t is None else t.detach().clone().to(dtype or t.dtype).requires_grad_()


def _grads(outputs, leaves, cotangents):
    live = [t for t in leaves if t is not None]
    loss = sum((o * c).sum() for o, c in zip(outputs, cotangents))
    gs = iter(torch.autograd.grad(loss, live))
    return [next(gs) if t is not None else None for t in leaves]


def gated_formula(h, g, w, b, is_rms_norm, activation, eps):
    D = h.shape[-1]
    if is_rms_norm:
        y = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + eps)
        y = y * w if w is not None else y
        y = y + b if b is not None else y
    else:
        y = F.layer_norm(h, (D,), w, b, eps)
    return y * (F.silu(g) if activation in ('swish', 'silu') else torch.sigmoid(g))


MODULE_CASES = [
    # cls, kwargs, is_rms_norm, activation, shape, residual, prenorm
    (fng.FusedLayerNormGated, dict(bias=True, activation='sigmoid'), False, 'sigmoid', (2, 7, 50), True, True),
    (fng.FusedLayerNormGated, dict(elementwise_affine=False), False, 'swish', (3, 4, 64), False, False),
    (fng.FusedLayerNormGated, dict(activation='silu'), False, 'silu', (1, 5, 600), True, False),
    (fng.FusedLayerNormSwishGate, dict(bias=True), False, 'swish', (2, 3, 33), False, True),
    (fng.FusedRMSNormSwishGate, dict(), True, 'swish', (4, 9, 96), True, True),
    (fng.FusedRMSNormSwishGate, dict(elementwise_affine=False), True, 'swish', (2, 530), False, False),
]


@pytest.mark.parametrize("cls,kwargs,is_rms_norm,activation,shape,residual,prenorm", MODULE_CASES)
def test_gated_norm_modules_vs_torch(cls, kwargs, is_rms_norm, activation, shape, residual, prenorm):
    D, eps = shape[-1], 1e-5
    mod = cls(D, eps=eps, **kwargs)
    assert mod.activation == activation
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.randn_like(p))
    x, g = torch.randn(shape) + 0.3, torch.randn(shape) * 2
    r = torch.randn(shape) if residual else None
    dy, dres = torch.randn(shape), torch.randn(shape)
    xs, gs, rs = _leaf(x), _leaf(g), _leaf(r)
    out = mod(xs, gs, residual=rs, prenorm=prenorm)
    outs = list(out) if prenorm else [out]
    grads = _grads(outs, [xs, gs, rs, mod.weight, mod.bias], [dy, dres][:len(outs)])

    l64 = [_leaf(t, F64) for t in (x, g, r, mod.weight, mod.bias)]
    h = l64[0] + l64[2] if residual else l64[0]
    ref = [gated_formula(h, l64[1], l64[3], l64[4], is_rms_norm, activation, eps), h][:len(outs)]
    grads_ref = _grads(ref, l64, [dy.double(), dres.double()][:len(outs)])
    for name, o_ref, o in zip(("y", "residual_out"), ref, outs):
        assert_rms(name, o_ref, o, 1e-6)
    for name, g_ref, gr in zip(("dx", "dg", "dresidual", "dw", "db"), grads_ref, grads):
        assert (g_ref is None) == (gr is None), name
        if gr is not None:
            assert_rms(name, g_ref, gr, 1e-5)


LINEAR_CASES = [
    # cls, is_rms_norm, shape, O, residual, prenorm, linear bias
    (fng.FusedLayerNormGatedLinear, False, (2, 5, 48), 20, False, False, True),
    (fng.FusedLayerNormSwishGateLinear, False, (3, 64), 17, True, True, False),
    (fng.FusedRMSNormGatedLinear, True, (2, 3, 600), 9, True, False, True),
    (fng.FusedRMSNormSwishGateLinear, True, (1, 7, 35), 35, False, True, True),
]


@pytest.mark.parametrize("cls,is_rms_norm,shape,O,residual,prenorm,lbias", LINEAR_CASES)
def test_gated_norm_linear_modules_vs_torch(cls, is_rms_norm, shape, O, residual, prenorm, lbias):
    """Includes the linear weight gradient, which fla 0.4.0 computes against the pre-gate output
    (manifest deviation; fixed as in fla 0.6.0)."""
    D, eps = shape[-1], 1e-5
    mod = cls(D, eps=eps)
    assert list(mod.state_dict()) == ["weight"] and mod.bias is None
    with torch.no_grad():
        mod.weight.normal_()
    x, g = torch.randn(shape), torch.randn(shape) * 2
    r = torch.randn(shape) if residual else None
    lw, lb = torch.randn(O, D) * 0.2, torch.randn(O) if lbias else None
    dout, dres = torch.randn(*shape[:-1], O), torch.randn(shape)
    leaves = [_leaf(x), _leaf(g), _leaf(r), mod.weight, _leaf(lw), _leaf(lb)]
    out = mod(leaves[0], leaves[1], leaves[4], leaves[5], residual=leaves[2], prenorm=prenorm)
    outs = list(out) if prenorm else [out]
    grads = _grads(outs, leaves, [dout, dres][:len(outs)])

    l64 = [_leaf(t, F64) for t in (x, g, r, mod.weight, lw, lb)]
    h = l64[0] + l64[2] if residual else l64[0]
    y = gated_formula(h, l64[1], l64[3], None, is_rms_norm, 'swish', eps)
    ref = [F.linear(y, l64[4], l64[5]), h][:len(outs)]
    grads_ref = _grads(ref, l64, [dout.double(), dres.double()][:len(outs)])
    for name, o_ref, o in zip(("out", "residual_out"), ref, outs):
        assert_rms(name, o_ref, o, 1e-6)
    for name, g_ref, gr in zip(("dx", "dg", "dresidual", "dnorm_w", "dlinear_w", "dlinear_b"),
                               grads_ref, grads):
        assert (g_ref is None) == (gr is None), name
        if gr is not None:
            assert_rms(name, g_ref, gr, 1e-5)


@pytest.mark.parametrize("is_rms_norm,residual,prenorm,nbias,lbias", [
    (False, False, False, True, True), (True, True, True, False, False), (False, True, False, False, True),
    (True, False, True, True, True)])
def test_layer_norm_gated_linear_gradcheck_fp64(is_rms_norm, residual, prenorm, nbias, lbias):
    D, O = 6, 4
    x = (torch.randn(2, 3, D, dtype=F64) + 0.2).requires_grad_()
    g = torch.randn(2, 3, D, dtype=F64, requires_grad=True)
    r = torch.randn(2, 3, D, dtype=F64, requires_grad=True) if residual else None
    w = torch.randn(D, dtype=F64, requires_grad=True)
    b = torch.randn(D, dtype=F64, requires_grad=True) if nbias else None
    lw = torch.randn(O, D, dtype=F64, requires_grad=True)
    lb = torch.randn(O, dtype=F64, requires_grad=True) if lbias else None

    def f(x, g, w, b, lw, lb, r):
        return fng.LayerNormGatedLinearFunction.apply(x, g, w, b, lw, lb, r, 1e-5, prenorm, False, is_rms_norm)

    assert torch.autograd.gradcheck(f, (x, g, w, b, lw, lb, r), **GC)


def test_functions_defaults_and_dtypes():
    x, g, w = torch.randn(4, 32), torch.randn(4, 32), torch.randn(32)
    y = fng.layer_norm_gated(x, g, w, None)            # swish, eps 1e-6
    ref = F.layer_norm(x.double(), (32,), w.double(), None, 1e-6) * F.silu(g.double())
    assert_rms("y", ref, y, 1e-6)
    lw = torch.randn(8, 32)
    torch.testing.assert_close(fng.rms_norm_swish_gate_linear(x, g, w, None, lw, None),
                               F.linear(fng.rms_norm_gated(x, g, w, None), lw), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fng.layer_norm_swish_gate_linear(x, g, w, None, lw, None),
                               F.linear(fng.layer_norm_gated(x, g, w, None), lw), rtol=1e-5, atol=1e-5)
    xb, gb = x.bfloat16(), g.bfloat16()
    out, res = fng.layer_norm_swish_gate_linear(xb, gb, w, None, lw, None, prenorm=True, residual_in_fp32=True)
    assert out.dtype == torch.bfloat16 and res.dtype == torch.float32
    with pytest.raises(ValueError, match="Unsupported activation: gelu"):
        fng.FusedLayerNormGated(8, activation='gelu')
    assert repr(fng.FusedLayerNormGated(8, bias=True)) == "FusedLayerNormGated(8, eps=1e-05, activation=swish)"
    assert repr(fng.FusedRMSNormSwishGate(8)) == "FusedRMSNormSwishGate(8, eps=1e-05, activation=swish)"
    assert repr(fng.FusedRMSNormGatedLinear(8, elementwise_affine=False)) == \
        "FusedRMSNormGatedLinear(8, elementwise_affine=False, eps=1e-05)"
    assert repr(fng.FusedLayerNormSwishGateLinear(8)) == "FusedLayerNormSwishGateLinear(8, eps=1e-05)"
    assert list(fng.FusedLayerNormGated(8, bias=True).state_dict()) == ["weight", "bias"]
    m = fng.FusedLayerNormGated(8, dtype=torch.float64)
    assert m.weight.dtype == torch.float64


@pytest.mark.parametrize("cls,kwargs,is_rms_norm,activation,shape,residual,prenorm", MODULE_CASES)
@pytest.mark.parametrize("residual_in_fp32", [False, True])
def test_gated_norm_without_autograd_is_the_function_forward(cls, kwargs, is_rms_norm, activation, shape, residual,
                                                             prenorm, residual_in_fp32):
    """Calls autograd would not record skip the autograd Function (decoding's per-call cost): the
    same numbers, bit for bit, from strided inputs too, and against the fp64 formula."""
    D, eps = shape[-1], 1e-5
    mod = cls(D, eps=eps, **kwargs)
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.randn_like(p))
    x, g = torch.randn(shape) + 0.3, torch.randn(shape) * 2
    r = torch.randn(shape) if residual else None
    # the autograd Function's forward (a leaf that requires grad forces it)
    expected = mod(_leaf(x), g, residual=r, prenorm=prenorm, residual_in_fp32=residual_in_fp32)
    expected = [t.detach() for t in (expected if prenorm else [expected])]
    xs = torch.cat([x, x], -1)[..., :D]                       # the same values behind strided storage
    for inputs in ((x, g, r), (xs, g, r)):
        with torch.no_grad():
            got = mod(*inputs[:2], residual=inputs[2], prenorm=prenorm, residual_in_fp32=residual_in_fp32)
        got = list(got) if prenorm else [got]
        for e, o in zip(expected, got):
            assert o.dtype == e.dtype and o.shape == e.shape
            torch.testing.assert_close(o, e, rtol=0, atol=0)
    h = x.double() + r.double() if residual else x.double()
    w64, b64 = (None if p is None else p.detach().double() for p in (mod.weight, mod.bias))
    assert_rms("y", gated_formula(h, g.double(), w64, b64, is_rms_norm, activation, eps), got[0], 1e-6)
