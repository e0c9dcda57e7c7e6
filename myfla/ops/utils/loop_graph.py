"""Sequential chunk loops replayed as CUDA graphs (port-only helper; fla has no counterpart).

The inter-chunk state recurrence is the one sequential part of the chunked algorithms: its chunk
``c + 1`` needs the state after chunk ``c``. fla runs it inside one Triton program per (head, value
block) that walks the chunks; a torch port issues a few small kernels per chunk, so on a GPU the
launches grow with the sequence length and the host, not the GPU, sets the pace. ``run_loop`` runs
such a loop eagerly the first time it meets a shape, records it as a CUDA graph, and afterwards
replays the graph: one launch for the whole loop, whatever the sequence length.

A key is recorded the second time it is met (the first call runs eagerly), so shapes that occur once,
such as the many lengths of variable-length batches, never pay for a recording. A recorded graph
reads and writes fixed buffers. Each call copies its inputs into them, replays,
and returns the output buffers themselves: callers copy what they keep (``owned``), which most do
anyway while converting the chunk grid back to token layout. Graphs are kept per
(loop, shapes, dtypes, device, thread, stream) for the ``MAX_GRAPHS`` most recent keys; ``release()``
drops them. The thread and the stream are part of the key because a replay overwrites the buffers
another caller may not have copied yet: calls of one thread on one stream run in order, while two
threads (``nn.DataParallel`` replicas, a server's request threads) each get their own graphs.
The one-token decoding step of the fused recurrent ops goes through the same path: on a GPU it is
a dozen small kernels, bound by launches, and replays as one. Inside a caller's own CUDA graph
capture every call runs eagerly (its ops become part of the caller's graph; a graph cannot be
recorded inside another). ``MYFLA_CUDA_GRAPHS=0`` turns the graphs off (every call then runs the loop eagerly); so does any
error while recording, after which that key runs eagerly with a warning. CPU tensors always run
eagerly.
"""

from __future__ import annotations

import collections
import os
import threading
import warnings
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from myfla._torch_compat import compiler_disable
from myfla.ops.utils.threads import at_most_threads
from myfla.ops.utils.workspace import new_empty

ENABLED = os.environ.get('MYFLA_CUDA_GRAPHS', '1') != '0'
MAX_GRAPHS = 8

Inputs = Dict[str, Optional[torch.Tensor]]
Outputs = Dict[str, torch.Tensor]
Body = Callable[[Inputs, Outputs], None]

_EAGER = object()                      # marks a key whose recording failed
_SEEN = object()                       # marks a key met once
_graphs: 'collections.OrderedDict[tuple, object]' = collections.OrderedDict()
_graphs_lock = threading.Lock()        # guards _graphs and stats (recording and replays run outside it)
# counts of what happened, for benchmarks and tests: recorded, replayed, eager
stats = {'recorded': 0, 'replayed': 0, 'eager': 0}


class _Recorded:
    def __init__(self, graph, inputs: Inputs, outputs: Outputs):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs


def _signature(t: Optional[torch.Tensor]):
    return None if t is None else (tuple(t.shape), t.dtype)


def _allocate(specs: Dict[str, Tuple[Sequence[int], torch.dtype]], device) -> Outputs:
    """Output buffers (CPU: from the workspace pool, see ``myfla.ops.utils.workspace``)."""
    return {name: new_empty(tuple(shape), dtype, device) for name, (shape, dtype) in specs.items()}


# one recording at a time in the process (a recording happens once per key; other threads keep
# running eagerly or replaying meanwhile)
_record_lock = threading.RLock()


def _record(body: Body, inputs: Inputs, outputs: Outputs, device: torch.device):
    """Run ``body`` once on a side stream (warm-up: cuBLAS handles and workspaces get created, and
    ``outputs`` receive this call's results), then record it into a graph on a capture stream of
    ``device``. ``torch.cuda.graph``'s default capture stream is one per process, made on the device
    current at its first use: a recording for another device, or two recordings at once (two
    ``nn.DataParallel`` replicas), would capture on it and fail ("the operation cannot be performed in
    the present state", an empty graph, or an abort of the process)."""
    with _record_lock, torch.cuda.device(device):
        current = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            body(inputs, outputs)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        capture = torch.cuda.Stream(device)
        try:
            ctx = torch.cuda.graph(graph, stream=capture, capture_error_mode='thread_local')
        except TypeError:                               # torch without capture_error_mode
            ctx = torch.cuda.graph(graph, stream=capture)
        with ctx:
            body(inputs, outputs)
        return graph


# CPU threads a loop step may use per independent (sequence, head) recurrence: every step is a batch
# of small matrix products (one [BT, K] x [K, V] per head), too small to split over many threads, so
# on a many-core CPU the loop runs on fewer threads than the rest of the op
# (MYFLA_LOOP_THREADS_PER_HEAD; 0 = no limit).
LOOP_THREADS_PER_HEAD = int(os.environ.get('MYFLA_LOOP_THREADS_PER_HEAD', '2'))


