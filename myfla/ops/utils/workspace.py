"""Reusable CPU buffers for the chunked ops' large tensors (port-only; fla has no counterpart).

On a GPU, fla's tensors come from PyTorch's caching allocator, so a freed buffer is handed out
again at no cost. On a CPU, PyTorch allocates with the C library's malloc; glibc returns large
freed blocks to the operating system (``munmap``, heap trimming) and the next allocation of the
same size page-faults every 4 KiB page back in, zero-filled. The chunked ops allocate many
short-lived tensors of a few MB, and on the machines we measured the faults cost 15-35% of a
forward+backward pass (see ``benchmarks/bench_gdn.py``).

``new_empty`` hands out buffers from a per-thread pool instead. A buffer is reused only
when nothing but the pool references its storage (no tensor, view, autograd saved tensor or
caller holds it), so a reused buffer can never alias a live tensor. The pool is used only for CPU
tensors and only while autograd is not recording (inside ``autograd.Function`` forward/backward
and under ``no_grad``). It keeps up to ``MAX_BYTES``: buffers last handed out inside an op pass
(``begin_pass``/``end_pass``, the chunked GDN/KDA passes) while one of the last ``KEEP_PASSES`` passes
used them, the others (callers without passes) within ``UNSCOPED_MAX_BYTES``, least recently used
first; ``release()`` empties it. The pools of all threads together keep up to ``MAX_BYTES`` too: a
thread whose call finds the process over the bound drops its own least recently used buffers (an
idle thread's pool is given back when the thread ends). Tensors a
function returns may live in pool memory; they stay valid and are never handed out while held.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from typing import Dict, List, Optional, Sequence

import torch

from myfla._torch_compat import dtype_itemsize



def _default_max_bytes() -> int:
    """A quarter of physical memory (at least 512 MB; 512 MB where the size is unknown)."""
    floor = 512 * 1024 * 1024
    try:
        physical = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (AttributeError, ValueError, OSError):
        return floor
    return max(floor, physical // 4)


# Upper bound on the bytes one thread's pool keeps, and all threads' pools together (environment
# variable MYFLA_WORKSPACE_MB; 0 turns the pool off). A forward+backward keeps about 37 input-sized
# buffers (KDA; B=4 T=4096 H=16 K=V=128: 5 GB, B=1 T=8192 H=4: 400 MB); past the bound, buffers are
# freed after use and the next call faults their pages in again (on a 2-core machine a fifth of
# KDA's time at B=4 T=1024 H=16).
_env_mb = os.environ.get('MYFLA_WORKSPACE_MB')
MAX_BYTES = int(float(_env_mb) * 1024 * 1024) if _env_mb is not None else _default_max_bytes()
# Outside an op pass (callers that never call ``end_pass``, whose buffers would never age) the pool
# stays within the former fixed bound.
UNSCOPED_MAX_BYTES = min(MAX_BYTES, 512 * 1024 * 1024)
# A buffer no pass has used in this many op passes (``end_pass``) is dropped: the pool holds the
# working set of the recent calls (e.g. a training step's forward and backward passes of several
# layer types), not every shape ever seen.
KEEP_PASSES = 4
# Buffers smaller than this come straight from torch.empty (malloc keeps small blocks anyway).
MIN_BYTES = 256 * 1024


def _storage_use_count(t: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


def _calibrate() -> int | None:
    """Use count of a storage held by one tensor only (the probe's own temporary storage object
    adds one); None where this torch build cannot report use counts, which disables reuse."""
    try:
        probe = torch.empty(1)
        alone = _storage_use_count(probe)
        view = probe.view(1)
        shared = _storage_use_count(probe)
        del view
    except (AttributeError, RuntimeError):
        return None
    return alone if shared == alone + 1 else None


_UNUSED = _calibrate()


# Bytes held by the pools of all threads together, bounded by MAX_BYTES as well: a server's request
# threads (or nn.DataParallel replicas) each have a pool, and per-thread bounds alone would let N
# threads keep N quarters of the machine's memory.
_process = {'nbytes': 0}
_process_lock = threading.Lock()


def _count_process(delta: int) -> None:
    with _process_lock:
        _process['nbytes'] += delta


class _Held:
    """One thread's share of ``_process``: given back when the thread's pool goes (at thread exit
    the thread-local state, and with it this object, is dropped)."""

    __slots__ = ('nbytes',)

    def __init__(self):
        self.nbytes = 0

    def add(self, delta: int) -> None:
        self.nbytes += delta
        _count_process(delta)

    def __del__(self):
        if self.nbytes:
            try:
                _count_process(-self.nbytes)
            except Exception:        # interpreter shutdown: the module's globals may be gone already
                pass


class _Pool(threading.local):
    def __init__(self):
        self.buffers: List[torch.Tensor] = []          # flat buffers, least recently used first
        self.held = _Held()                            # this thread's bytes, also counted process-wide
        self.passes = 0                                # op passes ended (``end_pass``)
        self.depth = 0                                 # op passes open (``begin_pass``)
        # id(buffer) -> pass in which it was last handed out inside an op pass; None: last handed out
        # outside one (such buffers never age by passes: they share UNSCOPED_MAX_BYTES instead)
        self.last_pass: Dict[int, Optional[int]] = {}
        self.unscoped_nbytes = 0


_pool = _Pool()


def _enabled(device: torch.device) -> bool:
    return _UNUSED is not None and device.type == 'cpu' and not torch.is_grad_enabled()


def standalone(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t`` as a tensor that is not a view (same storage, offset, sizes and strides; no copy); ``t``
    itself when it is not a view, or None.

    fla's ops return freshly allocated tensors; the port's are often views of larger buffers (a pool
    buffer, a padded chunk grid, a flat step output). Autograd forbids changing a custom
    ``autograd.Function``'s view outputs in place ("... is a view and is being modified inplace"),
    which fla's outputs allow, so the ops' Functions return their outputs through this."""
    if t is None or not t._is_view():
        return t
    storage = t.untyped_storage() if hasattr(t, 'untyped_storage') else t.storage()
    with torch.no_grad():
        return t.new_empty((0,)).set_(storage, t.storage_offset(), t.size(), t.stride())


