"""Small work above TINY_WORK runs on one thread or on the caller's threads, whichever its recent
calls measured faster (myfla/ops/utils/threads.py, ``_Choice``). The clock is simulated: a call
"costs" what the test says for the thread count it runs under, so the choices are deterministic."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from myfla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
from myfla.ops.utils import threads


class FakeClock:
    """``time`` for the threads module: ``monotonic`` is ``now`` (moved by the test), and each
    ``perf_counter`` call advances by half the cost of the thread count torch runs at, so a block
    (one call on entering, one on leaving) lasts its mode's cost."""

    def __init__(self, cost_one: float, cost_many: float):
        self.cost = {1: cost_one}
        self.cost_many = cost_many
        self.now = 100.0
        self.counter = 0.0

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        n = torch.get_num_threads()
        self.counter += self.cost.get(n, self.cost_many) / 2
        return self.counter


def _block_threads(work: int, calls: int):
    """Thread counts seen inside ``calls`` blocks of ``work``."""
    seen = []
    for _ in range(calls):
        with threads.small_work_single_threaded(work):
            seen.append(torch.get_num_threads())
    return seen


WORK = threads.TINY_WORK * 4                  # small, not tiny


@pytest.mark.parametrize("cost_one,cost_many,rounds,then",
                         [(2.0, 1.0, threads.SMALL_WORK_SAMPLES, 2), (1.0, 0.95, threads.SMALL_WORK_SAMPLES, 1),
                          (1.0, 3.0, threads.SMALL_WORK_SAMPLES, 1), (1.0, 5.0, 1, 1)],
                         ids=["threads-faster", "threads-within-margin", "threads-slower", "threads-stall"])
def test_measures_both_then_keeps_the_faster(monkeypatch, two_threads, cost_one, cost_many, rounds, then):
    """Measuring alternates one thread (first) and the threads; threads must win by the margin, and
    threads that take SMALL_WORK_STALL_RATIO times one thread's call are not sampled again."""
    clock = FakeClock(cost_one, cost_many)
    monkeypatch.setattr(threads, "time", clock)
    assert _block_threads(WORK, 2 * rounds) == [1, 2] * rounds
    assert _block_threads(WORK, 5) == [then] * 5
    assert torch.get_num_threads() == 2


def test_measures_again_later_and_backs_off_while_the_choice_holds(monkeypatch, two_threads):
    clock = FakeClock(2.0, 1.0)
    monkeypatch.setattr(threads, "time", clock)
    n = threads.SMALL_WORK_SAMPLES
    _block_threads(WORK, 2 * n)
    choice = next(iter(threads._state.choices.values()))
    assert choice.decided is False and choice.interval == threads.SMALL_WORK_RECHECK_SECONDS
    clock.now += threads.SMALL_WORK_RECHECK_SECONDS + 0.1      # the choice expires: measure again
    assert _block_threads(WORK, 2 * n) == [1, 2] * n
    assert choice.decided is False and choice.interval == 2 * threads.SMALL_WORK_RECHECK_SECONDS
    clock.now += threads.SMALL_WORK_RECHECK_SECONDS + 0.1      # not yet: the interval doubled
    assert _block_threads(WORK, 3) == [2] * 3
    clock.now += threads.SMALL_WORK_RECHECK_SECONDS
    clock.cost = {1: 1.0}                                      # the machine got busy: threads stall
    clock.cost_many = 5.0
    assert _block_threads(WORK, 2) == [1, 2]                   # one sample of each settles it ...
    assert choice.decided is True                              # ... and is not re-sampled soon
    assert choice.interval == threads.SMALL_WORK_STALL_RECHECK_SECONDS
    assert _block_threads(WORK, 3) == [1] * 3
    for _ in range(10):                                        # the interval doubles up to its cap
        clock.now += choice.interval + 0.1
        _block_threads(WORK, 2 * n)
    assert choice.interval == threads.SMALL_WORK_RECHECK_MAX_SECONDS


