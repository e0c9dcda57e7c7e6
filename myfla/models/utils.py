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
    from transformers.generation import GenerationMixin
    from transformers.utils.deprecation import deprecate_kwarg
except ImportError:
    transformers = None
    HFCacheBase = None
    GenerationMixin = None
    deprecate_kwarg = None

# Source: fla/models/utils.py:L15-L15 (fla 0.4.0)
_TF_VERSION = transformers.__version__ if transformers is not None else None
# Source: fla/models/utils.py:L16-L16 (fla 0.4.0)
_NEED_NEW = "4.53.3"
# Source: fla/models/utils.py:L17-L17 (fla 0.4.0)
_IS_TRANSFORMERS_4_56_PLUS = _TF_VERSION is not None and version_at_least(_TF_VERSION, "4.56.0")

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


def _map_layer_state(state: Optional[Dict[str, Any]], fn) -> None:
    """Replace each state of one layer's dict (``recurrent_state``, ``attn_state``, ``conv_state``,
    ``ffn_state``; a tuple of tensors for the tuple-valued ones) by ``fn`` of it, in place: the body of
    fla's ``FLALayer._map_state``, shared with ``LegacyFLACache``'s beam-search transformations.
    (Port-only.)"""
    if state is None:
        return
    for key in ("recurrent_state", "attn_state", "conv_state", "ffn_state"):
        value = state.get(key, None)
        if value is None:
            continue
        if isinstance(value, (tuple, list)):
            state[key] = tuple(fn(t) for t in value)
        else:
            state[key] = fn(value)


