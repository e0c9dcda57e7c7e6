"""RWKV-7's ``addcmul_bwd2`` under ``torch.compile``, as fla compiles it (``fullgraph=True``), where
compiling fails. On an H100 (torch 2.11), one process that trained RWKV-7 layers on CPU and CUDA
tensors, in several dtypes and with determinism on and off, met the function with more than dynamo's
recompile limit of combinations, and every later backward raised ``FailOnRecompileLimitHit`` ("Hard
failure due to fullgraph=True"); fla's function does the same. The port compiles it for CUDA tensors
only and, once a compilation fails, runs it eagerly with one warning.

On CPU the tests compile with dynamo's ``eager`` backend (dynamo's guards and recompile limit, no code
generation) in place of the CUDA-only compiled function; on a GPU the real one is compiled."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import myfla.ops.rwkv7.fused_addcmul as addcmul_mod
from myfla._torch_compat import version_at_least
from myfla.ops.rwkv7.fused_addcmul import addcmul_bwd2, fused_addcmul_rwkv7

if not hasattr(torch, 'compile') or not version_at_least(torch.__version__, "2.5"):
    pytest.skip("torch.compile is tested from torch 2.5 (fla 0.4.0's floor)", allow_module_level=True)


@contextlib.contextmanager
def _recompile_limit(limit: int):
    import torch._dynamo.config as config
    name = 'recompile_limit' if hasattr(config, 'recompile_limit') else 'cache_size_limit'
    with config.patch(**{name: limit}):
        yield


@pytest.fixture
def compiled_on_cpu(monkeypatch):
    """``addcmul_bwd2`` compiled by dynamo for CPU tensors, from a fresh dynamo cache."""
    import torch._dynamo
    torch._dynamo.reset()
    compiled = torch.compile(addcmul_mod._addcmul_bwd2_eager, backend='eager', fullgraph=True)
    monkeypatch.setattr(addcmul_mod, '_addcmul_bwd2_compiled', compiled)
    monkeypatch.setattr(addcmul_mod, 'COMPILED_DEVICES', ('cpu',))
    monkeypatch.setattr(addcmul_mod, '_compile_failed', [False])
    yield compiled
    torch._dynamo.reset()


def _variants(device='cpu'):
    """(dtype, use_xg) combinations: each one a recompilation of the compiled function."""
    dtypes = [torch.float32, torch.float64, torch.bfloat16] + ([torch.float16] if device == 'cuda' else [])
    return [(dtype, use_xg) for dtype in dtypes for use_xg in (True, False)]


def _mixing_grads(dtype, use_xg, device='cpu', seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, T, D = 2, 7, 32
    leaves = [torch.randn(s, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
              for s in [(B, T, D), (B, T, D)] + [(1, 1, D)] * (6 if use_xg else 5)]
    hidden, delta, *mus = leaves
    outs = fused_addcmul_rwkv7(hidden, delta, *mus, *([] if use_xg else [None]))
    weights = torch.randn((len(mus), B, T, D), generator=gen, dtype=torch.float64).to(device, dtype)
    loss = sum((o.float() * w.float()).sum() for o, w in zip(outs, weights) if o is not None)
    return torch.autograd.grad(loss, leaves)


def _eager_grads(monkeypatch, variants, device='cpu'):
    with monkeypatch.context() as m:
        m.setattr(addcmul_mod, 'COMPILED_DEVICES', ())
        return [_mixing_grads(dtype, use_xg, device) for dtype, use_xg in variants]


def test_the_compiled_function_alone_raises_past_the_recompile_limit(compiled_on_cpu):
    """What the fallback is for: fla's form, the compiled function called directly, raises once a
    process meets it with more combinations than dynamo's recompile limit."""
    errors = pytest.importorskip("torch._dynamo.exc")
    if not hasattr(errors, 'FailOnRecompileLimitHit'):
        pytest.skip("this torch falls back to eager itself at the recompile limit")
    x = torch.randn(2, 3, 8)
    with _recompile_limit(2), pytest.raises(errors.FailOnRecompileLimitHit):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            compiled_on_cpu(*[x.to(dtype)] * 6, x.to(dtype), True)


