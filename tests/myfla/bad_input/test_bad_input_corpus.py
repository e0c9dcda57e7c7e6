"""Every entry of the bad-input corpus fails (or warns) exactly as recorded, and ordinary inputs
near each boundary pass every check without a warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from myfla.layers import GatedDeltaNet, KimiDeltaAttention
from myfla.modules import ShortConvolution
from myfla.ops.kda.gate import fused_kda_gate
from myfla.ops.utils.validation import check_cu_seqlens
from tests.myfla.bad_input.corpus import CASES, HIDDEN, OPS, K

ISSUE_ITEMS = {
    'fla check kept',
    'layers given cu_seqlens with batch 2',
    'fused_recurrent_* with a 2-D cu_seqlens',
    'head-first [B, H, T, K] taken as [B, T, H, K]',
    'an attention_mask shorter than T',
    'int64 q/k/v give a truncated int64 output',
    'float cu_seqlens are accepted',
    'fused_kda_gate(beta=0) returns NaN',
    'cu_seqlens end of 2^31-2^33',
}


IN_PROCESS = [c for c in CASES if not c.isolate]
ISOLATED = [c for c in CASES if c.isolate]

# Child process for the isolated cases: an address-space limit 3 GiB above what the imports mapped
# (a CUDA build of torch maps several GiB by itself) turns an allocation sized by a bad cu_seqlens
# (16-64 GB) into an immediate failure; each case prints "id<TAB>exception<TAB>message".
_CHILD = """
import resource, sys
from tests.myfla.bad_input.corpus import CASES
mapped = 0
try:
    with open('/proc/self/status') as status:
        mapped = next(int(line.split()[1]) << 10 for line in status if line.startswith('VmSize:'))
except (OSError, StopIteration):
    pass
resource.setrlimit(resource.RLIMIT_AS, (mapped + (3 << 30), mapped + (3 << 30)))
for case in CASES:
    if case.id not in sys.argv[1:]:
        continue
    try:
        case.call()
        print(case.id, 'None', '', sep='\\t')
    except BaseException as e:
        print(case.id, type(e).__name__, str(e).replace('\\n', ' '), sep='\\t')
"""


@pytest.mark.parametrize("case", IN_PROCESS, ids=[c.id for c in IN_PROCESS])
def test_bad_input(case):
    if case.kind == 'warns':
        with pytest.warns(case.error, match=case.match):
            case.call()
    else:
        with pytest.raises(case.error, match=case.match):
            case.call()


def test_bad_input_isolated():
    """The ``cu_seqlens`` ends of 2^31 and 2^33 are refused before anything is sized by them."""
    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", _CHILD, *[c.id for c in ISOLATED]], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = dict((line.split("\t")[0], line.split("\t")[1:]) for line in out.stdout.splitlines())
    assert sorted(seen) == sorted(c.id for c in ISOLATED)
    for case in ISOLATED:
        error, message = seen[case.id]
        assert error == case.error.__name__ and re.search(case.match, message), (case.id, error, message)


def test_corpus_covers_every_item():
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.item for c in CASES} == ISSUE_ITEMS
    assert {c.origin for c in CASES} == {'fla', 'added'}


# ---------------------------------------------------------------- ordinary inputs never trip a check
@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("cu", [
    [0, 4, 10],                  # int64
    [0, 0, 10, 10],              # empty sequences at both ends
    [0, 10],                     # one sequence
], ids=["two", "empty-seqs", "one"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_valid_cu_seqlens_pass_silently(name, cu, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        o, ht = OPS[name](cu_seqlens=torch.tensor(cu, dtype=dtype), output_final_state=True)
    assert o.shape[:2] == (1, 10) and ht.shape[0] == len(cu) - 1


@pytest.mark.parametrize("name", ['fused_recurrent_kda', 'fused_recurrent_gated_delta_rule'])
def test_decoding_shapes_do_not_warn(name):
    """One token with many heads is the decoding shape: the head-first heuristic must stay silent
    there (fla dropped it from its fused_recurrent ops for this reason, commit f74c46ad)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        o, _ = OPS[name](B=3, T=1)
    assert o.shape[:2] == (3, 1)


@pytest.mark.parametrize("name", ['chunk_kda', 'chunk_gated_delta_rule'])
@pytest.mark.parametrize("T", [0, 2, 100])
def test_chunk_shapes_with_enough_tokens_do_not_warn(name, T):
    """T >= H (here H = 2) and empty inputs (an all-padding batch) do not warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OPS[name](B=1, T=T)


@pytest.mark.parametrize("cls", [KimiDeltaAttention, GatedDeltaNet])
@pytest.mark.parametrize("T", [1, 70])
def test_layers_decode_and_prefill_without_warnings(cls, T):
    layer = cls(hidden_size=HIDDEN, head_dim=16, num_heads=2, layer_idx=0).eval()
    mask = torch.ones(2, T + 3, dtype=torch.long)       # a mask longer than the input is decoding
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error")
        o, _, _ = layer(torch.randn(2, T, HIDDEN), attention_mask=mask)
        o1, _, _ = layer(torch.randn(1, T, HIDDEN), cu_seqlens=torch.tensor([0, T], dtype=torch.int32))
    assert o.shape == (2, T, HIDDEN) and o1.shape == (1, T, HIDDEN)


def test_gate_beta_positive_passes():
    g = fused_kda_gate(torch.randn(2, 3, 2 * K), torch.randn(2), K, beta=0.5)
    assert torch.isfinite(g).all()


def test_conv_decoding_with_cu_seqlens_passes():
    """One token per sequence through ``cu_seqlens`` is ShortConvolution's varlen decoding path."""
    conv = ShortConvolution(16, 4)
    cache = torch.randn(3, 16, 4)
    with torch.no_grad():
        y, c = conv(torch.randn(1, 3, 16), cache=cache, cu_seqlens=torch.arange(4))
    assert y.shape == (1, 3, 16) and c is cache


def test_cu_seqlens_values_are_read_once_per_tensor(monkeypatch):
    """The value checks cost one host read per cu_seqlens tensor, not one per call: every layer of a
    model passes the same tensor, and ``cu_seqlens`` may live on an accelerator."""
    import myfla.ops.utils.validation as validation
    reads = []
    original = torch.Tensor.tolist

    def counting_tolist(self):
        reads.append(tuple(self.shape))
        return original(self)

    cu = torch.tensor([0, 3, 10])
    check_cu_seqlens(cu, 10)                      # first sight of this tensor: one read
    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    for _ in range(5):
        check_cu_seqlens(cu, 10)
    assert reads == []
    other = torch.tensor([0, 3, 10])
    check_cu_seqlens(other, 10)
    assert reads == [(3,)]
    assert validation._cu_seqlens_summary(other) == (0, 10, 3)
