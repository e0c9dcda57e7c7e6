"""RMSNorm / LayerNormFunction against fla's own torch references (loaded by file path) and
FusedRMSNormGated against an inline fp64 formula (fla ships no reference for the sigmoid gate)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myfla.modules import FusedRMSNormGated, RMSNorm
from myfla.modules.fused_norm_gate import layer_norm_gated_bwd, layer_norm_gated_fwd, rms_norm_gated
from myfla.modules.layernorm import LayerNormFunction, layer_norm_bwd, layer_norm_fwd, rms_norm
from tests.fla_refs import load_function
from tests.numerics import assert_rms


@pytest.fixture(scope="module")
def refs(fla040_root):
    return load_function(fla040_root, "fla/modules/layernorm.py",
                         ["rms_norm_ref", "layer_norm_ref", "group_norm_ref"])


def _grads(outputs, leaves, cotangents):
    live = [t for t in leaves if t is not None]
    loss = sum((o * c).sum() for o, c in zip(outputs, cotangents))
    gs = iter(torch.autograd.grad(loss, live))
    return [next(gs) if t is not None else None for t in leaves]


def _leaf(t, dtype=None):
    if t is None:
        return None
    return t.detach().clone().to(dtype or t.dtype).requires_grad_()


def gated_ref(x, g, w, residual, eps, activation):
    if residual is not None:
        x = x + residual
    y = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    if w is not None:
        y = y * w
    gate = F.silu(g) if activation in ('swish', 'silu') else torch.sigmoid(g)
    return y * gate, x


@pytest.mark.parametrize("activation", ['swish', 'silu', 'sigmoid'])
@pytest.mark.parametrize("residual,prenorm", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("D", [64, 600])
def test_fused_rms_norm_gated(activation, residual, prenorm, D):
    B, T, H = 2, 5, 3
    x = torch.randn(B, T, H, D)
    g = torch.randn(B, T, H, D)
    r = torch.randn(B, T, H, D) if residual else None
    norm = FusedRMSNormGated(D, eps=1e-5, activation=activation)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(D))
    dy, dres = torch.randn(B, T, H, D), torch.randn(B, T, H, D)

    xs, gs, rs, ws = _leaf(x), _leaf(g), _leaf(r), norm.weight
    out = norm(xs, gs, residual=rs, prenorm=prenorm)
    outs = list(out) if prenorm else [out]
    grads = _grads(outs, [xs, gs, rs, ws], [dy, dres][:len(outs)])

    x64, g64, r64, w64 = _leaf(x, torch.float64), _leaf(g, torch.float64), _leaf(r, torch.float64), \
        _leaf(norm.weight, torch.float64)
    y_ref, res_ref = gated_ref(x64, g64, w64, r64, 1e-5, activation)
    refs_out = [y_ref, res_ref] if prenorm else [y_ref]
    grads_ref = _grads(refs_out, [x64, g64, r64, w64], [t.double() for t in [dy, dres][:len(outs)]])

    for name, o, o_ref in zip(("y", "residual_out"), outs, refs_out):
        assert_rms(name, o_ref, o, 1e-6)
    for name, gr, gt in zip(("dx", "dg", "dresidual", "dw"), grads_ref, grads):
        if gr is not None:
            assert_rms(name, gr, gt, 1e-5)


def test_gated_fwd_bwd_functions_and_messages():
    x, g = torch.randn(6, 32), torch.randn(6, 32)
    w = torch.randn(32)
    y, mean, rstd, res = layer_norm_gated_fwd(x, g, w, None, activation='sigmoid', eps=1e-5, is_rms_norm=True)
    assert mean is None and res is x and rstd.dtype == torch.float32 and rstd.shape == (6,)
    torch.testing.assert_close(rstd.double(), torch.rsqrt(x.double().square().mean(-1) + 1e-5))
    # layer norm (not RMS) variant with bias, vs F.layer_norm * gate in fp64
    b = torch.randn(32)
    y, mean, rstd, _ = layer_norm_gated_fwd(x, g, w, b, activation='swish', eps=1e-5)
    ref = F.layer_norm(x.double(), (32,), w.double(), b.double(), 1e-5) * F.silu(g.double())
    assert_rms("y", ref, y, 1e-6)
    dy = torch.randn(6, 32)
    dx, dg, dw, db, dres, y_re = layer_norm_gated_bwd(dy, x, g, w, b, 'swish', 1e-5, mean, rstd,
                                                      recompute_output=True)
    assert dres is None
    leaves = [_leaf(t, torch.float64) for t in (x, g, w, b)]
    out = F.layer_norm(leaves[0], (32,), leaves[2], leaves[3], 1e-5) * F.silu(leaves[1])
    for name, gr, gt in zip(("dx", "dg", "dw", "db"), _grads([out], leaves, [dy.double()]), (dx, dg, dw, db)):
        assert_rms(name, gr, gt, 1e-5)
    assert_rms("y_recomputed", F.layer_norm(x.double(), (32,), w.double(), b.double(), 1e-5), y_re, 1e-6)
    with pytest.raises(ValueError, match="Unsupported activation: relu"):
        FusedRMSNormGated(8, activation='relu')
    with pytest.raises(RuntimeError, match="This layer norm doesn't support feature dim >= 64KB."):
        layer_norm_gated_fwd(torch.randn(1, 70000), torch.randn(1, 70000), None, None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gated_low_precision_and_residual_in_fp32(dtype):
    x, g, r = (torch.randn(4, 7, 64).to(dtype) for _ in range(3))
    w = torch.randn(64).to(dtype)
    y, res = rms_norm_gated(x, g, w, None, 'sigmoid', residual=r, prenorm=True, residual_in_fp32=True)
    assert y.dtype == dtype and res.dtype == dtype  # a given residual keeps its own dtype
    y2, res2 = rms_norm_gated(x, g, w, None, 'sigmoid', prenorm=True, residual_in_fp32=True)
    assert res2.dtype == torch.float32
    ref, _ = gated_ref(x.double(), g.double(), w.double(), r.double(), 1e-6, 'sigmoid')
    # one rounding of the output (bf16 has 8 mantissa bits)
    assert_rms("y", ref, y, 1e-2 if dtype == torch.bfloat16 else 2e-3)


@pytest.mark.parametrize("residual,prenorm,bias", [(False, False, False), (True, True, False), (True, False, True)])
def test_rms_norm_vs_fla_ref(refs, residual, prenorm, bias):
    D = 96
    norm = RMSNorm(D, bias=bias, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(D))
        if bias:
            norm.bias.copy_(torch.randn(D))
    x = torch.randn(3, 11, D)
    r = torch.randn(3, 11, D) if residual else None
    dy, dres = torch.randn(3, 11, D), torch.randn(3, 11, D)
    xs, rs = _leaf(x), _leaf(r)
    out = norm(xs, residual=rs, prenorm=prenorm)
    outs = list(out) if prenorm else [out]
    params = [norm.weight, norm.bias]
    grads = _grads(outs, [xs, rs, *params], [dy, dres][:len(outs)])

    x64, r64 = _leaf(x, torch.float64), _leaf(r, torch.float64)
    p64 = [_leaf(p, torch.float64) for p in params]
    ref = refs["rms_norm_ref"](x64, p64[0], p64[1], residual=r64, eps=1e-5, prenorm=prenorm)
    refs_out = list(ref) if prenorm else [ref]
    grads_ref = _grads(refs_out, [x64, r64, *p64], [t.double() for t in [dy, dres][:len(outs)]])
    for name, o, o_ref in zip(("y", "residual_out"), outs, refs_out):
        assert_rms(name, o_ref, o, 1e-6)
    for name, gr, gt in zip(("dx", "dresidual", "dw", "db"), grads_ref, grads):
        if gr is not None:
            assert_rms(name, gr, gt, 1e-5)


@pytest.mark.parametrize("is_rms_norm,num_groups", [(False, 1), (False, 4), (True, 2)])
def test_layer_and_group_norm_vs_fla_ref(refs, is_rms_norm, num_groups):
    C = 64
    x, r = torch.randn(5, 9, C), torch.randn(5, 9, C)
    w, b = torch.randn(C), torch.randn(C)
    dy = torch.randn(5, 9, C)
    leaves = [_leaf(t) for t in (x, r, w, b)]
    y = LayerNormFunction.apply(*leaves[:1], leaves[2], leaves[3], leaves[1], 1e-5, False, False,
                                is_rms_norm, num_groups)
    grads = _grads([y], leaves, [dy])
    l64 = [_leaf(t, torch.float64) for t in (x, r, w, b)]
    if num_groups == 1 and not is_rms_norm:
        y_ref = refs["layer_norm_ref"](l64[0], l64[2], l64[3], residual=l64[1], eps=1e-5)
    else:
        y_ref = refs["group_norm_ref"](l64[0], l64[2], l64[3], num_groups, residual=l64[1], eps=1e-5,
                                       is_rms_norm=is_rms_norm)
    grads_ref = _grads([y_ref], l64, [dy.double()])
    assert_rms("y", y_ref, y, 1e-6)
    for name, gr, gt in zip(("dx", "dresidual", "dw", "db"), grads_ref, grads):
        assert_rms(name, gr, gt, 1e-5)
    with pytest.raises(ValueError, match="num_channels must be divisible by num_groups"):
        LayerNormFunction.apply(x, None, None, None, 1e-5, False, False, True, 3)


def test_layer_norm_fwd_bwd_dtypes():
    x = torch.randn(8, 16, dtype=torch.bfloat16)
    w = torch.ones(16)
    y, mean, rstd, res = layer_norm_fwd(x, w, None, residual_dtype=torch.float32, is_rms_norm=True)
    assert y.dtype == torch.bfloat16 and mean is None and res.dtype == torch.float32
    dx, dw, db, dres = layer_norm_bwd(torch.randn(8, 16), res, w, None, None, rstd, has_residual=True,
                                      is_rms_norm=True, x_dtype=torch.bfloat16)
    assert dx.dtype == torch.bfloat16 and dres.dtype == torch.float32 and db is None
    assert repr(RMSNorm(16)) == "RMSNorm(16, eps=1e-05)"
    assert repr(FusedRMSNormGated(16, activation='sigmoid')) == "FusedRMSNormGated(16, eps=1e-05, activation=sigmoid)"
    assert rms_norm(torch.randn(2, 16), w, None).shape == (2, 16)
