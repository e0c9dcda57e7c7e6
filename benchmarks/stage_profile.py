"""Where a chunked op's time goes: wall time per stage of ``chunk_kda``, ``chunk_gated_delta_rule``
or ``chunk_rwkv7`` (the DPLR chunk path), at one or more thread counts.

A stage is a function that the op's module calls from another myfla module (``recompute_w_u_fwd``,
``chunk_gated_delta_rule_fwd_h``, ``chunk_kda_bwd_intra``, ``fwd_h_grid``...): those names are
wrapped in the op module's namespace for the run, and each top-level call's wall time is added up
(inclusive; stages called from inside another stage count in the outer one). Medians over
``--reps`` calls after two untimed ones; what is left is the time outside the stages (conversions,
allocation, autograd). ``--aten`` adds torch's profiler table of the most expensive aten ops for one
more call. ``--sites N`` times one more call op by op (a ``TorchDispatchMode``) and prints the N
myfla source lines whose aten ops took the most time, with the share of memory copies (``copy_``,
``clone``, ``contiguous``...): where layout conversions and slab stores happen, by call site. The mode
adds a Python call to every aten op, so small ops read slower than they run; compare sites with each
other, not with the stage times. A diagnostic, not a benchmark of record: the figures of record come
from bench_matrix.py, bench_rwkv7.py and the other scripts here.

    python benchmarks/stage_profile.py --op kda --shape 1x8192x4x128x128 --threads 16,4,1
    python benchmarks/stage_profile.py --op rwkv7 --shape 1x8192x4x64x64 --threads 2 --fwd-only --aten
    python benchmarks/stage_profile.py --op kda --threads 1 --sites 25
"""

from __future__ import annotations

import argparse
import collections
import importlib
import inspect
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from op_calls import fwd_bwd, make_call  # noqa: E402  (benchmarks/ is the script directory)

MODULES = {'gdn': 'myfla.ops.gated_delta_rule.chunk', 'kda': 'myfla.ops.kda.chunk',
           'rwkv7': 'myfla.ops.generalized_delta_rule.dplr.chunk'}
# entry points and their fla-signature wrappers: the whole call, not a stage
NOT_STAGES = {'chunk_gated_delta_rule', 'chunk_kda', 'chunk_dplr_delta_rule', 'chunk_kda_fwd', 'chunk_kda_bwd',
              'chunk_gated_delta_rule_fwd', 'chunk_gated_delta_rule_bwd', 'chunk_dplr_fwd'}


class StageClock:
    """Wraps the stage functions of one op module; ``seconds`` holds each stage's time since ``clear``."""

    def __init__(self, module_name: str):
        self.seconds = collections.defaultdict(float)
        self._depth = 0
        module = importlib.import_module(module_name)
        for name, obj in list(vars(module).items()):
            if (inspect.isfunction(obj) and obj.__module__.startswith('myfla')
                    and obj.__module__ != module.__name__ and name not in NOT_STAGES):
                setattr(module, name, self._wrap(name, obj))

    def _wrap(self, name, fn):
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self._depth -= 1
        return timed

    def clear(self):
        self.seconds.clear()


# aten ops that only move memory (layout conversions, slab stores, materialised views)
COPY_OPS = {'copy_', 'clone', 'contiguous', '_to_copy', 'cat', 'stack', 'index_copy_', 'as_strided_copy'}
# aten ops that move no data (views, allocation, metadata): the dispatch mode's own cost per call (tens
# of microseconds) dwarfs theirs, so they are summed apart and left out of the ranking
META_OPS = {'empty', 'empty_strided', 'set_', 'view', '_unsafe_view', 'as_strided', 'select', 'slice',
            'unbind', 'transpose', 't', 'permute', 'expand', 'unsqueeze', 'squeeze', 'reshape', 'alias',
            'diagonal', 'split', 'chunk', 'narrow', 'movedim', 'detach', 'lift_fresh', 'unflatten',
            'flatten', 'is_same_size', 'result_type', '_reshape_alias', 'view_as'}


def call_site(root: str = 'myfla', depth: int = 2) -> str:
    """The innermost ``depth`` frames of the calling stack inside ``root``'s files, innermost first,
    as ``file:line function <- file:line`` (``?`` when there is none): a helper such as
    ``dot`` then shows the line that called it."""
    marker = f'/{root}/'
    found = []
    for frame in reversed(traceback.extract_stack()):
        filename = frame.filename.replace('\\', '/')
        if marker in filename:
            found.append(f"{root}/{filename.split(marker, 1)[1]}:{frame.lineno}"
                         + ('' if found else f' {frame.name}'))
            if len(found) == depth:
                break
    return ' <- '.join(found) if found else '?'