@compiler_disable      # recorded and replayed CUDA graphs (and the thread caps) are not for dynamo to trace
def run_loop(name: str, body: Body, inputs: Inputs,
             outputs: Dict[str, Tuple[Sequence[int], torch.dtype]], device, recurrences: int = 0) -> Outputs:
    """``body(inputs, outs)`` with ``outs`` freshly allocated from ``outputs`` (name -> (shape, dtype)),
    which ``body`` must fill completely from ``inputs`` alone (no host synchronisation, no
    allocation that outlives it, results that do not depend on the inputs' strides). Returns ``outs``, valid until the next call with the same shapes
    (on CUDA they are the recorded graph's buffers: copy what you keep). Runs under ``no_grad``.
    ``recurrences`` (independent sequence-head recurrences in the loop) sets the CPU thread limit."""
    device = torch.device(device)
    with torch.no_grad():
        if not (ENABLED and device.type == 'cuda') or torch.cuda.is_current_stream_capturing():
            # CPU, graphs off, or inside the caller's own CUDA graph capture (a graph cannot be
            # recorded inside another one; the eager ops become part of the caller's graph)
            outs = _allocate(outputs, device)
            limit = recurrences * LOOP_THREADS_PER_HEAD if device.type == 'cpu' else 0
            with at_most_threads(limit):
                body(inputs, outs)
            _count('eager')
            return outs
        key = (name, str(device), threading.get_ident(), torch.cuda.current_stream(device).cuda_stream,
               torch.is_inference_mode_enabled(),
               tuple(sorted((n, _signature(t)) for n, t in inputs.items())),
               tuple(sorted((n, tuple(s), d) for n, (s, d) in outputs.items())))
        with _graphs_lock:
            entry = _graphs.get(key)
            if entry is None:
                _graphs[key] = _SEEN
                _trim()
        if entry is None or entry is _EAGER:
            outs = _allocate(outputs, device)
            body(inputs, outs)
            _count('eager')
            return outs
        if entry is _SEEN:
            # contiguous static inputs: each replay copies the caller's tensors in, whatever their strides
            static_in = {n: None if t is None else torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)
                         for n, t in inputs.items()}
            static_out = _allocate(outputs, device)
            try:
                graph = _record(body, static_in, static_out, device)
            except Exception as err:                     # recording is an optimisation: fall back
                warnings.warn(f"myfla: CUDA graph recording of {name!r} failed ({type(err).__name__}: "
                              f"{err}); this loop runs eagerly")
                with _graphs_lock:
                    _graphs[key] = _EAGER
                outs = _allocate(outputs, device)
                body(inputs, outs)
                _count('eager')
                return outs
            with _graphs_lock:
                _graphs[key] = _Recorded(graph, static_in, static_out)
                _graphs.move_to_end(key)
                _trim()
            _count('recorded')
            # the warm-up run already left this call's results in the static outputs
            return static_out
        with _graphs_lock:
            if key in _graphs:
                _graphs.move_to_end(key)
        for n, t in inputs.items():
            if t is not None:
                entry.inputs[n].copy_(t)
        entry.graph.replay()
        _count('replayed')
        return entry.outputs


def _count(event: str) -> None:
    with _graphs_lock:
        stats[event] += 1


def run_loop_into(name: str, body: Body, inputs: Inputs, targets: Dict[str, torch.Tensor], device) -> None:
    """``run_loop`` for a loop that fills caller-owned buffers: the outputs are shaped like
    ``targets`` (name -> tensor) and copied into them afterwards. The inputs are made contiguous
    first, so the eager call and the replays (which copy into contiguous buffers) run the same
    products on the same layouts."""
    inputs = {n: None if t is None else t.contiguous() for n, t in inputs.items()}
    outs = run_loop(name, body, inputs, {n: (tuple(t.shape), t.dtype) for n, t in targets.items()}, device)
    for n, t in targets.items():
        t.copy_(outs[n])


def _storage_ptr(t: torch.Tensor) -> int:
    # untyped_storage arrived in torch 2.0; storage() gives the same pointer on older releases
    return t.untyped_storage().data_ptr() if hasattr(t, 'untyped_storage') else t.storage().data_ptr()


def owned(x: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """``x``, copied if it shares memory with ``buffer``, an output of ``run_loop`` that may be a
    recorded graph's buffer (overwritten by the next replay). CPU outputs are always fresh."""
    if buffer.device.type != 'cuda' or not ENABLED or not x.numel():
        return x
    return x.clone() if _storage_ptr(x) == _storage_ptr(buffer) else x


def _trim():
    """Keep the ``MAX_GRAPHS`` most recently used keys (called under ``_graphs_lock``)."""
    while len(_graphs) > MAX_GRAPHS:
        _graphs.popitem(last=False)


def release():
    """Drop every recorded graph and its buffers."""
    with _graphs_lock:
        _graphs.clear()