class FLALayer(CacheLayerMixin):
    """One layer's state dict (recurrent / attention / conv / ffn state) for :class:`FLACache`.

    Source: fla/models/utils.py:L25-L140 (fla 0.4.0)
    """

    is_compileable = True
    is_sliding = False

    def __init__(self):
        super().__init__()
        self.state = None
        self._seen_tokens = 0

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
        inside a full sliding window of ``cache_kwargs['window_size']``). The layer counts its own
        tokens: the attention states' length, else ``offset`` (passed through ``**_``, default 1).
        Returns the state dict."""
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

        input_size = 0
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

        self._seen_tokens += input_size if attn_state is not None else _.get("offset", 1)
        return self.state

    def get_seq_length(self, cache_position=None) -> int:
        """Tokens this layer has seen.

        Deviation: fla 0.4.0 returns 0 here and counts tokens once per cache, when layer 0 updates.
        In a hybrid model whose first layer is recurrent, an attention layer then reads the count
        after layer 0 has added the current step, so every decoded token is rotated one position
        too far per new token (cached decoding no longer equals a full recomputation). fla 0.4.2
        counts per layer (fla PR #748); so does myfla.
        """
        return self._seen_tokens

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
        _map_layer_state(self.state, fn)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the batch rows ``beam_idx`` of every state, in that order (beam search).

        Port deviation, as fla 0.6.0 (fla/models/cache_utils.py): fla 0.4.0 has no such method, and
        transformers 5's beam search then fails on the key/value tensors this layer does not have
        ("'NoneType' object has no attribute 'index_select'")."""
        self._map_state(lambda x: x.index_select(0, beam_idx.to(x.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every state's batch rows ``repeats`` times each (as fla 0.6.0; see ``reorder_cache``)."""
        self._map_state(lambda x: x.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the batch rows ``indices`` (as fla 0.6.0; see ``reorder_cache``)."""
        self.reorder_cache(indices)

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

    def _map_states(self, fn) -> None:
        for state in self.states:
            _map_layer_state(state, fn)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the batch rows ``beam_idx`` of every layer's states, in that order (beam search; a port
        deviation, as fla 0.6.0: see ``FLALayer.reorder_cache``)."""
        self._map_states(lambda x: x.index_select(0, beam_idx.to(x.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every state's batch rows ``repeats`` times each (as fla 0.6.0)."""
        self._map_states(lambda x: x.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the batch rows ``indices`` (as fla 0.6.0)."""
        self.reorder_cache(indices)

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
    without transformers). Each layer counts its own tokens (a deviation: fla 0.4.0 counts them on
    the updates of layer 0; see :meth:`FLALayer.get_seq_length`).

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
        # each layer counts its own tokens (fla 0.4.2)
        return self.layers[layer_idx].update(
            recurrent_state=recurrent_state,
            attn_state=attn_state,
            conv_state=conv_state,
            ffn_state=ffn_state,
            offset=offset if offset is not None else 1,
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
        """Tokens layer ``layer_idx`` has seen (0 when it does not exist yet)."""
        if len(self.layers) <= (layer_idx or 0):
            return 0
        return self.layers[layer_idx or 0].get_seq_length()

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1

    def get_mask_sizes(self, cache_position: torch.Tensor, layer_idx: int) -> Tuple[int, int]:
        """``(kv_length, kv_offset)`` = ``(layer's seen tokens + query length, 0)``.

        Deviation: transformers >= 5 passes the query length as an int where 4.x passed the
        ``cache_position`` tensor; fla 0.4.0 reads ``cache_position.shape[0]`` and fails on the int
        (``'int' object has no attribute 'shape'``, e.g. in ``generate`` of a model built on plain
        ``GenerationMixin``). Both are accepted here, as fla 0.6.0 takes ``query_length``.
        """
        if isinstance(cache_position, torch.Tensor):
            query_len = int(cache_position.shape[0])
        else:
            query_len = int(cache_position or 0)
        return int(self.get_seq_length(layer_idx)) + query_len, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the batch rows ``beam_idx`` of every layer's states (beam search; a port deviation, as
        fla 0.6.0: see ``FLALayer.reorder_cache``)."""
        for layer in self.layers:
            layer.reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every layer's batch rows ``repeats`` times each (as fla 0.6.0)."""
        for layer in self.layers:
            layer.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the batch rows ``indices`` of every layer (as fla 0.6.0)."""
        for layer in self.layers:
            layer.batch_select_indices(indices)

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
        """Build a cache from a tuple/list of per-layer state dicts (each copied into an FLALayer
        that has seen ``seen_tokens`` tokens, as fla 0.6.0 restores per-layer counts)."""
        cache = cls(seen_tokens=seen_tokens, **kwargs)
        if isinstance(past_key_values, (list, tuple)):
            for i, layer_state in enumerate(past_key_values):
                while len(cache.layers) <= i:
                    cache.layers.append(cache.layer_class_to_replicate())
                cache.layers[i].state = dict(layer_state)
                cache.layers[i]._seen_tokens = int(seen_tokens)
        return cache


def _generation_kwarg_rename(fn):
    """transformers' ``deprecate_kwarg("num_logits_to_keep", version="4.50", new_name="logits_to_keep")``,
    as fla applies it; without transformers there is no generation to serve (the mixin refuses to
    be built), so the method stays as written."""
    if deprecate_kwarg is None:
        return fn
    return deprecate_kwarg("num_logits_to_keep", version="4.50", new_name="logits_to_keep")(fn)


class FLAGenerationMixin(GenerationMixin if GenerationMixin is not None else object):
    """``GenerationMixin`` whose ``prepare_inputs_for_generation`` feeds the models only what they
    take: the new tokens (sliced by ``cache_position`` with transformers >= 4.56, else the last
    one once the cache holds something), the 2-D padding mask as is (no 4-D causal mask is
    built: the recurrent layers do not use one) and the cache.

    Deviations, for transformers 5: ``generate`` must not start from transformers' own
    ``DynamicCache`` (``_supports_default_dynamic_cache`` is False, as in fla 0.6.0); and newer
    transformers 5 releases hand the cache over as ``cache`` (with ``next_sequence_length`` and
    ``is_first_iteration``) instead of ``past_key_values``. fla 0.4.0's mixin drops it, so every
    step re-runs the whole sequence without a cache; here it is read under either name, the new
    tokens are sliced by ``next_sequence_length`` and ``inputs_embeds`` feed the first step only.

    It builds on ``transformers.generation.GenerationMixin``; without transformers, creating an
    instance raises ImportError.

    Source: fla/models/utils.py:L386-L463 (fla 0.4.0)
    """

    def __init__(self, *args, **kwargs):
        if GenerationMixin is None:
            raise ImportError("FLAGenerationMixin needs transformers (its GenerationMixin): pip install transformers")
        super().__init__(*args, **kwargs)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # the layers read and write myfla's Cache (per-layer state dicts), never a DynamicCache
        return False

    @_generation_kwarg_rename
    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor = None,
        past_key_values: Optional[HFCacheBase] = None,
        attention_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        use_cache: bool = True,
        logits_to_keep: Optional[int] = None,
        cache_position: Optional[torch.LongTensor] = None,
        **kwargs
    ):
        # transformers 5 names the cache `cache` and says how many tokens are new
        if past_key_values is None:
            past_key_values = kwargs.pop("cache", None)
        next_sequence_length = kwargs.pop("next_sequence_length", None)
        is_first_iteration = kwargs.pop("is_first_iteration", None)
        if _IS_TRANSFORMERS_4_56_PLUS:
            model_inputs = {}
            if past_key_values is not None:
                model_inputs["past_key_values"] = past_key_values
                if hasattr(self, '_cache_dependant_input_preparation') and cache_position is not None:
                    inputs_embeds, input_ids = self._cache_dependant_input_preparation(
                        input_ids, inputs_embeds, cache_position
                    )
                elif cache_position is not None:
                    # keep only the positions not yet in the cache
                    if input_ids is not None and input_ids.shape[1] != cache_position.shape[0]:
                        input_ids = input_ids[:, cache_position]
                elif next_sequence_length is not None:
                    input_ids = input_ids[:, -next_sequence_length:] if input_ids is not None else None
                elif hasattr(past_key_values, '__len__') and len(past_key_values) > 0:
                    input_ids = input_ids[:, -1:]

            # inputs_embeds only on the step that covers all of them (the prompt)
            if is_first_iteration is not None or next_sequence_length is not None:
                # transformers 5 flags the prompt step (and only that one)
                embeds_step = bool(is_first_iteration)
            else:
                embeds_step = cache_position is None or len(cache_position) == getattr(inputs_embeds, 'shape', (0, 0))[1]
            if inputs_embeds is not None and embeds_step:
                model_inputs['inputs_embeds'] = inputs_embeds
                model_inputs['input_ids'] = None
            else:
                model_inputs['input_ids'] = input_ids.contiguous() if input_ids is not None else None
                model_inputs['inputs_embeds'] = None

            model_inputs['cache_position'] = cache_position

        else:
            model_inputs = {}
            # only the last token once the cache holds the prompt
            if past_key_values is not None and hasattr(past_key_values, '__len__') and len(past_key_values) > 0:
                input_ids = input_ids[:, -1:]
            # inputs_embeds only on the first step
            if inputs_embeds is not None and hasattr(past_key_values, '__len__') and len(past_key_values) == 0:
                model_inputs = {'inputs_embeds': inputs_embeds}
            else:
                # contiguous: a static stride keeps torch.compile from recompiling
                model_inputs = {'input_ids': input_ids.contiguous()}

        if logits_to_keep is not None:
            model_inputs['logits_to_keep'] = logits_to_keep

        model_inputs.update({
            'past_key_values': past_key_values,
            'use_cache': use_cache,
            'attention_mask': attention_mask,
        })
        return model_inputs


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
