"""float64 support of the module autograd Functions.

fla's kernels accumulate in fp32; the port does the same for fp16/bf16/fp32 inputs but computes in
fp64 for fp64 inputs, so ``torch.autograd.gradcheck`` (finite differences in fp64) checks each
hand-written backward against its own forward exactly. The forward values are also compared with
fp64 references (fla's own where it has one, else the formula) at a tolerance only fp64 arithmetic
meets, and the saved statistics/states are checked to keep the dtype contract: fp32 for
low-precision inputs, fp64 for fp64 inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myfla.modules.convolution import (CausalConv1dFunction, causal_conv1d_fwd, causal_conv1d_update,
                                       causal_conv1d_update_states)
from myfla.modules.fused_norm_gate import LayerNormGatedFunction, layer_norm_gated_fwd
from myfla.modules.l2norm import L2NormFunction, l2norm_fwd
from myfla.modules.layernorm import LayerNormFunction, layer_norm_fwd
from tests.fla_refs import load_function
from tests.numerics import assert_rms

F64 = torch.float64
# gradcheck settings: central differences with eps=1e-6 on O(1) values leave ~1e-10 truncation error
GC = dict(eps=1e-6, atol=1e-7, rtol=1e-5)
# fp64 forward against an fp64 reference: fp32 internals would leave ~1e-7 here
FP64_TOL = 1e-12


def _rand(*shape, scale=1.0, shift=0.0):
    return (torch.randn(*shape, dtype=F64) * scale + shift).requires_grad_()


def _tensors(out):
    """gradcheck wants tensor outputs only (the Functions return None for absent outputs)."""
    out = out if isinstance(out, tuple) else (out,)
    return tuple(o for o in out if o is not None)


# -- causal conv1d --------------------------------------------------------------------------------

def conv_ref_varlen(x, weight, bias, residual, h0, activation, lens):
    """Per sequence: F.conv1d over [initial state columns 1..W-1, x]; final state = last W inputs of
    [initial state, x] (an inline fp64 reference written from the definition)."""
    W = weight.shape[1]
    ys, hts = [], []
    xs = x[0].split(lens)
    rs = residual[0].split(lens) if residual is not None else [None] * len(lens)
    for n, (xn, rn) in enumerate(zip(xs, rs)):
        prev = h0[n] if h0 is not None else xn.new_zeros(xn.shape[1], W)
        ext = torch.cat([prev, xn.t()], -1)
        if len(xn) == 0:
            ys.append(xn)
            hts.append(ext[:, -W:])
            continue
        y = F.conv1d(ext[None, :, 1:], weight.unsqueeze(1), bias, groups=xn.shape[1])[0].t()
        if activation == 'silu':
            y = F.silu(y)
        ys.append(y + rn if rn is not None else y)
        hts.append(ext[:, -W:])
    return torch.cat(ys)[None], torch.stack(hts)


CONV_CASES = [
    # lens (varlen when several), W, activation, bias, residual, h0, output_final_state
    ([2, 5, 1, 4], 4, 'silu', True, True, True, True),   # sequences shorter than W - 1
    ([3, 6], 3, None, False, True, True, True),
    ([7], 4, 'silu', True, False, False, True),
    ([5], 4, 'silu', True, True, True, False),
    ([1, 2], 2, None, True, False, True, True),
    ([3, 0, 2], 3, 'silu', False, False, True, True),    # an empty sequence keeps its initial state
]


@pytest.mark.parametrize("lens,W,activation,bias,residual,h0,final", CONV_CASES)
def test_causal_conv1d_gradcheck_fp64(lens, W, activation, bias, residual, h0, final):
    D, T, N = 2, sum(lens), len(lens)
    cu = torch.tensor([0] + lens).cumsum(0) if N > 1 else None
    x = _rand(1, T, D)
    w = _rand(D, W, scale=0.5)
    b = _rand(D, scale=0.2) if bias else None
    r = _rand(1, T, D) if residual else None
    h = _rand(N, D, W) if h0 else None

    def fn(x, w, b, r, h):
        # final-state column 0 is padding: no later forward or decoding step reads it (a step shifts
        # it out), so fla's backward drops its gradient; gradcheck the columns that carry state
        y, ht = CausalConv1dFunction.apply(x, w, b, r, h, final, activation, cu)
        return _tensors((y, ht[..., 1:] if ht is not None else None))

    y, ht = CausalConv1dFunction.apply(x, w, b, r, h, final, activation, cu)
    y_ref, ht_ref = conv_ref_varlen(x, w, b, r, h, activation, lens)
    assert y.dtype == F64
    assert_rms("y", y_ref, y, FP64_TOL, atol=0)
    if final:
        assert ht.dtype == F64
        assert_rms("final_state", ht_ref, ht, FP64_TOL, atol=0)
    else:
        assert ht is None

    live = [t for t in (x, w, b, r, h) if t is not None]

    def fn_live(*args):
        it = iter(args)
        full = [next(it) if t is not None else None for t in (x, w, b, r, h)]
        return fn(*full)

    assert torch.autograd.gradcheck(fn_live, live, **GC)


def test_causal_conv1d_final_state_padding_column_gradient():
    """fla's backward gives input tokens no gradient from final-state column 0 (token eos-W); an
    initial-state column a short sequence carries into column 0 passes it through (as later fla,
    causal_conv1d/ops.py compute_dh0 kernel)."""
    x, w, h = _rand(1, 9, 3), _rand(3, 4), _rand(2, 3, 4)
    cu = torch.tensor([0, 2, 9])                           # lengths 2 and 7, W = 4
    _, ht = CausalConv1dFunction.apply(x, w, None, None, h, True, None, cu)
    assert torch.equal(ht[1, :, 0], x[0, 5])               # token eos-W of the second sequence
    assert torch.equal(ht[0, :, 0], h[0, :, 2])            # initial column 2 moved by length 2
    dx, dw, dh = torch.autograd.grad(ht[..., 0].sum(), [x, w, h])
    expected_dh = torch.zeros_like(h)
    expected_dh[0, :, 2] = 1
    assert not dx.any() and not dw.any() and torch.equal(dh, expected_dh)


def test_causal_conv1d_update_fp64():
    """One decoding step in fp64 equals the last row of the full fp64 convolution."""
    D, W = 4, 4
    x = torch.randn(2, 6, D, dtype=F64)
    w, b = torch.randn(D, W, dtype=F64), torch.randn(D, dtype=F64)
    y_ref, _ = conv_ref_varlen(x[:1], w, b, None, None, 'silu', [6])
    y_full, cache = causal_conv1d_fwd(x[:1, :5], w, b, None, output_final_state=True, activation='silu')
    assert cache.dtype == F64
    y_step, cache = causal_conv1d_update(x[:1, 5:6], cache, None, w, b, 'silu')
    assert y_step.dtype == F64 and cache.dtype == F64
    assert_rms("y_step", y_ref[:, 5:6], y_step, FP64_TOL, atol=0)
    assert_rms("y_prefix", y_ref[:, :5], y_full, FP64_TOL, atol=0)
    states = causal_conv1d_update_states(x[:1], W)
    assert states.dtype == F64 and torch.equal(states, cache)


# -- gated norm -----------------------------------------------------------------------------------

def gated_norm_ref(x, g, w, b, residual, eps, activation, is_rms_norm):
    if residual is not None:
        x = x + residual
    xbar = x if is_rms_norm else x - x.mean(-1, keepdim=True)
    y = xbar * torch.rsqrt(xbar.square().mean(-1, keepdim=True) + eps) * w
    if b is not None:
        y = y + b
    gate = F.silu(g) if activation == 'swish' else torch.sigmoid(g)
    return y * gate, x


@pytest.mark.parametrize("activation", ['swish', 'sigmoid'])
@pytest.mark.parametrize("is_rms_norm", [True, False])
@pytest.mark.parametrize("residual,prenorm,bias", [(False, False, False), (True, False, True), (True, True, False)])
def test_layer_norm_gated_gradcheck_fp64(activation, is_rms_norm, residual, prenorm, bias):
    x, g = _rand(2, 3, 8), _rand(2, 3, 8)
    w = _rand(8, scale=0.2, shift=1.0)
    b = _rand(8, scale=0.2) if bias else None
    r = _rand(2, 3, 8) if residual else None
    eps = 1e-5

    def call(x, g, w, b, r):
        return LayerNormGatedFunction.apply(x, g, w, b, activation, r, eps, prenorm, False, is_rms_norm)

    out = _tensors(call(x, g, w, b, r))
    y_ref, res_ref = gated_norm_ref(x, g, w, b, r, eps, activation, is_rms_norm)
    assert all(o.dtype == F64 for o in out)
    assert_rms("y", y_ref, out[0], FP64_TOL, atol=0)
    if prenorm:
        assert_rms("residual_out", res_ref, out[1], FP64_TOL, atol=0)

    live = [t for t in (x, g, w, b, r) if t is not None]

    def fn_live(*args):
        it = iter(args)
        return _tensors(call(*[next(it) if t is not None else None for t in (x, g, w, b, r)]))

    assert torch.autograd.gradcheck(fn_live, live, **GC)


# -- layer / rms / group norm ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def norm_refs(fla040_root):
    return load_function(fla040_root, "fla/modules/layernorm.py",
                         ["rms_norm_ref", "layer_norm_ref", "group_norm_ref"])


@pytest.mark.parametrize("is_rms_norm", [True, False])
@pytest.mark.parametrize("residual,prenorm", [(False, False), (True, True)])
@pytest.mark.parametrize("num_groups", [1, 2])
def test_layer_norm_gradcheck_fp64(norm_refs, is_rms_norm, residual, prenorm, num_groups):
    D = 8
    x = _rand(2, 3, D)
    w = _rand(D, scale=0.2, shift=1.0)
    b = _rand(D, scale=0.2)
    r = _rand(2, 3, D) if residual else None
    eps = 1e-5

    def call(x, w, b, r):
        return LayerNormFunction.apply(x, w, b, r, eps, prenorm, False, is_rms_norm, num_groups)

    out = _tensors(call(x, w, b, r))
    if num_groups == 1:
        ref_fn = norm_refs["rms_norm_ref"] if is_rms_norm else norm_refs["layer_norm_ref"]
        ref = ref_fn(x, w, b, residual=r, eps=eps, prenorm=prenorm)
    else:
        ref = norm_refs["group_norm_ref"](x, w, b, num_groups, residual=r, eps=eps,
                                          is_rms_norm=is_rms_norm, prenorm=prenorm)
    ref = ref if isinstance(ref, tuple) else (ref,)
    assert all(o.dtype == F64 for o in out)
    for name, o, o_ref in zip(("y", "residual_out"), out, ref):
        assert_rms(name, o_ref, o, FP64_TOL, atol=0)

    live = [t for t in (x, w, b, r) if t is not None]

    def fn_live(*args):
        it = iter(args)
        return _tensors(call(*[next(it) if t is not None else None for t in (x, w, b, r)]))

    assert torch.autograd.gradcheck(fn_live, live, **GC)


# -- l2 norm --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 8), (5, 1)])
def test_l2norm_gradcheck_fp64(shape):
    x = _rand(*shape)
    y = L2NormFunction.apply(x, 1e-6, None)
    y_ref = x / torch.sqrt(x.square().sum(-1, keepdim=True) + 1e-6)
    assert y.dtype == F64
    assert_rms("y", y_ref, y, FP64_TOL, atol=0)
    assert torch.autograd.gradcheck(lambda x: L2NormFunction.apply(x, 1e-6, None), [x], **GC)


# -- dtype contract of saved statistics -----------------------------------------------------------

@pytest.mark.parametrize("dtype,stat_dtype", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                              (torch.float32, torch.float32), (F64, F64)])
def test_statistics_dtype(dtype, stat_dtype):
    """mean/rstd follow the accumulation dtype: fp32 as fla for low precision, fp64 for fp64."""
    x, g = torch.randn(4, 16, dtype=dtype), torch.randn(4, 16, dtype=dtype)
    w, b = torch.randn(16, dtype=dtype), torch.randn(16, dtype=dtype)
    y, mean, rstd, _ = layer_norm_fwd(x, w, b, 1e-5)
    assert y.dtype == dtype and mean.dtype == stat_dtype and rstd.dtype == stat_dtype
    y, mean, rstd, _ = layer_norm_gated_fwd(x, g, w, b, 'swish', 1e-5)
    assert y.dtype == dtype and mean.dtype == stat_dtype and rstd.dtype == stat_dtype
    y, rstd = l2norm_fwd(x)
    assert y.dtype == dtype and rstd.dtype == stat_dtype
