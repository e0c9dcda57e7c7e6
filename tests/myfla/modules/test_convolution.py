"""Causal depthwise conv against an inline fp64 reference (F.conv1d over the initial state + x)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from myfla.modules import ShortConvolution
from myfla.modules.convolution import (causal_conv1d, causal_conv1d_bwd, causal_conv1d_fwd,
                                       causal_conv1d_update, causal_conv1d_update_states)
from tests.numerics import assert_rms


def conv_ref(x, weight, bias=None, residual=None, h0=None, activation=None):
    """One sequence batch [B, T, D]; h0 [B, D, W] (columns 1..W-1 are the W-1 previous inputs).
    Returns y and the full-width final state (last W inputs of [h0, x])."""
    B, T, D = x.shape
    W = weight.shape[1]
    prev = h0 if h0 is not None else x.new_zeros(B, D, W)
    ext = torch.cat([prev, x.transpose(1, 2)], -1)                       # [B, D, W + T]
    y = F.conv1d(ext[..., 1:], weight.unsqueeze(1), bias, groups=D).transpose(1, 2)
    if activation in ('silu', 'swish'):
        y = F.silu(y)
    if residual is not None:
        y = y + residual
    return y, ext[..., -W:]


def _inputs(B, T, D, W, bias, residual, h0, dtype=torch.float32):
    x = torch.randn(B, T, D, dtype=dtype)
    w = torch.randn(D, W, dtype=dtype) / W
    b = torch.randn(D, dtype=dtype) if bias else None
    r = torch.randn(B, T, D, dtype=dtype) if residual else None
    h = torch.randn(B, D, W, dtype=dtype) if h0 else None
    return x, w, b, r, h


def _grads(fn, tensors, dy, dht):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    y, ht = fn(*leaves)
    loss = (y * dy).sum() + ((ht * dht).sum() if ht is not None else 0)
    live = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(loss, live))
    return y, ht, [next(grads) if t is not None else None for t in leaves]


CASES = [
    # B, T, D, W, activation, bias, residual, h0
    (2, 17, 16, 4, 'silu', True, True, True),
    (2, 64, 8, 3, None, False, False, False),
    (1, 1, 8, 4, 'swish', True, False, True),
    (2, 2, 8, 4, 'silu', False, True, True),    # T < W - 1
    (3, 3, 12, 4, None, True, False, True),     # T = W - 1
    (2, 5, 8, 4, 'silu', True, True, False),
    (2, 6, 8, 2, 'silu', True, True, True),     # W = 2
    (1, 4, 8, 1, None, True, False, True),      # W = 1: no history at all
]


@pytest.mark.parametrize("B,T,D,W,activation,bias,residual,h0", CASES)
def test_conv_forward_backward(B, T, D, W, activation, bias, residual, h0):
    x, w, b, r, h = _inputs(B, T, D, W, bias, residual, h0)
    dy = torch.randn(B, T, D)
    dht = torch.randn(B, D, W)
    dht[..., 0] = 0  # column 0 is padding in fla: its gradient is not propagated to x

    y_ref, ht_ref, g_ref = _grads(
        lambda x_, w_, b_, r_, h_: conv_ref(x_, w_, b_, r_, h_, activation),
        [t.double() if t is not None else None for t in (x, w, b, r, h)], dy.double(), dht.double())
    y, ht, g = _grads(
        lambda x_, w_, b_, r_, h_: causal_conv1d(x_, w_, b_, r_, h_, True, activation),
        [x, w, b, r, h], dy, dht)

    assert y.dtype == x.dtype and ht.shape == (B, D, W)
    assert_rms("y", y_ref, y, 1e-6)
    assert_rms("final_state", ht_ref, ht, 1e-6)
    for name, gr, gt in zip(("dx", "dw", "db", "dresidual", "dh0"), g_ref, g):
        assert (gr is None) == (gt is None), name
        if gr is not None:
            assert gt.dtype == torch.float32
            assert_rms(name, gr, gt, 1e-5)


def test_conv_bwd_function_direct():
    """causal_conv1d_bwd with fla's argument names and return order (dx, dw, db, dr, dh0)."""
    x, w, b, r, h = _inputs(2, 9, 8, 4, True, True, True)
    dy = torch.randn(2, 9, 8)
    dx, dw, db, dr, dh0 = causal_conv1d_bwd(x=x, dy=dy, dht=None, weight=w, bias=b, residual=r,
                                            initial_state=h, activation='silu')
    assert dr is dy
    _, _, g_ref = _grads(lambda x_, w_, b_, r_, h_: conv_ref(x_, w_, b_, r_, h_, 'silu'),
                         [t.double() for t in (x, w, b, r, h)], dy.double(), torch.zeros(2, 8, 4).double())
    for name, gr, gt in zip(("dx", "dw", "db", "dr", "dh0"), g_ref, (dx, dw, db, dr, dh0)):
        assert_rms(name, gr, gt, 1e-5)


