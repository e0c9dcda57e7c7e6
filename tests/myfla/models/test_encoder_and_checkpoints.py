"""The encoder use (a model built by name through transformers' Auto classes, fed ``inputs_embeds``
with a padding mask, continued from its cache), ``save_pretrained`` / ``from_pretrained`` round
trips (safetensors), checkpoints written by fla's own model code loading into myfla, and the
package working without transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="myfla's models need transformers")

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM  # noqa: E402

import myfla.models as M  # noqa: E402
from tests.myfla.models.fla_oracle import config_kwargs, family_classes  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("model_type,overrides", [
    ("kda", {}),
    ("gated_deltanet", dict(expand_v=1.0)),
    ("kda", dict(num_hidden_layers=3, attn=dict(layers=[1], num_heads=4, num_kv_heads=2, window_size=5))),
])
def test_encoder_built_by_name_continues_from_its_cache(model_type, overrides):
    kwargs = dict(dict(hidden_size=64, num_hidden_layers=2, num_heads=2, head_dim=32, vocab_size=11), **overrides)
    cfg = AutoConfig.for_model(model_type, **kwargs)
    assert type(cfg) is (M.KDAConfig if model_type == "kda" else M.GatedDeltaNetConfig)
    torch.manual_seed(0)
    encoder = AutoModel.from_config(cfg).eval()
    assert type(encoder) is (M.KDAModel if model_type == "kda" else M.GatedDeltaNetModel)

    B, T, T0 = 2, 16, 9
    x = torch.randn(B, T, 64)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :3] = 0                                   # left padding
    with torch.no_grad():
        full = encoder(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
        out = encoder(inputs_embeds=x[:, :T0], attention_mask=mask[:, :T0], use_cache=True)
        pieces, cache = [out.last_hidden_state], out.past_key_values
        for t in range(T0, T):
            out = encoder(inputs_embeds=x[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=cache,
                          use_cache=True)
            pieces.append(out.last_hidden_state)
            cache = out.past_key_values
    keep = mask.bool()
    torch.testing.assert_close(torch.cat(pieces, 1)[keep], full[keep], rtol=1e-4, atol=1e-5)
    assert len(cache) == cfg.num_hidden_layers and cache.get_seq_length() == T


@pytest.mark.parametrize("family,overrides", [
    ("kda", {}),
    ("gated_deltanet", dict(tie_word_embeddings=True)),
    ("kda", dict(attn=dict(layers=[0], num_heads=4), fuse_norm=False)),
])
def test_save_pretrained_round_trip(tmp_path, family, overrides):
    MC, _, ML = family_classes(M, family)
    torch.manual_seed(0)
    model = ML(MC(**config_kwargs(family, **overrides))).eval()
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == family
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert type(loaded) is ML
    sd, lsd = model.state_dict(), loaded.state_dict()
    assert list(sd) == list(lsd) and all(torch.equal(sd[k], lsd[k]) for k in sd)
    if overrides.get("tie_word_embeddings"):
        assert loaded.lm_head.weight is loaded.model.embeddings.weight
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["kda", "gated_deltanet"])
def test_checkpoint_from_fla_model_code_loads_unchanged(tmp_path, fla_glue, family):
    """A checkpoint fla's own model classes write (save_pretrained, safetensors) loads into myfla with
    the same weights and logits (the GPU fixtures repeat this with real fla)."""
    FC, _, FL = family_classes(fla_glue, family)
    torch.manual_seed(0)
    ref = FL(FC(**config_kwargs(family))).eval()
    ref.save_pretrained(str(tmp_path), safe_serialization=True)
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert type(loaded) is family_classes(M, family)[2]
    for k, v in ref.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, ref(ids).logits)


def test_ops_and_layers_do_not_need_transformers():
    """Importing myfla, its ops, modules and layers never imports transformers; with transformers
    unimportable the layers and the Cache still work and the model classes raise ImportError."""
    code = (
        "import sys\n"
        # torch 2.2's own torch._dynamo imports transformers (through torch.onnx) where it is installed,
        # and myfla's torch.compiler.disable decorators import torch._dynamo: count only what myfla adds
        "try:\n    import torch._dynamo\nexcept ImportError:\n    pass\n"           # torch < 2.0 has none
        "before = 'transformers' in sys.modules\n"
        "import myfla, myfla.ops, myfla.modules, myfla.layers\n"
        "print('imported transformers:', 'transformers' in sys.modules and not before)\n"
        "sys.modules['transformers'] = None\n"           # importing transformers now fails
        "from myfla.models.utils import Cache\n"
        "import myfla.models as M\n"
        "try:\n    M.KDAConfig\nexcept ImportError as e:\n    print('ImportError:', e)\n"
        "import torch\n"
        "layer = myfla.layers.KimiDeltaAttention(hidden_size=32, head_dim=16, num_heads=2, layer_idx=0).eval()\n"
        "o, _, c = layer(torch.randn(1, 5, 32), past_key_values=Cache(), use_cache=True)\n"
        "print(tuple(o.shape), len(c))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "imported transformers: False" in out.stdout
    assert "ImportError: myfla's model classes need the `transformers` package" in out.stdout
    assert "(1, 5, 32) 1" in out.stdout
