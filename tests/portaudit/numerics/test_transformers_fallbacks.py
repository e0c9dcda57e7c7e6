"""fla 0.4.0's invariants run through transformers' torch fallbacks (examples/impl/*.yaml).

A third-party implementation that does not mirror fla: Qwen3-Next's gated DeltaNet and Kimi
Linear's KDA fallbacks, called through the declarative adapters of the example implementation
files. What holds: the delta rules against fla's naive references, chunk == recurrent, resume,
in-kernel l2norm, GVA; what is n/a: varlen (no cu_seqlens), float64 gradcheck, the norms' residual
and other activations; what fails, with its size: the gated norms' default eps (1e-6 there,
1e-5 in fla) on small activations. Skipped without transformers (an optional test dependency).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from portaudit.cli import app  # noqa: E402
from portaudit.errors import UsageError  # noqa: E402
from portaudit.numerics.fla040 import REGISTRY as FLA040  # noqa: E402
from portaudit.numerics.impl_spec import load_numerics_config  # noqa: E402
from portaudit.numerics.invariants import run_invariants  # noqa: E402
from portaudit.numerics.registry import build_implementation  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "impl"
QWEN = EXAMPLES / "transformers-qwen3-next.yaml"
KIMI = EXAMPLES / "transformers-kimi-linear.yaml"


def _build(path: Path, root: Path):
    return build_implementation(load_numerics_config(path).implementation_spec(), root)


def _run(impl, root, groups):
    invs = [i for i in FLA040.invariants() if i.group in groups]
    return run_invariants(impl, root, invs, FLA040, quick=True)


def _by(rows, group, check):
    return [r for r in rows if r.group == group and r.check == check]


@pytest.fixture(scope="module")
def qwen_rows(fla040_root):
    impl = _build(QWEN, fla040_root)
    assert impl.resolved["fla.ops.gated_delta_rule.chunk.chunk_gated_delta_rule"].startswith(
        "transformers.models.qwen3_next.modeling_qwen3_next.torch_chunk_gated_delta_rule")
    return _run(impl, fla040_root, {"chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule",
                                    "FusedRMSNormGated", "causal_conv1d"})


def test_qwen3_next_delta_rule_holds_where_it_applies(qwen_rows):
    group = "chunk_gated_delta_rule"
    for check in ("naive", "grad==fp64 naive", "chunk==fused_recurrent", "resume==full",
                  "l2norm_in_kernel==explicit"):
        rows = _by(qwen_rows, group, check)
        assert rows and all(r.status == "pass" for r in rows), [(r.check, r.output, r.rms_ratio) for r in rows]
    assert {r.output for r in _by(qwen_rows, group, "grad==fp64 naive")} >= {"dq", "dk", "dv", "dg", "dbeta"}
    gva = _by(qwen_rows, "fused_recurrent_gated_delta_rule", "gva==repeat")
    assert gva and all(r.status == "pass" for r in gva)


def test_qwen3_next_has_no_varlen_and_no_float64_which_is_na_not_failure(qwen_rows):
    for group in ("chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"):
        [varlen] = _by(qwen_rows, group, "varlen==slices")
        assert varlen.status == "n/a" and "has no `cu_seqlens`" in varlen.message
    [gc] = _by(qwen_rows, "chunk_gated_delta_rule", "gradcheck fp64")
    assert gc.status == "n/a" and "float64" in gc.message


def test_qwen3_next_gated_norm_default_eps_is_a_failure_of_the_expected_size(qwen_rows):
    rows = _by(qwen_rows, "FusedRMSNormGated", "formula+grads")
    explicit = [r for r in rows if r.case == "module=gated,act=swish,B=2,T=7,D=32"]
    assert explicit and all(r.status == "pass" for r in explicit)        # eps=1e-5 passed: the formula is fla's
    default = {r.output: r for r in rows if r.case.startswith("module=gated,act=swish") and "eps=default" in r.case}
    # Qwen3NextRMSNormGated(eps=1e-6) vs FusedRMSNormGated(eps=1e-5) at mean square ~1e-4:
    # y scales by sqrt((ms + 1e-5) / (ms + 1e-6)), about 4.4% at ms = 1e-4
    assert default["y"].status == "fail" and 3e-2 < default["y"].rms_ratio < 7e-2
    assert all(default[o].status == "fail" for o in ("dx", "dweight", "dg"))
    sigmoid = [r for r in rows if "act=sigmoid" in r.case]
    assert sigmoid and all(r.status == "n/a" and "fixed to silu" in r.message for r in sigmoid)
    [residual] = [r for r in rows if "residual=True" in r.case]
    assert residual.status == "n/a" and "`residual`" in residual.message


def test_qwen3_next_causal_conv_fallback(qwen_rows):
    rows = _by(qwen_rows, "causal_conv1d", "formula+grads")
    plain = [r for r in rows if "residual" not in r.case and "h0" not in r.case and "cu=" not in r.case]
    assert {r.output for r in plain} >= {"y", "dx", "dweight"} and all(r.status == "pass" for r in plain)
    na = {r.case: r.message for r in rows if r.status == "n/a"}
    assert len(na) == 3 and any("`initial_state`" in m for m in na.values())


@pytest.fixture(scope="module")
def kimi_rows(fla040_root):
    return _run(_build(KIMI, fla040_root), fla040_root, {"chunk_kda", "fused_recurrent_kda", "FusedRMSNormGated",
                                                          "RMSNorm"})


def test_kimi_linear_kda_holds_except_varlen(kimi_rows):
    for check in ("naive", "grad==fp64 naive", "chunk==fused_recurrent", "resume==full",
                  "l2norm_in_kernel==explicit"):
        rows = _by(kimi_rows, "chunk_kda", check)
        assert rows and all(r.status == "pass" for r in rows), [(r.check, r.output, r.rms_ratio) for r in rows]
    for group in ("chunk_kda", "fused_recurrent_kda"):
        [varlen] = _by(kimi_rows, group, "varlen==slices")
        assert varlen.status == "n/a"


def test_kimi_linear_norms_default_eps_fail_and_other_activations_are_na(kimi_rows):
    rms = {r.output: r for r in _by(kimi_rows, "RMSNorm", "formula+grads") if "eps=default" in r.case}
    assert rms["y"].status == "fail" and 3e-2 < rms["y"].rms_ratio < 7e-2     # KimiLinearRMSNorm eps=1e-6
    gated = _by(kimi_rows, "FusedRMSNormGated", "formula+grads")
    sig = {r.output: r for r in gated if "act=sigmoid" in r.case and "eps=default" in r.case}
    assert sig["y"].status == "fail" and 3e-2 < sig["y"].rms_ratio < 7e-2
    assert all(r.status == "pass" for r in gated if r.case == "module=gated,act=sigmoid,B=1,T=5,D=20")
    swish = [r for r in gated if "act=swish" in r.case or "act=silu" in r.case]
    assert swish and all(r.status == "n/a" and "fixed to sigmoid" in r.message for r in swish)


def test_leaving_cu_seqlens_undeclared_is_rejected_not_silently_ignored(fla040_root, tmp_path):
    """torch_chunk_gated_delta_rule(**kwargs) would swallow cu_seqlens and compute the wrong thing."""
    text = QWEN.read_text()
    line = '            cu_seqlens: {absent: "no packed (varlen) sequences; cu_seqlens would land in **kwargs, ignored"}\n'
    assert line in text
    bad = tmp_path / "qwen.yaml"
    bad.write_text(text.replace(line, ""))
    with pytest.raises(UsageError, match="'cu_seqlens' has no port parameter.*swallow it silently"):
        _build(bad, fla040_root)


def test_cli_runs_the_example_through_manifest(fla040_root):
    r = CliRunner().invoke(app, ["invariants", "--manifest", str(QWEN), "--op", "chunk_gated_delta_rule",
                                 "--quick", "--upstream-path", str(fla040_root), "-f", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["summary"]["fail"] == 0 and doc["summary"]["n/a"] == 2 and doc["summary"]["pass"] > 10
    assert doc["meta"]["title"] == "invariants: transformers-qwen3-next"


def test_golden_fixtures_through_the_example(fla040_root):
    r = CliRunner().invoke(app, ["golden", "check", "--manifest", str(QWEN), "--cases", "gdn/chunk",
                                 "--upstream-path", str(fla040_root), "-f", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    na = {row["case"]: row["message"] for row in doc["results"] if row["status"] == "n/a"}
    # real fla's outputs (H100, TF32) match the fallback; varlen and scale=0.1 have no counterpart
    assert doc["summary"]["fail"] == 0 and doc["summary"]["pass"] > 20
    assert set(na) == {"gdn/chunk/varlen", "gdn/chunk/T37_H1"}
