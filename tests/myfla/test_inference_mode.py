"""myfla under ``torch.inference_mode()``: PyTorch's recommended context for inference, which serving
code runs models in. fla's Triton kernels do not care; the port's
per-pass memo keyed tensors by their version counter, which inference tensors do not have, so every
chunked GDN / KDA call inside inference mode failed with "Inference tensors do not track version
counter". Here every op, layer and model gives inside inference mode exactly what it gives under
``torch.no_grad()``, and training afterwards is not disturbed by what inference mode left behind
(pooled buffers, CUDA graphs, caches).
"""

from __future__ import annotations

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
from myfla.ops.rwkv7 import chunk_rwkv7, fused_mul_recurrent_rwkv7

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


@pytest.fixture(params=['cpu', 'cuda'])
def device(request):
    if request.param == 'cuda' and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return request.param


def _inputs(device, seed, *shapes):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(device) for s in shapes]


def _gdn(device, T, cu, recurrent=False):
    B = 1 if cu is not None else 2
    q, k, v, g, beta, h0 = _inputs(device, T, *[(B, T, 2, 32)] * 3, (B, T, 2), (B, T, 2),
                                   (len(cu) - 1 if cu else B, 2, 32, 32))
    q, k, v, g, beta = q, F.normalize(k, dim=-1), v, F.logsigmoid(g), beta.sigmoid()
    cu = None if cu is None else torch.tensor(cu, device=device)
    op = fused_recurrent_gated_delta_rule if recurrent else chunk_gated_delta_rule
    return lambda: op(q, k, v, g=g, beta=beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)


def _kda(device, T, cu, recurrent=False):
    B = 1 if cu is not None else 2
    q, k, v, g, beta, h0 = _inputs(device, T, *[(B, T, 2, 32)] * 4, (B, T, 2),
                                   (len(cu) - 1 if cu else B, 2, 32, 32))
    args = (q, F.normalize(k, dim=-1), v, F.logsigmoid(g) / 8, beta.sigmoid())
    cu = None if cu is None else torch.tensor(cu, device=device)
    op = fused_recurrent_kda if recurrent else chunk_kda
    return lambda: op(*args, initial_state=h0, output_final_state=True, cu_seqlens=cu)


def _rwkv7(device, T, cu, recurrent=False):
    B = 1 if cu is not None else 2
    r, w, k, v, a = _inputs(device, T, *[(B, T, 2, 16)] * 5)
    kk = F.normalize(k, dim=-1)
    w = -F.softplus(w) - 0.5
    cu = None if cu is None else torch.tensor(cu, device=device)
    if recurrent:
        return lambda: fused_mul_recurrent_rwkv7(r, w, k, v, kk, a.sigmoid(), output_final_state=True,
                                                 cu_seqlens=cu)
    return lambda: chunk_rwkv7(r, w, k, v, -kk, kk * a.sigmoid(), output_final_state=True, cu_seqlens=cu)


OPS = {
    'chunk_gated_delta_rule': (_gdn, 200, None, False),
    'chunk_gated_delta_rule varlen': (_gdn, 200, [0, 70, 128, 200], False),
    'chunk_kda': (_kda, 192, None, False),
    'chunk_kda varlen': (_kda, 200, [0, 64, 199, 200], False),
    'chunk_rwkv7': (_rwkv7, 96, None, False),
    'chunk_rwkv7 varlen': (_rwkv7, 90, [0, 17, 90], False),
    'fused_recurrent_gated_delta_rule': (_gdn, 40, None, True),
    'fused_recurrent_kda': (_kda, 33, None, True),
    'fused_mul_recurrent_rwkv7': (_rwkv7, 1, None, True),
}


def _same(a, b):
    a, b = [x for x in a if x is not None], [x for x in b if x is not None]
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", list(OPS))
def test_op_inside_inference_mode_equals_no_grad(device, name):
    make, T, cu, recurrent = OPS[name]
    call = make(device, T, cu, recurrent)
    with torch.no_grad():
        expected = call()
    for _ in range(3):                     # the third call replays a CUDA graph where the op has one
        with torch.inference_mode():
            got = call()
        assert all(x.is_inference() for x in got if x is not None)
        assert _same(expected, got), name


