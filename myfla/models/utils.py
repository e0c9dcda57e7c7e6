"""The recurrent-model cache the layers read and write through ``past_key_values``.

Each layer's entry is a dict with ``recurrent_state``, ``attn_state``, ``conv_state`` and
``ffn_state``. The layers use only ``len(cache)``, ``cache[layer_idx]`` and
``cache.update(recurrent_state=..., conv_state=..., layer_idx=..., offset=q_len)``.

As in fla 0.4.0, when ``transformers`` newer than 4.53.3 is importable the classes subclass
``transformers.cache_utils.Cache`` / ``CacheLayerMixin`` (so ``generate()`` accepts them), and with an
older ``transformers`` ``Cache`` is the list-of-dicts ``LegacyFLACache``. Without ``transformers``
(the port does not need it) ``FLACache`` builds on :class:`_LayerListCache`, the small part of
``transformers``' ``Cache`` it relies on (a ``layers`` list filled from ``layer_class_to_replicate``),
and keeps the same semantics.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from myfla._torch_compat import compiler_disable, version_at_least

try:
    import transformers
    from transformers.cache_utils import Cache as HFCacheBase
except ImportError:
    transformers = None
    HFCacheBase = None

# Source: fla/models/utils.py:L15-L15 (fla 0.4.0)
_TF_VERSION = transformers.__version__ if transformers is not None else None
# Source: fla/models/utils.py:L16-L16 (fla 0.4.0)
_NEED_NEW = "4.53.3"

# FLACache semantics (fla 0.4.0 with any recent transformers) apply unless an old transformers is
# installed, in which case fla 0.4.0 falls back to LegacyFLACache.
_USE_FLA_CACHE = _TF_VERSION is None or not version_at_least(_NEED_NEW, _TF_VERSION)


class _LayerListCache:
    """What ``FLACache`` needs from ``transformers.cache_utils.Cache`` when transformers is absent:
    a list of per-layer objects, grown with ``layer_class_to_replicate``, whose length is the
    cache's length. (Port-only; fla always has transformers.)"""

    def __init__(self, layer_class_to_replicate: Optional[type] = None, **kwargs: Any):
        self.layers: List[Any] = []
        self.layer_class_to_replicate = layer_class_to_replicate

    def __len__(self) -> int:
        return len(self.layers)


if HFCacheBase is None:
    HFCacheBase = _LayerListCache

if transformers is not None and _USE_FLA_CACHE:
    # Source: fla/models/utils.py:L20-L20 (fla 0.4.0)
    from transformers.cache_utils import CacheLayerMixin
else:
    # Source: fla/models/utils.py:L22-L22 (fla 0.4.0)
    CacheLayerMixin = object


