"""The modules only fla's models use: fused cross entropy, fused linear cross entropy, L2Wrap and the
gated MLP, against independent torch formulas (``F.cross_entropy`` with label smoothing, the z-loss
written out, ``F.linear``, ``F.silu``) and fla's own pure-torch ``l2warp.py`` (loaded by path), in
fp64 where gradients are compared."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myfla.modules import FusedCrossEntropyLoss, FusedLinearCrossEntropyLoss, GatedMLP
from myfla.modules.fused_cross_entropy import cross_entropy_loss
from myfla.modules.fused_linear_cross_entropy import fused_linear_cross_entropy_loss
from myfla.modules.l2warp import l2_warp
from myfla.modules.mlp import SwiGLULinearParallel
from tests.fla_refs import load_module


def _targets(n, classes, ignore=(1, 4)):
    t = torch.randint(0, classes, (n,))
    t[list(ignore)] = -100
    return t


def _ref_ce(logits, target, smoothing=0.0, scale=1.0, z=0.0, reduction="mean"):
    """Cross entropy (torch's label smoothing) plus the z-loss ``z * lse^2`` on kept rows."""
    scaled = logits * scale
    per_row = F.cross_entropy(scaled, target, ignore_index=-100, reduction="none", label_smoothing=smoothing)
    kept = target != -100
    per_row = per_row + z * torch.logsumexp(scaled, -1).square() * kept
    if reduction == "mean":
        return per_row.sum() / kept.sum()
    return per_row.sum() if reduction == "sum" else per_row


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing,scale,z", [(0.0, 1.0, 0.0), (0.1, 0.5, 0.0), (0.0, 1.0, 1e-2), (0.2, 2.0, 1e-3)])
@pytest.mark.parametrize("inplace", [False, True])
def test_fused_cross_entropy(reduction, smoothing, scale, z, inplace):
    logits = torch.randn(9, 31, dtype=torch.float64, requires_grad=True)
    target = _targets(9, 31)
    crit = FusedCrossEntropyLoss(reduction=reduction, label_smoothing=smoothing, logit_scale=scale,
                                 lse_square_scale=z, inplace_backward=inplace)
    x = logits.detach().clone().requires_grad_()
    work = x * 1.0        # a non-leaf the in-place backward may overwrite
    loss = crit(work, target)
    ref = _ref_ce(logits, target, smoothing, scale, z, reduction)
    torch.testing.assert_close(loss, ref)
    w = torch.randn_like(ref)
    (g,) = torch.autograd.grad((loss * w).sum(), x)
    (r,) = torch.autograd.grad((ref * w).sum(), logits)
    torch.testing.assert_close(g, r)
    if inplace:
        # fla's in-place backward leaves the gradient in the logits' memory
        torch.testing.assert_close(work, r)


def test_fused_cross_entropy_z_loss_and_errors():
    logits = torch.randn(6, 11, dtype=torch.float64)
    target = _targets(6, 11)
    loss, z = FusedCrossEntropyLoss(lse_square_scale=0.1, return_z_loss=True)(logits, target)
    kept = target != -100
    torch.testing.assert_close(z, (0.1 * torch.logsumexp(logits, -1).square() * kept).sum() / kept.sum())
    with pytest.raises(NotImplementedError, match="Only support reduction = 'mean' or 'none' or 'sum'"):
        FusedCrossEntropyLoss(reduction="max")


def test_fused_cross_entropy_splits_past_64k_classes():
    """More than 64K classes: fla merges per-block results; the same loss and gradient."""
    logits = torch.randn(3, 65537, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 65536, -100])
    losses, _ = cross_entropy_loss(logits, target, label_smoothing=0.1, lse_square_scale=1e-3)
    ref = _ref_ce(logits, target, 0.1, 1.0, 1e-3, reduction="none")
    torch.testing.assert_close(losses, ref)
    torch.testing.assert_close(torch.autograd.grad(losses.sum(), logits)[0], torch.autograd.grad(ref.sum(), logits)[0])


