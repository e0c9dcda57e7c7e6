"""A batched call split over worker threads, one intra-op thread each (port-only helper; fla has no
counterpart).

Some torch calls run their batch one matrix after another on one thread whatever the intra-op thread
count: a batched ``torch.linalg.solve_triangular`` on CPU is one LAPACK ``trsm`` per matrix (measured:
the same time on 1 and 16 threads). ``split_batch(call, n, min_per_part)`` cuts such a batch of ``n``
items into up to ``torch.get_num_threads()`` ranges and runs ``call(start, stop)`` for each: the
calling thread takes the first range, worker threads of a small pool the others, every one of them on
one intra-op thread. Each item is computed by the same code whatever the split, so the results do not
depend on the thread count.

- The workers run under the caller's grad and inference modes (both are per thread in torch).
- The caller runs its own range on one intra-op thread too and restores its thread count only after
  every range has finished: ``torch.set_num_threads`` also sets process-wide values (MKL's count, the
  count a new thread starts with), which must not change under a worker while it runs (see
  ``myfla.ops.utils.threads``).
- A split started inside a worker (nested) runs inline; a pool inherited through ``fork`` is not used
  (its threads do not exist in the child): the child builds its own.
- An exception in any range is raised in the caller after all ranges have ended.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, List, Optional, Tuple

import torch

from myfla.ops.utils.threads import at_most_threads

_pool: Optional[ThreadPoolExecutor] = None
_pool_key: Tuple[int, int] = (0, 0)          # (pid, workers) of _pool
_pool_lock = threading.Lock()
_local = threading.local()


def _workers(count: int) -> ThreadPoolExecutor:
    """The pool, with at least ``count`` workers, for this process. A smaller pool it replaces is not
    shut down: another thread may have just been handed it and be about to submit (a shut-down pool
    refuses new work); its idle workers end when the last reference to it goes."""
    global _pool, _pool_key
    with _pool_lock:
        pid = os.getpid()
        if _pool is None or _pool_key[0] != pid or _pool_key[1] < count:
            _pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix='myfla-split')
            _pool_key = (pid, count)
        return _pool


def ranges(n: int, parts: int) -> List[Tuple[int, int]]:
    """``[0, n)`` cut into ``parts`` consecutive ranges whose sizes differ by at most one."""
    return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


def split_batch(call: Callable[[int, int], None], n: int, min_per_part: int = 1) -> None:
    """``call(start, stop)`` over ``[0, n)`` in up to ``torch.get_num_threads()`` ranges of at least
    ``min_per_part`` items each, run side by side on one intra-op thread each (see the module notes);
    one range runs on the calling thread alone."""
    parts = max(1, min(torch.get_num_threads(), n // max(1, min_per_part)))
    with at_most_threads(1):
        if parts == 1 or getattr(_local, 'worker', False):            # one range, or nested in a worker
            call(0, n)
            return
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run(start: int, stop: int) -> None:
            _local.worker = True
            torch.set_num_threads(1)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                call(start, stop)

        bounds = ranges(n, parts)
        futures = [_workers(parts - 1).submit(run, *b) for b in bounds[1:]]
        try:
            call(*bounds[0])
        finally:
            wait(futures)
        for f in futures:
            f.result()
