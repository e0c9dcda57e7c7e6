"""myfla.layers.attn.Attention against fla 0.4.0's own ``fla/layers/attn.py`` (run by file path with
the explicit-softmax flash-attn reference, fla's RotaryEmbedding on fla's rotary reference and the
RMSNorm formula): GQA, qkv_bias, qk_norm, sliding window, padding masks, cu_seqlens, prefill +
decoding through the Cache, gradients; fp64."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="fla's attn.py imports transformers")

from myfla.layers.attn import Attention  # noqa: E402
from myfla.models.utils import Cache  # noqa: E402

CONFIGS = [
    dict(hidden_size=32, num_heads=4),
    dict(hidden_size=32, num_heads=4, num_kv_heads=2, qkv_bias=True),
    dict(hidden_size=32, num_heads=4, num_kv_heads=1, window_size=4, rope_theta=500.),
    dict(hidden_size=32, num_heads=2, qk_norm=True, max_position_embeddings=64),
]


def _pair(fla_ref, cfg):
    torch.manual_seed(0)
    ref = fla_ref.Attention(**cfg, layer_idx=0).double()
    mine = Attention(**cfg, layer_idx=0).double()
    assert list(mine.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        torch.nn.init.normal_(v, std=0.2)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def _mask(B, T, pads):
    mask = torch.ones(B, T, dtype=torch.long)
    for b, p in enumerate(pads):
        mask[b, :p] = 0
    return mask


@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
def test_forward_and_gradients_match_fla(fla_ref, cfg):
    ref, mine = _pair(fla_ref, CONFIGS[cfg])
    x = torch.randn(2, 11, 32, dtype=torch.float64, requires_grad=True)
    mask = _mask(2, 11, [0, 3])
    for kwargs in (dict(), dict(attention_mask=mask)):
        o_ref = ref(x, **kwargs)[0]
        o = mine(x, **kwargs)[0]
        keep = mask.bool() if kwargs else torch.ones(2, 11, dtype=torch.bool)
        torch.testing.assert_close(o[keep], o_ref[keep])
        do = torch.randn_like(o) * keep[..., None]
        params = [x] + list(mine.parameters())
        grads = torch.autograd.grad((o * do).sum(), params)
        refs = torch.autograd.grad((o_ref * do).sum(), [x] + list(ref.parameters()))
        for g, r in zip(grads, refs):
            torch.testing.assert_close(g, r)


@pytest.mark.parametrize("cfg", [0, 2])
def test_cu_seqlens_matches_fla_and_per_sequence_runs(fla_ref, cfg):
    ref, mine = _pair(fla_ref, CONFIGS[cfg])
    x = torch.randn(1, 12, 32, dtype=torch.float64)
    cu = torch.tensor([0, 5, 6, 12], dtype=torch.int32)
    o = mine(x, cu_seqlens=cu)[0]
    torch.testing.assert_close(o, ref(x, cu_seqlens=cu)[0])
    pieces = [mine(x[:, s:e])[0] for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())]
    torch.testing.assert_close(o, torch.cat(pieces, 1))


@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
@pytest.mark.parametrize("masked", [False, True])
def test_prefill_and_decode_match_fla_and_the_full_forward(fla_ref, cfg, masked):
    ref, mine = _pair(fla_ref, CONFIGS[cfg])
    T0, steps = 7, 5
    x = torch.randn(2, T0 + steps, 32, dtype=torch.float64)
    mask = _mask(2, T0 + steps, [0, 2] if masked else [0, 0])
    ref_cache, cache = fla_ref.Cache(), Cache()
    kw = lambda t: dict(attention_mask=mask[:, :t]) if masked else {}  # noqa: E731
    o_ref = ref(x[:, :T0], past_key_values=ref_cache, use_cache=True, **kw(T0))[0]
    o = mine(x[:, :T0], past_key_values=cache, use_cache=True, **kw(T0))[0]
    outs = [o]
    keep = mask[:, :T0].bool()
    torch.testing.assert_close(o[keep], o_ref[keep])
    for t in range(T0, T0 + steps):
        o_ref = ref(x[:, t:t + 1], past_key_values=ref_cache, use_cache=True, **kw(t + 1))[0]
        o = mine(x[:, t:t + 1], past_key_values=cache, use_cache=True, **kw(t + 1))[0]
        torch.testing.assert_close(o, o_ref)
        outs.append(o)
    full = mine(x, **kw(T0 + steps))[0]
    keep = mask.bool()
    # without a cache a padded row is rotated by absolute positions, with one by positions after
    # its padding: the same relative angles, but fp32-built cos/sin tables (as fla) round them apart
    torch.testing.assert_close(torch.cat(outs, 1)[keep], full[keep], rtol=1e-5, atol=1e-6)
    window = CONFIGS[cfg].get("window_size")
    if window is not None:   # the cache keeps only the window
        assert cache[0]["attn_state"][0].shape[1] == window


def test_layer_contract():
    layer = Attention(hidden_size=48, num_heads=6, num_kv_heads=3, layer_idx=2)
    assert (layer.head_dim, layer.kv_dim, layer.num_kv_groups) == (8, 24, 2)
    assert layer.k_proj.weight.shape == (24, 48) and layer.o_proj.bias is None
    o, attn, cache = layer(torch.randn(1, 3, 48))
    assert o.shape == (1, 3, 48) and attn is None and cache is None
    with pytest.raises(AssertionError, match="Expected attention_mask as a 0-1 matrix"):
        layer(torch.randn(1, 3, 48), attention_mask=torch.ones(1, 3, 3))
