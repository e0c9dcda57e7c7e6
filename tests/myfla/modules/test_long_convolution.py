"""fla 0.4.0's FFT long convolutions in ``myfla.modules.convolution``: ``fft_conv``,
``LongConvolution``, ``PositionalEmbedding``, ``ImplicitLongConvolution``.

Oracle: the direct (time-domain) convolution with ``F.conv1d`` in fp64, causal for ``k`` and
anticausal for ``k_rev``, plus the residual ``u``; gradients through fp64 autograd of it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from myfla.modules import convolution as conv
from tests.numerics import assert_rms

F64 = torch.float64


def direct_conv(u, k, k_rev=None):
    """y[b, h, t] = sum_{s<=t} k[h, t-s] u[b, h, s] (+ sum_{s>=t} k_rev[h, s-t] u[b, h, s]) + u.
    A 4-D ``u`` is ``[B, H, X, L]``: filter ``h`` serves all ``X`` rows of head ``h``."""
    if u.dim() == 4:
        per_row = direct_conv(u.transpose(1, 2).reshape(-1, u.shape[1], u.shape[-1]), k, k_rev) - \
            u.transpose(1, 2).reshape(-1, u.shape[1], u.shape[-1])
        per_row = per_row.reshape(u.shape[0], u.shape[2], u.shape[1], u.shape[-1]).transpose(1, 2)
        return per_row + u
    shape = u.shape
    H, L = shape[-2], shape[-1]
    u3 = u.reshape(-1, H, L)
    y = F.conv1d(F.pad(u3, (L - 1, 0)), k.flip(-1).unsqueeze(1), groups=H)
    if k_rev is not None:
        y = y + F.conv1d(F.pad(u3, (0, L - 1)), k_rev.unsqueeze(1), groups=H)
    return y.reshape(shape) + u


@pytest.mark.parametrize("shape,rev,gelu,mask", [
    ((2, 3, 17), False, False, False),
    ((1, 4, 32), True, True, False),
    ((3, 2, 9), False, True, True),
    ((2, 3, 2, 11), True, False, False),     # 4-D [B, H, X, L]: filter h serves the X rows
])
def test_fft_conv_vs_direct_convolution(shape, rev, gelu, mask):
    H, L = shape[1], shape[-1]
    u = torch.randn(shape, requires_grad=True)
    k = (torch.randn(H, L) / L).requires_grad_()
    k_rev = (torch.randn(H, L) / L).requires_grad_() if rev else None
    m = (torch.rand(shape[0], shape[1]) > 0.3).float() if mask else None
    y = conv.fft_conv(u, k, m, gelu=gelu, k_rev=k_rev)
    assert y.dtype == u.dtype and y.shape == u.shape
    leaves = [u, k] + ([k_rev] if rev else [])
    g = torch.randn(shape)
    grads = torch.autograd.grad(y, leaves, g)

    l64 = [t.detach().double().requires_grad_() for t in leaves]
    ref = direct_conv(l64[0], l64[1], l64[2] if rev else None)
    if gelu:
        ref = F.gelu(ref)
    if mask:
        ref = ref * m.double()[..., None]
    grads_ref = torch.autograd.grad(ref, l64, g.double())
    assert_rms("y", ref, y, 1e-6)
    for name, gr, gt in zip(("du", "dk", "dk_rev"), grads_ref, grads):
        assert_rms(name, gr, gt, 1e-5)


def test_fft_conv_low_precision_input_keeps_dtype():
    u = torch.randn(2, 3, 20).bfloat16()
    k = torch.randn(3, 20) / 20
    y = conv.fft_conv(u, k, None, gelu=False)
    assert y.dtype == torch.bfloat16
    assert_rms("y", direct_conv(u.double(), k.double()), y, 1e-2)


def test_long_convolution_module():
    B, T, D, max_len = 2, 13, 6, 13
    m = conv.LongConvolution(D, max_len)
    assert list(m.state_dict()) == ["filter"] and m.filter.shape == (D, max_len) and m.filter.requires_grad
    x = torch.randn(B, T, D, requires_grad=True)
    y = m(x)
    assert y.shape == (B, T, D)
    g = torch.randn(B, T, D)
    dx, dk = torch.autograd.grad(y, (x, m.filter), g)
    x64, k64 = x.detach().double().requires_grad_(), m.filter.detach().double().requires_grad_()
    ref = direct_conv(x64.transpose(1, 2), k64).transpose(1, 2)
    dx_ref, dk_ref = torch.autograd.grad(ref, (x64, k64), g.double())
    assert_rms("y", ref, y, 1e-6)
    assert_rms("dx", dx_ref, dx, 1e-5)
    assert_rms("dfilter", dk_ref, dk, 1e-5)


def test_positional_embedding_formula():
    emb_dim, L = 7, 10
    pe = conv.PositionalEmbedding(emb_dim, L)
    z = pe.z
    assert z.shape == (1, L, emb_dim) and not z.requires_grad and list(pe.state_dict()) == ["z"]
    bands = (emb_dim - 1) // 2
    t = torch.arange(L, dtype=F64)
    f = torch.linspace(1e-4, bands - 1, bands, dtype=F64)
    ang = f[None, :] * (2 * math.pi * t[:, None] / L)
    ref = torch.cat([(t / (L - 1))[:, None], torch.cos(ang), -torch.sin(ang)], -1)
    torch.testing.assert_close(z[0].double(), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(pe(4), z[:, :4])
    # as fla 0.4.0: no band count for emb_dim <= 1
    with pytest.raises(UnboundLocalError):
        conv.PositionalEmbedding(1, L)


def test_implicit_long_convolution():
    B, T, D, max_len = 2, 9, 5, 16
    m = conv.ImplicitLongConvolution(D, max_len, d_emb=5, d_hidden=8)
    assert list(m.state_dict()) == ["pos_emb.z", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    k = m.filter(T)
    assert k.shape == (1, D, T)
    torch.testing.assert_close(k, m.mlp(m.pos_emb.z[:, :T]).transpose(1, 2))
    x = torch.randn(B, T, D, requires_grad=True)
    y = m(x)
    g = torch.randn(B, T, D)
    dx, dw = torch.autograd.grad(y, (x, m.mlp[0].weight), g)
    x64 = x.detach().double().requires_grad_()
    m64 = conv.ImplicitLongConvolution(D, max_len, d_emb=5, d_hidden=8).double()
    m64.load_state_dict(m.state_dict())
    ref = direct_conv(x64.transpose(1, 2), m64.filter(T)[0]).transpose(1, 2)
    dx_ref, dw_ref = torch.autograd.grad(ref, (x64, m64.mlp[0].weight), g.double())
    assert_rms("y", ref, y, 1e-6)
    assert_rms("dx", dx_ref, dx, 1e-5)
    assert_rms("dmlp0", dw_ref, dw, 1e-5)
    with pytest.raises(AssertionError, match="d_emb must be odd"):
        conv.ImplicitLongConvolution(D, max_len, d_emb=4)
