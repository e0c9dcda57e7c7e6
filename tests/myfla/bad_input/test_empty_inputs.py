"""Empty batches (B = 0), empty sequences (T = 0, or zero-length entries of ``cu_seqlens``) and
all-padding masks: outputs of the right shapes, states passed through unchanged.

What fla 0.4.0 does (read from its code; Triton kernels need a GPU): every kernel grid of these ops
is sized by chunks or tokens, and Triton's launcher skips a grid with a zero dimension, so the
outputs stay as allocated (empty tensors); the state kernels (``chunk_gated_delta_rule_fwd_h``,
the fused recurrence, ``causal_conv1d_states_fwd_kernel``) run once per sequence and store the
initial state (or zeros) as the final one. A layer given an all-padding mask therefore returns
``pad_input`` of nothing: zeros. myfla crashed on these (issue 15, item 10); the tests pin fla's
semantics, gradients included (the final state's gradient reaches the initial state unchanged).
"""

from __future__ import annotations

import pytest
import torch

from myfla.layers import GatedDeltaNet, KimiDeltaAttention
from myfla.models.utils import Cache
from myfla.modules import ShortConvolution
from myfla.modules.convolution import causal_conv1d
from myfla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from myfla.ops.kda import chunk_kda, fused_recurrent_kda
from tests.fla_refs import load_function
from tests.myfla.bad_input.corpus import OPS, H, K, V, op_inputs
from tests.numerics import assert_rms

SHAPES = [(1, 0), (2, 0), (0, 5), (0, 0), (0, 100)]     # (B, T)


def _leaves(B, T):
    q, k, v, g, beta = op_inputs(B, T)
    return [t.requires_grad_() for t in (q, k, v, g, beta)]


def _run(name, q, k, v, g, beta, **kw):
    """Call op ``name`` on KDA-shaped inputs (the gated delta rule takes the head-wise gate g[..., 0])."""
    if name == 'chunk_kda':
        return chunk_kda(q, k, v, g, beta, **kw)
    if name == 'fused_recurrent_kda':
        return fused_recurrent_kda(q, k, v, g, beta, **kw)
    if name == 'chunk_gated_delta_rule':
        return chunk_gated_delta_rule(q, k, v, g[..., 0], beta, **kw)
    return fused_recurrent_gated_delta_rule(q, k, v, g[..., 0], beta=beta, **kw)


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("B,T", SHAPES)
@pytest.mark.parametrize("with_h0", [False, True])
def test_op_on_empty_input(name, B, T, with_h0):
    q, k, v, g, beta = op_inputs(B, T)
    h0 = torch.randn(B, H, K, V) if with_h0 else None
    o, ht = _run(name, q, k, v, g, beta, initial_state=h0, output_final_state=True)
    assert o.shape == (B, T, H, V) and o.dtype == v.dtype
    assert ht.shape == (B, H, K, V) and ht.dtype == torch.float32
    assert torch.equal(ht, h0 if with_h0 else torch.zeros(B, H, K, V))


@pytest.mark.parametrize("name", ['chunk_kda', 'chunk_gated_delta_rule'])
@pytest.mark.parametrize("B,T", [(1, 0), (2, 0), (0, 7)])
def test_chunk_backward_on_empty_input(name, B, T):
    """The final state is the initial one, so its gradient is the initial state's, unchanged."""
    q, k, v, g, beta = _leaves(B, T)
    h0 = torch.randn(B, H, K, V, requires_grad=True)
    o, ht = _run(name, q, k, v, g, beta, initial_state=h0, output_final_state=True)
    dht = torch.randn_like(ht)
    grads = torch.autograd.grad((o * torch.randn_like(o)).sum() + (ht * dht).sum(), (q, k, v, g, beta, h0))
    for t, dt in zip((q, k, v, g, beta), grads[:5]):
        assert dt.shape == t.shape
    assert torch.equal(grads[5], dht)


@pytest.fixture(scope="module")
def naive(fla040_root):
    return load_function(fla040_root, "fla/ops/kda/naive.py", "naive_recurrent_kda")


