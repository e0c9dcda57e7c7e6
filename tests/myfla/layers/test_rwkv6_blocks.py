"""The fla.layers.rwkv6 building blocks: LoRA against fla's own class (loaded by file path; same
parameters and initial values under one seed, same outputs), LerpLinear / DDLerpLinear against their
formula on fla's token_shift_ref."""

from __future__ import annotations

import pytest
import torch

from myfla.layers.rwkv6 import DDLerpLinear, LerpLinear, LoRA
from portaudit.numerics.upstream_code import load_function


@pytest.fixture(scope="module")
def fla(fla040_root):
    return {"LoRA": load_function(fla040_root, "fla/layers/rwkv6.py", "LoRA", skip_import_roots=("fla",)),
            "token_shift_ref": load_function(fla040_root, "fla/modules/token_shift.py", "token_shift_ref")}


@pytest.mark.parametrize("kw", [dict(activation="tanh"), dict(activation=None), dict(activation="sigmoid", bias=False),
                                dict(activation="relu")])
def test_lora_matches_fla(fla, kw):
    torch.manual_seed(4)
    mine = LoRA(24, 40, 8, **kw)
    torch.manual_seed(4)
    ref = fla["LoRA"](24, 40, 8, **kw)
    assert list(mine.state_dict()) == list(ref.state_dict())
    for name, value in ref.state_dict().items():
        torch.testing.assert_close(mine.state_dict()[name], value, rtol=0, atol=0)
    assert repr(mine) == repr(ref)
    x = torch.randn(2, 5, 24)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p))
    mine.load_state_dict(ref.state_dict())
    torch.testing.assert_close(mine(x), ref(x))
    mine.set_bias_value(0.5)
    if mine.lora[2].bias is not None:
        assert torch.all(mine.lora[2].bias == 0.5)
    with pytest.raises(ValueError, match="Not supported activation `gelu`."):
        LoRA(4, 4, 2, activation="gelu")


@pytest.mark.parametrize("low_rank_dim", [None, 6])
def test_lerp_linears_follow_their_formula(fla, low_rank_dim):
    x = torch.randn(2, 7, 16)
    lerp = LerpLinear(16, 12, low_rank_dim)
    with torch.no_grad():
        lerp.mu.copy_(torch.randn(16))
    shifted = x + fla["token_shift_ref"](x) * lerp.mu
    torch.testing.assert_close(lerp(x), lerp.linear(shifted))
    mu = torch.randn(2, 7, 16)
    dd = DDLerpLinear(16, 12, low_rank_dim)
    torch.testing.assert_close(dd(x, mu), dd.linear(x + fla["token_shift_ref"](x) * mu))
    delta = torch.randn_like(x)
    torch.testing.assert_close(dd(x, mu, delta=delta), dd.linear(x + delta * mu))
    keys = ["mu", "linear.weight"] if low_rank_dim is None else ["mu", "linear.lora.0.weight", "linear.lora.2.weight",
                                                                  "linear.lora.2.bias"]
    assert sorted(lerp.state_dict()) == sorted(keys)
