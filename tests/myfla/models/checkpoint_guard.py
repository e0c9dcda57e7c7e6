"""A guard for gradient-checkpointing tests of the causal LMs: a block that runs more than twice in one
training step (its forward, then its recomputation in the backward) raises, instead of letting a
backward that nests checkpoint backwards without end take the machine's memory."""

from __future__ import annotations


def guard_recomputation(model) -> list:
    """Wrap every block's ``_gradient_checkpointing_func`` (set by ``gradient_checkpointing_enable``);
    returns the list that gets one entry per block run."""
    calls = []
    limit = 2 * len(model.model.layers)
    for layer in model.model.layers:
        def guarded(function, *args, _checkpoint=layer._gradient_checkpointing_func, **kw):
            def counted(*a, **k):
                calls.append(1)
                if len(calls) > limit:
                    raise RuntimeError("a block ran more than twice in one step: the checkpoint recursed")
                return function(*a, **k)
            return _checkpoint(counted, *args, **kw)
        layer._gradient_checkpointing_func = guarded
    return calls
