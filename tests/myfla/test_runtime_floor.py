"""myfla's runtime floor: it must work as a folder copied into a project that has Python 3.8 and
torch >= 1.13 and nothing else (einops aside).

- The import graph, read with ``ast`` from the source files (imports inside functions and ``try``
  blocks included, ``if TYPE_CHECKING:`` left out): myfla imports only the standard library, torch,
  einops and itself; ``transformers`` and ``packaging`` only conditionally (under ``try: ... except
  ImportError``, an ``if`` or in a function: ``myfla.models`` subclasses transformers' Cache when it
  is there); never the auditing tool or its dependencies (portaudit, typer, rich, libcst, yaml).
- Every module of myfla imports in a fresh interpreter where those optional packages and the
  auditing tool cannot be imported.
- Python 3.8 syntax and standard library: vermin with a 3.8 target (installed by the test extra).

The torch-1.13 half of the floor runs in its own environment: tools/check_runtime_floor.sh.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "myfla"

REQUIRED = {"torch", "einops", "myfla"}
OPTIONAL = {"transformers", "packaging"}          # only conditionally
FORBIDDEN = {"portaudit", "typer", "rich", "libcst", "yaml"}


def needs_transformers(module: str) -> bool:
    """fla's HF model classes (fla.models.kda, fla.models.gated_deltanet, ...) import transformers, and
    so may myfla's mirrors of them, in the subpackages of myfla.models; myfla.models itself and
    myfla.models.utils (the Cache the layers use) must import without it, like everything else."""
    parts = module.split(".")
    return len(parts) >= 3 and parts[:2] == ["myfla", "models"] and parts[2] != "utils"
STDLIB: Set[str] = set(getattr(sys, "stdlib_module_names", ()))   # Python >= 3.10


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
            return True
    return False


def _imports(tree: ast.AST) -> Iterator[Tuple[str, int, bool]]:
    """(top-level module, line, guarded) for every import that can run; guarded: under a `try` that
    catches ImportError, an `if`, or inside a function (a lazy import)."""
    stack: List[Tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, guarded = stack.pop()
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno, guarded
            continue
        if isinstance(node, ast.ImportFrom):
            if not node.level:
                yield (node.module or "").split(".")[0], node.lineno, guarded
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend((child, guarded) for child in node.orelse)
            continue
        if isinstance(node, ast.Try) and _catches_import_error(node):
            stack.extend((child, True) for child in node.body)
            stack.extend((child, guarded) for part in (node.handlers, node.orelse, node.finalbody) for child in part)
            continue
        if isinstance(node, (ast.If, ast.FunctionDef, ast.AsyncFunctionDef)):
            # a conditional or lazy import runs only when its condition or caller needs it
            stack.extend((child, True) for child in ast.iter_child_nodes(node))
            continue
        stack.extend((child, guarded) for child in ast.iter_child_nodes(node))


def _sources() -> List[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.skipif(not STDLIB, reason="sys.stdlib_module_names needs Python >= 3.10")
def test_myfla_imports_only_torch_einops_and_the_standard_library():
    bad = []
    for path in _sources():
        rel = path.relative_to(ROOT)
        module = ".".join(rel.with_suffix("").parts[:-1] if rel.name == "__init__.py" else rel.with_suffix("").parts)
        for top, line, guarded in _imports(ast.parse(path.read_text(), filename=str(path))):
            if top == "transformers" and needs_transformers(module):
                continue
            if top in FORBIDDEN:
                bad.append(f"{rel}:{line}: imports {top} (the auditing tool's side; myfla must not need it)")
            elif top in OPTIONAL and not guarded:
                bad.append(f"{rel}:{line}: imports {top} unconditionally at module level "
                           "(optional for myfla: guard it with `try: ... except ImportError`)")
            elif top not in REQUIRED | OPTIONAL and top not in STDLIB | {"__future__"}:
                bad.append(f"{rel}:{line}: imports {top}, which is neither torch, einops nor the standard library")
    assert not bad, "\n".join(bad)


BLOCKER = """
import importlib.abc, importlib.util, pkgutil, sys
BLOCKED = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, Block())
import myfla
for info in pkgutil.walk_packages(myfla.__path__, "myfla.", onerror=lambda name: None):
    if info.name.startswith(("myfla._fla_shim.", "myfla._causal_conv1d_shim.")):
        continue   # the top-level `fla` of a PYTHONPATH shim, refuses to be imported as myfla._fla_shim.fla
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as exc:
        print(f"{info.name}\\t{(exc.name or '').split('.')[0]}\\t{exc}")
    except Exception as exc:
        print(f"{info.name}\\t\\t{type(exc).__name__}: {exc}")
for m in sorted({m.split(".")[0] for m in sys.modules} & BLOCKED):
    print(f"(imported anyway)\\t\\t{m}")
"""


def test_every_module_imports_without_optional_packages():
    blocked = ",".join(sorted(FORBIDDEN | OPTIONAL))
    proc = subprocess.run([sys.executable, "-c", BLOCKER, blocked], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = [line.split("\t", 2) for line in proc.stdout.splitlines() if line.strip()]
    bad = [f"{module}: {message}" for module, missing, message in failures
           if not (missing == "transformers" and needs_transformers(module))]
    assert not bad, "\n".join(bad)


def test_python38_syntax_and_standard_library():
    pytest.importorskip("vermin", reason="vermin comes with the test extra (pip install -e '.[test]')")
    run_vermin = "import sys; from vermin import main; sys.argv[0] = 'vermin'; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", run_vermin, "-t=3.8-", "--eval-annotations", "--violations",
                           "--no-tips", "--no-parse-comments", str(PACKAGE)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_staticmethod_and_classmethod_are_outermost():
    """On Python < 3.10 a staticmethod object is not callable: a decorator above ``@staticmethod`` that
    wraps it (fla's ``@input_guard`` over ``@staticmethod`` order) fails when the method is called."""
    bad = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [d.id if isinstance(d, ast.Name) else None for d in node.decorator_list]
                for kind in ("staticmethod", "classmethod"):
                    if kind in names and names.index(kind) != 0:
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: @{kind} below another decorator")
    assert not bad, "\n".join(bad)