def _ref_linear_ce(x, target, w, b, smoothing=0.0, scale=1.0, reduction="mean"):
    return _ref_ce(F.linear(x, w, b), target, smoothing, scale, 0.0, reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing,scale", [(0.0, 1.0), (0.1, 0.7)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("num_chunks", [8, 2])
def test_fused_linear_cross_entropy(reduction, smoothing, scale, bias, num_chunks):
    # N=37 tokens, H=8, V=50: 5 chunks of 8 rows with num_chunks=8, so the chunk loop runs
    x = torch.randn(37, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(50, dtype=torch.float64, requires_grad=True) if bias else None
    target = _targets(37, 50, ignore=(0, 5, 36))
    loss = fused_linear_cross_entropy_loss(x, target, w, b, label_smoothing=smoothing, logit_scale=scale,
                                           num_chunks=num_chunks, reduction=reduction)
    ref = _ref_linear_ce(x, target, w, b, smoothing, scale, reduction)
    torch.testing.assert_close(loss, ref)
    params = [x, w] + ([b] if bias else [])
    grads = torch.autograd.grad(loss * 3.0, params)          # an upstream gradient != 1
    refs = torch.autograd.grad(ref * 3.0, params)
    for g, r in zip(grads, refs):
        torch.testing.assert_close(g, r)


def test_fused_linear_cross_entropy_module_and_l2warp():
    """use_l2warp adds ``factor / total * max`` to each kept row's largest logit's gradient and
    leaves the loss value alone."""
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 13, (2, 5))
    target[0, 0] = -100
    crit = FusedLinearCrossEntropyLoss(use_l2warp=True, l2_penalty_factor=0.5)
    loss = crit(x, target, w)
    logits = F.linear(x.view(-1, 6), w)
    ref = _ref_ce(logits, target.view(-1))
    torch.testing.assert_close(loss, ref)
    total = (target != -100).sum()
    maxx = logits.max(-1).values
    penalty = 0.5 * (0.5 / total) * maxx.square().sum()     # d/dmax = factor / total * max
    grads = torch.autograd.grad(loss, (x, w))
    refs = torch.autograd.grad(ref + penalty, (x, w))
    for g, r in zip(grads, refs):
        torch.testing.assert_close(g, r)
    with pytest.raises(AssertionError, match="reduction: none is not supported"):
        FusedLinearCrossEntropyLoss(reduction="none")


def test_l2_warp_matches_fla(fla040_root):
    fla_l2warp = load_module(fla040_root, "fla/modules/l2warp.py", name="_fla_l2warp_ref")
    logits = torch.randn(2, 4, 9, dtype=torch.float64, requires_grad=True)
    base = (logits.square().mean()).reshape(())
    out = l2_warp(base, logits)
    ref = fla_l2warp.l2_warp(base, logits)
    torch.testing.assert_close(out, ref)
    (g,) = torch.autograd.grad(out, logits, retain_graph=True)
    (r,) = torch.autograd.grad(ref, logits, retain_graph=True)
    torch.testing.assert_close(g, r)
    # and from the formula: d/dlogits = d base + factor / (B*T) * max at the argmax
    expected = torch.autograd.grad(base, logits)[0]
    maxx, ids = logits.detach().max(-1, keepdim=True)
    expected = expected + torch.zeros_like(logits).scatter(-1, ids, maxx * 1e-4 / 8)
    torch.testing.assert_close(g, expected)


def test_l2_warp_loss_can_be_scaled_in_place():
    """transformers 5's Trainer scales the model's loss in place (``loss *= ...``). fla 0.4.0's L2Wrap
    returns its input as-is, which autograd then treats as a view it refuses to see modified ("Output
    0 of L2Wrap is a view and is being modified inplace"); the port returns a copy (a manifest
    deviation). The penalty's gradient is scaled with the loss, as in fla 0.6.0 (0.4.0 left it whole:
    a loss divided for gradient accumulation kept the full penalty)."""
    logits = torch.randn(2, 4, 9, dtype=torch.float64, requires_grad=True)
    base = logits.square().mean().reshape(())
    out = l2_warp(base, logits)
    out *= 3.0
    (g,) = torch.autograd.grad(out, logits, retain_graph=True)
    expected = 3.0 * torch.autograd.grad(base, logits)[0]
    maxx, ids = logits.detach().max(-1, keepdim=True)
    expected = expected + torch.zeros_like(logits).scatter(-1, ids, 3.0 * maxx * 1e-4 / 8)
    torch.testing.assert_close(g, expected)


def test_l2_warp_gradient_in_the_logits_dtype():
    """Under autocast the logits are bf16 and the loss fp32: the logits' gradient is made in the
    logits' dtype (fla 0.6.0; fla 0.4.0 raised "scatter(): Expected self.dtype to be equal to
    src.dtype")."""
    logits = torch.randn(2, 4, 9, requires_grad=True)
    low = logits.bfloat16()
    base = low.float().square().mean()
    (g,) = torch.autograd.grad(l2_warp(base, low), logits)
    maxx, ids = low.detach().max(-1, keepdim=True)
    penalty = torch.zeros_like(low).scatter(-1, ids, maxx * 1e-4 / 8).float()
    expected = torch.autograd.grad(low.float().square().mean(), logits)[0] + penalty
    torch.testing.assert_close(g, expected, rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize("fuse_swiglu", [True, False])
def test_gated_mlp(fuse_swiglu):
    torch.manual_seed(0)
    mlp = GatedMLP(hidden_size=16, hidden_ratio=2, intermediate_size=24, fuse_swiglu=fuse_swiglu).double()
    x = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    y = mlp(x)
    ref = mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    torch.testing.assert_close(y, ref)
    params = [x] + list(mlp.parameters())
    for g, r in zip(torch.autograd.grad(y.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(g, r)
    assert sorted(dict(mlp.named_parameters())) == ['down_proj.weight', 'gate_proj.weight', 'up_proj.weight']


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_mlp_without_autograd_is_the_function_forward(dtype):
    """Decoding (no grad) skips SwiGLULinearFunction: bit for bit the Function's forward, and the
    unfused formula in fp64."""
    torch.manual_seed(0)
    mlp = GatedMLP(hidden_size=16, hidden_ratio=2, intermediate_size=24, fuse_swiglu=True).to(dtype)
    x = torch.randn(2, 1, 16).to(dtype)
    expected = mlp(x)                                    # the parameters require grad: the Function
    assert expected.grad_fn is not None
    with torch.no_grad():
        got = mlp(x)
    assert got.grad_fn is None and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected.detach(), rtol=0, atol=0)
    m64 = {n: p.detach().double() for n, p in mlp.named_parameters()}
    x64 = x.double()
    ref = F.linear(F.silu(F.linear(x64, m64['gate_proj.weight'])) * F.linear(x64, m64['up_proj.weight']),
                   m64['down_proj.weight'])
    torch.testing.assert_close(got.double(), ref, rtol=1e-5 if dtype == torch.float32 else 2e-2,
                               atol=1e-5 if dtype == torch.float32 else 2e-2)


def test_gated_mlp_sizes_and_errors():
    # int(100 * 4 * 2 / 3) = 266, rounded up to a multiple of 256
    assert GatedMLP(hidden_size=100).intermediate_size == 512
    assert GatedMLP(hidden_size=64, hidden_ratio=2).intermediate_size == 256
    assert GatedMLP(hidden_size=64, intermediate_size=40).intermediate_size == 40
    with pytest.raises(ValueError, match="Unsupported hidden_act: gelu"):
        GatedMLP(hidden_size=8, hidden_act="gelu")


def test_swiglu_linear_parallel_style():
    try:
        from torch.distributed.tensor import Replicate, Shard
    except ImportError:
        # torch < 2.4 (DTensor not yet public; torch 2.2 has torch.distributed.tensor.parallel but no
        # torch.distributed.tensor.Replicate): the plan cannot be built, and says why
        with pytest.raises(ImportError, match=r"needs DTensor tensor parallelism .*torch >= 2.4"):
            SwiGLULinearParallel()
        return
    style = SwiGLULinearParallel()
    assert style.input_layouts == (Shard(-1),) and style.output_layouts == (Replicate(),)
    assert style.desired_input_layouts == (Shard(-1),) and style.use_local_output


def _tensor_parallel_ce_worker(rank, world, port, queue):
    import os
    import torch.distributed as dist
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        logits, target = _tp_inputs()
        cols = logits.shape[1] // world
        part = logits[:, rank * cols:(rank + 1) * cols].clone().requires_grad_()
        losses, _ = cross_entropy_loss(part, target, label_smoothing=0.1, lse_square_scale=1e-2,
                                       process_group=dist.group.WORLD)
        losses.sum().backward()
        queue.put((rank, losses.detach().tolist(), part.grad.tolist()))
    finally:
        dist.destroy_process_group()


def _tp_inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 12, dtype=torch.float64, generator=g), torch.tensor([0, 7, -100, 11, 5])


@pytest.mark.slow
def test_fused_cross_entropy_tensor_parallel_over_two_processes():
    """process_group: each of 2 ranks (gloo, CPU) holds half the classes; the per-row losses (with
    smoothing and z-loss) and each rank's slice of the gradient equal the whole-vocabulary ones."""
    import queue as queue_module
    import socket
    import time

    import torch.distributed as dist
    import torch.multiprocessing as mp
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_tensor_parallel_ce_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results, deadline = [], time.monotonic() + 240
    while len(results) < len(procs) and time.monotonic() < deadline:
        try:
            results.append(queue.get(timeout=1))
        except queue_module.Empty:
            if not any(p.is_alive() for p in procs) and queue.empty():
                break
    for p in procs:
        p.join(timeout=60)
    assert len(results) == len(procs), f"workers exited with {[p.exitcode for p in procs]}"
    results.sort(key=lambda r: r[0])
    logits, target = _tp_inputs()
    logits.requires_grad_()
    ref = _ref_ce(logits, target, 0.1, 1.0, 1e-2, reduction="none")
    ref.sum().backward()
    for _, losses, _ in results:
        torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64), ref.detach())
    grad = torch.cat([torch.tensor(g, dtype=torch.float64) for _, _, g in results], 1)
    torch.testing.assert_close(grad, logits.grad)