def test_tiny_work_and_the_one_thread_mode_never_measure(monkeypatch, two_threads):
    monkeypatch.setattr(threads, "time", FakeClock(2.0, 1.0))
    assert _block_threads(threads.TINY_WORK - 1, 8) == [1] * 8
    monkeypatch.setattr(threads, "SMALL_WORK_THREADS", "one")
    assert _block_threads(WORK, 8) == [1] * 8
    assert not getattr(threads._state, "choices", {})
    assert _block_threads(threads.SMALL_WORK, 2) == [2, 2]    # large work: untouched


def test_kinds_are_measured_apart_and_nested_blocks_follow_the_outer(monkeypatch, two_threads):
    clock = FakeClock(2.0, 1.0)
    monkeypatch.setattr(threads, "time", clock)
    n = threads.SMALL_WORK_SAMPLES
    _block_threads(WORK, 2 * n)                                # WORK: decided, threads
    assert _block_threads(4 * WORK, 2) == [1, 2]               # another size measures on its own
    seen = []
    with threads.small_work_single_threaded(WORK):             # outer: threads (decided)
        with threads.small_work_single_threaded(threads.TINY_WORK - 1):
            seen.append(torch.get_num_threads())               # the inner tiny block keeps them
    assert seen == [2]
    assert len(threads._state.choices) == 2                    # the inner block recorded nothing
    threads.reset_small_work_choices()
    assert _block_threads(WORK, 2) == [1, 2]                   # forgotten: measuring again


