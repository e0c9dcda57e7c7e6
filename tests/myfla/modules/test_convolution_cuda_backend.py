"""``ShortConvolution(backend='cuda')``: fla 0.4.0's path through the ``causal-conv1d`` package,
with the package re-expressed in torch (myfla/modules/causal_conv1d_package.py).

The oracle is written here from the package's documented semantics (its torch references
``causal_conv1d_ref`` / ``causal_conv1d_update_ref``: ``F.conv1d`` over ``[initial_states, x]``,
final states = the last ``W - 1`` inputs, the update shifts ``[conv_state, x]``) plus fla's glue
around it (fla/modules/convolution.py:L750-L791 and L979-L1005, 0.4.0): the prefill reads the last
``W - 1`` cache columns and returns a new ``[N, D, W]`` cache with column 0 zero; decoding updates
the cache in place. Everything is compared in fp64 against fp32 runs of the port.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import myfla.modules.convolution as convolution
from myfla.modules import ShortConvolution
from myfla.modules.causal_conv1d_package import causal_conv1d_fn, causal_conv1d_update
from tests.numerics import assert_rms


def package_fn_ref(x, weight, bias=None, initial_states=None, activation=None):
    """``x`` [B, D, T] -> (out [B, D, T], final_states [B, D, W-1]), the package's reference math."""
    D, W = weight.shape
    before = initial_states if initial_states is not None else x.new_zeros(x.shape[0], D, W - 1)
    xx = torch.cat([before, x], -1)
    out = F.conv1d(xx, weight.unsqueeze(1), bias, groups=D)
    out = F.silu(out) if activation in ('silu', 'swish') else out
    return out, xx[..., -(W - 1):]


def package_update_ref(x, conv_state, weight, bias=None, activation=None):
    """``x`` [B, D] one token, ``conv_state`` [B, D, S] -> (out [B, D], new conv_state)."""
    D, W = weight.shape
    x_new = torch.cat([conv_state, x.unsqueeze(-1)], -1)
    out = F.conv1d(x_new[..., -W:], weight.unsqueeze(1), bias, groups=D)[..., -1]
    out = F.silu(out) if activation in ('silu', 'swish') else out
    return out, x_new[..., -conv_state.shape[-1]:]


def cuda_prefill_ref(x, weight, bias, residual, cache, activation, output_final_state):
    """fla's backend='cuda' prefill around the package: ``x`` [B, T, D], ``cache`` [N, D, S>=W-1]."""
    B, T, D = x.shape
    W = weight.shape[1]
    init = cache[:, :, -(W - 1):] if cache is not None else None
    out, final = package_fn_ref(x.transpose(1, 2), weight, bias, init, activation)
    y = out.transpose(1, 2)
    if residual is not None:
        y = y + residual
    if not output_final_state:
        return y, cache
    new_cache = torch.cat([x.new_zeros(B, D, 1), final], -1)
    return y, new_cache


def _conv(D, W, bias, activation, backend='cuda'):
    conv = ShortConvolution(D, W, bias=bias, activation=activation, backend=backend)
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight) / W)
        if bias:
            conv.bias.copy_(torch.randn_like(conv.bias))
    return conv


