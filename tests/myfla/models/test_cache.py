"""Cache semantics of fla 0.4.0's FLACache (UPSTREAM.md §3). Runs on whichever base is active:
the port's own base without transformers (CI), transformers' Cache when it is importable."""

from __future__ import annotations

import pytest
import torch

from myfla.models import utils as cache_utils
from myfla.models.utils import Cache, FLACache, FLALayer, LegacyFLACache


def _conv(n=2):
    return tuple(torch.randn(n, 8, 4) for _ in range(3))


def test_base_classes():
    try:
        import transformers.cache_utils as hf
    except ImportError:
        hf = None
    if hf is None:
        assert issubclass(Cache, FLACache) and issubclass(FLACache, cache_utils._LayerListCache)
        assert FLALayer.__mro__[1] is object
    else:
        assert issubclass(Cache, hf.Cache)
        assert issubclass(FLALayer, hf.CacheLayerMixin)


def test_update_len_getitem_seen_tokens():
    c = Cache()
    assert len(c) == 0 and c.get_seq_length() == 0
    h0 = torch.randn(2, 4, 8, 16)
    conv = _conv()
    state = c.update(recurrent_state=h0, conv_state=conv, layer_idx=0, offset=7)
    assert len(c) == 1 and c.get_seq_length() == 7
    assert state is c[0]
    assert set(state) == {"recurrent_state", "attn_state", "conv_state", "ffn_state"}
    assert state["recurrent_state"] is h0 and state["conv_state"] is conv and state["attn_state"] is None

    c.update(recurrent_state=torch.randn(2, 4, 8, 16), layer_idx=1, offset=7)
    assert len(c) == 2 and c.get_seq_length() == 7          # only layer 0 counts tokens
    assert c.get_seq_length(1) == 7 and c.get_seq_length(5) == 0

    # decoding step: layer 0 again adds its offset; None entries keep the old state
    h1 = torch.randn(2, 4, 8, 16)
    c.update(recurrent_state=h1, conv_state=None, layer_idx=0, offset=1)
    assert c.get_seq_length() == 8 and c[0]["recurrent_state"] is h1 and c[0]["conv_state"] is conv

    with pytest.raises(KeyError, match="Cache only have 2 layers, however accessed 5 out of bounds"):
        c[5]
    assert [s is c[i] for i, s in enumerate(c)] == [True, True]


def test_update_skipping_layers_creates_empty_ones():
    c = Cache()
    c.update(recurrent_state=torch.zeros(1), layer_idx=2, offset=3)
    assert len(c) == 3 and c.get_seq_length() == 0 and c[0] is None and c[1] is None


def test_legacy_roundtrip_and_mask_sizes():
    c = Cache(seen_tokens=4)
    c.update(recurrent_state=torch.ones(1), conv_state=_conv(1), layer_idx=0, offset=2)
    legacy = c.to_legacy_cache()
    assert isinstance(legacy, tuple) and legacy[0] is c[0]
    d = Cache.from_legacy_cache(legacy, seen_tokens=6)
    assert isinstance(d, Cache) and len(d) == 1 and d.get_seq_length() == 6
    assert d[0] == c[0] and d[0] is not c[0]
    assert d.get_mask_sizes(torch.arange(3), 0) == (9, 0)
    assert d.get_max_cache_shape() == -1


def test_attn_state_append_and_window():
    layer = FLALayer()
    k, v = torch.randn(1, 3, 2), torch.randn(1, 3, 2)
    layer.update(attn_state=(k, v), cache_kwargs={"window_size": 4})
    k2, v2 = torch.randn(1, 1, 2), torch.randn(1, 1, 2)
    st = layer.update(attn_state=(k2, v2), cache_kwargs={"window_size": 4})
    torch.testing.assert_close(st["attn_state"][0], torch.cat([k, k2], 1))
    k3 = torch.randn(1, 2, 2)
    st = layer.update(attn_state=(k3, k3), cache_kwargs={"window_size": 4})
    torch.testing.assert_close(st["attn_state"][0], torch.cat([k[:, 2:], k2, k3], 1))
    with pytest.raises(ValueError, match="`attn_state` must be a tuple/list of tensors"):
        layer.update(attn_state=k)
    # a deviation (fla 0.4.2): each layer counts its own tokens (0.4.0's layers always said 0)
    assert layer.get_seq_length() == 3 + 1 + 2 and layer.device == k.device
    # later fla's addition, abstract in transformers 5's CacheLayerMixin (a deviation from 0.4.0)
    assert layer.get_max_length() == -1 and layer.get_max_cache_shape() == -1


