"""split_batch: a batched call cut into ranges run side by side on worker threads (one intra-op
thread each), and solve_tril's CPU trsm path that uses it."""

from __future__ import annotations

import sys
import threading

import pytest
import torch

from myfla.ops.utils import solve_tril
from myfla.ops.utils.batch_split import ranges, split_batch

import myfla.ops.utils.solve_tril  # noqa: F401  (the module; the package exports the function)
st = sys.modules['myfla.ops.utils.solve_tril']


@pytest.fixture
def threads():
    saved = torch.get_num_threads()
    yield lambda n: torch.set_num_threads(n)
    torch.set_num_threads(saved)


@pytest.mark.parametrize("n, parts", [(10, 3), (7, 7), (5, 1), (1024, 16)])
def test_ranges_cover_the_batch_in_order(n, parts):
    bounds = ranges(n, parts)
    assert len(bounds) == parts and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_split_runs_every_range_at_once_on_one_intra_op_thread_each(threads):
    threads(4)
    seen, lock = [], threading.Lock()
    together = threading.Barrier(4, timeout=30)                         # all four ranges run side by side

    def call(start, stop):
        together.wait()
        with lock:
            seen.append((start, stop, torch.get_num_threads(), threading.get_ident()))
    split_batch(call, 100, min_per_part=10)
    assert sorted((a, b) for a, b, _, _ in seen) == ranges(100, 4)
    assert {t for _, _, t, _ in seen} == {1}
    assert len({ident for *_, ident in seen}) == 4                     # the caller and three workers
    assert torch.get_num_threads() == 4                                # the caller's count restored


def test_small_batches_and_one_thread_run_inline(threads):
    threads(4)
    seen = []
    split_batch(lambda a, b: seen.append((a, b, threading.get_ident())), 15, min_per_part=10)
    assert seen == [(0, 15, threading.get_ident())]
    threads(1)
    seen.clear()
    split_batch(lambda a, b: seen.append((a, b)), 100)
    assert seen == [(0, 100)]


def test_workers_take_the_callers_grad_and_inference_modes(threads):
    threads(3)
    modes = []

    def call(start, stop):
        modes.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
    with torch.no_grad():
        split_batch(call, 3)
    assert modes == [(False, False)] * 3
    modes.clear()
    with torch.inference_mode():
        split_batch(call, 3)
    assert modes == [(False, True)] * 3


def test_an_error_in_any_range_reaches_the_caller_after_all_ranges_end(threads):
    threads(3)
    finished = []

    def call(start, stop):
        if start == 2:
            raise ValueError("range 2 failed")
        finished.append(start)
    with pytest.raises(ValueError, match="range 2 failed"):
        split_batch(call, 3)
    assert sorted(finished) == [0, 1]
    assert torch.get_num_threads() == 3


def test_a_split_inside_a_worker_runs_inline(threads):
    threads(2)
    inner = []

    def call(start, stop):
        split_batch(lambda a, b: inner.append((start, a, b)), 10)
    split_batch(call, 2)
    assert sorted(inner) == [(0, 0, 10), (1, 0, 10)]


