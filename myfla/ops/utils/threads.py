"""Intra-op thread policy for small work on CPU (port-only; fla has no counterpart).

PyTorch runs an elementwise op, a reduction or a batched matmul on several threads once it is
larger than a fixed grain (32768 elements for elementwise ops). For the tensors of a one-token
decode step, or of a short chunked call, that parallel region gains little on a busy machine and
stalls: the region ends at a barrier that waits for a thread the OS has not scheduled, so a 50 us op
can take 10-20 ms (benchmarks/bench_decode.py measures it). One thread never waits. On a quiet
machine, though, the same threads pay: a one-token step with a 2-16 MB state runs 1.3-2x faster on
two cores than on one and 1.5-5x faster on 16. So ``small_work_single_threaded(work, device, kind)``
decides per block, for work below :data:`SMALL_WORK` when torch is set to more than one thread:
- tiny work (below :data:`TINY_WORK` elements, torch's elementwise grain) runs on one thread;
- other small work runs on one thread or on the caller's threads, whichever recent blocks of the
  same kind measured faster (``_Choice``: both are timed in turn, the faster is kept for a while,
  then measured again; threads that stall are dropped after one sample, and a choice whose calls
  turn 4x slower is measured again at once). ``MYFLA_SMALL_WORK_THREADS=one`` runs all small work
  on one thread instead (the policy of earlier releases).
The thread count is restored afterwards; larger work keeps the caller's setting.

``work`` is the number of elements of the largest tensor one op of the block reads or writes (a
recurrent state ``[N, HV, K, V]``, a projection weight, a ``[B, T, D]`` activation): what decides
whether one op's parallel region can pay for itself. Below the default, 2^21 elements (8 MB of
fp32), an op takes well under a millisecond on one core, so a second thread saves at most a few
hundred microseconds on a quiet machine, while one stalled region on a busy machine costs
milliseconds.

Caveats:
- ``torch.set_num_threads`` sets the calling thread's OpenMP team size (which is what a parallel
  region started from that thread uses), and also process-wide settings: the default a thread
  takes when it first runs a torch op, and MKL's thread count. So while a block runs on one
  thread, a Python thread that starts using torch settles on one thread, and MKL calls of other
  threads run on one thread. Blocks and measured choices are per thread (nested blocks follow the
  outermost, which restores on leaving).
- A ``torch.set_num_threads`` call made inside a block (by the same thread) is undone when a block
  that switched to one thread ends (a block that kept the threads leaves the count alone).
- Switching costs well under a microsecond; the first parallel region after a switch back wakes
  the pool's threads again (microseconds on a quiet machine).
- Only CPU tensors are affected; work on other devices runs as it is.
- Which count a measured block runs on depends on timing, so two runs need not take the same one.
  On this project's machines the decode steps and short chunked calls gave bit-identical results on
  1, 2 and 16 threads (torch 2.13, MKL), but torch does not promise that for every op and library;
  ``MYFLA_SMALL_WORK_THREADS=one`` keeps all small work on one thread where runs must repeat bit for bit.

Layers apply the policy to their decoding calls with :func:`single_threaded_when_small`, whose work
counts a quarter of the layer's largest parameter (a one-token projection is a memory-bound GEMV).
The chunked GDN, KDA and DPLR ops apply it to their forward and backward passes, with
:func:`chunk_work`.

A one-token projection is a GEMV: two flops per weight element read, memory-bound, so its weight
counts as a quarter of its size (:data:`MEMORY_BOUND_SHARE`): projections up to 4 x 2^21 elements
(32 MB of fp32) are small work with the rest of the step, larger ones keep the caller's threads. The
recurrent state of a one-token step is streamed the same way (the decay and the rank-1 update, a few
flops per element) and counts a quarter too (:func:`recurrent_state_work`): states up to 2^23
elements (32 MB of fp32; B=8 with 32 heads of 128 x 128 is 2^22) are small work. Why they are
measured and not simply run on one thread (bench_decode.py, two pinned cores and all 16 of the H100
host's Xeon, 2026-11-26): with one thread busy on the pair, a KDA step at B=8 with 16 heads of 128 took
40.0 ms on both threads against 3.9 ms on one, and the GatedDeltaNet layer at B=8 120 against 17 ms;
quiet, the same step took 1.6 ms on both against 2.6 on one, and on 16 quiet threads 0.70 against
2.4 ms (transformers' loop 0.96 ms). Measuring, the step took 4.2 ms busy, 1.6 ms quiet on the pair
and 0.71 ms on 16 threads.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
import weakref
from typing import Callable, Optional

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


# The measured choice for small work above TINY_WORK (see the module notes): the first calls of a
# kind of block alternate between one thread and the caller's threads, SMALL_WORK_SAMPLES of each
# (one of each where the threads' call took SMALL_WORK_STALL_RATIO times the slowest one-thread call);
# the faster by median (one thread unless the threads are at least SMALL_WORK_MARGIN faster) runs the
# calls of the next SMALL_WORK_RECHECK_SECONDS, twice as long after each measurement that confirms it
# (up to SMALL_WORK_RECHECK_MAX_SECONDS; at least SMALL_WORK_STALL_RECHECK_SECONDS after threads
# stalled: on the H100 host's busy pair of cores one T=300 chunk_kda call on both threads took 0.8 s
# against 14 ms on one), and two calls in a row SMALL_WORK_STALL_RATIO times slower than measured end
# it at once. On that busy pair the B=8 KDA step then took 4.2 ms against 3.9 on one thread and 40.0
# on both; quiet, 1.6 ms against 1.6 on both (bench_decode.py).
TINY_WORK = 2 ** 15
SMALL_WORK_SAMPLES = 5
SMALL_WORK_STALL_RATIO = 4.0
SMALL_WORK_MARGIN = 0.9
SMALL_WORK_RECHECK_SECONDS = 2.0
SMALL_WORK_RECHECK_MAX_SECONDS = 32.0
SMALL_WORK_STALL_RECHECK_SECONDS = 8.0
SMALL_WORK_THREADS = os.environ.get('MYFLA_SMALL_WORK_THREADS', 'measure')
if SMALL_WORK_THREADS not in ('measure', 'one'):
    raise ValueError(f"The environment variable MYFLA_SMALL_WORK_THREADS must be 'measure' (the default: small "
                     f"work runs on one thread or on all, as measured) or 'one', got {SMALL_WORK_THREADS!r}.")


class _Choice:
    """The measured choice for one kind of small block (see ``TINY_WORK``): the wall times of its
    calls on one thread and on the caller's threads while measuring, and the count it runs on until
    ``until`` (``time.monotonic``) once decided."""

    __slots__ = ('times', 'decided', 'until', 'last', 'interval', 'expected', 'strikes')

    def __init__(self):
        self.times = {True: [], False: []}           # one thread? -> wall times while measuring
        self.decided: Optional[bool] = None          # the choice in force (None: measuring)
        self.until = 0.0
        self.last: Optional[bool] = None             # the previous measurement's choice
        self.interval = SMALL_WORK_RECHECK_SECONDS
        self.expected = 0.0                          # the chosen mode's median while measuring
        self.strikes = 0                             # calls in a row far slower than expected

    def one_thread(self) -> bool:
        """Whether the next call runs on one thread (while measuring: the mode with fewer samples,
        one thread first)."""
        if self.decided is not None and time.monotonic() < self.until:
            return self.decided
        self.decided = None
        return len(self.times[True]) <= len(self.times[False])

    def record(self, one: bool, seconds: float) -> None:
        if self.decided is not None:
            # a machine that turns busy makes the chosen threads stall at once: two calls in a row
            # SMALL_WORK_STALL_RATIO times slower than measured end the choice before its time
            self.strikes = self.strikes + 1 if seconds > SMALL_WORK_STALL_RATIO * self.expected else 0
            if self.strikes >= 2:
                self.decided, self.last, self.strikes = None, None, 0
                self.interval = SMALL_WORK_RECHECK_SECONDS
            return
        self.times[one].append(seconds)
        ones, manys = self.times[True], self.times[False]
        if ones and manys and min(manys) > SMALL_WORK_STALL_RATIO * max(ones):
            # stalling threads: not sampled again, and not soon (each sample may cost 50x a call)
            self._decide(True, sorted(ones)[len(ones) // 2], SMALL_WORK_STALL_RECHECK_SECONDS)
        elif min(len(ones), len(manys)) >= SMALL_WORK_SAMPLES:
            one_s, many_s = (sorted(t)[SMALL_WORK_SAMPLES // 2] for t in (ones, manys))
            faster = not many_s < SMALL_WORK_MARGIN * one_s
            self._decide(faster, one_s if faster else many_s)

    def _decide(self, one: bool, expected: float, at_least: float = 0.0) -> None:
        self.decided, self.expected, self.strikes = one, expected, 0
        self.interval = (min(2 * self.interval, SMALL_WORK_RECHECK_MAX_SECONDS) if one == self.last
                         else SMALL_WORK_RECHECK_SECONDS)
        self.interval = max(self.interval, at_least)
        self.last = one
        self.until = time.monotonic() + self.interval
        self.times = {True: [], False: []}


def reset_small_work_choices() -> None:
    """Forget this thread's measured choices (the next small blocks measure again)."""
    _state.choices = {}


