"""Per-call helpers for ops whose one-token calls cost what their torch ops dispatch (port-only; fla
has no counterpart: its Triton kernels are one launch whatever the path).

A decoding step calls norms, gates, the MLP and the recurrent op once per token; each skips its
``autograd.Function`` when autograd would record nothing (:func:`autograd_records`), and converts a
tensor only when its dtype differs (:func:`as_dtype`).
"""

from __future__ import annotations

from typing import Optional

import torch


def autograd_records(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd would record a call on ``tensors`` (None entries ignored): grad mode on and
    some tensor requires grad. When it would not, an op may run its Function's forward directly."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``; ``t`` itself, with no op dispatched, when it already is."""
    return t if t.dtype == dtype else t.to(dtype)