@functools.lru_cache(maxsize=64)
def _contiguous_strides(shape: tuple) -> tuple:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _on_storage(buf: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A contiguous ``shape`` tensor over the start of ``buf``'s storage that is not a view of ``buf``
    (see :func:`standalone`; this is its pool-side form, without a view made first). Pool buffers
    exist only on torches with storage use counts, which all have ``untyped_storage``."""
    shape = tuple(int(n) for n in shape)
    return torch.empty(0, dtype=buf.dtype, device=buf.device).set_(buf.untyped_storage(), 0, shape,
                                                                   _contiguous_strides(shape))


def new_empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype, device=device)``, from the pool where that is safe."""
    if not isinstance(device, torch.device):
        device = torch.device(device)
    numel = math.prod(shape)
    nbytes = numel * dtype_itemsize(dtype)
    if nbytes < MIN_BYTES or nbytes > MAX_BYTES or not _enabled(device):
        return torch.empty(shape, dtype=dtype, device=device)
    buffers = _pool.buffers
    inference = torch.is_inference_mode_enabled()
    for i, buf in enumerate(buffers):
        # an inference tensor cannot be written outside inference mode (nor the reverse be kept)
        if (buf.numel() == numel and buf.dtype == dtype and buf.is_inference() == inference
                and _storage_use_count(buf) == _UNUSED):
            buffers.append(buffers.pop(i))
            _mark(buf)
            _evict()
            return _on_storage(buf, shape)
    buf = torch.empty(numel, dtype=dtype, device=device)
    buffers.append(buf)
    _pool.held.add(nbytes)
    _mark(buf)
    _evict()
    return _on_storage(buf, shape)


def _mark(buf: torch.Tensor) -> None:
    """Record that ``buf`` was just handed out (inside an op pass or not)."""
    was_unscoped = id(buf) in _pool.last_pass and _pool.last_pass[id(buf)] is None
    now_unscoped = _pool.depth == 0
    _pool.last_pass[id(buf)] = None if now_unscoped else _pool.passes
    _pool.unscoped_nbytes += (now_unscoped - was_unscoped) * buf.numel() * buf.element_size()


def out_buffer(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """A pooled buffer for an ``out=`` argument, or None (the op then allocates as usual) where the
    pool does not apply; in particular under autograd, where ``out=`` would make the op
    non-differentiable."""
    device = torch.device(device)
    return new_empty(shape, dtype, device) if _enabled(device) else None


def _evict():
    """Drop least recently used buffers (never the newest) until the pool is within ``MAX_BYTES``
    and its buffers last handed out outside op passes within ``UNSCOPED_MAX_BYTES``; a dropped
    buffer still in use stays valid, its memory goes with its last user."""
    buffers = _pool.buffers
    # the process total includes this thread's bytes, so it bounds both
    while _process['nbytes'] > MAX_BYTES and len(buffers) > 1:
        _drop(buffers.pop(0))
    if _pool.unscoped_nbytes > UNSCOPED_MAX_BYTES:
        dropped = set()
        for buf in [b for b in buffers[:-1] if _pool.last_pass.get(id(b), 0) is None]:
            if _pool.unscoped_nbytes <= UNSCOPED_MAX_BYTES:
                break
            _drop(buf)
            dropped.add(id(buf))
        _pool.buffers = [b for b in buffers if id(b) not in dropped]


def _drop(buf: torch.Tensor) -> None:
    nbytes = buf.numel() * buf.element_size()
    _pool.held.add(-nbytes)
    if _pool.last_pass.pop(id(buf), 0) is None:
        _pool.unscoped_nbytes -= nbytes


def begin_pass():
    """Mark the start of an op pass (the chunked ops' ``grid_cache()`` scope): until the matching
    ``end_pass`` the pool may hold up to ``MAX_BYTES``."""
    _pool.depth += 1


def end_pass():
    """Mark the end of an op pass; drops the buffers handed out inside op passes that the last
    ``KEEP_PASSES`` passes did not use."""
    _pool.depth = max(0, _pool.depth - 1)
    _pool.passes += 1
    oldest = _pool.passes - KEEP_PASSES

    def is_stale(buf):
        last = _pool.last_pass.get(id(buf), -1)
        return last is not None and last < oldest
    stale = [buf for buf in _pool.buffers if is_stale(buf)]
    if stale:
        for buf in stale:
            _drop(buf)
        keep = {id(buf) for buf in stale}
        _pool.buffers = [buf for buf in _pool.buffers if id(buf) not in keep]


def release():
    """Free every buffer this thread's pool holds (tensors handed out stay valid)."""
    _pool.buffers.clear()
    _pool.last_pass.clear()
    _pool.held.add(-_pool.held.nbytes)
    _pool.unscoped_nbytes = 0