def test_backend_cuda_is_kept_and_fla_fallback_still_exists(monkeypatch):
    """With the package's functions available, fla keeps backend='cuda' without a word; without
    them (fla on a machine lacking the package) it warns and switches to Triton."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conv = ShortConvolution(16, 4, backend='cuda')
    assert conv.backend == 'cuda' and 'backend=cuda' in repr(conv)
    monkeypatch.setattr(convolution, "causal_conv1d_fn", None)
    with pytest.warns(UserWarning, match="Switching to the Triton implementation instead."):
        conv = ShortConvolution(16, 4, backend='cuda')
    assert conv.backend == 'triton'


PREFILL = [
    # B, T, D, W, cache width S, bias, residual, activation, output_final_state
    (2, 17, 16, 4, 3, True, True, 'silu', True),        # the package's [B, D, W-1] cache
    (2, 17, 16, 4, 4, True, False, None, True),         # fla's [B, D, W] cache
    (3, 2, 8, 4, 3, False, True, 'swish', True),        # T < W - 1: final state mixes cache and x
    (2, 5, 24, 3, 2, True, True, 'silu', False),
    (1, 9, 8, 2, 1, False, False, 'silu', True),
    (2, 6, 16, 4, None, True, True, 'silu', True),      # no cache
    (2, 6, 16, 4, None, True, True, 'silu', False),
]


@pytest.mark.parametrize("B,T,D,W,S,bias,residual,activation,final", PREFILL)
def test_prefill_matches_package_reference(B, T, D, W, S, bias, residual, activation, final):
    conv = _conv(D, W, bias, activation)
    x = torch.randn(B, T, D)
    r = torch.randn(B, T, D) if residual else None
    cache = torch.randn(B, D, S) if S is not None else None
    given = cache.clone() if cache is not None else None
    with torch.no_grad():
        y, state = conv(x.clone(), residual=r, cache=given, output_final_state=final)
    p = {k: v.double() for k, v in conv.state_dict().items()}
    y_ref, state_ref = cuda_prefill_ref(x.double(), p['weight'][:, 0], p.get('bias'),
                                        r.double() if r is not None else None,
                                        cache.double() if cache is not None else None, activation, final)
    assert_rms("y", y_ref, y, 1e-6)
    if final:
        assert state.shape == (B, D, W) and torch.equal(state[..., 0], torch.zeros(B, D))
        assert_rms("cache", state_ref, state, 1e-7)
        if given is not None:
            assert torch.equal(given, cache)                # the prefill leaves the given cache alone
    else:
        assert state is given                               # fla returns the given cache (or None)


@pytest.mark.parametrize("S", [3, 4, 6])               # W - 1, W, and a longer state
@pytest.mark.parametrize("bias,residual,activation", [(True, True, 'silu'), (False, False, None)])
def test_decoding_matches_package_reference(S, bias, residual, activation):
    B, D, W, steps = 3, 16, 4, 5
    conv = _conv(D, W, bias, activation)
    cache = torch.randn(B, D, S)
    state_ref = cache.double().clone()
    p = {k: v.double() for k, v in conv.state_dict().items()}
    for _ in range(steps):
        x = torch.randn(B, 1, D)
        r = torch.randn(B, 1, D) if residual else None
        with torch.no_grad():
            y, returned = conv(x, residual=r, cache=cache, output_final_state=True)
        assert returned is cache                           # updated in place
        out_ref, state_ref = package_update_ref(x[:, 0].double(), state_ref, p['weight'][:, 0], p.get('bias'),
                                                activation)
        y_ref = out_ref.unsqueeze(1) + (r.double() if r is not None else 0)
        assert_rms("y", y_ref, y, 1e-6)
        assert_rms("cache", state_ref, cache, 1e-7)


@pytest.mark.parametrize("B,T,D,W", [(2, 64, 128, 4), (3, 128, 256, 4), (2, 128, 64, 3), (2, 64, 96, 2)])
def test_mixed_backend(B, T, D, W):
    """fla's tests/modules/test_conv.py::test_mixed_backend (v0.4.0), which needs the package in fla:
    a cuda prefill from a [B, D, W-1] cache handed to a triton decode, and the reverse, both equal to
    a triton run over the whole input. (fla's list also has D = 100, which the package's kernel
    refuses: channels must be divisible by 8.)"""
    torch.manual_seed(42)
    x = torch.randn(B, T + 1, D)
    residual = torch.randn_like(x)
    conv = _conv(D, W, True, 'swish')

    cache = torch.randn(B, D, W - 1)
    with torch.no_grad():
        y_cuda_prefill, final_state = conv(x[:, :T], residual=residual[:, :T], cache=cache, output_final_state=True)
        conv.backend = 'triton'
        y_triton_decode, _ = conv(x[:, T:], residual=residual[:, T:], cache=final_state, output_final_state=True)
        full_cache = torch.cat((torch.zeros_like(cache[..., :1]), cache), -1)
        y_triton_full, _ = conv(x, residual=residual, cache=full_cache.clone())
        assert_rms("cuda->triton", y_triton_full, torch.cat([y_cuda_prefill, y_triton_decode], 1), 1e-6)

        y_triton_prefill, final_state = conv(x[:, :T], residual=residual[:, :T], cache=full_cache.clone(),
                                             output_final_state=True)
        conv.backend = 'cuda'
        y_cuda_decode, _ = conv(x[:, T:], residual=residual[:, T:], cache=final_state, output_final_state=True)
        assert_rms("triton->cuda", y_triton_full, torch.cat([y_triton_prefill, y_cuda_decode], 1), 1e-6)


def test_varlen_without_state_masks_sequence_boundaries():
    conv = _conv(16, 4, True, 'silu')
    cu = torch.tensor([0, 3, 3, 11, 20])
    x = torch.randn(1, 20, 16)
    with torch.no_grad():
        y, state = conv(x, cu_seqlens=cu)
    assert state is None
    p = {k: v.double() for k, v in conv.state_dict().items()}
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if s == e:
            continue
        out, _ = package_fn_ref(x[:, s:e].double().transpose(1, 2), p['weight'][:, 0], p['bias'], None, 'silu')
        assert_rms(f"y[{s}:{e}]", out.transpose(1, 2), y[:, s:e], 1e-6)


def test_varlen_with_state_switches_to_triton_as_fla():
    conv = _conv(16, 4, True, 'silu')
    with pytest.warns(UserWarning, match="The CUDA backend does not support both `cu_seqlens` and `cache`"):
        with torch.no_grad():
            conv(torch.randn(1, 10, 16), cu_seqlens=torch.tensor([0, 4, 10]), output_final_state=True)
    assert conv.backend == 'triton'


def test_gradients_match_reference():
    """The package's autograd function gives dx, dweight, dbias and the initial states' gradient,
    and fla's glue passes the returned cache's gradient back through the package's final states."""
    B, T, D, W = 2, 9, 16, 4
    x = torch.randn(B, T, D, requires_grad=True)
    w = (torch.randn(D, W) / W).requires_grad_()
    b = torch.randn(D, requires_grad=True)
    r = torch.randn(B, T, D, requires_grad=True)
    h = torch.randn(B, D, W - 1, requires_grad=True)
    dy, dht = torch.randn(B, T, D), torch.randn(B, D, W)
    y, ht = convolution.causal_conv1d(x, w, b, r, h, True, 'silu', 'cuda')
    grads = torch.autograd.grad((y * dy).sum() + (ht * dht).sum(), (x, w, b, r, h))
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b, r, h)]
    y_ref, ht_ref = cuda_prefill_ref(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], 'silu', True)
    grads_ref = torch.autograd.grad((y_ref * dy.double()).sum() + (ht_ref * dht.double()).sum(), leaves)
    assert_rms("y", y_ref, y, 1e-6)
    for name, g_ref, g in zip(("dx", "dw", "db", "dresidual", "dcache"), grads_ref, grads):
        assert_rms(name, g_ref, g, 1e-6)


