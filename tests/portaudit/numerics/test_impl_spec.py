"""Implementations described by data: argument adapters, capabilities (n/a), validation, registries.

A toy upstream (package ``toy``) and a toy port (package ``toyport``, spelled differently) are
written into tmp dirs; the port is imported from there. Nothing here needs fla or transformers.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from portaudit.cli import app
from portaudit.errors import UsageError
from portaudit.numerics.case_registry import load_case_registry
from portaudit.numerics.impl import NotApplicable
from portaudit.numerics.impl_spec import load_numerics_config
from portaudit.numerics.registry import build_implementation, get_implementation

runner = CliRunner()

UPSTREAM = {
    "toy/__init__.py": "",
    "toy/ops.py": '''
        import torch

        def delta(q, k, scale=None, cu_seqlens=None, eps=1e-5, **kwargs):
            """q, k: [B, T, H, K]; returns (q * k * scale + eps, the sum over T)."""
            scale = q.shape[-1] ** -0.5 if scale is None else scale
            o = q * k * scale + eps
            return o, o.sum(1)

        def gva(q, v, **kwargs):
            """q: [B, T, H, K], v: [B, T, HV, K] with HV a multiple of H (grouped heads)."""
            return q.repeat_interleave(v.shape[2] // q.shape[2], 2) * v

        class Norm(torch.nn.Module):
            def __init__(self, hidden_size, eps=1e-5, activation='swish', device=None):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.ones(hidden_size))

            def forward(self, x, residual=None, prenorm=False):
                return x * self.weight
        ''',
}

PORT = {
    "toyport/__init__.py": "",
    "toyport/kernels.py": '''
        import torch

        def head_first_delta(query, key, eps=1e-6, **kwargs):
            """[B, H, T, K] layout, the scale fixed to K**-0.5; returns (sum over T, output)."""
            o = query * key * query.shape[-1] ** -0.5 + eps
            return o.sum(2), o

        def needs_state(query, key, state):
            return query + key + state

        def same_heads(query, value, scale):
            assert query.shape == value.shape, "no grouped heads here"
            return query * value * scale

        class PortNorm(torch.nn.Module):
            def __init__(self, dim, eps=1e-6, **kwargs):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.ones(dim))
                self.eps = eps

            def forward(self, hidden_states):
                return hidden_states * self.weight * (1 + self.eps)
        ''',
}

IMPL = '''
name: toy-port
upstream: {package: toy, distributions: [toy==1.0]}
port:
  package: toyport
  modules: {toy.ops: toyport.kernels}
numerics:
  implementation:
    name: toyport
    mirror: false
    lacks: {float64: "computes in float32"}
    symbols:
      toy.ops.delta:
        name: head_first_delta
        call:
          arguments:
            q: {to: query, permute: [0, 2, 1, 3]}
            k: {to: key, permute: [0, 2, 1, 3]}
            scale: {absent: "fixed to K**-0.5"}
            cu_seqlens: {absent: "no packed sequences"}
          returns:
            - {from: 1, permute: [0, 2, 1, 3]}
            - {from: 0}
      toy.ops.Norm:
        name: PortNorm
        init:
          arguments:
            hidden_size: dim
            activation: {absent: "fixed to swish", accepts: [swish, silu]}
            device: {absent: "default device"}
        forward:
          arguments:
            x: hidden_states
            residual: {absent: "no residual add"}
            prenorm: {absent: "no prenorm output", accepts: [false]}
'''


def _write(root: Path, files: dict) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


@pytest.fixture
def toy(tmp_path, monkeypatch):
    up = _write(tmp_path / "up", UPSTREAM)
    port = _write(tmp_path / "port", PORT)
    monkeypatch.syspath_prepend(str(port))
    for mod in [m for m in sys.modules if m == "toyport" or m.startswith("toyport.")]:
        monkeypatch.delitem(sys.modules, mod)
    impl_file = tmp_path / "impl.yaml"
    impl_file.write_text(IMPL)
    return up, impl_file


def _impl(toy, text=None):
    up, impl_file = toy
    if text is not None:
        impl_file.write_text(text)
    return build_implementation(load_numerics_config(impl_file).implementation_spec(), up)


def _upstream_delta(q, k, scale=None, eps=1e-5):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    o = q * k * scale + eps
    return o, o.sum(1)


def test_renames_permutes_and_reorders_outputs(toy):
    impl = _impl(toy)
    fn = impl.resolve("toy.ops.delta")
    q, k = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    o, s = fn(q, k=k, cu_seqlens=None, eps=1e-6)      # positional and keyword, fla's layout
    ro, rs = _upstream_delta(q, k, eps=1e-6)
    assert torch.allclose(o, ro) and torch.allclose(s, rs)
    assert impl.provides("toy.ops.delta") and not impl.provides("toy.ops.other")


def test_absent_argument_is_not_applicable_unless_at_the_default(toy):
    fn = _impl(toy).resolve("toy.ops.delta")
    q = torch.randn(1, 3, 1, 2)
    fn(q, q, scale=None)                                          # the upstream default: dropped
    with pytest.raises(NotApplicable, match=r"toyport's delta has no `scale` \(fixed to K\*\*-0.5\)"):
        fn(q, q, scale=0.1)
    with pytest.raises(NotApplicable, match="cu_seqlens"):
        fn(q, q, cu_seqlens=torch.tensor([0, 1, 3]))


def test_an_omitted_argument_keeps_the_ports_own_default(toy):
    """eps is not passed when the caller omits it: a default that differs shows up in the numbers."""
    fn = _impl(toy).resolve("toy.ops.delta")
    q = torch.ones(1, 2, 1, 4)
    o, _ = fn(q, q)
    assert torch.allclose(o, torch.full_like(o, 0.5 + 1e-6))      # the port's 1e-6, not toy's 1e-5


def test_class_adapter_keeps_the_ports_parameters_and_checks_accepts(toy):
    Norm = _impl(toy).resolve("toy.ops.Norm")
    m = Norm(hidden_size=4, eps=1e-5, activation="silu")
    assert set(m.state_dict()) == {"weight"} and m.eps == 1e-5
    x = torch.randn(2, 4)
    assert torch.allclose(m(x, residual=None, prenorm=False), x * (1 + 1e-5))
    with pytest.raises(NotApplicable, match="activation"):
        Norm(hidden_size=4, activation="sigmoid")
    with pytest.raises(NotApplicable, match="prenorm"):
        m(x, prenorm=True)


def test_an_unaccounted_parameter_is_a_usage_error_with_its_location(toy):
    text = IMPL.replace('            cu_seqlens: {absent: "no packed sequences"}\n', "")
    with pytest.raises(UsageError) as err:
        _impl(toy, text)
    msg = str(err.value)
    assert "impl.yaml:" in msg and "'cu_seqlens' has no port parameter" in msg and "swallow it silently" in msg


@pytest.mark.parametrize("patch, message", [
    (("q: {to: query, permute: [0, 2, 1, 3]}", "q: {to: query, permute: [0, 2, 2, 3]}"), "permutation"),
    (("name: head_first_delta", "name: head_first_delta\n        colour: red"), "unknown key"),
    (("scale: {absent: \"fixed to K**-0.5\"}", "scale: {absent: \"fixed\", to: s}"), "an absent argument"),
    (("mirror: false", "mirror: maybe"), "expected true or false"),
    (("            - {from: 0}", "            - {from: -1}"), "from: N"),
])
def test_bad_implementation_files_name_the_key_and_place(toy, patch, message):
    old, new = patch
    assert old in IMPL
    with pytest.raises(UsageError, match=message) as err:
        _impl(toy, IMPL.replace(old, new))
    assert "impl.yaml:" in str(err.value)


@pytest.mark.parametrize("value", ["false", "on", "1"])
def test_a_port_module_written_as_a_yaml_scalar_is_read_as_its_text(toy, value):
    """`modules: {toy.ops: false}` reached the mirror as the bool False and crashed the audit with an
    internal TypeError (found by tools/fuzz_inputs.py, impl-spec target): the module is the text
    written, and text that is no dotted name is refused where it stands."""
    up, impl_file = toy
    impl_file.write_text(IMPL.replace("mirror: false", "mirror: true")
                         .replace("modules: {toy.ops: toyport.kernels}", f"modules: {{toy.ops: {value}}}"))
    if value == "1":
        with pytest.raises(UsageError, match="'1' is not a dotted Python name") as err:
            load_numerics_config(impl_file)
        assert "impl.yaml:" in str(err.value)
        return
    spec = load_numerics_config(impl_file).implementation_spec()
    assert spec.modules == {"toy.ops": value} and spec.port_path("toy.ops.needs_state") == f"{value}.needs_state"


def test_port_parameter_without_default_must_be_fed(toy):
    text = IMPL.replace("name: head_first_delta", "name: needs_state").replace(
        '            cu_seqlens: {absent: "no packed sequences"}\n',
        '            cu_seqlens: {absent: "no packed sequences"}\n            eps: {absent: "none"}\n')
    with pytest.raises(UsageError, match="port parameter 'state' has no default and nothing maps to it"):
        _impl(toy, text)


def test_required_and_backward_capabilities_are_not_applicable(toy):
    text = IMPL.replace('            scale: {absent: "fixed to K**-0.5"}',
                        '            scale: {absent: "fixed to K**-0.5"}\n            eps: {required: "always added"}')
    text = text.replace("        name: head_first_delta\n", "        name: head_first_delta\n"
                        "        lacks: {backward: \"forward only\"}\n")
    fn = _impl(toy, text).resolve("toy.ops.delta")
    q = torch.randn(1, 3, 1, 2)
    with pytest.raises(NotApplicable, match="needs `eps`"):
        fn(q, q, eps=None)
    fn(q, q, eps=1e-5)
    with pytest.raises(NotApplicable, match="no backward for delta: forward only"):
        fn(q.requires_grad_(), q, eps=1e-5)


def test_float64_gap_and_mirror_resolution(toy):
    impl = _impl(toy)
    assert impl.float64_gap("toy.ops.delta") == "computes in float32"
    mirror = _impl(toy, IMPL.replace("mirror: false", "mirror: true"))
    assert mirror.provides("toy.ops.anything")
    assert mirror.resolve("toy.ops.needs_state").__name__ == "needs_state"   # port.modules mirror


def test_presets_are_data_with_capabilities():
    reg = load_case_registry("fla-0.4.0")
    fla = get_implementation("fla", reg)
    assert fla.precision == "tf32" and "Triton" in fla.float64_gap("fla.ops.kda.chunk.chunk_kda")
    assert fla.float64_gap("fla.layers.utils.pad_input") is None      # implemented in torch
    myfla = get_implementation("myfla", reg)
    assert myfla.precision == "fp32" and myfla.float64_gap("fla.ops.kda.chunk.chunk_kda") is None
    with pytest.raises(UsageError, match="unknown implementation 'nope'"):
        get_implementation("nope", reg)


def test_unknown_case_registry_is_a_usage_error():
    with pytest.raises(UsageError, match="neither a built-in"):
        load_case_registry("fla-9.9")
    with pytest.raises(UsageError, match="must define REGISTRY"):
        load_case_registry("portaudit.numerics.metrics")


REGISTRY_MODULE = '''
    """A port of another library brings its own case registry."""
    import torch

    from portaudit.numerics.case_registry import CaseRegistry
    from portaudit.numerics.impl import MappingImplementation
    from portaudit.numerics.invariants import Check, Invariant
    from portaudit.numerics.tolerances import Tolerance

    DELTA = "toy.ops.delta"


    def reference(root, fp64=False):
        def delta(q, k, scale=None, cu_seqlens=None, eps=1e-5, **kwargs):
            scale = q.shape[-1] ** -0.5 if scale is None else scale
            o = q * k * scale + eps
            return o, o.sum(1)
        return MappingImplementation("toy-ref", {DELTA: delta})


    def delta_vs_reference(ctx, p):
        q, k = torch.randn(1, p["T"], 2, 4), torch.randn(1, p["T"], 2, 4)
        kw = {} if p.get("scale") is None else {"scale": p["scale"]}
        o, s = ctx.api(DELTA)(q, k, **kw)
        ro, rs = ctx.oracle.resolve(DELTA)(q.double(), k.double(), **kw)
        return [Check("o", ro, o), Check("s", rs, s)]


    REGISTRY = CaseRegistry(
        name="toy-1.0", upstream_package="toy", upstream=("toy==1.0",),
        invariants=lambda: [Invariant("reference", "delta", [DELTA], [dict(T=3), dict(T=5, scale=0.5)],
                                      delta_vs_reference, quick=2)],
        golden_cases=lambda: [], reference=reference,
        invariant_rules=lambda precision: [Tolerance("*", "*", "*", 1e-5, "fp32 vs fp64")],
        golden_rules=lambda: [])
'''


def test_a_port_brings_its_own_case_registry_through_the_manifest(toy, tmp_path, monkeypatch):
    up, impl_file = toy
    _write(tmp_path / "port", {"toyport/audit_cases.py": REGISTRY_MODULE})
    impl_file.write_text(IMPL.replace("numerics:\n", "numerics:\n  cases: toyport.audit_cases\n"))
    r = runner.invoke(app, ["invariants", "--manifest", str(impl_file), "--upstream-path", str(up), "-f", "json"])
    doc = json.loads(r.stdout)
    # toyport's eps default is 1e-6 where toy's is 1e-5 (a real mismatch: fail, with its numbers);
    # scale=0.5 has no counterpart in the port (n/a, not a failure)
    assert [(x["case"], x["output"], x["status"]) for x in doc["results"]] == [
        ("T=3", "o", "fail"), ("T=3", "s", "fail"), ("T=5,scale=0.5", "*", "n/a")]
    assert 1e-6 < doc["results"][0]["max_abs"] < 1e-5
    assert doc["summary"]["n/a"] == 1 and r.exit_code == 1


def test_a_port_manifest_without_an_implementation_section_is_a_mirror(fla040_root):
    """manifests/kda.yaml: numerics.cases names the registry; port.package myfla is called as a mirror."""
    root = Path(__file__).resolve().parents[3]
    r = runner.invoke(app, ["invariants", "--manifest", str(root / "manifests" / "kda.yaml"), "--op", "l2norm",
                            "--upstream-path", str(fla040_root), "-f", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["meta"]["title"] == "invariants: myfla" and doc["summary"]["pass"] == 9


def test_repeat_heads_and_fixed_extra_arguments(toy):
    text = IMPL.replace("    symbols:\n", """    symbols:
      toy.ops.gva:
        name: same_heads
        call:
          arguments:
            q: {to: query, repeat: {dim: 2, like: v}}
            v: value
          extra: {scale: 1.0}
""")
    fn = _impl(toy, text).resolve("toy.ops.gva")
    q = torch.randn(1, 3, 2, 4, requires_grad=True)
    v = torch.randn(1, 3, 6, 4)
    y = fn(q, v)
    expected = q.repeat_interleave(3, 2) * v
    assert torch.allclose(y, expected)
    y.sum().backward()
    assert torch.allclose(q.grad, v.view(1, 3, 2, 3, 4).sum(3))      # gradients sum over the repeats
