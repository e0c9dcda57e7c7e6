"""A model split over two GPUs the way ``from_pretrained(device_map=...)`` splits it (accelerate's
``dispatch_model``: each block on its GPU, hooks moving its inputs there): a padded training step
(logits, loss, every gradient) and greedy generation with the cache (chunked prefill, then decode
steps whose state loops are recorded and replayed as CUDA graphs on each GPU) equal the same model on
one GPU. Needs two CUDA devices and accelerate."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

pytest.importorskip("transformers", reason="myfla's models need transformers")
if torch.cuda.device_count() < 2:
    pytest.skip("needs two CUDA devices", allow_module_level=True)

import myfla.models as M  # noqa: E402
from myfla.ops.utils import loop_graph  # noqa: E402

LAYERS = 4
SMALL = dict(hidden_size=64, num_hidden_layers=LAYERS, vocab_size=97, initializer_range=0.1,
             fuse_cross_entropy=False)
FAMILIES = {
    "gated_deltanet": lambda: M.GatedDeltaNetForCausalLM(M.GatedDeltaNetConfig(**SMALL, num_heads=2, head_dim=32)),
    "kda": lambda: M.KDAForCausalLM(M.KDAConfig(**SMALL, num_heads=2, head_dim=32)),
    "rwkv7": lambda: M.RWKV7ForCausalLM(M.RWKV7Config(**SMALL, head_dim=32)),
}


def _batch(device):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (2, 150), generator=gen)
    mask = torch.ones(2, 150, dtype=torch.long)
    mask[1, :20] = 0
    return ids.to(device), mask.to(device)


def _step(model, device):
    ids, mask = _batch(device)
    model.train()
    out = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), use_cache=False)
    out.loss.backward()
    grads = {n: p.grad.detach().to('cuda:0') for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach().to('cuda:0'), out.loss.detach().to('cuda:0'), grads


def _generate(model, device):
    ids, mask = _batch(device)
    model.eval()
    with torch.no_grad():
        out = model.generate(ids[:, :90], attention_mask=mask[:, :90], max_new_tokens=12, min_new_tokens=12,
                             do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    return out.sequences.to('cuda:0'), torch.stack(out.logits, 1).to('cuda:0')


@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_split_over_two_gpus_equals_one_gpu(family):
    accelerate = pytest.importorskip("accelerate")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = FAMILIES[family]()
    whole = copy.deepcopy(base).to('cuda:0')
    split = copy.deepcopy(base)
    device_map = {"model.embeddings": 0, "model.norm": 1, "lm_head": 1}
    device_map.update({f"model.layers.{i}": 0 if i < LAYERS // 2 else 1 for i in range(LAYERS)})
    split = accelerate.dispatch_model(split, device_map=device_map)
    assert split.model.layers[-1].attn_norm.weight.device == torch.device('cuda:1')

    logits, loss, grads = _step(whole, 'cuda:0')
    logits_split, loss_split, grads_split = _step(split, 'cuda:0')
    torch.testing.assert_close(logits_split, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_split, loss, rtol=1e-6, atol=0)
    assert grads_split.keys() == grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(grads_split[name], g, rtol=1e-4, atol=1e-5, msg=name)

    replayed = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):                  # the second round replays the decode steps' recordings
            sequences, step_logits = _generate(whole, 'cuda:0')
            before = loop_graph.stats['replayed']
            sequences_split, step_logits_split = _generate(split, 'cuda:0')
            replayed += loop_graph.stats['replayed'] - before
            assert torch.equal(sequences_split, sequences)
            torch.testing.assert_close(step_logits_split, step_logits, rtol=1e-5, atol=1e-5)
    # every recording succeeded on both GPUs (a failed one warns and runs eagerly), and the split
    # model replayed recordings
    assert not [str(w.message) for w in caught if "CUDA graph recording" in str(w.message)]
    assert replayed > 0
