"""The whole of ``myfla.modules.layernorm`` (fla 0.4.0 ``fla/modules/layernorm.py``): LayerNorm,
GroupNorm, RMSNorm, the ``*Linear`` norms, their functions and autograd Functions, the reference
norms and NormParallel.

Oracles: ``torch.nn.functional.layer_norm`` / ``group_norm`` / ``linear`` in fp64 (outputs and
fp64 autograd gradients), fla's own ``*_ref`` functions loaded by file path from the fetched 0.4.0
tree, and fp64 ``gradcheck`` of ``LayerNormLinearFunction``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from myfla.modules import layernorm as ln
from tests.fla_refs import load_function
from tests.numerics import assert_rms

F64 = torch.float64
GC = dict(eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.fixture(scope="module")
def fla_refs(fla040_root):
    return load_function(fla040_root, "fla/modules/layernorm.py",
                         ["layer_norm_ref", "rms_norm_ref", "group_norm_ref", "GroupNormRef"])


def _leaf(t, dtype=None):
    return None if t is None else t.detach().clone().to(dtype or t.dtype).requires_grad_()


def _grads(outputs, leaves, cotangents):
    live = [t for t in leaves if t is not None]
    loss = sum((o * c).sum() for o, c in zip(outputs, cotangents))
    gs = iter(torch.autograd.grad(loss, live, allow_unused=True))
    return [next(gs) if t is not None else None for t in leaves]


def norm_formula(x, w, b, G, is_rms_norm, eps):
    """fp64 oracle: F.layer_norm / F.group_norm, or the RMS formula per group."""
    C = x.shape[-1]
    if not is_rms_norm and G == 1:
        return F.layer_norm(x, (C,), w, b, eps)
    if not is_rms_norm:
        y = F.group_norm(x.reshape(-1, C), G, w, b, eps)
        return y.reshape(x.shape)
    xg = x.reshape(*x.shape[:-1], G, C // G)
    y = (xg * torch.rsqrt(xg.square().mean(-1, keepdim=True) + eps)).reshape(x.shape)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


NORM_CASES = [
    # shape, G, is_rms_norm, affine, bias, residual, prenorm, residual_in_fp32
    ((2, 7, 50), 1, False, True, True, False, False, False),
    ((3, 5, 64), 1, False, False, False, True, True, False),
    ((1, 9, 600), 1, False, True, False, True, False, True),   # D > 512: fla's one-row kernel
    ((4, 33), 1, True, True, True, True, True, False),
    ((2, 3, 5, 96), 4, False, True, True, False, False, False),
    ((2, 7, 120), 3, True, True, False, True, True, True),
    ((5, 1024), 2, False, True, True, True, False, False),
]


@pytest.mark.parametrize("shape,G,is_rms_norm,affine,bias,residual,prenorm,fp32res", NORM_CASES)
def test_norm_modules_vs_torch(shape, G, is_rms_norm, affine, bias, residual, prenorm, fp32res):
    C, eps = shape[-1], 1e-5
    if G == 1 and not is_rms_norm:
        mod = ln.LayerNorm(C, elementwise_affine=affine, bias=bias, eps=eps)
    elif G == 1:
        mod = ln.RMSNorm(C, elementwise_affine=affine, bias=bias, eps=eps)
    else:
        mod = ln.GroupNorm(G, C, elementwise_affine=affine, bias=bias, eps=eps, is_rms_norm=is_rms_norm)
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.randn_like(p))
    x, r = torch.randn(shape) * 2 + 0.5, torch.randn(shape) if residual else None
    dy, dres = torch.randn(shape), torch.randn(shape)

    xs, rs = _leaf(x), _leaf(r)
    out = mod(xs, residual=rs, prenorm=prenorm, residual_in_fp32=fp32res)
    outs = list(out) if prenorm else [out]
    assert outs[0].dtype == x.dtype
    if prenorm:
        assert outs[1].dtype == (torch.float32 if (fp32res or residual) else x.dtype)
    params = [mod.weight, mod.bias]
    grads = _grads(outs, [xs, rs, *params], [dy, dres][:len(outs)])

    x64, r64 = _leaf(x, F64), _leaf(r, F64)
    p64 = [_leaf(p, F64) for p in params]
    h = x64 + r64 if r64 is not None else x64
    ref = [norm_formula(h, p64[0], p64[1], G, is_rms_norm, eps), h][:len(outs)]
    grads_ref = _grads(ref, [x64, r64, *p64], [dy.double(), dres.double()][:len(outs)])
    for name, o_ref, o in zip(("y", "residual_out"), ref, outs):
        assert_rms(name, o_ref, o, 1e-6)
    for name, g_ref, g in zip(("dx", "dresidual", "dw", "db"), grads_ref, grads):
        assert (g_ref is None) == (g is None), name
        if g is not None:
            assert_rms(name, g_ref, g, 1e-5)


LINEAR_CASES = [
    # N-shape, C, out, G, is_rms_norm, residual, prenorm, linear bias
    ((1, 50), 50, 50, 1, False, False, False, True),
    ((3, 7, 64), 64, 33, 1, True, True, True, True),
    ((16, 96), 96, 40, 4, False, True, False, False),
    ((2, 5, 600), 600, 17, 2, True, False, True, True),
]


@pytest.mark.parametrize("shape,C,O,G,is_rms_norm,residual,prenorm,lbias", LINEAR_CASES)
def test_norm_linear_modules_vs_torch(shape, C, O, G, is_rms_norm, residual, prenorm, lbias):
    eps = 1e-5
    if G > 1:
        mod = ln.GroupNormLinear(G, C, bias=True, eps=eps, is_rms_norm=is_rms_norm)
    elif is_rms_norm:
        mod = ln.RMSNormLinear(C, bias=True, eps=eps)
    else:
        mod = ln.LayerNormLinear(C, bias=True, eps=eps)
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.randn_like(p))
    lw, lb = torch.randn(O, C) * 0.1, torch.randn(O) if lbias else None
    x, r = torch.randn(shape), torch.randn(shape) if residual else None
    dout, dres = torch.randn(*shape[:-1], O), torch.randn(shape)

    xs, rs, lws, lbs = _leaf(x), _leaf(r), _leaf(lw), _leaf(lb)
    out = mod(xs, lws, lbs, residual=rs, prenorm=prenorm)
    outs = list(out) if prenorm else [out]
    leaves = [xs, rs, mod.weight, mod.bias, lws, lbs]
    grads = _grads(outs, leaves, [dout, dres][:len(outs)])

    l64 = [_leaf(t, F64) for t in (x, r, mod.weight, mod.bias, lw, lb)]
    h = l64[0] + l64[1] if residual else l64[0]
    y = norm_formula(h, l64[2], l64[3], G, is_rms_norm, eps)
    ref = [F.linear(y, l64[4], l64[5]), h][:len(outs)]
    grads_ref = _grads(ref, l64, [dout.double(), dres.double()][:len(outs)])
    for name, o_ref, o in zip(("out", "residual_out"), ref, outs):
        assert_rms(name, o_ref, o, 1e-6)
    for name, g_ref, g in zip(("dx", "dresidual", "dnorm_w", "dnorm_b", "dlinear_w", "dlinear_b"),
                              grads_ref, grads):
        assert (g_ref is None) == (g is None), name
        if g is not None:
            assert_rms(name, g_ref, g, 1e-5)


def test_norm_functions_match_modules():
    x, r, w, b = torch.randn(4, 6, 48), torch.randn(4, 6, 48), torch.randn(48), torch.randn(48)
    lw, lb = torch.randn(8, 48), torch.randn(8)
    torch.testing.assert_close(ln.layer_norm(x, w, b, r), F.layer_norm(x + r, (48,), w, b, 1e-5),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ln.group_norm(x, w, b, num_groups=3),
                               F.group_norm(x.reshape(-1, 48), 3, w, b, 1e-5).reshape(x.shape),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ln.rms_norm_linear(x, w, None, lw, lb),
                               F.linear(ln.rms_norm(x, w, None), lw, lb), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ln.group_norm_linear(x, w, b, lw, lb, is_rms_norm=True, num_groups=2),
                               F.linear(ln.group_norm(x, w, b, is_rms_norm=True, num_groups=2), lw, lb),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("is_rms_norm,G,residual,prenorm,lbias", [
    (False, 1, False, False, True), (True, 1, True, True, False), (False, 3, True, False, True),
    (True, 2, True, True, True)])
def test_layer_norm_linear_gradcheck_fp64(is_rms_norm, G, residual, prenorm, lbias):
    C, O = 6 * G, 5
    x = (torch.randn(2, 3, C, dtype=F64) * 1.5 + 0.3).requires_grad_()
    r = torch.randn(2, 3, C, dtype=F64, requires_grad=True) if residual else None
    w, b = torch.randn(C, dtype=F64, requires_grad=True), torch.randn(C, dtype=F64, requires_grad=True)
    lw = torch.randn(O, C, dtype=F64, requires_grad=True)
    lb = torch.randn(O, dtype=F64, requires_grad=True) if lbias else None

    def f(x, w, b, lw, lb, r):
        return ln.LayerNormLinearFunction.apply(x, w, b, lw, lb, r, 1e-5, prenorm, False, is_rms_norm, G)

    assert torch.autograd.gradcheck(f, (x, w, b, lw, lb, r), **GC)


@pytest.mark.parametrize("upcast", [False, True])
@pytest.mark.parametrize("prenorm", [False, True])
def test_reference_norms_match_fla_refs(fla_refs, upcast, prenorm):
    """myfla's *_ref functions give fla's own numbers (bit for bit: same operations) in fp32 and bf16."""
    for dtype in (torch.float32, torch.bfloat16):
        x, r = torch.randn(3, 5, 64).to(dtype), torch.randn(3, 5, 64).to(dtype)
        w, b = torch.randn(64).to(dtype), torch.randn(64).to(dtype)
        pairs = [
            (ln.layer_norm_ref(x, w, b, r, 1e-5, prenorm, upcast),
             fla_refs["layer_norm_ref"](x, w, b, r, 1e-5, prenorm, upcast)),
            (ln.rms_norm_ref(x, w, None, r, 1e-5, prenorm, upcast),
             fla_refs["rms_norm_ref"](x, w, None, r, 1e-5, prenorm, upcast)),
            (ln.rms_norm_ref(x, w, b, None, 1e-5, prenorm, upcast),
             fla_refs["rms_norm_ref"](x, w, b, None, 1e-5, prenorm, upcast)),
            (ln.group_norm_ref(x, w, b, 4, r, 1e-5, False, prenorm, upcast),
             fla_refs["group_norm_ref"](x, w, b, 4, r, 1e-5, False, prenorm, upcast)),
            (ln.group_norm_ref(x, w, None, 2, None, 1e-5, True, prenorm, upcast),
             fla_refs["group_norm_ref"](x, w, None, 2, None, 1e-5, True, prenorm, upcast)),
        ]
        for mine, theirs in pairs:
            mine, theirs = (mine, theirs) if prenorm else ((mine,), (theirs,))
            for a, t in zip(mine, theirs):
                assert a.dtype == t.dtype
                torch.testing.assert_close(a, t, rtol=0, atol=0)
    # and the references are what they claim to be
    x, w, b = torch.randn(4, 32, dtype=F64), torch.randn(32, dtype=F64), torch.randn(32, dtype=F64)
    torch.testing.assert_close(ln.group_norm_ref(x, w, b, 4), F.group_norm(x, 4, w, b, 1e-5))


def test_group_norm_ref_module(fla_refs):
    mine = ln.GroupNormRef(4, 64, bias=True, is_rms_norm=True)
    theirs = fla_refs["GroupNormRef"](4, 64, bias=True, is_rms_norm=True)
    assert dict(mine.named_parameters()).keys() == {"weight", "bias"}
    with torch.no_grad():
        mine.weight.normal_(), mine.bias.normal_()
    theirs.load_state_dict(mine.state_dict())
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    torch.testing.assert_close(mine(x), theirs(x), rtol=0, atol=0)
    assert repr(mine) == repr(theirs) == "GroupNormRef(4, 64, is_rms_norm=True, eps=1e-05)"
    with pytest.raises(ValueError, match="num_channels must be divisible by num_groups"):
        ln.GroupNormRef(3, 64)


def test_reprs_state_dicts_and_errors():
    assert repr(ln.LayerNorm(16)) == "LayerNorm(16, eps=1e-05)"
    assert repr(ln.LayerNorm(16, elementwise_affine=False)) == "LayerNorm(16, elementwise_affine=False, eps=1e-05)"
    assert repr(ln.GroupNorm(2, 16, is_rms_norm=True)) == "GroupNorm(2, 16, is_rms_norm=True, eps=1e-05)"
    assert repr(ln.RMSNorm(16, eps=1e-6)) == "RMSNorm(16, eps=1e-06)"
    assert repr(ln.LayerNormLinear(16)) == "LayerNormLinear(16, eps=1e-05)"
    assert repr(ln.GroupNormLinear(4, 16)) == "GroupNormLinear(4, 16, eps=1e-05)"
    assert repr(ln.RMSNormLinear(16, elementwise_affine=False)) == \
        "RMSNormLinear(16, elementwise_affine=False, eps=1e-05)"
    for cls in (ln.LayerNorm, ln.RMSNorm, ln.LayerNormLinear, ln.RMSNormLinear):
        assert list(cls(8, bias=True).state_dict()) == ["weight", "bias"]
        assert list(cls(8).state_dict()) == ["weight"]
        assert list(cls(8, elementwise_affine=False, bias=True).state_dict()) == []
        m = cls(8, bias=True)
        assert torch.equal(m.weight, torch.ones(8)) and torch.equal(m.bias, torch.zeros(8))
    for cls in (ln.GroupNorm, ln.GroupNormLinear):
        assert list(cls(2, 8, bias=True).state_dict()) == ["weight", "bias"]
        with pytest.raises(ValueError, match="num_channels must be divisible by num_groups"):
            cls(3, 8)
    with pytest.raises(ValueError, match="num_channels must be divisible by num_groups"):
        ln.LayerNormLinearFunction.apply(torch.randn(2, 8), None, None, torch.randn(3, 8), None,
                                         None, 1e-5, False, False, False, 3)
    with pytest.raises(RuntimeError, match="This layer norm doesn't support feature dim >= 64KB."):
        ln.layer_norm(torch.randn(1, 40000), None, None)


def test_layer_norm_linear_under_gpu_autocast_dtype(monkeypatch):
    """Under CUDA autocast fla runs the norm output and the linear layer in the autocast dtype; the
    branch is exercised on CPU by reporting the caller's CUDA autocast as on (not torch's own query,
    which torch.autocast's exit would then write back as the real state)."""
    monkeypatch.setattr(ln, "caller_autocast_enabled", lambda: True)
    monkeypatch.setattr(ln, "_autocast_gpu_dtype", lambda: torch.bfloat16)
    x, w, lw = torch.randn(4, 32), torch.randn(32), torch.randn(8, 32)
    out = ln.rms_norm_linear(x, w, None, lw, None)
    assert out.dtype == torch.bfloat16
    ref = F.linear(ln.rms_norm_ref(x.double(), w.double(), None), lw.double())
    assert_rms("out", ref, out, 1e-2)


