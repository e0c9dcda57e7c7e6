"""Load upstream pure-torch reference code by file path, never by importing the upstream package.

Upstream references (e.g. ``fla/ops/kda/naive.py``) are oracles for a port. Some live in modules
that import GPU-only packages at module level (``fla/ops/kda/gate.py`` imports triton); for those,
``load_function`` executes only the named top-level definition plus the module's imports that are
importable here, so the oracle runs on a CPU-only machine. The code executed is the upstream's own
text, read from the fetched tree at run time; nothing is copied into this repository.
``upstream_signature`` reads a definition's parameters from the source without executing it (the
argument adapters of :mod:`.adapters` bind calls made through the upstream's API with it).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Optional

from portaudit.errors import UsageError
from portaudit.static.unparse import unparse

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


class _Fp64Casts(ast.NodeTransformer):
    """``x.float()`` -> ``x.double()`` and ``torch.float`` -> ``torch.float64``."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.Attribute:
        self.generic_visit(node)
        if node.attr == "float":
            is_torch = isinstance(node.value, ast.Name) and node.value.id == "torch"
            node.attr = "float64" if is_torch else "double"
        return node


def load_function(
    root: Path,
    relpath: str,
    names: str | Iterable[str],
    skip_import_roots: Iterable[str] = (),
    extra_globals: Optional[dict[str, Any]] = None,
    fp64_casts: bool = False,
) -> Callable[..., Any] | dict[str, Callable[..., Any]]:
    """Execute only the named top-level definitions of an upstream file.

    Module-level imports are executed first, except those of ``triton``, the upstream package
    itself (``skip_import_roots``) and relative ones; an import that fails here is skipped too.
    Returns the function for one name, or a dict name -> function for several.

    ``fp64_casts`` compiles the definitions with their fp32 casts read as float64 (``.float()`` as
    ``.double()``, ``torch.float`` as ``torch.float64``): an fp64 oracle from references that cast
    their inputs to fp32 (fla's DPLR naive code calls ``.float()``, which no module-level proxy can
    redirect). The upstream text is transformed in memory only.
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
        if fp64_casts:
            node = ast.fix_missing_locations(_Fp64Casts().visit(node))
        exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    if isinstance(names, str):
        return namespace[names]
    return {n: namespace[n] for n in wanted}


class SourceDefault:
    """A default that is not a plain literal (``torch.float``): known only by its source text."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _default_value(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return SourceDefault(unparse(node))


def _module_file(root: Path, module: str) -> Optional[Path]:
    base = Path(root).joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def upstream_signature(root: Path, api_path: str, method: Optional[str] = None) -> inspect.Signature:
    """The signature of an upstream function (or of ``method`` of an upstream class), read from its
    source with ``ast``: parameter names, kinds and defaults (literals as values, anything else as
    :class:`SourceDefault`). ``self`` is left out of methods. Nothing is executed."""
    module, _, name = api_path.rpartition(".")
    path = _module_file(root, module)
    if path is None:
        raise UsageError(f"{api_path}: upstream module {module} is not in {root}")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    node = next((n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name), None)
    if node is None:
        raise UsageError(f"{api_path}: {path} defines no top-level {name}")
    if method is not None:
        if not isinstance(node, ast.ClassDef):
            raise UsageError(f"{api_path} is not a class (it has no {method} to adapt)")
        node = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == method), None)
        if node is None:
            raise UsageError(f"{api_path}: the class defines no {method} of its own")
    elif not isinstance(node, ast.FunctionDef):
        raise UsageError(f"{api_path} is a class: adapt its init and forward")
    args = node.args
    P = inspect.Parameter
    params = []
    positional = [(a, P.POSITIONAL_ONLY) for a in args.posonlyargs] + [(a, P.POSITIONAL_OR_KEYWORD) for a in args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for (arg, kind), default in zip(positional, defaults):
        params.append(P(arg.arg, kind, default=P.empty if default is None else _default_value(default)))
    if args.vararg:
        params.append(P(args.vararg.arg, P.VAR_POSITIONAL))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        params.append(P(arg.arg, P.KEYWORD_ONLY, default=P.empty if default is None else _default_value(default)))
    if args.kwarg:
        params.append(P(args.kwarg.arg, P.VAR_KEYWORD))
    if method is not None and params:
        params = params[1:]
    return inspect.Signature(params)