@pytest.mark.parametrize("name", sorted(OPS))
def test_varlen_with_empty_sequences_matches_per_sequence_oracle(name, naive):
    """Zero-length sequences among others (what an all-padding row of a masked batch becomes):
    their final state is their initial state; the others match fla's naive recurrence."""
    cu = torch.tensor([0, 0, 6, 6, 13, 13], dtype=torch.int32)
    q, k, v, g, beta = op_inputs(1, 13)
    if name.endswith('gated_delta_rule'):
        g = g[..., :1].expand_as(g).contiguous()          # a head-wise gate, expanded for the oracle
    h0 = torch.randn(5, H, K, V)
    o, ht = _run(name, q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if s == e:
            assert torch.equal(ht[n], h0[n])
            continue
        o_ref, ht_ref = naive(*(t[:, s:e].double() for t in (q, k, v, g, beta)), scale=K ** -0.5,
                              initial_state=h0[n:n + 1].double(), output_final_state=True)
        assert_rms(f"o[{s}:{e}]", o_ref, o[:, s:e], 1e-5)
        assert_rms(f"ht[{n}]", ht_ref[0], ht[n], 1e-5)


# ---------------------------------------------------------------- ShortConvolution
@pytest.mark.parametrize("backend", ['triton', 'cuda'])
@pytest.mark.parametrize("B,T", [(1, 0), (3, 0), (0, 0)])
@pytest.mark.parametrize("with_cache", [False, True])
def test_short_convolution_on_empty_input(backend, B, T, with_cache):
    conv = ShortConvolution(16, 4, bias=True, backend=backend)
    x = torch.randn(B, T, 16)
    cache = torch.randn(B, 16, 4) if with_cache else None
    with torch.no_grad():
        y, state = conv(x, cache=None if cache is None else cache.clone(), output_final_state=True)
    assert y.shape == (B, T, 16) and state.shape == (B, 16, 4)
    expected = cache.clone() if with_cache else torch.zeros(B, 16, 4)
    if backend == 'cuda':
        expected[..., 0] = 0           # fla's cuda path rebuilds the cache with a zero column 0
    assert torch.equal(state, expected)


def test_causal_conv1d_backward_on_empty_sequence():
    """T = 0 with an initial state: the final state is the initial one; the gradient of its
    columns 1..W-1 reaches the initial state (column 0 is never read and gets none, as fla)."""
    x = torch.randn(2, 0, 8, requires_grad=True)
    w = torch.randn(8, 4, requires_grad=True)
    h0 = torch.randn(2, 8, 4, requires_grad=True)
    y, ht = causal_conv1d(x, w, None, None, h0, True, 'silu')
    assert y.shape == (2, 0, 8) and torch.equal(ht, h0.detach())
    dht = torch.randn_like(ht)
    dx, dw, dh0 = torch.autograd.grad((ht * dht).sum(), (x, w, h0))
    assert dx.shape == x.shape and torch.equal(dw, torch.zeros_like(w))
    assert torch.equal(dh0[..., 1:], dht[..., 1:]) and torch.equal(dh0[..., 0], torch.zeros(2, 8))


# ---------------------------------------------------------------- layers: all-padding masks
def _layer(cls):
    return cls(hidden_size=32, head_dim=16, num_heads=2, layer_idx=0)


@pytest.mark.parametrize("cls", [KimiDeltaAttention, GatedDeltaNet])
@pytest.mark.parametrize("T", [10, 100])         # fused_recurrent (q_len <= 64) and chunk modes
def test_layer_all_padding_batch(cls, T):
    layer = _layer(cls).eval()
    x = torch.randn(2, T, 32)
    mask = torch.zeros(2, T, dtype=torch.long)
    cache = Cache()
    with torch.no_grad():
        o, _, cache = layer(x, attention_mask=mask, past_key_values=cache, use_cache=True)
    assert torch.equal(o, torch.zeros_like(o))
    state = cache[0]
    assert torch.equal(state['recurrent_state'], torch.zeros(2, layer.num_v_heads, 16, layer.head_v_dim))
    assert all(torch.equal(c, torch.zeros_like(c)) and c.shape[0] == 2 for c in state['conv_state'])


@pytest.mark.parametrize("cls", [KimiDeltaAttention, GatedDeltaNet])
@pytest.mark.parametrize("T", [10, 100])
def test_layer_batch_with_one_all_padding_row(cls, T):
    """The padded row is zero; the other row equals its own unpadded run."""
    layer = _layer(cls).eval()
    x = torch.randn(2, T, 32)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[0] = 0
    with torch.no_grad():
        o, _, _ = layer(x, attention_mask=mask)
        alone, _, _ = layer(x[1:])
    assert torch.equal(o[0], torch.zeros_like(o[0]))
    assert_rms("o[1]", alone[0].double(), o[1], 1e-5)


@pytest.mark.parametrize("cls", [KimiDeltaAttention, GatedDeltaNet])
def test_layer_all_padding_training_backward(cls):
    """Training (chunk mode, q_len > 64) on an all-padding batch: zero output, zero gradients."""
    layer = _layer(cls).train()
    x = torch.randn(2, 80, 32, requires_grad=True)
    o, _, _ = layer(x, attention_mask=torch.zeros(2, 80, dtype=torch.long))
    o.sum().backward()
    assert torch.equal(o, torch.zeros_like(o))
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in layer.parameters())
