"""myfla.ops.flash_attn (flash-attn's semantics in torch, a manifest deviation of fla.layers.attn)
against an explicit softmax written from flash-attn's documented semantics
(tests/myfla/models/attention_reference.py), in fp64; SDPA against the explicit fallback."""

from __future__ import annotations

import pytest
import torch

from myfla import _torch_compat as compat
from myfla.ops.flash_attn import flash_attn_func, flash_attn_varlen_func
from tests.myfla.models.attention_reference import ref_attention, ref_flash_attn_func, ref_flash_attn_varlen_func
from tests.numerics import assert_rms

WINDOWS = [(-1, -1), (3, 0), (2, 1)]


def _qkv(B, Tq, Tk, Hq, Hk, D, dtype=torch.float64, requires_grad=False):
    q = torch.randn(B, Tq, Hq, D, dtype=dtype, requires_grad=requires_grad)
    k = torch.randn(B, Tk, Hk, D, dtype=dtype, requires_grad=requires_grad)
    v = torch.randn(B, Tk, Hk, D, dtype=dtype, requires_grad=requires_grad)
    return q, k, v


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("Tq,Tk", [(9, 9), (1, 7), (3, 7)])
@pytest.mark.parametrize("use_sdpa", [True, False])
def test_dense_matches_explicit_softmax(causal, window, Tq, Tk, use_sdpa):
    q, k, v = _qkv(2, Tq, Tk, 4, 2, 8)
    o = flash_attn_func(q, k, v, causal=causal, window_size=window, use_sdpa=use_sdpa)
    ref = ref_flash_attn_func(q, k, v, causal=causal, window_size=window)
    assert o.shape == (2, Tq, 4, 8) and o.dtype == q.dtype
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-12)


def test_decoding_step_sees_the_whole_cache():
    """Bottom-right alignment: one query against 6 keys sees all of them (causal)."""
    q, k, v = _qkv(1, 1, 6, 2, 2, 4)
    o = flash_attn_func(q, k, v, causal=True)
    full = flash_attn_func(q, k, v, causal=False)
    torch.testing.assert_close(o, full)


def test_rows_without_keys_are_zero():
    """Tq > Tk with a causal mask: the first Tq - Tk queries see no key; flash-attn returns zeros."""
    q, k, v = _qkv(1, 5, 3, 2, 1, 4)
    for use_sdpa in (True, False):
        o = flash_attn_func(q, k, v, causal=True, use_sdpa=use_sdpa)
        assert torch.equal(o[:, :2], torch.zeros_like(o[:, :2]))
        torch.testing.assert_close(o, ref_flash_attn_func(q, k, v, causal=True))


def test_softmax_scale_and_gqa_head_mapping():
    q, k, v = _qkv(1, 4, 4, 6, 3, 5)
    o = flash_attn_func(q, k, v, causal=True, softmax_scale=0.3)
    # head h reads kv head h // 2: compare head 3 with a single-head run on kv head 1
    single = ref_attention(q[0, :, 3:4], k[0, :, 1:2], v[0, :, 1:2], causal=True, softmax_scale=0.3)
    torch.testing.assert_close(o[0, :, 3:4], single)
    with pytest.raises(ValueError, match="must divide"):
        k4 = torch.randn(1, 4, 4, 5, dtype=torch.float64)
        flash_attn_func(q, k4, k4)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("use_sdpa", [True, False])
def test_varlen_prefill_and_decode(window, use_sdpa):
    # prefill: equal query/key lengths, one sequence of length 1
    lens = [5, 1, 8]
    cu = torch.tensor([0, 5, 6, 14], dtype=torch.int32)
    q = torch.randn(14, 4, 8, dtype=torch.float64)
    k = torch.randn(14, 2, 8, dtype=torch.float64)
    v = torch.randn(14, 2, 8, dtype=torch.float64)
    o = flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), causal=True, window_size=window,
                               use_sdpa=use_sdpa)
    torch.testing.assert_close(o, ref_flash_attn_varlen_func(q, k, v, cu, cu, 8, 8, causal=True, window_size=window))
    # decode: one query per sequence against caches of different lengths
    cu_q = torch.arange(4, dtype=torch.int32)
    qd = torch.randn(3, 4, 8, dtype=torch.float64)
    o = flash_attn_varlen_func(qd, k, v, cu_q, cu, 1, 8, causal=True, window_size=window, use_sdpa=use_sdpa)
    torch.testing.assert_close(o, ref_flash_attn_varlen_func(qd, k, v, cu_q, cu, 1, 8, causal=True,
                                                             window_size=window))


def test_gradients_match_the_explicit_softmax():
    q, k, v = _qkv(2, 6, 6, 4, 2, 8, requires_grad=True)
    do = torch.randn(2, 6, 4, 8, dtype=torch.float64)
    grads = torch.autograd.grad((flash_attn_func(q, k, v, causal=True, window_size=(3, 0)) * do).sum(), (q, k, v))
    ref = torch.autograd.grad((ref_flash_attn_func(q, k, v, causal=True, window_size=(3, 0)) * do).sum(), (q, k, v))
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_accumulate_in_fp32(dtype):
    q, k, v = _qkv(1, 16, 16, 2, 2, 32, dtype=dtype)
    o = flash_attn_func(q, k, v, causal=True)
    assert o.dtype == dtype
    ref = ref_flash_attn_func(q.double(), k.double(), v.double(), causal=True)
    assert_rms("o", ref, o, 1e-5 if dtype == torch.float32 else 1e-2)
    # the explicit fallback gives the same numbers as SDPA
    torch.testing.assert_close(flash_attn_func(q, k, v, causal=True, use_sdpa=False), o,
                               rtol=1e-5 if dtype == torch.float32 else 2e-2,
                               atol=1e-6 if dtype == torch.float32 else 2e-2)


def test_fallback_is_used_without_sdpa(monkeypatch):
    """torch < 2.1 has no usable SDPA: the explicit softmax computes the same numbers."""
    q, k, v = _qkv(2, 7, 7, 2, 1, 4)
    expected = flash_attn_func(q, k, v, causal=True)
    monkeypatch.setattr(compat, "HAS_SDPA", False)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", None, raising=False)
    torch.testing.assert_close(flash_attn_func(q, k, v, causal=True), expected, rtol=1e-12, atol=1e-12)