class small_work_single_threaded:
    """Context manager for a block of ``work`` elements (see the module notes) on ``device`` (a
    ``torch.device``; None means CPU): on a CPU, below ``SMALL_WORK``, one intra-op thread for tiny
    work (``TINY_WORK``) and, above it, one thread or the caller's threads as measured for blocks of
    the same ``kind`` (a name for the code the block runs: a forward and a backward of the same size
    cost differently, so they are measured apart), work size and thread count (``_Choice``);
    otherwise nothing changes. The outermost open block decides (and is the one timed); nested ones
    keep its choice."""

    __slots__ = ('active', 'work', 'kind', 'choice', 'one', 'start')

    def __init__(self, work: int, device: Optional[torch.device] = None, kind: str = ''):
        self.active = work < SMALL_WORK and (device is None or device.type == 'cpu')
        self.work = work
        self.kind = kind
        self.choice: Optional[_Choice] = None

    def __enter__(self) -> 'small_work_single_threaded':
        if self.active:
            depth = getattr(_state, 'depth', 0)
            if depth == 0:
                # saved: the count to restore on leaving, 0 where the block keeps the threads (setting
                # the same count again is not free: the next parallel region pays for it)
                threads = torch.get_num_threads()
                one = threads > 1
                if one and self.work >= TINY_WORK and SMALL_WORK_THREADS == 'measure':
                    choices = getattr(_state, 'choices', None)
                    if choices is None:
                        choices = _state.choices = {}
                    key = (self.kind, self.work.bit_length(), threads)
                    self.choice = choices.get(key)
                    if self.choice is None:
                        self.choice = choices[key] = _Choice()
                    one = self.choice.one_thread()
                    self.one = one
                _state.saved = threads if one else 0
                if one:
                    torch.set_num_threads(1)
                self.start = time.perf_counter()
            _state.depth = depth + 1
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.active:
            _state.depth -= 1
            if _state.depth == 0:
                if self.choice is not None and exc_type is None:      # a call that raised is no sample
                    self.choice.record(self.one, time.perf_counter() - self.start)
                if _state.saved:
                    torch.set_num_threads(_state.saved)


