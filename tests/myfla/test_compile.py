"""The layers under ``torch.compile`` (what serving and training code does to a model for speed): a
compiled layer serves (a padded chunked prefill, then one-token decode steps through a Cache) and
trains (forward and backward) with eager's results. The chunked ops keep themselves out of the
compiled graph (``torch.compiler.disable``, graph breaks); what matters is that every graph break
resumes: GatedDeltaNet's decoding failed with a dynamo ``ResumePrologueTracingError`` ("Could not find
a local variable with name `ctx`") after one inside ``myfla.utils.input_guard``'s ``with`` block."""

from __future__ import annotations

import warnings

import pytest
import torch

from myfla._torch_compat import version_at_least
from myfla.layers.gated_deltanet import GatedDeltaNet
from myfla.layers.kda import KimiDeltaAttention
from myfla.layers.rwkv7 import RWKV7Attention
from myfla.models.utils import Cache

if not version_at_least(torch.__version__, "2.5"):
    # torch 2.2's dynamo failed inside the autograd Functions ("InternalTorchDynamoError:
    # save_for_backward"); fla 0.4.0 itself requires torch >= 2.5
    pytest.skip("torch.compile of the layers is tested from torch 2.5 (fla 0.4.0's floor)",
                allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

# dynamo's tracing and graph breaks (what failed) and AOT autograd, without Inductor's C++ code
# generation (minutes of compiling on a 2-core machine, and a compiler the machine may lack)
BACKEND = "aot_eager"

LAYERS = {
    'GatedDeltaNet': (GatedDeltaNet, dict(head_dim=16, num_heads=4)),
    'KimiDeltaAttention': (KimiDeltaAttention, dict(head_dim=16, num_heads=4)),
    'RWKV7Attention': (RWKV7Attention, dict(head_dim=16, num_hidden_layers=4)),
}


@pytest.fixture(params=['cpu', 'cuda'])
def device(request):
    if request.param == 'cuda' and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return request.param


def _layer(name, device):
    cls, kw = LAYERS[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(hidden_size=64, layer_idx=0, **kw).to(device)


def _close(a, b):
    return len(a) == len(b) and all(torch.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(a, b))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(LAYERS))
def test_compiled_layer_serves_like_eager(name, device):
    layer = _layer(name, device).eval()
    x = torch.randn(2, 105, 64, generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones(2, 100, dtype=torch.long, device=device)
    mask[1, :30] = 0

    def serve(f):
        cache, outs = Cache(), []
        with torch.no_grad():
            outs.append(f(x[:, :100], attention_mask=mask, past_key_values=cache, use_cache=True)[0])
            for t in range(100, 105):
                outs.append(f(x[:, t:t + 1], past_key_values=cache, use_cache=True)[0])
        return outs

    expected = serve(layer)
    compiled = torch.compile(layer, backend=BACKEND)
    for _ in range(2):
        assert _close(serve(compiled), expected)


@pytest.mark.parametrize("name", list(LAYERS))
def test_compiled_layer_trains_like_eager(name, device):
    x = torch.randn(2, 130, 64, generator=torch.Generator().manual_seed(2)).to(device)

    def step(layer, f):
        xs = x.clone().requires_grad_()
        out = f(xs)[0]
        out.square().mean().backward()
        return [out.detach(), xs.grad] + [p.grad for p in layer.parameters() if p.grad is not None]

    eager = _layer(name, device).train()
    expected = step(eager, eager)
    layer = _layer(name, device).train()
    got = step(layer, torch.compile(layer, backend=BACKEND))
    assert _close(got, expected)