def test_a_decoding_step_chooses_by_its_own_timings(monkeypatch, two_threads):
    """Real one-token steps (a state above TINY_WORK): with threads twice as fast, the step measures
    both and then keeps the threads; its numbers are the same on either count."""
    monkeypatch.setattr(threads, "time", FakeClock(2.0, 1.0))
    B, H, K = 2, 4, 128
    assert threads.TINY_WORK <= threads.recurrent_state_work(B * H * K * K) < threads.SMALL_WORK
    q, k, v, beta = (torch.randn(B, 1, H, K), torch.randn(B, 1, H, K), torch.randn(B, 1, H, K),
                     torch.rand(B, 1, H))
    g, h0 = F.logsigmoid(torch.randn(B, 1, H)), torch.randn(B, H, K, K) * 0.01
    seen, outs = [], []
    real_bmm = torch.bmm

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_bmm(*args, **kwargs)
    n = threads.SMALL_WORK_SAMPLES
    for _ in range(2 * n + 2):
        seen.clear()
        monkeypatch.setattr(torch, "bmm", spy)
        outs.append(fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=h0,
                                                     output_final_state=True, use_qk_l2norm_in_kernel=True))
        monkeypatch.setattr(torch, "bmm", real_bmm)
        outs[-1] = (outs[-1], set(seen))
    assert [s for _, s in outs] == [{1}, {2}] * n + [{2}, {2}]
    for (o, ht), _ in outs[1:]:
        torch.testing.assert_close(o, outs[0][0][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ht, outs[0][0][1], rtol=1e-6, atol=1e-6)
    assert torch.get_num_threads() == 2


def test_a_wrong_mode_in_the_environment_is_a_clear_error():
    result = subprocess.run([sys.executable, "-c", "import myfla.ops.utils.threads"], capture_output=True,
                            text=True, env=dict(os.environ, MYFLA_SMALL_WORK_THREADS="many"))
    assert result.returncode != 0
    assert "MYFLA_SMALL_WORK_THREADS must be 'measure'" in result.stderr and "got 'many'" in result.stderr


def test_a_chunk_ops_forward_and_backward_are_measured_apart(monkeypatch, two_threads):
    """A small chunked call's forward and backward (same work, different cost) each alternate on
    their own: one thread first for both, then the threads for both."""
    import myfla.ops.gated_delta_rule.chunk as gdn_chunk
    monkeypatch.setattr(threads, "time", FakeClock(2.0, 1.0))
    seen = []
    for name in ("_chunk_gated_delta_rule_fwd", "_chunk_gated_delta_rule_bwd"):
        original = getattr(gdn_chunk, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            seen.append((_name[-3:], torch.get_num_threads()))
            return _original(*args, **kwargs)
        monkeypatch.setattr(gdn_chunk, name, spy)
    B, T, H, K = 1, 300, 2, 64
    assert threads.TINY_WORK <= threads.chunk_work(torch.empty(B, T, H, K), torch.empty(B, T, H, K))
    q, v = torch.randn(B, T, H, K, requires_grad=True), torch.randn(B, T, H, K, requires_grad=True)
    k = F.normalize(torch.randn(B, T, H, K), dim=-1).requires_grad_()
    g, beta = F.logsigmoid(torch.randn(B, T, H)).requires_grad_(), torch.rand(B, T, H).requires_grad_()
    for _ in range(2):
        o, ht = gdn_chunk.chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
        (o.sum() + ht.sum()).backward()
    assert seen == [("fwd", 1), ("bwd", 1), ("fwd", 2), ("bwd", 2)]
    assert {key[0] for key in threads._state.choices} == {"chunk_gated_delta_rule forward",
                                                           "chunk_gated_delta_rule backward"}


def test_a_choice_ends_early_when_its_calls_turn_far_slower(monkeypatch, two_threads):
    """Threads chosen on a quiet machine that then turns busy: two calls in a row
    SMALL_WORK_STALL_RATIO times slower than measured end the choice before its recheck time."""
    clock = FakeClock(2.0, 1.0)
    monkeypatch.setattr(threads, "time", clock)
    n = threads.SMALL_WORK_SAMPLES
    _block_threads(WORK, 2 * n)
    for _ in range(3):                                         # confirmed: a longer interval
        clock.now += next(iter(threads._state.choices.values())).interval + 0.1
        _block_threads(WORK, 2 * n)
    choice = next(iter(threads._state.choices.values()))
    assert choice.decided is False and choice.interval > threads.SMALL_WORK_RECHECK_SECONDS
    clock.cost_many = 4.5                                      # one slow call is not enough ...
    assert _block_threads(WORK, 1) == [2]
    clock.cost_many = 1.0
    assert _block_threads(WORK, 1) == [2] and choice.strikes == 0
    clock.cost_many = 10.0                                     # ... two in a row are
    assert _block_threads(WORK, 2) == [2, 2]
    assert choice.decided is None and choice.interval == threads.SMALL_WORK_RECHECK_SECONDS
    assert _block_threads(WORK, 4) == [1, 2, 1, 1]             # measured again: threads stall


def test_a_call_that_raises_is_not_a_sample(monkeypatch, two_threads):
    monkeypatch.setattr(threads, "time", FakeClock(2.0, 1.0))
    for _ in range(3):
        with pytest.raises(ValueError):
            with threads.small_work_single_threaded(WORK):
                assert torch.get_num_threads() == 1               # measuring starts on one thread
                raise ValueError("bad input")
    assert torch.get_num_threads() == 2
    choice = next(iter(threads._state.choices.values()))
    assert choice.times == {True: [], False: []}
    assert _block_threads(WORK, 2) == [1, 2]


def test_small_chunk_calls_that_keep_their_threads_are_not_probed(monkeypatch, two_threads):
    """The measured choice is the stall guard of small chunked calls: the large calls' stall probe
    does not run on top of it, also where the threads are kept on a loaded machine."""
    import myfla.ops.gated_delta_rule.chunk as gdn_chunk
    monkeypatch.setattr(threads, "time", FakeClock(2.0, 1.0))
    monkeypatch.setattr(threads, "STALL_PROBE", True)
    monkeypatch.setattr(threads, "machine_loaded", lambda: True)
    monkeypatch.setattr(threads, "_stalls", lambda n: pytest.fail("probed a small call"))
    B, T, H, K = 1, 300, 2, 64
    q, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
    k = F.normalize(torch.randn(B, T, H, K), dim=-1)
    g, beta = F.logsigmoid(torch.randn(B, T, H)), torch.rand(B, T, H)
    with torch.no_grad():
        for _ in range(2 * threads.SMALL_WORK_SAMPLES + 2):
            gdn_chunk.chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    (choice,) = threads._state.choices.values()
    assert choice.decided is False                             # the threads were kept
