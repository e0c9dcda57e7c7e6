"""Input checks of the public ops, modules and layers (port-only; fla 0.4.0 has no counterpart).

fla's own checks (the varlen batch size and initial-state count, in ``index.check_varlen_inputs``)
run first, with fla's messages. The checks added here refuse inputs that fla 0.4.0 accepts and then
answers wrongly without a word (integer tensors, float or 2-D ``cu_seqlens``, ``cu_seqlens`` that do
not span the input, masks shorter than the input, ``softplus`` with ``beta <= 0``), and warn on the
head-first layout as fla's other chunk ops do.

Cost: shape, dtype and Python-number comparisons only (a few microseconds a call), except for the
values of ``cu_seqlens``, which are read once per ``cu_seqlens`` tensor (cached on its identity; fla's
chunked paths already read it back to the host in ``prepare_chunk_indices``, and so do the port's).
benchmarks/bench_validation.py measures the checks against the same calls without them.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from myfla.ops.utils.index import check_varlen_inputs

_INTEGER_DTYPES = (torch.int32, torch.int64)


def varlen_batch_error(batch_size: int) -> ValueError:
    """fla's error for ``cu_seqlens`` with a batch of more than one row (its chunk and
    fused_recurrent wrappers raise it; ``check_varlen_inputs`` holds the op-level copy)."""
    return ValueError(
        f"The batch size is expected to be 1 rather than {batch_size} when using `cu_seqlens`."
        f"Please flatten variable-length inputs before processing."
    )


# (tensor, summary) of the last cu_seqlens seen: every layer of a model passes the same tensor. One
# pair, replaced whole: threads calling at once never see one tensor with another's summary.
_last_summary: list = [(None, None)]


def _cu_seqlens_summary(cu_seqlens: torch.Tensor):
    """``(first, last, smallest step)`` of ``cu_seqlens`` as Python ints: one read of three numbers,
    reused while the same tensor object comes back (fla's ``tensor_cache`` keys its index helpers on
    identity the same way; a one-entry check of identity costs well under a microsecond)."""
    cached_tensor, cached = _last_summary[0]
    if cached_tensor is cu_seqlens:
        return cached
    if cu_seqlens.numel() < 2:
        first = int(cu_seqlens[0].item())
        summary = (first, first, 0)
    else:
        steps = cu_seqlens[1:] - cu_seqlens[:-1]
        first, last, step = torch.stack([cu_seqlens[0], cu_seqlens[-1], steps.min()]).tolist()
        summary = (int(first), int(last), int(step))
    _last_summary[0] = (cu_seqlens, summary)
    return summary


def check_cu_seqlens(cu_seqlens: torch.Tensor, num_tokens: int) -> None:
    """``cu_seqlens`` must be a 1-D integer tensor of non-decreasing offsets from 0 to ``num_tokens``
    (the length of the flattened input). fla 0.4.0 takes a 2-D one as zero sequences, truncates a
    float one, reads past the input for a larger end (the port would allocate ``end`` positions:
    tens of GB for an end of 2^31), and leaves tokens outside ``[cu_seqlens[0], cu_seqlens[-1])``
    uninitialised (the port's chunk layout cannot hold them and fails inside); each is refused here."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"`cu_seqlens` must be a torch.Tensor, got {type(cu_seqlens).__name__}.")
    if cu_seqlens.dtype not in _INTEGER_DTYPES:
        raise ValueError(
            f"`cu_seqlens` must be an integer tensor (torch.int32 or torch.int64), got {cu_seqlens.dtype}."
        )
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() == 0:
        raise ValueError(
            f"`cu_seqlens` must be a 1-D tensor [N + 1] of sequence offsets, got shape {tuple(cu_seqlens.shape)}."
        )
    first, last, step = _cu_seqlens_summary(cu_seqlens)
    if first != 0 or last != num_tokens:
        raise ValueError(
            f"`cu_seqlens` must run from 0 to the number of tokens of the input ({num_tokens}), "
            f"got cu_seqlens[0] = {first} and cu_seqlens[-1] = {last}."
        )
    if step < 0:
        raise ValueError("`cu_seqlens` must be non-decreasing (sequence lengths cannot be negative).")


def check_floating(**tensors: Optional[torch.Tensor]) -> None:
    """Every given tensor must be floating point: integer ``q``/``k``/``v`` would run the op in
    integer arithmetic and return a truncated integer output."""
    for name, t in tensors.items():
        if t is not None and not t.is_floating_point():
            raise ValueError(f"`{name}` must be a floating-point tensor, got {t.dtype}.")


def check_op_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    **gates: Optional[torch.Tensor],
) -> None:
    """The checks at the top of ``chunk_kda``, ``fused_recurrent_kda``, ``chunk_gated_delta_rule``
    and ``fused_recurrent_gated_delta_rule``: fla's (same messages, same order), then the added ones.
    ``gates`` are further optional tensors of the op (``gk``, ``gv``)."""
    check_varlen_inputs(q, initial_state, cu_seqlens)
    check_floating(q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state, **gates)
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, q.shape[1])


