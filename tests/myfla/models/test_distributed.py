"""The causal LMs trained on several processes, under ``DistributedDataParallel`` and under FSDP2
(``fully_shard`` on every block and on the model): two gloo processes on CPU, each with half of a
batch, end a training step with the gradients a single process gets as the mean over the two halves
(DDP of RWKV-7 with ``find_unused_parameters=True``, as with fla: its first layer does not use
``v_lora``)."""

from __future__ import annotations

import os
import socket
import sys
import warnings

import pytest
import torch

pytest.importorskip("transformers", reason="myfla's models need transformers")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("needs torch.distributed with gloo", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SMALL = dict(hidden_size=64, num_hidden_layers=2, vocab_size=97, fuse_cross_entropy=False)


def _model(family):
    import myfla.models as M
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if family == "gated_deltanet":
            return M.GatedDeltaNetForCausalLM(M.GatedDeltaNetConfig(**SMALL, num_heads=2, head_dim=32))
        if family == "kda":
            return M.KDAForCausalLM(M.KDAConfig(**SMALL, num_heads=2, head_dim=32))
        return M.RWKV7ForCausalLM(M.RWKV7Config(**SMALL, head_dim=32))


def _batch():
    return torch.randint(3, 97, (4, 100), generator=torch.Generator().manual_seed(0))


def _worker(rank, family, mode, port, out_dir):
    """One process: half the batch, one step; rank 0 saves the gradients (a file, not a queue: a
    process that put tensors on a queue waits at exit until they are read)."""
    sys.path.insert(0, ROOT)
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = _model(family).train()
        if mode == "ddp":
            wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=family == "rwkv7")
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard
            mesh = init_device_mesh("cpu", (2,))
            for block in model.model.layers:
                fully_shard(block, mesh=mesh)
            wrapped = fully_shard(model, mesh=mesh)
        ids = _batch()[2 * rank:2 * rank + 2]
        wrapped(ids, labels=ids).loss.backward()
        grads = [p.grad.full_tensor() if mode == "fsdp2" else p.grad for p in model.parameters() if p.grad is not None]
        if rank == 0:
            torch.save(grads, os.path.join(out_dir, "grads.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
@pytest.mark.parametrize("family", ["gated_deltanet", "kda", "rwkv7"])
def test_distributed_step_equals_the_mean_over_the_halves(family, mode, tmp_path):
    if mode == "fsdp2":
        pytest.importorskip("torch.distributed.fsdp", reason="FSDP2")
        from torch.distributed import fsdp
        if not hasattr(fsdp, "fully_shard"):
            pytest.skip("this torch has no torch.distributed.fsdp.fully_shard (FSDP2)")
    ids = _batch()
    # built and stepped on one intra-op thread, as in the workers: with MKL on the GPU machine's Xeon,
    # RWKV-7's orthogonal initialisation (a QR) rounds differently on two threads than on one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model(family).train()
        for half in (ids[:2], ids[2:]):
            model(half, labels=half).loss.backward()
    finally:
        torch.set_num_threads(threads)
    expected = [p.grad / 2 for p in model.parameters() if p.grad is not None]

    ctx = torch.multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, family, mode, port, str(tmp_path))) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.terminate()
    assert not hung, f"a {mode} process did not finish"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    got = torch.load(tmp_path / "grads.pt")
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