# ---------------------------------------------------------------- the package's own limits and messages
def test_package_limits():
    x = torch.randn(2, 16, 8).transpose(1, 2).contiguous().transpose(1, 2)     # channel-last [B, D, T]
    with pytest.raises(RuntimeError, match="causal_conv1d only supports width between 2 and 4"):
        causal_conv1d_fn(x, torch.randn(16, 5))
    with pytest.raises(RuntimeError, match="causal_conv1d only supports channel dimension divisible by 8"):
        causal_conv1d_fn(torch.randn(2, 8, 12).transpose(1, 2), torch.randn(12, 4))
    with pytest.raises(RuntimeError, match="input_type == at::ScalarType::Float"):
        causal_conv1d_fn(x.double(), torch.randn(16, 4))
    with pytest.raises(NotImplementedError, match="activation must be None, silu, or swish"):
        causal_conv1d_fn(x, torch.randn(16, 4), activation='gelu')
    with pytest.raises(AssertionError, match="initial_states must be None if seq_idx is not None"):
        causal_conv1d_fn(x, torch.randn(16, 4), seq_idx=torch.zeros(2, 8, dtype=torch.int32),
                         initial_states=torch.randn(2, 16, 3))
    with pytest.raises(RuntimeError, match=r"initial_states must have shape \(batch_size, dim, width - 1\)"):
        causal_conv1d_fn(x, torch.randn(16, 4), initial_states=torch.randn(2, 16, 4).transpose(1, 2)
                         .contiguous().transpose(1, 2))
    with pytest.raises(RuntimeError, match="conv_state_len >= width - 1"):
        causal_conv1d_update(torch.randn(2, 16), torch.randn(2, 16, 2), torch.randn(16, 4))
    with pytest.raises(RuntimeError, match="causal_conv1d only supports width between 2 and 4"):
        ShortConvolution(16, 5, backend='cuda')(torch.randn(2, 6, 16))