# Large calls on a busy machine: the same stalls, multiplied. A chunked op's call is thousands of ops
# (state-loop steps, slab passes), each a parallel region; while other processes keep the cores busy,
# every region's barrier waits for a thread the OS has not scheduled. On this project's 2-core machine,
# both cores busy with another multi-threaded job (a pytest run), 2 threads: chunk_rwkv7 (B=1 T=8192
# H=4 K=V=64) forward 6.4-7.0 s against 0.18-0.25 s on one thread, chunk_gated_delta_rule (K=V=128)
# 1.2-4.7 s against 0.30-0.33 s. So when the machine is loaded (its load average at least half its
# cores), a large call first times one elementwise op spread over all its threads against the same op
# on one thread: quiet, tens of microseconds both; stalled, milliseconds against tens of microseconds
# (8-12 ms there). When the spread op takes over 1 ms and 4x the single one, twice, the call halves its
# threads and probes again, down to one (MYFLA_STALL_PROBE=0 turns the probe off).
STALL_PROBE = os.environ.get('MYFLA_STALL_PROBE', '1') != '0'
STALL_SECONDS = 1e-3
STALL_RATIO = 4.0
_PROBE_GRAIN = 65536                  # elements per thread of the probe (twice torch's parallel grain)
_probe_buffer: Optional[torch.Tensor] = None
_probe_state = threading.local()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_loaded() -> bool:
    """Whether the 1-minute load average reaches half the cores this process may use (True where the
    system does not report one)."""
    try:
        return os.getloadavg()[0] >= 0.5 * _usable_cores()
    except (AttributeError, OSError):
        return True


