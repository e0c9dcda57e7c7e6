"""Intra-op thread policy for small work on CPU (port-only; fla has no counterpart).

PyTorch runs an elementwise op, a reduction or a batched matmul on several threads once it is
larger than a fixed grain (32768 elements for elementwise ops). For the tensors of a one-token
decode step, or of a short chunked call, that parallel region gains little, and on a machine whose
cores are busy with other processes it stalls: the region ends at a barrier that waits for a thread
the OS has not scheduled, so a 50 us op can take 10-20 ms (benchmarks/bench_decode.py measures it).
One thread never waits. ``small_work_single_threaded(work, device)`` therefore runs a block on one
intra-op thread when its work is below :data:`SMALL_WORK` and torch is set to more than one thread,
and restores the thread count afterwards; larger work keeps the caller's setting, where threads pay.

``work`` is the number of elements of the largest tensor one op of the block reads or writes (a
recurrent state ``[N, HV, K, V]``, a projection weight, a ``[B, T, D]`` activation): what decides
whether one op's parallel region can pay for itself. Below the default, 2^21 elements (8 MB of
fp32), an op takes well under a millisecond on one core, so a second thread saves at most a few
hundred microseconds on a quiet machine, while one stalled region on a busy machine costs
milliseconds.

Caveats:
- ``torch.set_num_threads`` sets the calling thread's OpenMP team size (which is what a parallel
  region started from that thread uses), and also process-wide settings: the default a thread
  takes when it first runs a torch op, and MKL's thread count. So while a block runs, a Python
  thread that starts using torch settles on one thread, and MKL calls of other threads run on one
  thread. Blocks are counted per thread (nested blocks restore once, the outermost on leaving).
- A ``torch.set_num_threads`` call made inside a block (by the same thread) is undone when the
  block ends.
- Switching costs well under a microsecond; the first parallel region after a switch back wakes
  the pool's threads again (microseconds on a quiet machine).
- Only CPU tensors are affected; work on other devices runs as it is.

``MYFLA_SMALL_WORK`` (environment, read at import) or :func:`set_small_work` sets the threshold;
``0`` turns the policy off.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

import torch

# Blocks whose largest tensor has fewer elements run on one intra-op thread (see the module notes).
SMALL_WORK = int(float(os.environ.get('MYFLA_SMALL_WORK', str(2 ** 21))))

# per thread: blocks open and the thread count the outermost one found
_state = threading.local()


def set_small_work(work: int) -> int:
    """Set the threshold (elements) under which blocks run on one thread; ``0`` turns the policy
    off. Returns the previous value."""
    global SMALL_WORK
    if work < 0:
        raise ValueError(f"`work` must be >= 0, got {work}.")
    previous, SMALL_WORK = SMALL_WORK, int(work)
    return previous


class small_work_single_threaded:
    """Context manager: one intra-op thread for the block when ``work < SMALL_WORK`` and ``device``
    (a ``torch.device``; None means CPU) is a CPU; otherwise nothing changes."""

    __slots__ = ('active',)

    def __init__(self, work: int, device: Optional[torch.device] = None):
        self.active = work < SMALL_WORK and (device is None or device.type == 'cpu')

    def __enter__(self) -> 'small_work_single_threaded':
        if self.active:
            depth = getattr(_state, 'depth', 0)
            if depth == 0:
                _state.saved = torch.get_num_threads()
                if _state.saved > 1:
                    torch.set_num_threads(1)
            _state.depth = depth + 1
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            _state.depth -= 1
            if _state.depth == 0 and _state.saved > 1:
                torch.set_num_threads(_state.saved)
