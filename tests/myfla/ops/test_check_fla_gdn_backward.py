"""tools/check_fla_gdn_backward.py judges fla's GDN backward on a GPU by its own fp64 token-by-token
recurrence: that oracle must agree with myfla's chunked op (itself checked against fla's references
elsewhere) to fp32 rounding, outputs and every gradient, or the tool's verdict means nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from myfla.ops.gated_delta_rule import chunk_gated_delta_rule

SCRIPT = Path(__file__).resolve().parents[3] / "tools" / "check_fla_gdn_backward.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("_check_fla_gdn_backward", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oracle_agrees_with_myfla_on_outputs_and_gradients(tool):
    B, T, H, K, V = 2, 90, 2, 32, 48                 # T not a multiple of the chunk size
    q, k, v, g, beta, do = tool.make_inputs(B, T, H, K, V)
    xs64 = [x.double().requires_grad_() for x in (q, k, v, g, beta)]
    o64 = tool.naive(*xs64, K ** -0.5)
    o64.backward(do.double())
    xs = [x.clone().requires_grad_() for x in (q, k, v, g, beta)]
    o, _ = chunk_gated_delta_rule(*xs, scale=K ** -0.5)
    o.backward(do)
    ratios = [tool.ratio(a, b) for a, b in zip([o] + [x.grad for x in xs], [o64] + [x.grad for x in xs64])]
    assert max(ratios) < 1e-5, dict(zip(tool.NAMES, ratios))
    # and the metric sees a wrong gradient: a dk off by 1% of its size is a ratio of 1e-2
    assert tool.ratio(xs64[1].grad * 1.01, xs64[1].grad) == pytest.approx(1e-2, rel=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_refuses_without_a_gpu(tool, tmp_path, capsys):
    assert tool.main(["--out", str(tmp_path / "x.json"), "--autotune", "full"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
