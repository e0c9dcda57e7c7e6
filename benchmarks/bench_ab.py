"""A/B of the chunked ops between two versions of myfla, side by side: forward+backward of
``chunk_gated_delta_rule`` / ``chunk_kda`` / ``chunk_rwkv7`` timed in a fresh process per version,
cell and round, the two versions in a shuffled order each round; medians per version and the ratio
(B over A). A and B are git revisions of this repository (``--a``, ``--b``; their ``myfla/`` is taken
with ``git archive`` into a temporary directory), ``worktree`` (the files as they are), or ``dir:PATH``,
a directory that holds a ``myfla/`` package (for machines where the checkout has no git history, such
as the GPU machine's copy: extract the other version there first).

On the noisy machines these figures come from, identical code moves 10-20% from one process to the
next, so a change is measured this way (several rounds, fresh processes, shuffled) and never by two
separate runs of another script. The results files named "..._ab" in ``benchmarks/results`` were taken
with scripts of this kind.

    python benchmarks/bench_ab.py --a HEAD~1 --b worktree --cells kda:1x8192x4x128x128:2 --rounds 10
    python benchmarks/bench_ab.py --a 27b11d6 --b HEAD --cells gdn:1x8192x4x128x128:1,rwkv7:1x8192x4x64x64:2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from timing import machine_info  # benchmarks/ is the script directory

ROOT = Path(__file__).resolve().parents[1]

# Runs in the child process, whose sys.path starts with the version's tree and then this benchmarks
# directory (op_calls and timing import myfla only inside their functions and leave sys.path alone).
# Prints the median forward+backward time in seconds and where myfla came from.
CHILD = r'''
import sys, json
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import torch
import myfla
from op_calls import fwd_bwd, make_call
from timing import median_time
op, shape, threads, reps = sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
xs, call = make_call(op, *map(int, shape.split('x')))
print(json.dumps({'median_s': median_time(lambda: fwd_bwd(xs, call), reps), 'myfla': myfla.__file__}))
'''

OPS = ('gdn', 'kda', 'rwkv7')


class ABError(Exception):
    """A bad argument or a version that could not be materialised (exit code 2)."""


def materialise(version: str, tmp: Path) -> Path:
    """The directory whose ``myfla/`` is ``version``: the repository root for ``worktree``, else the
    revision's ``myfla/`` extracted from ``git archive`` into ``tmp``."""
    if version == 'worktree':
        return ROOT
    if version.startswith('dir:'):
        tree = Path(version[4:]).resolve()
        if not (tree / 'myfla' / '__init__.py').is_file():
            raise ABError(f"{version!r}: no myfla package in {tree}")
        return tree
    dest = tmp / f"rev-{len(list(tmp.iterdir()))}"
    dest.mkdir()
    archive = tmp / 'myfla.tar'
    with open(archive, 'wb') as fh:
        done = subprocess.run(['git', '-C', str(ROOT), 'archive', '--format=tar', '--end-of-options', version,
                               'myfla'], stdout=fh, stderr=subprocess.PIPE)
    if done.returncode:
        raise ABError(f"git archive of {version!r} failed: {done.stderr.decode(errors='replace').strip()}")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            inside = member.name == 'myfla' or member.name.startswith('myfla/')
            if not inside or member.issym() or member.islnk() or '..' in member.name:
                raise ABError(f"unexpected entry {member.name!r} in the archive of {version!r}")
        try:
            tar.extractall(dest, filter='data')
        except TypeError:                              # Python without extraction filters
            tar.extractall(dest)
    archive.unlink()
    return dest


def parse_cells(text: str):
    """``op:BxTxHxKxV:threads,...`` -> ``[(op, shape, threads)]``."""
    cells = []
    for item in filter(None, text.split(',')):
        parts = item.split(':')
        if len(parts) != 3 or parts[0] not in OPS:
            raise ABError(f"cell {item!r}: expected op:BxTxHxKxV:threads with op one of {', '.join(OPS)}")
        op, shape, threads = parts
        dims = shape.split('x')
        if len(dims) != 5 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise ABError(f"cell {item!r}: the shape must be five positive integers BxTxHxKxV")
        if not threads.isdigit() or int(threads) < 1:
            raise ABError(f"cell {item!r}: threads must be a positive integer")
        cells.append((op, shape, int(threads)))
    if not cells:
        raise ABError("no cells given (--cells op:BxTxHxKxV:threads,...)")
    return cells


def run_child(tree: Path, op: str, shape: str, threads: int, reps: int) -> float:
    """One fresh process on ``tree``: the median forward+backward time in seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, '-c', CHILD, str(tree), str(ROOT / 'benchmarks'), op, shape, str(threads),
                           str(reps)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise ABError(f"{op} {shape} on {tree} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result['myfla'].startswith(str(tree)):
        raise ABError(f"the child imported myfla from {result['myfla']}, not from {tree}")
    return result['median_s']


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--a', required=True, help="git revision, 'worktree' or dir:PATH (a tree holding myfla/)")
    ap.add_argument('--b', default='worktree', help="git revision, 'worktree' (default) or dir:PATH")
    ap.add_argument('--cells', required=True, help='op:BxTxHxKxV:threads,... (op: gdn, kda, rwkv7)')
    ap.add_argument('--rounds', type=int, default=8)
    ap.add_argument('--reps', type=int, default=3, help='timed calls per process (median), after one untimed')
    ap.add_argument('--seed', type=int, default=0, help='seed of the shuffled order')
    ap.add_argument('--out', default=None, help='JSON path (default: print only)')
    args = ap.parse_args(argv)
    try:
        if args.rounds < 1 or args.reps < 1:
            raise ABError("--rounds and --reps must be at least 1")
        cells = parse_cells(args.cells)
        order_rng = random.Random(args.seed)
        record = {'benchmark': 'bench_ab', 'time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                  'machine': machine_info('cpu'), 'a': args.a, 'b': args.b, 'rounds': args.rounds,
                  'reps': args.reps, 'cells': []}
        with tempfile.TemporaryDirectory(prefix='bench-ab-') as tmp:
            trees = {'a': materialise(args.a, Path(tmp)), 'b': materialise(args.b, Path(tmp))}
            for op, shape, threads in cells:
                ms = {'a': [], 'b': []}
                for _ in range(args.rounds):
                    order = ['a', 'b']
                    order_rng.shuffle(order)
                    for side in order:
                        ms[side].append(1e3 * run_child(trees[side], op, shape, threads, args.reps))
                med = {side: statistics.median(v) for side, v in ms.items()}
                cell = {'op': op, 'shape': shape, 'threads': threads, 'ms': ms, 'median_ms': med,
                        'ratio_b_over_a': med['b'] / med['a']}
                record['cells'].append(cell)
                print(f"{op} {shape} {threads} threads: A ({args.a}) {med['a']:.1f} ms "
                      f"{[round(x) for x in ms['a']]}  B ({args.b}) {med['b']:.1f} ms "
                      f"{[round(x) for x in ms['b']]}  B/A {cell['ratio_b_over_a']:.3f}", flush=True)
    except ABError as err:
        print(f"bench_ab: {err}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + '\n')
        print(f"wrote {args.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
