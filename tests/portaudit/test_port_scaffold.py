"""Scaffold from the port: matches by name, by call site and by body; port.modules proposed;
unreached upstream definitions left out with a reason; unmatched port definitions listed."""

from __future__ import annotations

from typer.testing import CliRunner

from portaudit.cli import app
from portaudit.static.index.tree import TreeIndex
from portaudit.static.manifest import load_manifest
from portaudit.static.port_scaffold import scaffold_from_port

from tests.portaudit.conftest import write_tree

UPSTREAM = {
    "up/__init__.py": "__version__ = '1.0'\n",
    "up/utils.py": "def prepare(n):\n    return list(range(n))\n",
    "up/ops/__init__.py": "",
    "up/ops/chunk.py": '''
        import torch
        from up.utils import prepare
        from up.ops.intra import intra_fwd


        def chunk_fwd(q, k):
            idx = prepare(q.shape[0])
            a, b = intra_fwd(q, k)
            return a + b, idx


        def chunk_bwd(do, q, k):
            a, b = intra_fwd(q, k)
            return do * a, do * b


        class ChunkFunction(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k):
                return chunk_fwd(q, k)

            @staticmethod
            def backward(ctx, do):
                return chunk_bwd(do, None, None)


        def chunk(q, k):
            return ChunkFunction.apply(q, k)
        ''',
    "up/ops/intra.py": '''
        def intra_fwd(q, k):
            s = q @ k.transpose(-1, -2)
            t = s.tril()
            return s, t
        ''',
    "up/ops/other.py": "def chunk_fwd(x, y):\n    return x\n",   # a same-named decoy
}

# a forward-only vendored copy: flattened into two modules, the intra helper renamed and split
PORT = {
    "vendor/__init__.py": "",
    "vendor/fla/__init__.py": "from .ops import chunk\n__all__ = ['chunk']\n",
    "vendor/fla/index.py": "def prepare(n):\n    return list(range(n))\n",
    "vendor/fla/ops.py": '''
        import torch
        from .index import prepare


        def _scaled_dot(q, k):
            s = q @ k.transpose(-1, -2)
            t = s.tril()
            return t, s


        def _intra_entry(q, k):
            return _scaled_dot(q, k)


        def chunk_fwd(q, k):
            idx = prepare(q.shape[0])
            a, b = _intra_entry(q, k)
            return a + b, idx


        class ChunkFunction(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k):
                return chunk_fwd(q, k)


        def chunk(q, k):
            return ChunkFunction.apply(q, k)


        def vendor_only(x):
            return x
        ''',
}


def trees(tmp_path):
    write_tree(tmp_path / "up", UPSTREAM)
    write_tree(tmp_path / "port", PORT)
    return TreeIndex(tmp_path / "up"), TreeIndex(tmp_path / "port")


def test_matching_and_leaving_out(tmp_path):
    up, port = trees(tmp_path)
    sc = scaffold_from_port(up, "up", port, "vendor.fla")
    got = {m.port: (m.upstream, m.how.split(" ")[0]) for m in sc.matches}
    assert got["vendor.fla.ops.chunk_fwd"] == ("up.ops.chunk.chunk_fwd", "name")     # not the decoy
    assert got["vendor.fla.index.prepare"] == ("up.utils.prepare", "name")
    assert got["vendor.fla.ops._scaled_dot"] == ("up.ops.intra.intra_fwd", "call")  # renamed, split helper
    assert sc.modules["up.ops.chunk"] == "vendor.fla.ops" and sc.modules["up.utils"] == "vendor.fla.index"
    left = dict(sc.left_out)
    assert "up.ops.chunk.chunk_bwd" in left and "not reached by the port" in left["up.ops.chunk.chunk_bwd"]
    assert [p for p, _ in sc.unplaced] == ["vendor.fla.ops._intra_entry"]
    assert "vendor.fla.ops.vendor_only" not in {p for p, _ in sc.unplaced}   # not reached from __all__


def test_the_written_manifest_checks(tmp_path):
    trees(tmp_path)
    out = tmp_path / "m.yaml"
    r = CliRunner().invoke(app, ["scaffold", "--port-path", str(tmp_path / "port"), "--port-package", "vendor.fla",
                                 "--package", "up", "--upstream-path", str(tmp_path / "up"), "--name", "vendored",
                                 "-o", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "fidelity: copy" in text and "# Left out" in text and "up.ops.chunk.chunk_bwd" in text
    assert "{symbol: up.ops.intra.intra_fwd, port: vendor.fla.ops._scaled_dot}" in text
    m = load_manifest(out)
    assert m.port.fidelity == "copy" and m.citations.style == "sidecar"
    args = ["-m", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert CliRunner().invoke(app, ["fix-citations", *args, "--write"]).exit_code == 0
    import json
    data = json.loads(CliRunner().invoke(app, ["check", *args, "-f", "json"]).output)["manifests"][0]
    found = sorted((f["code"], f["symbol"]) for f in data["findings"] if f["status"] == "open")
    # what the copy really changed: backward is gone, chunk_fwd goes through the extra
    # _intra_entry hop, and the helper returns (t, s) for (s, t)
    assert found == [("PA104", "up.ops.chunk.ChunkFunction"), ("PA601", "up.ops.chunk.chunk_fwd"),
                     ("PA601", "up.ops.intra.intra_fwd")]
    diffs = {f["symbol"]: f["diff"] for f in data["findings"] if f["code"] == "PA601"}
    assert "-    return (s, t)" in diffs["up.ops.intra.intra_fwd"] and "+    return (t, s)" in diffs["up.ops.intra.intra_fwd"]
    assert "+    a, b = _intra_entry(q, k)" in diffs["up.ops.chunk.chunk_fwd"]
    assert "-    a, b = _scaled_dot(q, k)" in diffs["up.ops.chunk.chunk_fwd"]      # the declared name
