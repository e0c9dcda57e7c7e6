"""Keep a forward pass's intermediates for the backward, or recompute them as fla does (port-only;
fla has no counterpart).

fla's backward passes recompute what their forward computed (the WY vectors, the chunk states):
GPU memory is scarce and the recompute is cheap there. On a CPU the recompute is a large share of a
forward+backward, and memory is less tight, so the chunked ops' autograd functions keep those
intermediates while they fit in a byte budget, per call, and recompute beyond it. The backward then
reads the very tensors the forward computed, so its results are the recompute's, bit for bit.

Budgets come from the environment, in MB: ``MYFLA_SAVE_MB`` for ``chunk_kda`` and
``chunk_gated_delta_rule`` (``SAVE_BYTES`` here), ``MYFLA_DPLR_SAVE_MB`` for the DPLR / RWKV-7 ops
(their own module's ``SAVE_BYTES``); ``0`` always recomputes, as fla does. On GPUs (any device
but the CPU) the ops recompute, as fla, unless the variable is set.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Optional

import torch


def budget_bytes(variable: str, default_mb: float) -> int:
    """The byte budget set by the environment variable ``variable`` (in MB; ``default_mb`` when unset)."""
    text = os.environ.get(variable)
    if text is None:
        return int(default_mb * 1024 * 1024)
    try:
        mb = float(text)
    except ValueError:
        raise ValueError(f"{variable}={text!r} is not a number of MB; set it to e.g. 2048, or 0 to "
                         f"recompute the forward's intermediates in the backward as fla does") from None
    return max(0, int(mb * 1024 * 1024))


# Most bytes of forward intermediates one chunk_kda / chunk_gated_delta_rule call keeps for its
# backward (MYFLA_SAVE_MB, default 2048; 0 = always recompute as fla).
SAVE_BYTES = budget_bytes('MYFLA_SAVE_MB', 2048)


def keeps(nbytes: int, budget: Optional[int] = None, device=None, variable: str = 'MYFLA_SAVE_MB') -> bool:
    """Whether ``nbytes`` of intermediates are kept within ``budget`` (default: ``SAVE_BYTES``, read at
    call time so that it can be changed at run time). On a ``device`` other than the CPU nothing is
    kept unless ``variable`` is set: GPU memory is what fla's recompute protects, and a model keeps
    this once per layer, so there keeping is the user's choice."""
    if device is not None and torch.device(device).type != 'cpu' and variable not in os.environ:
        return False
    budget = SAVE_BYTES if budget is None else budget
    return 0 < nbytes <= budget


_caller = threading.local()


@contextlib.contextmanager
def caller_grad_mode():
    """Record the caller's grad mode for the autograd functions applied inside the block: their
    ``forward`` runs with grad disabled, and ``ctx.needs_input_grad`` ignores ``no_grad``."""
    previous = getattr(_caller, 'grad_enabled', None)
    _caller.grad_enabled = torch.is_grad_enabled()
    try:
        yield
    finally:
        _caller.grad_enabled = previous


def backward_may_run(ctx) -> bool:
    """Whether the autograd function of ``ctx`` may see a backward: an input needs grad and the
    caller did not disable grad (known where the entry point records it, ``caller_grad_mode``)."""
    return any(ctx.needs_input_grad) and getattr(_caller, 'grad_enabled', None) is not False