def test_attn_state_full_window_keeps_the_newest_tokens():
    """Once the window is full every update keeps the newest ``window_size`` tokens: shifts of 1 and 3
    in a window of 4 (a shift of 2 reads the same either way round) and an update longer than the
    window (only its newest tokens stay)."""
    w = 4
    layer = FLALayer()
    seen = [torch.randn(1, w, 2)]
    layer.update(attn_state=(seen[0], -seen[0]), cache_kwargs={"window_size": w})
    for n in (1, 3, 6):
        kn = torch.randn(1, n, 2)
        seen.append(kn)
        st = layer.update(attn_state=(kn, -kn), cache_kwargs={"window_size": w})
        expected = torch.cat(seen, 1)[:, -w:]
        torch.testing.assert_close(st["attn_state"][0], expected)
        torch.testing.assert_close(st["attn_state"][1], -expected)
    assert layer.get_seq_length() == w + 1 + 3 + 6


@pytest.mark.skipif(cache_utils.transformers is not None and cache_utils._USE_FLA_CACHE,
                    reason="as in fla, LegacyFLACache only constructs on transformers <= 4.53.3 (or without it)")
def test_legacy_cache_semantics():
    c = LegacyFLACache()
    c.update(recurrent_state=torch.ones(1), layer_idx=0, offset=5)
    c.update(recurrent_state=torch.ones(1), layer_idx=1, offset=5)
    assert len(c) == 2 and c.get_seq_length() == 5
    # on existing layers the count follows the last layer
    c.update(recurrent_state=torch.ones(1), layer_idx=0, offset=1)
    assert c.get_seq_length() == 5
    c.update(recurrent_state=torch.ones(1), layer_idx=1, offset=1)
    assert c.get_seq_length() == 6
    with pytest.raises(KeyError, match="Cache only has 2 layers, attempted to access layer with index 2"):
        c[2]
    d = LegacyFLACache.from_legacy_cache(list(c.to_legacy_cache()), seen_tokens=6)
    assert len(d) == 2 and d[1] is c[1]


@pytest.mark.skipif(cache_utils.transformers is not None and cache_utils._USE_FLA_CACHE,
                    reason="as in fla, LegacyFLACache only constructs on transformers <= 4.53.3 (or without it)")
def test_legacy_cache_sliding_window():
    """fla 0.4.0's LegacyFLACache keeps the newest ``window_size`` key/value tokens: a prefill longer
    than the window keeps its last tokens, appends fill the window, and a full window shifts left
    with the new tokens written at its end."""
    w = 4
    k = torch.randn(1, 3, 2)
    c = LegacyFLACache()
    c.update(attn_state=(k, -k), layer_idx=0, offset=3, cache_kwargs={"window_size": w})
    k2 = torch.randn(1, 1, 2)
    st = c.update(attn_state=(k2, -k2), layer_idx=0, offset=1, cache_kwargs={"window_size": w})
    torch.testing.assert_close(st["attn_state"][0], torch.cat([k, k2], 1))                 # now full
    seen = [k, k2]
    for n in (1, 2, 3):                     # shifts by 1 and 3 tell the two roll directions apart
        kn = torch.randn(1, n, 2)
        seen.append(kn)
        st = c.update(attn_state=(kn, -kn), layer_idx=0, offset=n, cache_kwargs={"window_size": w})
        expected = torch.cat(seen, 1)[:, -w:]
        torch.testing.assert_close(st["attn_state"][0], expected)
        torch.testing.assert_close(st["attn_state"][1], -expected)
    assert c.get_seq_length() == 3 + 1 + 1 + 2 + 3

    long = torch.randn(1, 7, 2)
    d = LegacyFLACache()
    st = d.update(attn_state=(long, long), layer_idx=0, offset=7, cache_kwargs={"window_size": w})
    torch.testing.assert_close(st["attn_state"][0], long[:, -w:])