class SiteClock:
    """Times every aten op run inside ``with SiteClock() as clock:`` and adds it to the myfla source
    line that called it: ``clock.sites`` maps ``(op, site)`` to ``[calls, seconds]``."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        sites = self.sites = collections.defaultdict(lambda: [0, 0.0])

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                start = time.perf_counter()
                out = func(*args, **(kwargs or {}))
                entry = sites[(func.overloadpacket.__name__, call_site())]
                entry[0] += 1
                entry[1] += time.perf_counter() - start
                return out
        self._mode = _Mode()

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    def summary(self, top: int) -> dict:
        """Milliseconds of the ops that touch data, of the copies among them and of the views and
        allocations (``META_OPS``), and the ``top`` sites of data ops by time (each with op and calls)."""
        def total(kinds=None, exclude=frozenset()):
            return 1e3 * sum(seconds for (op, _), (_, seconds) in self.sites.items()
                             if (kinds is None or op in kinds) and op not in exclude)
        ranked = sorted(((key, value) for key, value in self.sites.items() if key[0] not in META_OPS),
                        key=lambda item: -item[1][1])[:top]
        return {'ops_ms': total(exclude=META_OPS), 'copies_ms': total(COPY_OPS), 'meta_ms': total(META_OPS),
                'top': [{'op': op, 'site': site, 'calls': calls, 'ms': seconds * 1e3}
                        for (op, site), (calls, seconds) in ranked]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--op', choices=sorted(MODULES), required=True)
    ap.add_argument('--shape', default='1x8192x4x128x128', help='BxTxHxKxV')
    ap.add_argument('--threads', default='1', help='comma-separated thread counts')
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--fwd-only', action='store_true', help='time the forward under no_grad')
    ap.add_argument('--aten', action='store_true', help="add the torch profiler's top aten ops")
    ap.add_argument('--sites', type=int, default=0, metavar='N',
                    help='add the N myfla source lines whose aten ops took the most time (and the copies)')
    args = ap.parse_args()
    if args.sites < 0:
        ap.error('--sites must be 0 (off) or a positive count')
    B, T, H, K, V = map(int, args.shape.split('x'))
    clock = StageClock(MODULES[args.op])
    inputs, call = make_call(args.op, B, T, H, K, V)

    def step():
        if args.fwd_only:
            with torch.no_grad():
                call()
            return
        fwd_bwd(inputs, call)

    record = {'op': args.op, 'shape': args.shape, 'pass': 'fwd' if args.fwd_only else 'fwd+bwd',
              'torch': torch.__version__, 'results': {}}
    for n in map(int, args.threads.split(',')):
        torch.set_num_threads(n)
        step()
        step()
        totals, stages = [], collections.defaultdict(list)
        for _ in range(args.reps):
            clock.clear()
            start = time.perf_counter()
            step()
            totals.append(time.perf_counter() - start)
            for name, seconds in clock.seconds.items():
                stages[name].append(seconds)
        total = statistics.median(totals) * 1e3
        medians = {name: statistics.median(v) * 1e3 for name, v in stages.items()}
        print(f"{args.op} {args.shape} {record['pass']} threads={n}: {total:.1f} ms")
        for name, ms in sorted(medians.items(), key=lambda item: -item[1]):
            if ms >= 0.05:
                print(f"  {name:40s} {ms:9.1f} ms {100 * ms / total:5.1f}%")
        print(f"  {'(outside the stages)':40s} {total - sum(medians.values()):9.1f} ms")
        record['results'][n] = {'total_ms': total, 'stages_ms': medians}
        if args.aten:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                step()
            print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=18))
        if args.sites:
            with SiteClock() as sites:
                step()
            summary = sites.summary(args.sites)
            print(f"  op by op (dispatch mode, slower than the run above): {summary['ops_ms']:.1f} ms in aten ops "
                  f"that touch data, {summary['copies_ms']:.1f} ms of them memory copies; views and allocation "
                  f"{summary['meta_ms']:.1f} ms (mostly the mode's own cost)")
            for row in summary['top']:
                print(f"  {row['ms']:8.1f} ms {row['calls']:5d}x {row['op']:14s} {row['site']}")
            record['results'][n]['sites'] = summary
    print(json.dumps(record))


if __name__ == '__main__':
    main()