def test_conv_headed_input_is_flattened():
    """x given as [B, T, H, Dh] with weight [H*Dh, W] (fla rearranges 'b t ... -> b t (...)')."""
    x = torch.randn(2, 7, 2, 4)
    w = torch.randn(8, 4)
    y, _ = causal_conv1d_fwd(x, w, None, None, activation='silu')
    y_ref, _ = conv_ref(x.reshape(2, 7, 8).double(), w.double(), activation='silu')
    assert y.shape == x.shape
    assert_rms("y", y_ref, y.reshape(2, 7, 8), 1e-6)


@pytest.mark.parametrize("with_h0", [False, True])
def test_conv_varlen_equals_per_sequence(with_h0):
    lens = [1, 4, 7, 2, 20]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    N, T, D, W = len(lens), sum(lens), 8, 4
    x = torch.randn(1, T, D)
    w = torch.randn(D, W) / W
    b = torch.randn(D)
    r = torch.randn(1, T, D)
    h = torch.randn(N, D, W) if with_h0 else None
    dy = torch.randn(1, T, D)
    dht = torch.randn(N, D, W)
    dht[..., 0] = 0

    y, ht, g = _grads(lambda x_, w_, b_, r_, h_: causal_conv1d(x_, w_, b_, r_, h_, True, 'silu', cu_seqlens=cu),
                      [x, w, b, r, h], dy, dht)

    def per_sequence(x_, w_, b_, r_, h_):
        ys, hts = [], []
        for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            yn, hn = conv_ref(x_[:, s:e], w_, b_, r_[:, s:e], h_[n:n + 1] if h_ is not None else None, 'silu')
            ys.append(yn)
            hts.append(hn)
        return torch.cat(ys, 1), torch.cat(hts, 0)

    y_ref, ht_ref, g_ref = _grads(per_sequence, [t.double() if t is not None else None for t in (x, w, b, r, h)],
                                  dy.double(), dht.double())
    assert_rms("y", y_ref, y, 1e-6)
    assert_rms("final_state", ht_ref, ht, 1e-6)
    for name, gr, gt in zip(("dx", "dw", "db", "dresidual", "dh0"), g_ref, g):
        if gr is not None:
            assert_rms(name, gr, gt, 1e-5)


def test_final_state_columns():
    """Column c of the state is the input at token T-W+c; shorter sequences shift the old state."""
    D, W = 3, 4
    x = torch.arange(1., 3.).view(1, 2, 1).expand(1, 2, D).contiguous()   # tokens 1, 2
    h0 = torch.tensor([10., 11., 12., 13.]).expand(1, D, W).contiguous()
    ht = causal_conv1d_update_states(x, W, h0)
    assert ht[0, 0].tolist() == [12., 13., 1., 2.]
    ht = causal_conv1d_update_states(x, W)
    assert ht[0, 0].tolist() == [0., 0., 1., 2.]


def test_update_is_inplace_and_matches_full_conv():
    B, T, D, W = 2, 9, 8, 4
    x, w, b, r, _ = _inputs(B, T, D, W, True, True, False)
    y_ref, ht_ref = conv_ref(x.double(), w.double(), b.double(), r.double(), None, 'silu')
    cache = torch.zeros(B, D, W)
    ys = []
    for t in range(T):
        yt, c = causal_conv1d_update(x[:, t:t + 1], cache, r[:, t:t + 1], w, b, 'silu')
        assert c is cache
        ys.append(yt)
    assert_rms("y", y_ref, torch.cat(ys, 1), 1e-6)
    assert_rms("cache", ht_ref, cache, 1e-6)


@pytest.mark.parametrize("T,P", [(12, 5), (6, 1), (3, 2), (2, 1)])
def test_short_convolution_prefill_then_decode(T, P):
    """Prefill P tokens (output_final_state) then decode one token at a time == one full forward."""
    B, D, W = 2, 16, 4
    conv = ShortConvolution(D, W, bias=True, activation='silu')
    x = torch.randn(B, T, D)
    with torch.no_grad():
        y_full, _ = conv(x.clone())
        y0, cache = conv(x[:, :P].clone(), output_final_state=True)
        assert cache.shape == (B, D, W)
        ys = [y0]
        for t in range(P, T):
            yt, cache_t = conv(x[:, t:t + 1].clone(), cache=cache, output_final_state=True)
            assert cache_t is cache  # decoding updates the cache in place
            ys.append(yt)
    assert_rms("y", y_full.double(), torch.cat(ys, 1), 1e-6)