def test_norm_parallel_single_rank():
    """NormParallel on a one-rank gloo group: parameters become replicated DTensors, a local input
    becomes the sequence shard, and the output is local with use_local_output."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or ln.DTensor is None:
        pytest.skip("torch.distributed.tensor is not available in this torch build")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        norm = ln.RMSNorm(16)
        style = ln.NormParallel(sequence_dim=1, use_local_output=True)
        assert style.sequence_sharding == (ln.Shard(1),)
        parallelize_module(norm, mesh, style)
        assert isinstance(norm.weight, ln.DTensor) and norm.weight.placements == (ln.Replicate(),)
        x = torch.randn(2, 5, 16)
        wrapped = ln.NormParallel._prepare_input_fn((ln.Shard(1),), norm, (x,), mesh)
        assert isinstance(wrapped, ln.DTensor) and wrapped.placements == (ln.Shard(1),)
        assert torch.equal(wrapped.to_local(), x)
        local = ln.NormParallel._prepare_output_fn(True, norm, wrapped, mesh)
        assert not isinstance(local, ln.DTensor) and torch.equal(local, x)
        assert ln.NormParallel._prepare_output_fn(False, norm, wrapped, mesh) is wrapped
        with pytest.raises(ValueError, match="expecting input of"):
            ln.NormParallel._prepare_input_fn((ln.Shard(1),), norm, ([1, 2],), mesh)
    finally:
        if created:
            dist.destroy_process_group()


@pytest.mark.parametrize("norm,kwargs", [
    (ln.layer_norm, {}),
    (ln.rms_norm, {}),
    (ln.group_norm, {"num_groups": 3}),
])
@pytest.mark.parametrize("residual,prenorm,residual_in_fp32", [
    (False, False, False), (True, True, False), (True, False, True), (False, True, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_norm_without_autograd_is_the_function_forward(norm, kwargs, residual, prenorm, residual_in_fp32, dtype):
    """Calls autograd would not record skip the autograd Function (a decoding step's per-call
    cost): the same numbers bit for bit, from strided inputs too."""
    D = 48
    x = torch.randn(2, 5, D).to(dtype)
    w, b = torch.randn(D), torch.randn(D)
    r = torch.randn(2, 5, D).to(dtype) if residual else None
    kw = dict(residual=r, eps=1e-5, prenorm=prenorm, residual_in_fp32=residual_in_fp32, **kwargs)
    bias = None if norm is ln.rms_norm else b
    expected = norm(x.clone().requires_grad_(), w, bias, **kw)
    expected = [t.detach() for t in (expected if prenorm else [expected])]
    strided = torch.cat([x, x], -1)[..., :D]
    for inputs in (x, strided):
        with torch.no_grad():
            got = norm(inputs, w, bias, **kw)
        got = list(got) if prenorm else [got]
        for e, o in zip(expected, got):
            assert o.dtype == e.dtype and o.shape == e.shape
            torch.testing.assert_close(o, e, rtol=0, atol=0)