def _layer(cls, device, **kw):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = cls(hidden_size=64, layer_idx=0, **kw).to(device)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return layer.eval()


LAYERS = {
    'GatedDeltaNet': (GatedDeltaNet, dict(head_dim=16, num_heads=4)),
    'KimiDeltaAttention': (KimiDeltaAttention, dict(head_dim=16, num_heads=4)),
    'RWKV7Attention': (RWKV7Attention, dict(head_dim=16, num_hidden_layers=4)),
}


def _serve(layer, x, mask):
    """A padded prefill of 100 tokens (the chunked path) and five one-token steps through a Cache."""
    cache = Cache()
    outs = [layer(x[:, :100], attention_mask=mask, past_key_values=cache, use_cache=True)[0]]
    for t in range(100, 105):
        outs.append(layer(x[:, t:t + 1], past_key_values=cache, use_cache=True)[0])
    return outs


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_serving_inside_inference_mode_equals_no_grad(device, name):
    cls, kw = LAYERS[name]
    layer = _layer(cls, device, **kw)
    x, = _inputs(device, 1, (2, 105, 64))
    mask = torch.ones(2, 100, dtype=torch.long, device=device)
    mask[1, :30] = 0
    with torch.no_grad():
        expected = _serve(layer, x, mask)
    for _ in range(3):
        with torch.inference_mode():
            got = _serve(layer, x, mask)
        assert _same(expected, got), name


@pytest.mark.parametrize("name", list(LAYERS))
def test_training_after_inference_mode_equals_training_alone(device, name):
    """Buffers pooled, graphs recorded and caches filled inside inference mode are inference tensors,
    which cannot be written (nor saved for backward) outside it: a training step after serving must
    neither fail nor differ from the same step without the serving before it."""
    cls, kw = LAYERS[name]
    x, = _inputs(device, 2, (2, 160, 64))

    def step(layer):
        layer.train()
        xs = x.clone().requires_grad_()
        out = layer(xs)[0]
        out.pow(2).mean().backward()
        return [out.detach(), xs.grad] + [p.grad for p in layer.parameters()]

    expected = step(_layer(cls, device, **kw))
    layer = _layer(cls, device, **kw)
    mask = torch.ones(2, 100, dtype=torch.long, device=device)
    for _ in range(3):
        with torch.inference_mode():
            _serve(layer, x, mask)
    assert _same(expected, step(layer)), name


def test_generate_inside_inference_mode_equals_no_grad():
    """The three causal LMs: greedy generation inside inference mode equals generation under no_grad,
    then a training step runs."""
    pytest.importorskip("transformers")
    from myfla.models import (GatedDeltaNetConfig, GatedDeltaNetForCausalLM, KDAConfig, KDAForCausalLM,
                              RWKV7Config, RWKV7ForCausalLM)
    small = dict(hidden_size=64, num_hidden_layers=2, vocab_size=97)
    for model_cls, config in [(GatedDeltaNetForCausalLM, GatedDeltaNetConfig(**small, num_heads=2, head_dim=32)),
                              (KDAForCausalLM, KDAConfig(**small, num_heads=2, head_dim=32)),
                              (RWKV7ForCausalLM, RWKV7Config(**small, head_dim=32))]:
        torch.manual_seed(0)
        model = model_cls(config).eval()
        prompt = torch.randint(0, 97, (2, 80), generator=torch.Generator().manual_seed(3))
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            expected = model.generate(prompt, **kw)
        with torch.inference_mode():
            got = model.generate(prompt, **kw)
        assert torch.equal(expected, got), model_cls.__name__
        model.train()
        loss = model(prompt, labels=prompt).loss
        loss.backward()
        assert torch.isfinite(loss), model_cls.__name__