# ---- solve_tril's trsm path ------------------------------------------------------------------
def _lower(M, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(M, n, n, generator=gen) * 0.1


@pytest.mark.parametrize("n", [16, 32, 64])
def test_trsm_inverse_against_fp64_and_the_doubling(n, threads):
    threads(3)
    L = _lower(200, n)
    # the diagonal and upper triangle are never read: NaN there changes nothing
    garbage = L.tril(-1) + torch.full((n, n), float('nan')).triu()
    ref = torch.inverse(torch.eye(n, dtype=torch.float64) + L.double().tril(-1))
    got = st._unit_lower_inverse_trsm(garbage)
    assert not got.isnan().any() and bool((got.triu(1) == 0).all())
    assert ((got.double() - ref).norm() / ref.norm()).item() < 1e-6
    assert ((got - st._unit_lower_inverse(L)).norm() / got.norm()).item() < 1e-6


def test_trsm_inverse_is_the_same_on_any_thread_count(threads, monkeypatch):
    monkeypatch.setattr(st, "TRSM_MIN_PART_ELEMENTS", 64 * 64)          # one matrix per part at least
    L = _lower(64, 64, seed=1)
    results = []
    for n in (1, 2, 5):
        threads(n)
        results.append(st._unit_lower_inverse_trsm(L).clone())
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_solve_tril_takes_trsm_for_large_cpu_batches_only(monkeypatch):
    monkeypatch.setattr(st, "SMALL_BATCHES", "doubling")
    calls = []
    real = st._unit_lower_inverse_trsm
    monkeypatch.setattr(st, "_unit_lower_inverse_trsm", lambda L: calls.append(L.shape) or real(L))
    A = torch.randn(1, 256, 2, 64) * 0.1                               # 4 chunks x 2 heads = 8 matrices
    small = solve_tril(A)
    assert calls == []
    monkeypatch.setattr(st, "TRSM_MIN_ELEMENTS", 8 * 64 * 64)
    large = solve_tril(A)
    assert calls == [torch.Size([8, 64, 64])]
    assert ((large - small).norm() / small.norm()).item() < 1e-6
    # as fla's kernel: an input that requires grad gives a plain result
    out = solve_tril(A.requires_grad_())
    assert not out.requires_grad and torch.equal(out, large)
    assert not st._uses_trsm(torch.empty(4096, 64, 64, device='meta'))


def test_trsm_path_under_inference_mode_on_several_threads(threads, monkeypatch):
    # workers write into tensors made under the caller's inference mode: they must run in it too
    monkeypatch.setattr(st, "TRSM_MIN_ELEMENTS", 0)
    monkeypatch.setattr(st, "TRSM_MIN_PART_ELEMENTS", 64 * 64)
    threads(3)
    A = torch.randn(1, 384, 2, 64) * 0.1                               # 12 matrices, three ranges
    expected = solve_tril(A)
    with torch.inference_mode():
        got = solve_tril(A)
    assert got.is_inference() and torch.equal(got, expected)


@pytest.mark.parametrize("setting, probe, expected", [("trsm", None, True), ("doubling", None, False),
                                                      ("measure", True, True), ("measure", False, False)])
def test_small_batches_follow_the_setting_or_one_probe(monkeypatch, setting, probe, expected):
    probes = []
    monkeypatch.setattr(st, "SMALL_BATCHES", setting)
    monkeypatch.setattr(st, "_probed", None)
    monkeypatch.setattr(st, "_probe_trsm", lambda: probes.append(1) or probe)
    small = torch.empty(8, 64, 64)
    assert [st._uses_trsm(small) for _ in range(3)] == [expected] * 3
    assert len(probes) == (1 if setting == "measure" else 0)           # probed once per process
    assert st._uses_trsm(torch.empty(1024, 64, 64))                    # large batches: always trsm


def test_the_probe_times_both_ways_on_one_thread_and_restores_the_threads(threads, monkeypatch):
    threads(3)
    seen = []
    def spy(tag, real):
        return lambda L: seen.append((tag, torch.get_num_threads())) or real(L)
    monkeypatch.setattr(st, "_unit_lower_inverse", spy("d", st._unit_lower_inverse))
    monkeypatch.setattr(st, "_unit_lower_inverse_trsm", spy("t", st._unit_lower_inverse_trsm))
    assert st._probe_trsm() in (True, False)
    assert sorted(set(seen)) == [("d", 1), ("t", 1)] and len(seen) == 8
    assert torch.get_num_threads() == 3


def test_a_bad_setting_is_refused_at_import():
    import os
    import subprocess
    env = dict(os.environ, MYFLA_SOLVE_TRIL_SMALL="fast")
    run = subprocess.run([sys.executable, "-c", "import myfla.ops.utils.solve_tril"], env=env,
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert "MYFLA_SOLVE_TRIL_SMALL must be 'measure'" in run.stderr


def test_a_pool_handed_out_stays_usable_when_another_caller_grows_it():
    """Two threads splitting at different thread counts: one is handed the pool, the other needs more
    workers and gets a bigger one before the first submits; the first's pool must still take work
    (a shut-down pool raises "cannot schedule new futures after shutdown")."""
    from myfla.ops.utils import batch_split

    first = batch_split._workers(1)
    grown = batch_split._workers(first._max_workers + 2)
    assert grown is not first
    assert first.submit(lambda: 42).result(timeout=30) == 42
