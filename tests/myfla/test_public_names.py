"""Whole-module completeness: every public top-level name of every fla 0.4.0 file that myfla mirrors
is defined in the mirrored myfla file (code written against fla imports other names from the same
modules than the layers do), and every package ``__init__`` re-exports fla's names from the
modules it has.

Upstream files are parsed, never imported. A ``@triton.jit``/``@triton.autotune`` kernel counts as
present when a ``Source:`` citation in the port covers its lines (its math lives in the torch
function that replaces its wrapper). ``EXCLUDED`` lists the only names left out, each with the
reason; an exclusion that no longer matches a missing name fails too, so the list cannot rot.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

PORT = Path(__file__).resolve().parents[2] / "myfla"
CITATION = re.compile(r"Source: (fla/[\w/]+\.py):L(\d+)-L(\d+) \(fla 0\.4\.0\)")

# (upstream file relative to fla/, name) -> why the port does not define it
EXCLUDED: Dict[Tuple[str, str], str] = {
    ("utils.py", "alloc_fn"): (
        "defined by fla only when TMA is supported, to give Triton an allocator for TMA descriptors; "
        "the port runs no Triton kernels and is_tma_supported is False, so fla would not define it either"),
}
# RWKV-6 is not part of this port: RWKV-7 reuses LoRA (and LerpLinear/DDLerpLinear come along) from
# fla/layers/rwkv6.py and only the gate cumsum from fla/ops/rwkv6/chunk.py; RWKV-6's attention layer
# and its chunked op (forward, backward, kernels) are a model family of their own.
_RWKV6 = ("RWKV-6's attention layer and chunked op are outside this port; RWKV-7 uses only LoRA and "
          "chunk_rwkv6_fwd_cumsum from these files (manifests/rwkv7.yaml)")
EXCLUDED.update({("layers/rwkv6.py", "RWKV6Attention"): _RWKV6})
EXCLUDED.update({("ops/rwkv6/chunk.py", name): _RWKV6 for name in (
    "BK_LIST", "BV_LIST", "ChunkRWKV6Function", "chunk_rwkv6", "chunk_rwkv6_bwd", "chunk_rwkv6_bwd_dh",
    "chunk_rwkv6_bwd_dqk_intra", "chunk_rwkv6_bwd_dqkgu", "chunk_rwkv6_bwd_kernel_dh",
    "chunk_rwkv6_bwd_kernel_inter", "chunk_rwkv6_bwd_kernel_intra", "chunk_rwkv6_fwd",
    "chunk_rwkv6_fwd_A_kernel_intra_sub_inter", "chunk_rwkv6_fwd_A_kernel_intra_sub_intra",
    "chunk_rwkv6_fwd_A_kernel_intra_sub_intra_merge", "chunk_rwkv6_fwd_A_kernel_intra_sub_intra_split",
    "chunk_rwkv6_fwd_intra")})
# package re-exports left out, (package, name) -> why
INIT_EXCLUDED: Dict[Tuple[str, str], str] = {
    ("layers", "RWKV6Attention"): _RWKV6,
    ("ops/rwkv6", "chunk_rwkv6"): _RWKV6,
}


def top_level_names(path: Path) -> Dict[str, Tuple[str, int, int]]:
    """Public names bound at module level (also inside if/try blocks): name -> (kind, first, last line)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: Dict[str, Tuple[str, int, int]] = {}

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kernel = any("triton" in ast.dump(d) for d in node.decorator_list)
                first = min([d.lineno for d in node.decorator_list] + [node.lineno])
                out.setdefault(node.name, ("kernel" if kernel else "def", first, node.end_lineno))
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for elt in (target.elts if isinstance(target, ast.Tuple) else [target]):
                        if isinstance(elt, ast.Name):
                            out.setdefault(elt.id, ("constant", node.lineno, node.end_lineno))
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                for handler in node.handlers:
                    visit(handler.body)
    visit(tree.body)
    return {name: info for name, info in out.items() if not name.startswith("_")}