def test_past_the_recompile_limit_every_backward_runs_eagerly(compiled_on_cpu, monkeypatch):
    variants = _variants()
    expected = _eager_grads(monkeypatch, variants)
    with _recompile_limit(2), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [_mixing_grads(dtype, use_xg) for dtype, use_xg in variants]
        again = [_mixing_grads(dtype, use_xg) for dtype, use_xg in variants]
    for want, first, second in zip(expected, got, again):
        assert all(torch.equal(w, a) and torch.equal(w, b) for w, a, b in zip(want, first, second))
    fallbacks = [w for w in caught if "addcmul_bwd2" in str(w.message)]
    assert len(fallbacks) == 1, [str(w.message) for w in caught]
    assert "FailOnRecompileLimitHit" in str(fallbacks[0].message) or "ecompile" in str(fallbacks[0].message)
    assert addcmul_mod._compile_failed[0]


def test_an_error_of_the_inputs_raises_and_compiling_stays_on(compiled_on_cpu):
    good = torch.randn(2, 3, 8)
    with pytest.raises(RuntimeError):
        addcmul_bwd2(good, good, good, good, good, None, torch.randn(2, 5, 8), False)
    assert not addcmul_mod._compile_failed[0]
    sums = addcmul_bwd2(good, good, good, good, good, None, good, False)
    assert sums[0].shape == (1, 1, 8) and not addcmul_mod._compile_failed[0]


def test_cpu_tensors_never_reach_the_cuda_compiled_function(monkeypatch):
    """On a machine with a GPU, CPU tensors take the eager sums (Inductor's C++ build costs seconds per
    new shape for a reduction eager torch runs in microseconds)."""
    def refuse(*args):
        raise AssertionError("CPU tensors reached the compiled addcmul_bwd2")
    monkeypatch.setattr(addcmul_mod, '_addcmul_bwd2_compiled', refuse)
    monkeypatch.setattr(addcmul_mod, '_compile_failed', [False])
    grads = _mixing_grads(torch.float32, True)
    assert len(grads) == 8 and not addcmul_mod._compile_failed[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backward_past_the_recompile_limit(monkeypatch):
    """The real compiled function on CUDA tensors, met with more combinations than the recompile limit
    (8): every backward runs, with the gradients of the eager sums to fp32 rounding."""
    if addcmul_mod._addcmul_bwd2_compiled is addcmul_mod._addcmul_bwd2_eager:
        pytest.skip("addcmul_bwd2 is not compiled here (Python < 3.11 or FLA_USE_COMPILE=0)")
    import torch._dynamo
    torch._dynamo.reset()
    monkeypatch.setattr(addcmul_mod, '_compile_failed', [False])
    variants = _variants('cuda')
    variants += list(variants)                        # the same again: replayed from dynamo's cache
    expected = _eager_grads(monkeypatch, variants, 'cuda')
    with warnings.catch_warnings(), _recompile_limit(8):
        warnings.simplefilter("ignore")
        got = [_mixing_grads(dtype, use_xg, 'cuda') for dtype, use_xg in variants]
        # more combinations past the limit: the same with deterministic algorithms on (a dynamo guard)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            got += [_mixing_grads(dtype, use_xg, 'cuda') for dtype, use_xg in variants[:4]]
        finally:
            torch.use_deterministic_algorithms(False)
    assert addcmul_mod._compile_failed[0]
    for want, have in zip(expected + expected[:4], got):
        for w, h in zip(want, have):
            # the sums agree to fp32 rounding; a bf16 / fp16 parameter's gradient is then rounded to
            # its dtype, where they may differ by one unit in the last place
            low = w.dtype in (torch.bfloat16, torch.float16)
            assert torch.allclose(w, h, rtol=torch.finfo(w.dtype).eps if low else 1e-5, atol=1e-6)
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_without_triton():
    """A GPU machine without a working Triton (Inductor needs it for CUDA code): an RWKV-7 layer trains
    on CUDA tensors, with one warning naming the failed compilation (fla's call raises TritonMissing)."""
    if addcmul_mod._addcmul_bwd2_compiled is addcmul_mod._addcmul_bwd2_eager:
        pytest.skip("addcmul_bwd2 is not compiled here (Python < 3.11 or FLA_USE_COMPILE=0)")
    code = textwrap.dedent("""
        import sys
        sys.modules['triton'] = None                    # `import triton` raises ImportError
        import warnings
        import torch
        from myfla.layers.rwkv7 import RWKV7Attention
        torch.manual_seed(0)
        layer = RWKV7Attention(hidden_size=64, head_dim=16, num_hidden_layers=2, layer_idx=1).cuda()
        x = torch.randn(2, 50, 64, device='cuda', requires_grad=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            for _ in range(2):
                layer(x, v_first=torch.randn(2, 50, 64, device='cuda'))[0].square().sum().backward()
        assert torch.isfinite(x.grad).all()
        print(sum("addcmul_bwd2 failed" in str(w.message) for w in caught))
        """)
    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root)] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "1", proc.stdout