def _timed_op(x: torch.Tensor) -> float:
    start = time.perf_counter()
    x.mul_(0.5)
    return time.perf_counter() - start


def _stalls(threads: int) -> bool:
    """Whether an elementwise op spread over ``threads`` threads takes over ``STALL_SECONDS`` and
    ``STALL_RATIO`` times the same op on one thread, twice in a row (leaves the count at ``threads``)."""
    global _probe_buffer
    n = threads * _PROBE_GRAIN
    if _probe_buffer is None or _probe_buffer.numel() < n:
        _probe_buffer = torch.zeros(n)
    x = _probe_buffer[:n]
    with torch.no_grad():
        for _ in range(2):
            torch.set_num_threads(1)
            single = _timed_op(x)
            torch.set_num_threads(threads)
            spread = _timed_op(x)
            if spread <= max(STALL_SECONDS, STALL_RATIO * single):
                return False
    return True


class threads_unstalled:
    """Context manager for a large call on a CPU: keeps the caller's intra-op threads unless a probe
    shows them stalling (see ``_stalls``), then runs the block on the largest count, halving, whose
    probe does not stall (at least one), and restores the caller's count afterwards. Nested blocks
    and other devices leave the threads alone."""

    __slots__ = ('saved',)

    def __init__(self, device: Optional[torch.device] = None):
        self.saved = 0 if (not STALL_PROBE or (device is not None and device.type != 'cpu')) else -1

    def __enter__(self) -> 'threads_unstalled':
        if self.saved == 0 or getattr(_probe_state, 'open', False):
            self.saved = 0
            return self
        _probe_state.open = True
        self.saved = torch.get_num_threads()
        threads = self.saved
        while threads > 1 and machine_loaded() and _stalls(threads):
            threads //= 2
        torch.set_num_threads(threads)
        return self

    def __exit__(self, *exc) -> None:
        if self.saved:
            _probe_state.open = False
            torch.set_num_threads(self.saved)


@contextlib.contextmanager
def at_most_threads(limit: Optional[int]):
    """At most ``limit`` intra-op threads inside the block (None or 0: no limit), the caller's count
    restored after it; nothing is set where the count is already within the limit."""
    current = torch.get_num_threads()
    if not limit or limit >= current:
        yield
        return
    torch.set_num_threads(limit)
    try:
        yield
    finally:
        torch.set_num_threads(current)