def _err_ratio(ref, got):
    """fla's test metric (fla/utils.py get_err_ratio): RMS error over the reference's RMS."""
    ref, got = ref.double(), got.double()
    return ((ref - got).square().mean().sqrt() / ref.square().mean().sqrt()).item()


@pytest.mark.skipif(int(torch.__version__.split(".")[0]) < 2,
                    reason="torch 1.13's CPU bf16 matmul does not accumulate in fp32 (a 512x4096x512 product "
                           "is 7e-2 off the fp64 product of the same bf16 inputs, against 1.7e-3 with torch "
                           "2.13): the gradients cannot meet fla's bf16 ratio there")
@pytest.mark.parametrize("l2_penalty_factor", [1e-4, 1.0])
def test_fused_linear_cross_entropy_l2warp_bf16_against_fp64(l2_penalty_factor):
    """fla 0.4.0's tests/modules/test_l2warp.py at its bf16 shape (B=4, T=1024, H=256, V=2000): the
    fused loss is accumulated in fp32, so it matches the fp64 cross entropy of the same bf16 logits
    to fp32 rounding (torch's own bf16 CrossEntropyLoss on CPU, the test's reference, is ~6e-3 off
    here: that test's 4 bf16 failures on CPU); the gradients, rounded through bf16 logit gradients
    as fla's kernel stores them, within fla's bf16 ratio of the fp64 gradients of CE + L2Wrap."""
    torch.manual_seed(42)
    B, T, H, V = 4, 1024, 256, 2000
    x = torch.randn(B, T, H).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(V, H) / H ** 0.5).to(torch.bfloat16).requires_grad_()
    b = (torch.randn(V) / H ** 0.5).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, V, (B, T))
    target = torch.cat((labels[:, 1:], torch.full_like(labels[:, :1], -100)), 1)
    loss = FusedLinearCrossEntropyLoss(use_l2warp=True, l2_penalty_factor=l2_penalty_factor)(x, target, w, b)
    assert loss.dtype == torch.float32
    grads = torch.autograd.grad(loss, (x, w, b))

    # the reference starts from the same bf16 logits (so the same row maxima), in fp64 from there
    x64, w64 = x.detach().double().view(-1, H), w.detach().double()
    logits64 = F.linear(x.detach().view(-1, H), w.detach(), b.detach()).double().requires_grad_()
    ref = F.cross_entropy(logits64, target.view(-1), ignore_index=-100)
    torch.testing.assert_close(loss.double(), ref, rtol=2e-6, atol=0)
    ref = l2_warp(ref, logits64.view(B, T, V), l2_penalty_factor)
    (dlogits,) = torch.autograd.grad(ref, logits64)
    refs = ((dlogits @ w64).view(B, T, H), dlogits.t() @ x64, dlogits.sum(0))
    for name, g, r in zip(("dx", "dw", "db"), grads, refs):
        assert g.dtype == torch.bfloat16
        assert _err_ratio(r, g) < 4e-3, name
