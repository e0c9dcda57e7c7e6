"""A minimal layer-state cache with the interface fla 0.4.0's layers use.

fla's ``fla.models.utils.Cache`` subclasses a transformers class and does not instantiate with
transformers 5.x; the layers only need ``len(cache)``, ``cache[i]`` (a dict with
``recurrent_state``/``conv_state``/...) and ``cache.update(..., layer_idx=, offset=)``. The same
object drives every implementation, so prefill/decode comparisons do not depend on a port's
cache class.
"""

from __future__ import annotations

from typing import Any, Dict, List

_KEYS = ("recurrent_state", "attn_state", "conv_state", "ffn_state")


class StateCache:
    def __init__(self, seen_tokens: int = 0):
        self.states: List[Dict[str, Any]] = []
        self._seen_tokens = seen_tokens

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, layer_idx: int) -> Dict[str, Any]:
        if layer_idx >= len(self.states):
            raise KeyError(f"Cache only has {len(self.states)} layers, attempted to access layer with index {layer_idx}")
        return self.states[layer_idx]

    def update(self, recurrent_state=None, attn_state=None, conv_state=None, ffn_state=None,
               layer_idx: int = 0, offset: int = 1, cache_kwargs=None) -> Dict[str, Any]:
        while len(self.states) <= layer_idx:
            self.states.append({k: None for k in _KEYS})
        state = self.states[layer_idx]
        new = dict(recurrent_state=recurrent_state, attn_state=attn_state, conv_state=conv_state,
                   ffn_state=ffn_state)
        for key, value in new.items():
            if value is not None:
                state[key] = value
        if layer_idx == 0:
            self._seen_tokens += offset
        return state

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._seen_tokens if layer_idx < len(self.states) else 0