def test_package_padding_tokens_output_zero():
    """seq_idx < 0 marks padding in the package: those outputs are 0 and no window reads them."""
    x = torch.randn(1, 6, 8).transpose(1, 2)
    w, b = torch.randn(8, 3), torch.randn(8)
    seq_idx = torch.tensor([[0, 0, -1, 1, 1, 1]], dtype=torch.int32)
    out = causal_conv1d_fn(x, w, b, seq_idx=seq_idx, activation='silu')
    assert torch.equal(out[..., 2], torch.zeros(1, 8))
    for s, e in ((0, 2), (3, 6)):
        ref, _ = package_fn_ref(x[..., s:e].double(), w.double(), b.double(), None, 'silu')
        assert_rms(f"out[{s}:{e}]", ref, out[..., s:e], 1e-6)


def _update_circular_reference(x, state, w, b, cache_seqlens):
    """The package's circular-buffer update, token by token (csrc/causal_conv1d_update.cu): read the
    W-1 inputs before ``cache_seqlens % S``, then write each token at the next slot."""
    B, D, L = x.shape
    W, S = w.shape[-1], state.shape[-1]
    out = torch.empty(B, D, L, dtype=torch.float64)
    for i in range(B):
        pos = int(cache_seqlens[i]) % S
        window = [state[i, :, (pos - (W - 1) + j) % S].double() for j in range(W - 1)]
        for t in range(L):
            window.append(x[i, :, t].double())
            out[i, :, t] = sum(w[:, j].double() * window[j] for j in range(W)) + b.double()
            window.pop(0)
            state[i, :, pos] = x[i, :, t]
            pos = (pos + 1) % S
    return out


@pytest.mark.parametrize("L", [1, 3, 9])
def test_update_circular_buffer_matches_token_by_token_reference(L):
    B, D, W, S = 3, 16, 4, 6
    x, w, b = torch.randn(B, D, L), torch.randn(D, W), torch.randn(D)
    state = torch.randn(B, D, S)
    cache_seqlens = torch.tensor([0, 4, 13], dtype=torch.int32)
    state_ref = state.clone()
    out = causal_conv1d_update(x, state, w, b, cache_seqlens=cache_seqlens)
    out_ref = _update_circular_reference(x, state_ref, w, b, cache_seqlens)
    assert_rms("out", out_ref, out, 1e-6)
    assert torch.equal(state, state_ref)


def test_update_conv_state_indices_pick_rows_and_skip_padding():
    """Continuous batching: row ``i`` of the batch reads and shifts ``conv_state[indices[i]]``; a
    negative index outputs 0 and leaves every state untouched."""
    D, W, S = 16, 3, 4
    x, w, b = torch.randn(3, D, 2), torch.randn(D, W), torch.randn(D)
    pool = torch.randn(5, D, S)
    indices = torch.tensor([3, -1, 0], dtype=torch.int32)
    expected_pool = pool.clone()
    picked = expected_pool[[3, 0]].clone()
    expected = causal_conv1d_update(x[[0, 2]], picked, w, b, activation="silu")
    expected_pool[[3, 0]] = picked
    out = causal_conv1d_update(x, pool, w, b, activation="silu", conv_state_indices=indices)
    assert torch.equal(out[[0, 2]], expected) and torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(pool, expected_pool)
    with pytest.raises(RuntimeError, match="conv_state_indices.scalar_type"):
        causal_conv1d_update(x, pool, w, b, conv_state_indices=indices.long())
    with pytest.raises(RuntimeError, match=r"conv_state must have shape \(batch_size, dim, conv_state_len\)"):
        causal_conv1d_update(x, pool, w, b)
    with pytest.raises(RuntimeError, match="cache_seqlens.scalar_type"):
        causal_conv1d_update(x, pool[:3], w, b, cache_seqlens=torch.zeros(3, dtype=torch.int64))
