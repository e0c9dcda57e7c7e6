"""fla 0.4.0's varlen input checks, replayed by the CPU references in front of fla's naive code (which
has no ``cu_seqlens``): the same messages, in the same order, as fla's op entry points raise them."""

from __future__ import annotations


def check_varlen(q, initial_state, cu_seqlens) -> None:
    """Raise fla's errors for ``cu_seqlens`` with a batch of more than one row, or with a number of
    initial states other than the number of sequences."""
    if cu_seqlens is None:
        return
    if q.shape[0] != 1:
        raise ValueError(
            f"The batch size is expected to be 1 rather than {q.shape[0]} when using `cu_seqlens`."
            f"Please flatten variable-length inputs before processing.")
    if initial_state is not None and initial_state.shape[0] != len(cu_seqlens) - 1:
        raise ValueError(
            f"The number of initial states is expected to be equal to the number of input sequences, "
            f"i.e., {len(cu_seqlens) - 1} rather than {initial_state.shape[0]}.")
