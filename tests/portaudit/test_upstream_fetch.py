"""The fetch path with locally built wheels (no network), and the committed fla manifests."""

from __future__ import annotations

import json
import zipfile

import pytest
from typer.testing import CliRunner

from portaudit.cli import app
from portaudit.errors import UpstreamError, UsageError
from portaudit.static.manifest import load_manifest
from portaudit.static.upstream import fetch_distributions, resolve_upstream

from tests.portaudit.conftest import manifest_text, write_tree


def build_wheel(wheel_dir, dist: str, version: str, files: dict[str, str]):
    wheel_dir.mkdir(parents=True, exist_ok=True)
    path = wheel_dir / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        zf.writestr(f"{dist.replace('-', '_')}-{version}.dist-info/METADATA",
                    f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    return path


def test_fetch_from_local_wheels_unpacks_once(tmp_path):
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "up-core", "1.0", {"up/__init__.py": "", "up/a.py": "def f(x):\n    return x\n"})
    build_wheel(wheels, "up-extra", "1.0", {"up/b.py": "def g(y):\n    return y\n"})
    events = []
    root = fetch_distributions(["up-core==1.0", "up-extra==1.0"], cache_dir=tmp_path / "cache",
                               progress=events.append, wheel_dir=wheels)
    assert (root / "up/a.py").is_file() and (root / "up/b.py").is_file()
    assert any("fetching up-core==1.0" in e for e in events)
    again = fetch_distributions(["up-extra==1.0", "up-core==1.0"], cache_dir=tmp_path / "cache",
                                progress=events.clear, wheel_dir=wheels)
    assert again == root   # cached: same tree, order-insensitive key, nothing fetched


def test_concurrent_fetches_keep_the_first_complete_tree(tmp_path):
    """Two processes finishing the same fetch: the loser's tree is discarded, the winner's stays."""
    from portaudit.static.upstream import _DONE_MARKER, _publish

    root = tmp_path / "trees" / "key"
    first, second = tmp_path / "first", tmp_path / "second"
    for d, tag in ((first, "1"), (second, "2")):
        d.mkdir()
        (d / "tag").write_text(tag)
        (d / _DONE_MARKER).write_text("")
    root.parent.mkdir()
    _publish(first, root)
    _publish(second, root)
    assert (root / "tag").read_text() == "1" and not second.exists()
    # an incomplete leftover of a killed run is replaced
    leftover = tmp_path / "trees" / "other"
    leftover.mkdir()
    third = tmp_path / "third"
    third.mkdir()
    (third / _DONE_MARKER).write_text("")
    _publish(third, leftover)
    assert (leftover / _DONE_MARKER).is_file()


def test_corrupt_wheel_and_missing_version(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "up_core-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(UpstreamError, match="corrupt"):
        fetch_distributions(["up-core==1.0"], cache_dir=tmp_path / "c", wheel_dir=wheels)
    with pytest.raises(UpstreamError, match="no wheel for 'up-core==2.0'"):
        fetch_distributions(["up-core==2.0"], cache_dir=tmp_path / "c", wheel_dir=wheels)
    with pytest.raises(UsageError, match="not pinned"):   # a bad specifier is bad input (exit 2)
        fetch_distributions(["up-core>=1"], cache_dir=tmp_path / "c", wheel_dir=wheels)
    with pytest.raises(UpstreamError, match="does not contain the package 'up'"):
        resolve_upstream(upstream_path=tmp_path, package="up")


def test_check_against_fetched_wheel_tree(tmp_path):
    """End to end: the tree the wheel fetch produced is audited through the CLI."""
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "up-dist", "1.0", {"up/__init__.py": "", "up/a.py": "def f(x, n=2):\n    return x * n\n"})
    root = fetch_distributions(["up-dist==1.0"], cache_dir=tmp_path / "cache", wheel_dir=wheels)
    write_tree(tmp_path / "port", {"po/__init__.py": "", "po/a.py":
                                   'def f(x, n=2):\n    """Source: up/a.py:L1-L2 (up 1.0)"""\n    return x * n\n'})
    (tmp_path / "m.yaml").write_text(manifest_text(["up.a.f"]))
    r = CliRunner().invoke(app, ["check", "-m", str(tmp_path / "m.yaml"), "--cache-dir", str(tmp_path / "cache"),
                                 "--port-path", str(tmp_path / "port"), "-f", "json", "--no-progress"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["manifests"][0]["upstream"]["root"] == str(root)
    assert doc["manifests"][0]["summary"]["percent"] == 100.0


def test_committed_manifests_cover_the_closure(fla040_root):
    """manifests/*.yaml list exactly the static closure of the layers + Cache (UPSTREAM.md §1)."""
    from portaudit.static.index.tree import TreeIndex
    from portaudit.static.scaffold import closure

    from portaudit.static.upstream import default_cache_dir

    index = TreeIndex(fla040_root, default_cache_dir())
    for path, layer, n_layer in (("manifests/kda.yaml", "fla.layers.kda.KimiDeltaAttention", 126),
                                 ("manifests/gated_deltanet.yaml", "fla.layers.gated_deltanet.GatedDeltaNet", 117)):
        m = load_manifest(path)
        listed = {e.symbol for e in m.entries}
        assert len(listed) == len(m.entries)
        assert len(closure(index, [layer], "fla")) == n_layer
        assert listed == {c.symbol for c in closure(index, [layer, "fla.models.utils.Cache"], "fla")}
        kernels = {e.symbol for e in m.entries if e.kind == "kernel"}
        assert kernels == {s for s in listed if index.resolve(s).definition.kind == "kernel"}


def test_rwkv7_manifest_covers_the_closure_of_its_entry_points(fla040_root):
    """manifests/rwkv7.yaml lists the whole static closure of its entry points (the layer, the Cache and
    the RWKV-7 models) plus the public DPLR / RWKV-7 op API its header names; kernels are marked."""
    from portaudit.static.index.tree import TreeIndex
    from portaudit.static.scaffold import closure
    from portaudit.static.upstream import default_cache_dir

    index = TreeIndex(fla040_root, default_cache_dir())
    m = load_manifest("manifests/rwkv7.yaml")
    listed = {e.symbol for e in m.entries}
    assert len(listed) == len(m.entries) == 235
    reached = {c.symbol for c in closure(index, list(m.entry_points), "fla")}
    assert len(reached) == 223 and reached <= listed
    assert {"fla.models.rwkv7.modeling_rwkv7.RWKV7ForCausalLM", "fla.layers.rwkv7.RWKV7Attention"} <= reached
    kernels = {e.symbol for e in m.entries if e.kind == "kernel"}
    assert kernels == {s for s in listed if index.resolve(s).definition.kind == "kernel"}
