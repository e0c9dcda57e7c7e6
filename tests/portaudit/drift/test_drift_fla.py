"""The real drift of both bundled manifests from fla 0.4.0 to fla 0.6.0 (wheels from the registry)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from portaudit.drift.engine import Release, run_drift
from portaudit.static.index.tree import TreeIndex
from portaudit.static.manifest import load_manifest
from portaudit.static.upstream import default_cache_dir

REPO = Path(__file__).resolve().parents[3]

pytestmark = [pytest.mark.network,
              pytest.mark.skipif(os.environ.get("PORTAUDIT_OFFLINE") == "1", reason="PORTAUDIT_OFFLINE=1")]


@pytest.fixture(scope="module")
def fla_run(fla040_root, fla060_root):
    cache = default_cache_dir()   # the parsed-file cache the CLI shares (filled on the first run)
    old = Release(fla040_root, TreeIndex(fla040_root, cache), "fla 0.4.0", "0.4.0")
    new = Release(fla060_root, TreeIndex(fla060_root, cache), "fla 0.6.0", "0.6.0")
    manifests = [load_manifest(REPO / "manifests" / n) for n in ("kda.yaml", "gated_deltanet.yaml")]
    port = TreeIndex(REPO, cache)
    return run_drift(manifests, lambda m: (old, new), lambda m: (port, "myfla"))


def by_symbol(run, manifest):
    md = next(m for m in run.manifests if m.manifest == manifest)
    return md, {s.symbol: s for s in md.symbols}


def test_kda_headline_facts(fla_run):
    md, sym = by_symbol(fla_run, "kda")
    assert md.entry_points == ["fla.layers.kda.KimiDeltaAttention", "fla.models.utils.Cache"]
    assert sym["fla.ops.kda.chunk_inter.chunk_kda_bwd_dqkwg"].status == "removed"
    fwd = sym["fla.ops.kda.chunk.chunk_kda_fwd"]
    assert (fwd.status, fwd.new_symbol) == ("moved", "fla.ops.kda.chunk_fwd.chunk_kda_fwd")
    assert fwd.new_ref.startswith("fla/ops/kda/chunk_fwd.py:")
    gate = sym["fla.ops.kda.gate.fused_kda_gate"]
    changes = {(c.kind, c.param) for c in gate.signature}
    assert {("parameter renamed", "A"), ("parameter removed", "head_k_dim"),
            ("parameter added", "lower_bound"), ("parameter added", "output_dtype")} <= changes
    layer = sym["fla.layers.kda.KimiDeltaAttention"]
    added = {c.param for c in layer.signature if c.member == "__init__" and c.kind == "parameter added"}
    assert {"safe_gate", "lower_bound"} <= added
    # UPSTREAM.md section 4: modules that moved, kernels renamed *_kernel1 -> *_kernel_row
    assert sym["fla.modules.l2norm.l2norm_fwd"].new_symbol == "fla.modules.norm.l2norm.l2norm_fwd"
    assert sym["fla.modules.convolution.ShortConvolution"].new_symbol == \
        "fla.modules.causal_conv1d.ops.ShortConvolution"
    assert sym["fla.models.utils.Cache"].new_symbol == "fla.models.cache_utils.Cache"
    row = sym["fla.modules.l2norm.l2norm_fwd_kernel1"]
    assert (row.status, row.new_symbol) == ("renamed", "fla.modules.norm.l2norm.l2norm_fwd_kernel_row")
    rec = sym["fla.ops.kda.fused_recurrent.fused_recurrent_kda"]
    assert ("became required", "beta") in {(c.kind, c.param) for c in rec.signature}
    new = {n.symbol for n in md.new_symbols}
    assert {"fla.ops.kda.chunk_bwd.chunk_kda_bwd_wy_dqkg_fused", "fla.layers.utils.get_layer_cache"} <= new
    assert md.old_closure_size == len(md.symbols) == 133


def test_gated_deltanet_headline_facts(fla_run):
    md, sym = by_symbol(fla_run, "gated_deltanet")
    cumsum = sym["fla.ops.utils.cumsum.chunk_local_cumsum"]
    assert ("parameter removed", "head_first") in {(c.kind, c.param) for c in cumsum.signature}
    rms = sym["fla.modules.layernorm.RMSNorm"]
    assert {c.param for c in rms.signature if c.member == "__init__"} >= {"device", "dtype"}
    assert "fla.ops.gated_delta_rule.chunk_fwd" in {n.module for n in md.new_symbols}
    assert md.changed


def test_citations_of_the_port(fla_run):
    cites = {c.port_symbol: c for c in fla_run.citations}
    assert cites, "the port carries fla 0.4.0 citations"
    chunk = [c for c in fla_run.citations if c.port_symbol.endswith("chunk_kda_bwd_dqkwg")]
    assert chunk and all(c.status == "cited code changed" for c in chunk)
    assert any("removed" in x for c in chunk for x in c.changes)


def test_written_manifests_have_no_drift_left(fla_run, fla060_root, tmp_path):
    from portaudit.drift.engine import drift_manifest
    from portaudit.drift.manifest_writer import render_updated_manifest, write_updated_manifest
    from portaudit.drift.matching import Matcher

    index = TreeIndex(fla060_root, default_cache_dir())
    for md in fla_run.manifests:
        source = fla_run.sources[md.manifest]
        text = render_updated_manifest(source, md, ["fla-core==0.6.0", "flash-linear-attention==0.6.0"],
                                       "0.6.0", "fla 0.6.0")
        updated = load_manifest(write_updated_manifest(text, tmp_path / f"{md.manifest}.yaml", source.path))
        assert "fla.ops.kda.chunk_fwd.chunk_kda_fwd" in {e.symbol for e in updated.entries} \
            or md.manifest != "kda"
        again = drift_manifest(updated, Matcher(index, index, "fla"), "fla 0.6.0", "fla 0.6.0")
        assert not again.changed, again.counts()
        assert len(again.symbols) == md.new_closure_size
