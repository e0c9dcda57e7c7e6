"""``elu_p1`` and ``sum_norm`` of fla 0.4.0 ``fla/layers/gated_deltanet.py`` against fla's own
functions (loaded by file path; their ``@torch.compile`` is not part of the math) and the formulas."""

from __future__ import annotations

import torch

from myfla.layers.gated_deltanet import elu_p1, sum_norm
from tests.fla_refs import load_function


def test_elu_p1_and_sum_norm(fla040_root):
    ref = load_function(fla040_root, "fla/layers/gated_deltanet.py", ["elu_p1", "sum_norm"],
                        skip_import_roots=("fla",))
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x = (torch.randn(3, 5, 8) * 3).to(dtype)
        y = elu_p1(x)
        assert y.dtype == dtype
        torch.testing.assert_close(y, ref["elu_p1"](x), rtol=0, atol=0)
        p = x.abs() + 0.1
        torch.testing.assert_close(sum_norm(p), ref["sum_norm"](p), rtol=0, atol=0)
    x = torch.randn(40, dtype=torch.float64)
    torch.testing.assert_close(elu_p1(x), torch.where(x > 0, x + 1, x.exp()))
    p = torch.rand(4, 7, dtype=torch.float64)
    torch.testing.assert_close(sum_norm(p).sum(-1), torch.ones(4, dtype=torch.float64))