class FLALayer(CacheLayerMixin):
    """One layer's state dict (recurrent / attention / conv / ffn state) for :class:`FLACache`.

    Source: fla/models/utils.py:L25-L140 (fla 0.4.0)
    """

    is_compileable = True
    is_sliding = False

    def __init__(self):
        super().__init__()
        self.state = None

    def lazy_initialization(self, key_states: torch.Tensor):
        self.state = None

    def update(
        self,
        *,
        recurrent_state: Optional[Union[torch.Tensor, Tuple[torch.Tensor, ...]]] = None,
        attn_state: Optional[Tuple[torch.Tensor, ...]] = None,
        conv_state: Optional[Any] = None,
        ffn_state: Optional[Any] = None,
        cache_kwargs: Optional[Dict[str, Any]] = None,
        **_: Any,
    ) -> Dict[str, Any]:
        """Overwrite the given (non-None) states; attention key/values are appended (or rolled
        inside a full sliding window of ``cache_kwargs['window_size']``). Returns the state dict."""
        if cache_kwargs is None:
            cache_kwargs = {}
        window_size = cache_kwargs.get("window_size")

        if attn_state is not None and not isinstance(attn_state, (tuple, list)):
            raise ValueError("`attn_state` must be a tuple/list of tensors")

        if self.state is None:
            self.state = {
                "recurrent_state": None,
                "attn_state": None,
                "conv_state": None,
                "ffn_state": None,
            }

        if recurrent_state is not None:
            self.state["recurrent_state"] = recurrent_state

        if attn_state is not None:
            input_size = attn_state[0].shape[1]
            old = self.state["attn_state"]
            if old is None:
                if window_size is not None and input_size > window_size:
                    attn_state = tuple(x[:, -window_size:].contiguous() for x in attn_state)
                self.state["attn_state"] = tuple(attn_state)
            elif window_size is not None and old[0].shape[1] >= window_size:
                # a full window: shift left by the new length and write the newest tokens at the end
                rolled_states = []
                for old_x, new_x in zip(old, attn_state):
                    rolled = old_x.roll(-input_size, dims=1)
                    tail = new_x[:, -window_size:]
                    rolled[:, -tail.shape[1]:] = tail
                    rolled_states.append(rolled)
                self.state["attn_state"] = tuple(rolled_states)
            else:
                self.state["attn_state"] = tuple(
                    torch.cat([old_x, new_x], dim=1) for old_x, new_x in zip(old, attn_state)
                )

        if conv_state is not None:
            self.state["conv_state"] = conv_state
        if ffn_state is not None:
            self.state["ffn_state"] = ffn_state

        if not hasattr(self, 'device'):
            self.device = 'cpu'
        for state in (recurrent_state, attn_state, conv_state, ffn_state):
            if state is not None:
                self.device = state.device if isinstance(state, torch.Tensor) else state[0].device
                break

        return self.state

    def get_seq_length(self, cache_position=None) -> int:
        # the token count lives in the cache (`_seen_tokens`), not in its layers
        return 0

    def get_max_cache_shape(self) -> int:
        return -1

    def get_max_length(self) -> int:
        """No maximum length.

        Deviation: fla 0.4.0's FLALayer lacks this method, which transformers 5 declares abstract in
        CacheLayerMixin, so there FLALayer cannot be instantiated and every cache update fails;
        later fla (fla/models/cache_utils.py) defines it, returning -1.
        """
        return -1

    def get_mask_sizes(self, cache_position: torch.Tensor) -> Tuple[int, int]:
        return 0, 0

    def _map_state(self, fn) -> None:
        if self.state is None:
            return
        for key in ("recurrent_state", "attn_state", "conv_state", "ffn_state"):
            value = self.state.get(key, None)
            if value is None:
                continue
            if isinstance(value, (tuple, list)):
                self.state[key] = tuple(fn(t) for t in value)
            else:
                self.state[key] = fn(value)

    def offload(self):
        """Move the states to CPU (non-blocking)."""
        self._map_state(lambda x: x.to("cpu", non_blocking=True) if isinstance(x, torch.Tensor) else x)

    def prefetch(self):
        """Move the states back to the layer's device (non-blocking)."""
        self._map_state(lambda x: x.to(self.device, non_blocking=True) if isinstance(x, torch.Tensor) else x)

    def reset(self):
        """Nothing to reset: the states are replaced, never accumulated, by ``update``."""
        return None


