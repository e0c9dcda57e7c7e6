"""myfla called from several Python threads at once (``nn.DataParallel`` replicas, a server's request
threads): every op and layer gives, in each thread, the results it gives alone, bit for bit.

The expected results are computed first, one job at a time; then four threads run all the jobs at
once, each in another order, several times over, with the interpreter switching threads every few
microseconds so that one thread's call is interrupted inside another's. Jobs differ in shapes and
``cu_seqlens`` so that state one call leaves behind (a memo, a cached summary, a cached index) is
wrong for the next; the layers run both a padded training forward+backward and cached decoding.
Everything runs on one intra-op thread, which makes each result deterministic.
"""

from __future__ import annotations

import random
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F

from myfla.layers.gated_deltanet import GatedDeltaNet
from myfla.layers.kda import KimiDeltaAttention
from myfla.layers.rwkv7 import RWKV7Attention
from myfla.models.utils import Cache
from myfla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from myfla.ops.kda import chunk_kda, fused_recurrent_kda
from myfla.ops.rwkv7 import chunk_rwkv7
from myfla.ops.utils import loop_graph
from tests.concurrency import run_in_threads

THREADS = 4
ROUNDS = 3


DEVICE = ['cpu']


def _leaves(seed, *shapes):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(DEVICE[0]).requires_grad_() for s in shapes]


def _offsets(cu):
    return None if cu is None else torch.tensor(cu, device=DEVICE[0])


def _grads(out, leaves):
    """The outputs and the gradients of a fixed random projection of the first output."""
    gen = torch.Generator().manual_seed(99)
    first = out[0]
    # autograd.grad, not backward: a layer's parameters are shared by the threads, and their .grad
    # would collect every thread's gradients
    # (allow_unused: a layer's first layer does not use some of its parameters, e.g. RWKV-7's v_lora)
    weights = torch.randn(first.shape, generator=gen).to(first.device)
    grads = torch.autograd.grad((first * weights).sum(), leaves,
                                allow_unused=True)
    return [o.detach().clone() for o in out if o is not None] + [
        torch.empty(0) if d is None else d for d in grads]


def _chunk_job(op, T, H, K, cu, seed):
    def job():
        B = 1 if cu is not None else 2
        q, k, v, g, beta = _leaves(seed, (B, T, H, K), (B, T, H, K), (B, T, H, K),
                                   (B, T, H) if op == 'gdn' else (B, T, H, K), (B, T, H))
        cu_t = _offsets(cu)
        kq, gl, bl = F.normalize(k, dim=-1), F.logsigmoid(g), beta.sigmoid()
        if op == 'gdn':
            o, s = chunk_gated_delta_rule(q, kq, v, gl, bl, output_final_state=True, cu_seqlens=cu_t)
        else:
            o, s = chunk_kda(q, kq, v, gl / 8, bl, output_final_state=True, cu_seqlens=cu_t)
        return _grads((o, s), (q, k, v, g, beta))
    return job


def _recurrent_job(op, T, seed):
    """Forward only: fla's fused_recurrent ops have no backward (the decoding path)."""
    def job():
        q, k, v, g, beta = (x.detach() for x in _leaves(seed, (2, T, 2, 16), (2, T, 2, 16), (2, T, 2, 16),
                                                        (2, T, 2) if op == 'gdn' else (2, T, 2, 16), (2, T, 2)))
        kq, gl, bl = F.normalize(k, dim=-1), F.logsigmoid(g), beta.sigmoid()
        if op == 'gdn':
            return list(fused_recurrent_gated_delta_rule(q, kq, v, g=gl, beta=bl, output_final_state=True))
        return list(fused_recurrent_kda(q, kq, v, gl, bl, output_final_state=True))
    return job


def _rwkv7_job(T, cu, seed):
    def job():
        B = 1 if cu is not None else 2
        r, w, k, v, a = _leaves(seed, *[(B, T, 2, 16)] * 5)
        kk = F.normalize(k, dim=-1)
        o, s = chunk_rwkv7(r, -F.softplus(w) - 0.5, k, v, -kk, kk * a.sigmoid(), output_final_state=True,
                           cu_seqlens=_offsets(cu))
        return _grads((o, s), (r, w, k, v, a))
    return job


def _layer(cls, seed, **kw):
    """A layer with randomised parameters (shared by the threads that run its job)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = cls(hidden_size=64, layer_idx=0, **kw).to(DEVICE[0])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.device) * 0.05)
    return layer


def _decode_job(cls, seed, **kw):
    """Prefill of 20 tokens and four one-token steps through a Cache of the job's own (eval mode: the
    fused_recurrent path and the layers' decoding thread policy)."""
    layer = _layer(cls, seed, **kw).eval()

    def job():
        x = torch.randn(2, 24, 64, generator=torch.Generator().manual_seed(seed)).to(DEVICE[0])
        cache = Cache()
        with torch.no_grad():
            outs = [layer(x[:, :20], past_key_values=cache, use_cache=True)[0]]
            for t in range(20, 24):
                outs.append(layer(x[:, t:t + 1], past_key_values=cache, use_cache=True)[0])
        return [o.clone() for o in outs]
    return job