def port_citations() -> List[Tuple[str, int, int]]:
    return [(m.group(1), int(m.group(2)), int(m.group(3)))
            for path in PORT.rglob("*.py") for m in CITATION.finditer(path.read_text())]


def mirrored_files(fla_root: Path) -> List[str]:
    upstream = fla_root / "fla"
    return sorted(str(p.relative_to(PORT)) for p in PORT.rglob("*.py")
                  if p.name != "__init__.py" and (upstream / p.relative_to(PORT)).is_file())


def missing_names(fla_root: Path) -> Dict[Tuple[str, str], str]:
    cits = port_citations()
    missing = {}
    for rel in mirrored_files(fla_root):
        upstream = top_level_names(fla_root / "fla" / rel)
        port = top_level_names(PORT / rel)
        for name, (kind, first, last) in upstream.items():
            if name in port:
                continue
            if kind == "kernel" and any(f == f"fla/{rel}" and a <= first and last <= b for f, a, b in cits):
                continue
            missing[(rel, name)] = kind
    return missing


def test_mirrored_files_define_every_public_name(fla040_root):
    missing = missing_names(fla040_root)
    unexplained = {key: kind for key, kind in missing.items() if key not in EXCLUDED}
    assert not unexplained, "public fla 0.4.0 names missing from their mirrored myfla file: " + ", ".join(
        f"{rel}::{name} ({kind})" for (rel, name), kind in sorted(unexplained.items()))
    stale = [key for key in EXCLUDED if key not in missing]
    assert not stale, f"exclusions that no longer match a missing name (remove them): {stale}"


def init_exports(path: Path) -> Tuple[Dict[str, List[str]], List[str]]:
    """(module imported from -> names) and ``__all__`` of a package ``__init__``."""
    tree = ast.parse(path.read_text())
    imports: Dict[str, List[str]] = {}
    exported: List[str] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            module = ("." * node.level) + (node.module or "")
            imports.setdefault(module, []).extend(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            exported = [e.value for e in node.value.elts]
    return imports, exported


def _module_file(package_dir: Path, module: str, package: str) -> Path:
    """The port file of an import in an fla ``__init__`` (relative, or absolute under ``fla.``)."""
    if module.startswith("."):
        return package_dir / (module.lstrip(".").replace(".", "/") + ".py")
    rel = module.split(".", 1)[1].replace(".", "/") if "." in module else ""
    return PORT / (rel + ".py")


@pytest.mark.parametrize("package", ["modules", "ops/utils", "ops/gla", "ops/kda", "ops/gated_delta_rule",
                                     "ops/common", "ops/generalized_delta_rule", "ops/generalized_delta_rule/dplr",
                                     "ops/rwkv6", "ops/rwkv7", "layers", "models"])
def test_package_inits_reexport_fla_names(fla040_root, package):
    """Each ``myfla/<package>/__init__.py`` exports every name fla's exports from a module the port has."""
    fla_init = fla040_root / "fla" / package / "__init__.py"
    port_dir = PORT / package
    port_imports, port_all = init_exports(port_dir / "__init__.py")
    port_names = set(port_all) | {n for names in port_imports.values() for n in names}
    fla_imports, _ = init_exports(fla_init)
    expected = []
    for module, names in fla_imports.items():
        if _module_file(port_dir, module, package).is_file():
            expected += names
    absent = [n for n in expected if n not in port_names and (package, n) not in INIT_EXCLUDED]
    assert not absent, f"myfla/{package}/__init__.py does not re-export {absent}"
    stale = [key for key in INIT_EXCLUDED if key[0] == package and key[1] in port_names]
    assert not stale, f"re-export exclusions that no longer apply (remove them): {stale}"
    expected = [n for n in expected if (package, n) not in INIT_EXCLUDED]
    not_all = [n for n in expected if port_all and n not in port_all]
    assert not not_all, f"myfla/{package}/__init__.py imports but does not list in __all__: {not_all}"