def chunk_work(k: torch.Tensor, v: torch.Tensor) -> int:
    """The work of a chunked op's call: its largest tensor, the keys/values ``[B, T, H, K|V]`` or the
    per-chunk states ``[B, T/64, H, K, V]`` (so a T=300 call at K=V=64 runs on one thread, and a
    T=8192 one at K=V=128 keeps the caller's threads)."""
    return max(k.numel(), v.numel(), k.numel() * v.shape[-1] // 64)


@contextlib.contextmanager
def chunk_call_threads(k: torch.Tensor, v: torch.Tensor, kind: str = ''):
    """The thread policy of a chunked op's forward or backward call (``kind`` names it): for small
    work, ``small_work_single_threaded`` of ``chunk_work`` (whose measured choice already drops
    stalling threads, so it is not probed as well), otherwise the caller's threads unless they stall
    (``threads_unstalled``)."""
    work = chunk_work(k, v)
    with (small_work_single_threaded(work, k.device, kind) if work < SMALL_WORK else threads_unstalled(k.device)):
        yield


# the largest parameter of a module, computed once (parameter shapes do not change after construction)
_largest_parameter = weakref.WeakKeyDictionary()


# how much of a memory-bound stream counts as work in a one-token call: a projection's weight (a
# GEMV) and the recurrent state (the decay and rank-1 update; see the module docstring)
MEMORY_BOUND_SHARE = 4


def largest_parameter(module: torch.nn.Module) -> int:
    """Elements of ``module``'s largest parameter (0 without parameters)."""
    size = _largest_parameter.get(module)
    if size is None:
        size = max((p.numel() for p in module.parameters()), default=0)
        _largest_parameter[module] = size
    return size


def single_threaded_when_small(work_of: Callable[..., Optional[int]]) -> Callable:
    """Decorator for a method whose arguments start with a tensor: ``work_of`` gets the method's
    arguments and returns the work of the call (None: leave the threads alone), and the method runs
    inside :class:`small_work_single_threaded` for that work and the tensor's device."""

    def decorate(fn: Callable) -> Callable:
        kind = f"{fn.__module__}.{fn.__qualname__}"

        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            work = work_of(self, *args, **kwargs)
            if work is None or work >= SMALL_WORK:
                return fn(self, *args, **kwargs)
            x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
            with small_work_single_threaded(work, x.device, kind):
                return fn(self, *args, **kwargs)
        return wrapper

    return decorate


def layer_decoding_work(layer: torch.nn.Module, hidden_states=None, *args, **kwargs) -> Optional[int]:
    """Work of a linear-attention layer's call (``GatedDeltaNet``, ``KimiDeltaAttention``,
    ``RWKV7Attention``) on ``hidden_states`` ``[B, T, D]`` when it takes the recurrent path
    (``T <= 64``): the largest of
    a quarter of its largest parameter (a projection weight, read by a GEMV), a quarter of the
    recurrent state ``[B, HV, K, V]`` (streamed by the update) and the widest activation
    ``[B, T, max(D, key_dim, value_dim)]``. None for longer inputs, and for anything the layer's own
    input checks should report."""
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 3:
        return None
    batch_size, q_len, width = hidden_states.shape
    if q_len > 64:
        return None
    # RWKV7Attention names its key heads num_heads / head_dim
    heads = getattr(layer, 'num_v_heads', None) or layer.num_heads
    head_k_dim = getattr(layer, 'head_k_dim', None) or layer.head_dim
    state = batch_size * heads * head_k_dim * layer.head_v_dim
    activation = batch_size * q_len * max(width, layer.key_dim, layer.value_dim)
    return max(largest_parameter(layer) // MEMORY_BOUND_SHARE, recurrent_state_work(state), activation)


def recurrent_state_work(state_elements: int) -> int:
    """Work of a one-token update of a recurrent state of ``state_elements`` elements: a quarter of it
    (:data:`MEMORY_BOUND_SHARE`): the update streams the state with a few flops per element, like a
    GEMV its weight."""
    return state_elements // MEMORY_BOUND_SHARE