def _layer_job(cls, T, seed, **kw):
    layer = _layer(cls, seed, **kw)
    mask = torch.ones(2, T, dtype=torch.long, device=DEVICE[0])
    mask[1, : T // 3] = 0                                  # left padding: the unpad / pad path

    def job():
        x, = _leaves(seed + 1, (2, T, 64))
        out = layer(x, attention_mask=mask)
        o = out[0] * mask[..., None]
        return _grads((o,), [x] + list(layer.parameters()))
    return job


def _jobs():
    return {
        'gdn chunk': _chunk_job('gdn', 256, 2, 32, None, 1),
        'gdn chunk varlen': _chunk_job('gdn', 200, 2, 32, [0, 70, 200], 2),
        'gdn chunk varlen 2': _chunk_job('gdn', 200, 2, 32, [0, 128, 150, 200], 3),
        'kda chunk': _chunk_job('kda', 192, 2, 32, None, 4),
        'kda chunk varlen': _chunk_job('kda', 200, 2, 32, [0, 64, 199, 200], 5),
        'gdn fused_recurrent': _recurrent_job('gdn', 40, 6),
        'kda fused_recurrent': _recurrent_job('kda', 33, 7),
        'rwkv7 chunk': _rwkv7_job(96, None, 8),
        'rwkv7 chunk varlen': _rwkv7_job(90, [0, 17, 90], 9),
        'GatedDeltaNet layer': _layer_job(GatedDeltaNet, 80, 10, head_dim=16, num_heads=4),
        'KimiDeltaAttention layer': _layer_job(KimiDeltaAttention, 70, 11, head_dim=16, num_heads=4),
        'RWKV7Attention layer': _layer_job(RWKV7Attention, 75, 12, head_dim=16, num_hidden_layers=4),
        'GatedDeltaNet decode': _decode_job(GatedDeltaNet, 13, head_dim=16, num_heads=4),
        'KimiDeltaAttention decode': _decode_job(KimiDeltaAttention, 14, head_dim=16, num_heads=4),
        'RWKV7Attention decode': _decode_job(RWKV7Attention, 15, head_dim=16, num_hidden_layers=4),
    }


@pytest.fixture(params=['cpu', 'cuda'])
def device(request):
    """One intra-op thread, and the device the jobs run on (CUDA: where the state loops replay
    CUDA graphs, whose buffers a replay overwrites)."""
    if request.param == 'cuda' and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    DEVICE[0] = request.param
    try:
        yield request.param
    finally:
        DEVICE[0] = 'cpu'
        torch.set_num_threads(before)


def test_concurrent_calls_match_calls_alone(device):
    JOBS = _jobs()
    expected = {name: job() for name, job in JOBS.items()}
    failures = []
    barrier = threading.Barrier(THREADS)

    def worker(index):
        torch.set_num_threads(1)
        order = list(JOBS)
        random.Random(index).shuffle(order)
        try:
            barrier.wait()
            for _ in range(ROUNDS):
                for name in order:
                    got = JOBS[name]()
                    same = len(got) == len(expected[name]) and all(
                        a.shape == b.shape and torch.equal(a, b) for a, b in zip(got, expected[name]))
                    if not same:
                        failures.append(f"thread {index}: {name} differs from its result alone")
        except Exception as err:                      # noqa: BLE001 - reported with the failures
            failures.append(f"thread {index}: {type(err).__name__}: {err}")

    run_in_threads(worker, range(THREADS))
    assert not failures, "\n".join(sorted(set(failures)))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("cls", [GatedDeltaNet, KimiDeltaAttention])
def test_data_parallel_replicas_match_one_device(cls):
    """``nn.DataParallel`` runs a replica per GPU, each in its own Python thread: the batch's outputs
    and the parameters' gradients equal the layer's on one device (to float rounding: the replicas
    reduce their gradients in another order)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = cls(hidden_size=64, head_dim=16, num_heads=4, layer_idx=0).cuda()
    x = torch.randn(4, 300, 64, device='cuda')
    outputs, grads = [], []
    loop_graph.release()
    replayed = loop_graph.stats['replayed']
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for model in (layer, torch.nn.DataParallel(layer, device_ids=[0, 1])):
            for _ in range(3):              # the replicas' state loops record CUDA graphs, then replay them
                layer.zero_grad(set_to_none=True)
                o = model(x)[0]
                o.square().mean().backward()
            outputs.append(o.detach())
            grads.append([p.grad.detach().clone() for p in layer.parameters()])
    # every recording succeeded (a failed one warns and runs eagerly) and the graphs were replayed
    assert not [str(w.message) for w in caught if "CUDA graph recording" in str(w.message)]
    assert loop_graph.stats['replayed'] > replayed
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_pass_scope_belongs_to_its_thread():
    """A chunked pass's layout memo and its buffer-pool pass (``grid_cache``) belong to the thread that
    opened them: another thread running a pass meanwhile opens its own scope and begins its own pass
    (its pool ages its buffers by its own passes), and sees nothing of the first thread's memo."""
    from myfla.ops.common import chunk_delta_h
    from myfla.ops.utils import workspace

    opened, checked = threading.Event(), threading.Event()
    seen = {}

    def other():
        opened.wait(timeout=60)
        seen['outside'] = chunk_delta_h._memo_dict()
        with chunk_delta_h.grid_cache():
            seen['inside'] = chunk_delta_h._memo_dict()
            seen['depth'] = workspace._pool.depth
        checked.set()

    t = threading.Thread(target=other)
    t.start()
    with chunk_delta_h.grid_cache():
        chunk_delta_h._memo_dict()['mine'] = 1
        opened.set()
        checked.wait(timeout=60)
    t.join()
    assert seen['outside'] is None
    assert seen['inside'] == {} and seen['depth'] == 1