class LegacyFLACache(HFCacheBase):
    """Cache of per-layer state dicts kept in a plain list (fla's choice for transformers <= 4.53.3).

    Source: fla/models/utils.py:L143-L282 (fla 0.4.0)
    """

    is_compileable = True

    def __init__(
        self,
        seen_tokens: int = 0
    ) -> LegacyFLACache:
        super().__init__()

        self.states: List[Dict[str, Any]] = []

        self._seen_tokens = seen_tokens  # the tally of tokens `generate` has fed through the cache

    def __getitem__(self, layer_idx: int) -> Dict[str, Any]:
        if layer_idx < len(self):
            return self.states[layer_idx]
        raise KeyError(f"Cache only has {len(self)} layers, attempted to access layer with index {layer_idx}")

    def __iter__(self):
        yield from self.states

    def __len__(self):
        return len(self.states)

    def update(
        self,
        recurrent_state: Optional[Tuple[torch.Tensor]] = None,
        attn_state: Optional[Tuple[torch.Tensor]] = None,
        conv_state: Optional[Tuple[torch.Tensor]] = None,
        ffn_state: Optional[Tuple[torch.Tensor]] = None,
        layer_idx: int = 0,
        offset: Optional[int] = 1,
        cache_kwargs: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Store the given states of layer ``layer_idx`` (``offset`` new tokens) and return its dict.

        The token count grows by ``offset`` when layer 0 is first created, and afterwards whenever
        the last existing layer is updated.
        """
        if cache_kwargs is None:
            cache_kwargs = {}
        if attn_state is not None:
            input_size = attn_state[0].shape[1]
            window_size = cache_kwargs.get('window_size', None)
            if not isinstance(attn_state, (tuple, list)):
                raise ValueError("`attn_state` must be a tuple of tensors for key/value states")
        if len(self.states) <= layer_idx:
            if layer_idx == 0:
                self._seen_tokens += offset
            if attn_state is not None:
                if window_size is not None and input_size > window_size:
                    attn_state = [state[:, -window_size:].contiguous() for state in attn_state]
            state = dict(
                recurrent_state=recurrent_state,
                attn_state=attn_state,
                conv_state=conv_state,
                ffn_state=ffn_state
            )
            self.states.append(state)
        else:
            if layer_idx == len(self.states) - 1:
                self._seen_tokens += offset
            state = self.states[layer_idx]
            if recurrent_state is not None:
                state['recurrent_state'] = recurrent_state
            if attn_state is not None:
                if window_size is not None and state['attn_state'][0].shape[1] == window_size:
                    # a full window: reuse its memory, shifted left by the new length
                    for i, (old_state, new_state) in enumerate(zip(state['attn_state'], attn_state)):
                        old_state = old_state.roll(-input_size, 1)
                        old_state[:, -input_size:] = new_state
                        state['attn_state'][i] = old_state
                else:
                    state['attn_state'] = [
                        torch.cat([old_state, new_state], 1)
                        for old_state, new_state in zip(state['attn_state'], attn_state)
                    ]
            if conv_state is not None:
                state['conv_state'] = conv_state
            if ffn_state is not None:
                state['ffn_state'] = ffn_state

        return state

    def get_seq_length(self, layer_idx: Optional[int] = 0) -> int:
        """Tokens seen so far (0 when layer ``layer_idx`` has no state yet)."""
        if len(self.states) <= layer_idx:
            return 0
        return self._seen_tokens

    def get_max_cache_shape(self) -> Optional[int]:
        """No maximum length."""
        return None

    def to_legacy_cache(self) -> tuple:
        return tuple(self.states)

    @classmethod
    @compiler_disable
    def from_legacy_cache(
        cls,
        past_key_values: Optional[tuple] = None,
        seen_tokens: int = 0
    ) -> LegacyFLACache:
        """Build a cache from a list of per-layer state dicts."""
        cache = cls(seen_tokens)
        if isinstance(past_key_values, list):
            for layer_state in past_key_values:
                cache.states.append(layer_state)
        return cache


class FLACache(HFCacheBase):
    """Cache of :class:`FLALayer` objects (fla's choice for transformers > 4.53.3, and the port's
    without transformers). The token count grows by ``offset`` on every update of layer 0.

    Source: fla/models/utils.py:L285-L383 (fla 0.4.0)
    """

    is_compileable = True

    def __init__(self, seen_tokens: int = 0, **kwargs):
        param_names = list(inspect.signature(super().__init__).parameters.keys())
        if 'layer_class_to_replicate' in param_names:
            self.use_layer_class_to_replicate = True
            super().__init__(layer_class_to_replicate=FLALayer, **kwargs)
        elif 'layer_classes' in param_names:
            self.use_layer_class_to_replicate = False
            super().__init__(layer_classes=FLALayer, **kwargs)
        else:
            raise TypeError(
                "FLA cache initialization failed: HFCacheBase.__init__ accepts neither "
                "'layer_class_to_replicate' nor 'layer_classes'. This might be caused by an incompatible "
                "transformers version. Please check your transformers>=4.36.0"
            )
        self._seen_tokens = int(seen_tokens)

    def update(
        self,
        recurrent_state: Optional[Tuple[torch.Tensor]] = None,
        attn_state: Optional[Tuple[torch.Tensor]] = None,
        conv_state: Optional[Tuple[torch.Tensor]] = None,
        ffn_state: Optional[Tuple[torch.Tensor]] = None,
        layer_idx: int = 0,
        offset: Optional[int] = 1,
        cache_kwargs: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Store the given states of layer ``layer_idx`` (creating layers up to it) and return its dict."""
        if not self.use_layer_class_to_replicate:
            self.append_new_layers(layer_idx)
        else:
            while len(self.layers) <= layer_idx:
                self.layers.append(self.layer_class_to_replicate())
        if layer_idx == 0:
            self._seen_tokens += int(offset)

        return self.layers[layer_idx].update(
            recurrent_state=recurrent_state,
            attn_state=attn_state,
            conv_state=conv_state,
            ffn_state=ffn_state,
            cache_kwargs=cache_kwargs,
        )

    def __getitem__(self, layer_idx: int) -> Dict[str, Any]:
        if layer_idx >= len(self.layers):
            raise KeyError(f"Cache only have {len(self.layers)} layers, however accessed {layer_idx} out of bounds")
        return self.layers[layer_idx].state

    def __iter__(self):
        for i in range(len(self.layers)):
            yield self[i]

    def __len__(self):
        return super().__len__()

    def get_seq_length(self, layer_idx: Optional[int] = 0, cache_position=None) -> int:
        """Tokens seen so far (0 when layer ``layer_idx`` does not exist yet)."""
        if len(self.layers) <= (layer_idx or 0):
            return 0
        return self._seen_tokens

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1

    def get_mask_sizes(self, cache_position: torch.Tensor, layer_idx: int) -> Tuple[int, int]:
        """``(kv_length, kv_offset)`` = ``(seen tokens + query length, 0)``."""
        query_len = int(cache_position.shape[0]) if cache_position is not None else 0
        return int(self._seen_tokens) + query_len, 0

    def to_legacy_cache(self) -> Tuple[Dict[str, Any], ...]:
        return tuple(self[i] for i in range(len(self.layers)))

    @classmethod
    @compiler_disable
    def from_legacy_cache(
        cls,
        past_key_values: Optional[Tuple[Dict[str, Any], ...]] = None,
        seen_tokens: int = 0,
        **kwargs,
    ) -> FLACache:
        """Build a cache from a tuple/list of per-layer state dicts (each copied into an FLALayer)."""
        cache = cls(seen_tokens=seen_tokens, **kwargs)
        if isinstance(past_key_values, (list, tuple)):
            for i, layer_state in enumerate(past_key_values):
                while len(cache.layers) <= i:
                    cache.layers.append(cache.layer_class_to_replicate())
                cache.layers[i].state = dict(layer_state)
        return cache


if _USE_FLA_CACHE:
    class Cache(FLACache):
        """The cache models pass as ``past_key_values``.

        Source: fla/models/utils.py:L467-L469 (fla 0.4.0)
        """

        def __init__(self, seen_tokens: int = 0, **kwargs: Any) -> None:
            super().__init__(seen_tokens=seen_tokens, **kwargs)
else:
    class Cache(LegacyFLACache):
        """The cache models pass as ``past_key_values`` (transformers <= 4.53.3).

        Source: fla/models/utils.py:L471-L473 (fla 0.4.0)
        """

        def __init__(self, seen_tokens: int = 0, **kwargs: Any) -> None:
            super().__init__(seen_tokens=seen_tokens)