@pytest.mark.parametrize("T", [2, 3, 4, 9])
def test_prefill_with_cache(T):
    """fla's cache-prefill semantics: fla cache = a zero column + the W-1 previous inputs."""
    B, D, W = 2, 8, 4
    conv = ShortConvolution(D, W, bias=False, activation=None)
    past = torch.randn(B, W - 1, D)
    x = torch.randn(B, T, D)
    cache = torch.cat([torch.zeros(B, D, 1), past.transpose(1, 2)], -1)
    with torch.no_grad():
        y, new_cache = conv(x.clone(), cache=cache, output_final_state=True)
        y_ref, _ = conv_ref(torch.cat([past, x], 1).double(), conv.weight[:, 0].double())
    assert_rms("y", y_ref[:, W - 1:], y, 1e-6)
    seq = torch.cat([torch.zeros(B, 1, D), past, x], 1)
    torch.testing.assert_close(new_cache, seq[:, -W:].transpose(1, 2))


def test_varlen_decoding_and_mask():
    D, W = 8, 3
    conv = ShortConvolution(D, W, activation='silu')
    # three length-1 sequences: B*T == N -> step path with a cache per sequence
    cu = torch.tensor([0, 1, 2, 3])
    cache = torch.randn(3, D, W)
    x = torch.randn(1, 3, D)
    with torch.no_grad():
        expect = [conv_ref(x[:, n:n + 1].double(), conv.weight[:, 0].double(), None, None,
                           cache[n:n + 1].double(), 'silu')[0] for n in range(3)]
        y, c = conv(x.clone(), cache=cache, cu_seqlens=cu)
    assert c is cache
    assert_rms("y", torch.cat(expect, 1), y, 1e-6)
    with pytest.raises(ValueError, match="`mask` and `cu_seqlens` cannot be provided at the same time"):
        conv(torch.randn(1, 4, D), mask=torch.ones(1, 4), cu_seqlens=torch.tensor([0, 2, 4]))
    # the mask zeroes padded inputs (in place, as fla)
    xm = torch.randn(2, 5, D)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        y, _ = conv(xm, mask=mask)
    assert (xm[0, :2] == 0).all()
    assert_rms("y", conv_ref(xm.double(), conv.weight[:, 0].double(), activation='silu')[0], y, 1e-6)


def test_step_without_cache_uses_input():
    """Deviation from fla 0.4.0 (fixed later): a single token without cache is convolved, not dropped."""
    conv = ShortConvolution(8, 4, bias=True, activation='silu')
    x = torch.randn(2, 1, 8)
    with torch.no_grad():
        y, c = conv(x.clone())
        y_ref, _ = conv_ref(x.double(), conv.weight[:, 0].double(), conv.bias.double(), activation='silu')
    assert c is None
    assert_rms("y", y_ref, y, 1e-6)


def test_module_surface():
    conv = ShortConvolution(16, 4, bias=False)
    assert conv.weight.shape == (16, 1, 4) and conv.bias is None
    assert conv.activation == 'silu' and conv.backend == 'triton' and conv.state_size == 64
    assert 'activation=silu' in repr(conv) and 'backend=triton' in repr(conv)
    with pytest.raises(ValueError, match=r"Invalid backend: foo, must be one of \['cuda', 'triton'\]"):
        ShortConvolution(4, 3, backend='foo')
    with pytest.raises(AssertionError, match="Activation `gelu` not supported yet."):
        ShortConvolution(4, 3, activation='gelu')
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        c = ShortConvolution(4, 3, backend='cuda', use_fast_conv1d=True)
    msgs = [str(r.message) for r in rec]
    assert any("`use_fast_conv1d` parameter is deprecated" in m for m in msgs)
    # the causal-conv1d package's functions exist (in torch), so backend='cuda' is kept as in fla with
    # the package installed; the fallback is tested in test_convolution_cuda_backend.py
    assert not any("Switching to the Triton implementation instead." in m for m in msgs)
    assert c.backend == 'cuda'


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_forward_backward(dtype):
    x, w, b, r, h = _inputs(2, 33, 16, 4, True, True, True, dtype=dtype)
    dy = torch.randn(2, 33, 16, dtype=dtype)
    y, ht, g = _grads(lambda *a: causal_conv1d(*a, True, 'silu'), [x, w, b, r, h], dy, torch.zeros(2, 16, 4, dtype=dtype))
    y_ref, _, g_ref = _grads(lambda x_, w_, b_, r_, h_: conv_ref(x_, w_, b_, r_, h_, 'silu'),
                             [t.double() for t in (x, w, b, r, h)], dy.double(), torch.zeros(2, 16, 4).double())
    assert y.dtype == dtype and ht.dtype == dtype and all(t.dtype == dtype for t in g)
    # fp32 accumulation, one rounding of each output (and of the recomputed pre-activation)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert_rms("y", y_ref, y, tol)
    for name, gr, gt in zip(("dx", "dw", "db", "dresidual", "dh0"), g_ref, g):
        assert_rms(name, gr, gt, 2 * tol)
