"""Load upstream pure-torch reference code by file path, never by importing the upstream package.

Upstream references (e.g. ``fla/ops/kda/naive.py``) are oracles for a port. Some live in modules
that import GPU-only packages at module level (``fla/ops/kda/gate.py`` imports triton); for those,
``load_function`` executes only the named top-level definition plus the module's imports that are
importable here, so the oracle runs on a CPU-only machine. The code executed is the upstream's own
text, read from the fetched tree at run time; nothing is copied into this repository.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Optional

from portaudit.errors import UsageError

# Imports that cannot work without a GPU toolchain or would import the upstream package itself.
_SKIPPED_IMPORT_ROOTS = {"triton"}


def load_module(root: Path, relpath: str, name: Optional[str] = None) -> ModuleType:
    """Execute a whole upstream file as an anonymous module (it must not import GPU-only code)."""
    path = Path(root) / relpath
    if not path.is_file():
        raise UsageError(f"upstream reference file {path} does not exist")
    mod_name = name or "_upstream_ref_" + relpath.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot load {path} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def _import_ok(node: ast.stmt, skip_roots: set[str]) -> bool:
    if isinstance(node, ast.Import):
        return all(a.name.split(".")[0] not in skip_roots for a in node.names)
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative imports reach into the upstream package
            return False
        return (node.module or "").split(".")[0] not in skip_roots
    return False


def load_function(
    root: Path,
    relpath: str,
    names: str | Iterable[str],
    skip_import_roots: Iterable[str] = (),
    extra_globals: Optional[dict[str, Any]] = None,
) -> Callable[..., Any] | dict[str, Callable[..., Any]]:
    """Execute only the named top-level definitions of an upstream file.

    Module-level imports are executed first, except those of ``triton``, the upstream package
    itself (``skip_import_roots``) and relative ones; an import that fails here is skipped too.
    Returns the function for one name, or a dict name -> function for several.
    """
    path = Path(root) / relpath
    if not path.is_file():
        raise UsageError(f"upstream reference file {path} does not exist")
    text = path.read_text()
    tree = ast.parse(text, filename=str(path))
    wanted = [names] if isinstance(names, str) else list(names)
    skip = _SKIPPED_IMPORT_ROOTS | set(skip_import_roots)
    namespace: dict[str, Any] = {"__name__": "_upstream_ref", "__file__": str(path)}
    if extra_globals:
        namespace.update(extra_globals)
    defs: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and _import_ok(node, skip):
            try:
                exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
            except ImportError:
                pass
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in wanted:
            defs[node.name] = node
    missing = [n for n in wanted if n not in defs]
    if missing:
        raise UsageError(f"{path} defines no top-level {', '.join(missing)}")
    for n in wanted:
        node = defs[n]
        # Upstream decorators (e.g. @torch.compile, @triton.jit) are not part of the math.
        node.decorator_list = []
        exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    if isinstance(names, str):
        return namespace[names]
    return {n: namespace[n] for n in wanted}
