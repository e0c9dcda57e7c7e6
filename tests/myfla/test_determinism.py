"""myfla under ``torch.use_deterministic_algorithms(True)`` (what reproducible training sets): every op,
layer and model runs (no op that torch refuses in that mode, e.g. a CUDA ``index_add_`` or
``scatter_add_``) and a second run gives the first one's results bit for bit. fla's Triton kernels are
outside torch's flag; the port's torch ops are not, so a port that works only without it would fail
such a user. On CPU here; on a GPU (cuBLAS then needs ``CUBLAS_WORKSPACE_CONFIG``) where one is present."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from tests.myfla import test_thread_safety as jobs_of

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


@pytest.fixture(params=['cpu', 'cuda'])
def deterministic(request):
    """The device, with deterministic algorithms on (and one intra-op thread) for the test."""
    if request.param == 'cuda':
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        if os.environ.get('CUBLAS_WORKSPACE_CONFIG') not in (':4096:8', ':16:8'):
            pytest.skip("deterministic cuBLAS needs CUBLAS_WORKSPACE_CONFIG=:4096:8 set before CUDA starts")
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    jobs_of.DEVICE[0] = request.param
    try:
        yield request.param
    finally:
        jobs_of.DEVICE[0] = 'cpu'
        torch.use_deterministic_algorithms(before[0])
        torch.set_num_threads(before[1])


def _same(a, b):
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def test_ops_and_layers_repeat_bit_for_bit(deterministic):
    differ = [name for name, job in jobs_of._jobs().items() if not _same(job(), job())]
    assert not differ, f"not repeated bit for bit: {differ}"


@pytest.mark.parametrize("fuse", [True, False], ids=["fused_loss", "plain_loss"])
@pytest.mark.parametrize("family, kw", [
    ("KDA", {"head_dim": 16, "num_heads": 4}),
    ("GatedDeltaNet", {"head_dim": 16, "num_heads": 4}),
    ("RWKV7", {"head_dim": 16}),
])
def test_models_train_and_generate(deterministic, family, kw, fuse):
    """A causal LM's loss and every gradient repeat bit for bit; greedy generation runs."""
    pytest.importorskip("transformers", reason="myfla's models need transformers")
    import myfla.models as models

    config_cls, model_cls = getattr(models, f"{family}Config"), getattr(models, f"{family}ForCausalLM")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = model_cls(config_cls(hidden_size=64, num_hidden_layers=2, vocab_size=300, fuse_cross_entropy=fuse,
                                     **kw)).to(deterministic)
    ids = torch.randint(0, 300, (2, 90), device=deterministic)

    def step():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        return [out.loss.detach().clone()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    first, second = step(), step()
    assert len(first) > 1 and _same(first, second)
    generated = model.eval().generate(ids[:, :10], attention_mask=torch.ones_like(ids[:, :10]),
                                      max_new_tokens=4, do_sample=False)
    assert generated.shape == (2, 14)