def reject_head_first(head_first: bool) -> None:
    """fla's refusal of the deprecated ``head_first=True`` (raised, not warned, as fla does)."""
    if head_first:
        raise DeprecationWarning(
            "head_first is deprecated and will be removed in a future version. "
            "Please use head_first=False for now instead."
        )


def warn_head_first_layout(q: torch.Tensor) -> None:
    """fla's warning for ``[B, H, T, ...]`` tensors given where ``[B, T, H, ...]`` is expected, on
    fla's own condition (``T < H``), as its DPLR and RWKV-7 entry points raise it."""
    if q.shape[1] < q.shape[2]:
        warnings.warn(
            f"Input tensor shape suggests potential format mismatch: seq_len ({q.shape[1]}) < num_heads ({q.shape[2]}). "
            "This may indicate the inputs were passed in head-first format [B, H, T, ...] "
            "when head_first=False was specified. "
            "Please verify your input tensor format matches the expected shape [B, T, H, ...]."
        )


def warn_if_head_first(q: torch.Tensor) -> None:
    """:func:`warn_head_first_layout` for the chunked GDN and KDA ops.

    fla 0.4.0 raises it in its other chunk ops (fla/ops/retention/chunk.py:L59-L65,
    fla/ops/generalized_delta_rule/dplr/chunk.py:L321-L327); ``chunk_gated_delta_rule`` had it until
    just before 0.4.0 (fla commit 38cc6191). The fused_recurrent ops dropped it (fla commit
    f74c46ad) because one decoding token with several heads is the normal shape there, so it is
    applied to the chunked ops only. An empty input (every token of a batch padded) says nothing
    about the layout and does not warn.
    """
    if q.shape[1] > 0:
        warn_head_first_layout(q)


def check_layer_inputs(
    hidden_states: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    cu_seqlens: Optional[torch.Tensor],
) -> None:
    """The checks at the top of ``KimiDeltaAttention.forward`` and ``GatedDeltaNet.forward``, after
    fla's own mask assertion: a padding mask must cover every token of its row (fla slices its last
    ``q_len`` columns; a shorter mask unpads the wrong tokens), and ``cu_seqlens`` needs a batch of
    one row (fla raises this from the op, after the short convolutions have run on the batch)."""
    batch_size, q_len = hidden_states.shape[:2]
    if attention_mask is not None:
        if attention_mask.shape[0] != batch_size or attention_mask.shape[1] < q_len:
            raise ValueError(
                f"`attention_mask` must be [batch_size, seq_len] with batch_size = {batch_size} and "
                f"seq_len >= {q_len} (the input's length), got {tuple(attention_mask.shape)}."
            )
        return
    if cu_seqlens is not None:
        if batch_size != 1:
            raise varlen_batch_error(batch_size)
        check_cu_seqlens(cu_seqlens, q_len)


def check_conv_inputs(x: torch.Tensor, cu_seqlens: Optional[torch.Tensor]) -> None:
    """``ShortConvolution`` with ``cu_seqlens``: one row of flattened sequences, as the ops require."""
    if cu_seqlens is None:
        return
    if x.shape[0] != 1:
        raise varlen_batch_error(x.shape[0])
    check_cu_seqlens(cu_seqlens, x.shape[1])


def check_softplus_beta(beta: float) -> None:
    """``softplus(beta * x) / beta`` needs ``beta > 0``: 0 gives NaN, a negative one flips the gate's sign."""
    if not beta > 0:
        raise ValueError(f"`beta` of the softplus must be positive, got {beta}.")
