"""Serve ``import fla`` and ``import causal_conv1d`` from myfla, on request (port-only; fla has no
such module).

Code written against fla (transformers' Qwen3-Next and Kimi Linear, fla's own tests, user code)
imports ``fla.*``. myfla keeps fla's module tree, so ``fla.X.Y`` can be answered with ``myfla.X.Y``
itself: the same module object under both names (``sys.modules['fla.ops.kda'] is myfla.ops.kda``),
so classes, functions and their ``__module__`` stay myfla's and pickles made under the alias load
without it. The same clients call the compiled ``causal-conv1d`` package for their short
convolutions (transformers binds ``causal_conv1d_fn`` / ``causal_conv1d_update`` to it, and only the
package keeps packed sequences apart, through ``seq_idx``); ``import causal_conv1d`` can be answered
with ``myfla._causal_conv1d``, the package's API on myfla's torch re-expression.

Each name is served on its own request, by one meta-path finder per name:

- in code: ``myfla.install_as_fla()`` / ``myfla.install_as_causal_conv1d()`` before anything imports
  the package (transformers binds its fla ops and its conv when a modeling module is imported:
  install first, then import the modeling module);
- in the environment, without touching the client's code: put the shim directories
  (``python -m myfla.alias --shim-dir [fla] [causal_conv1d]``) on ``PYTHONPATH``; each holds one
  package that hands the import to the finder. ``MYFLA_AS_FLA`` / ``MYFLA_AS_CAUSAL_CONV1D`` tune
  them: ``auto`` (default), ``force`` or ``off``.

Neither shadows a real package that can run unless forced: a real fla runs where it imports, Triton
is installed and a GPU is present; a real causal_conv1d where its CUDA extension
(``causal_conv1d_cuda``) imports and a GPU is present. ``active_fla()``, ``active_causal_conv1d()``
and ``python -m myfla.alias`` say which one each import gives.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import warnings
from types import ModuleType
from typing import Callable, List, Optional

logger = logging.getLogger("myfla")

ALIAS = "fla"
TARGET = "myfla"
ENV_VAR = "MYFLA_AS_FLA"
SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_fla_shim")
CAUSAL_CONV1D = "causal_conv1d"
CAUSAL_CONV1D_TARGET = "myfla._causal_conv1d"
CAUSAL_CONV1D_ENV_VAR = "MYFLA_AS_CAUSAL_CONV1D"
CAUSAL_CONV1D_SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_causal_conv1d_shim")
_MODES = ("auto", "force", "off")


class ServedPackage:
    """A top-level package name myfla can answer: ``alias`` (and ``alias.*``) from ``target``."""

    def __init__(self, alias: str, target: str, env_var: str, shim_dir: str, installer: str,
                 what: str, can_run: Callable[[], bool]):
        self.alias = alias
        self.target = target
        self.env_var = env_var
        self.shim_dir = shim_dir
        self.installer = installer            # the myfla function that installs the finder
        self.what = what                      # what a transformers module binds to it, for warnings
        self.can_run = can_run                # whether a real package of that name could run here

    def target_name(self, fullname: str) -> str:
        return self.target + fullname[len(self.alias):]

    def is_alias_name(self, fullname: str) -> bool:
        return fullname == self.alias or fullname.startswith(self.alias + ".")

    def shim_hint(self) -> str:
        return "python -m myfla.alias --shim-dir" + ("" if self.alias == ALIAS else f" {self.alias}")

    def version(self) -> str:
        return getattr(sys.modules.get(TARGET), "__version__", "?")


def _in_dir(directory: str, path: Optional[str]) -> bool:
    if not path:
        return False
    shim = os.path.normcase(os.path.realpath(directory))
    here = os.path.normcase(os.path.realpath(path))
    return here == shim or here.startswith(shim + os.sep)


def _in_shim(path: Optional[str]) -> bool:
    return _in_dir(SHIM_DIR, path)


def _find_real(package: ServedPackage) -> Optional[importlib.machinery.ModuleSpec]:
    """The spec of a ``package.alias`` other than myfla's that its import would load without the
    alias (a directory of that name without ``__init__.py``, a namespace package, is not an install)."""
    for finder in sys.meta_path:
        if isinstance(finder, PackageAliasFinder) or not hasattr(finder, "find_spec"):
            continue
        try:
            if finder is importlib.machinery.PathFinder:
                spec = finder.find_spec(package.alias, [p for p in sys.path if not _in_dir(package.shim_dir, p)])
            else:
                spec = finder.find_spec(package.alias, None)
        except (ImportError, ValueError):        # a finder that refuses the name is not an install
            continue
        if spec is None or spec.loader is None or spec.origin in (None, "namespace"):
            continue
        if not _in_dir(package.shim_dir, spec.origin):
            return spec
    return None


def find_real_fla() -> Optional[importlib.machinery.ModuleSpec]:
    """The spec of an fla other than myfla that ``import fla`` would load without the alias (a
    directory named ``fla`` without ``__init__.py``, a namespace package, is not an fla install)."""
    return _find_real(FLA)


def find_real_causal_conv1d() -> Optional[importlib.machinery.ModuleSpec]:
    """The spec of a causal_conv1d other than myfla's that ``import causal_conv1d`` would load."""
    return _find_real(CAUSAL_CONV1D_PACKAGE)


def real_fla_can_run() -> bool:
    """Whether a real fla could run here: Triton is installed and torch sees a GPU Triton drives."""
    if importlib.util.find_spec("triton") is None:
        return False
    import torch
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def real_causal_conv1d_can_run() -> bool:
    """Whether a real causal_conv1d could run here: torch sees a CUDA (or ROCm) GPU and the package's
    compiled extension ``causal_conv1d_cuda`` imports (a wheel built for another torch fails here)."""
    import torch
    if not torch.cuda.is_available():
        return False
    try:
        importlib.import_module("causal_conv1d_cuda")
    except (ImportError, OSError):
        return False
    return True


FLA = ServedPackage(ALIAS, TARGET, ENV_VAR, SHIM_DIR, "install_as_fla", "fla ops",
                    lambda: real_fla_can_run())
CAUSAL_CONV1D_PACKAGE = ServedPackage(CAUSAL_CONV1D, CAUSAL_CONV1D_TARGET, CAUSAL_CONV1D_ENV_VAR,
                                      CAUSAL_CONV1D_SHIM_DIR, "install_as_causal_conv1d",
                                      "causal_conv1d functions", lambda: real_causal_conv1d_can_run())
_PACKAGES = {p.alias: p for p in (FLA, CAUSAL_CONV1D_PACKAGE)}


class _AliasLoader(importlib.abc.Loader):
    """Hands the already imported ``myfla.X`` module to the import system under the alias name."""

    def __init__(self, module: ModuleType):
        self.module = module
        self.own_spec = getattr(module, "__spec__", None)

    def create_module(self, spec):
        return self.module

    def exec_module(self, module):
        # the import system overwrote __spec__ with the alias's spec: give the module its own back,
        # so reload(), relative imports and -m keep seeing myfla.X
        module.__spec__ = self.own_spec


class PackageAliasFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that serves ``package.alias`` and its submodules from ``package.target``.

    Submodules resolve lazily: ``import fla.ops.kda`` imports ``myfla.ops.kda`` (under its own name,
    once) when it is first asked for. Whether the top-level name is myfla's is decided on its first
    import: myfla's unless a real package is importable and can run (``force`` overrides).
    """

    def __init__(self, package: ServedPackage, force: bool = False):
        self.package = package
        self.force = force
        self.serving: Optional[bool] = None       # decided on the first import of the name

    def decide(self) -> bool:
        """Serve myfla? Decided once per finder."""
        if self.serving is None:
            self.serving = _would_serve(self.package, self.force)
        return self.serving

    def find_spec(self, fullname, path=None, target=None):
        package = self.package
        if not package.is_alias_name(fullname):
            return None
        if fullname == package.alias:
            if not self.decide():
                return None
        else:
            parent = sys.modules.get(package.alias)
            if parent is None or parent is not sys.modules.get(package.target):
                return None                       # a real package: its submodules are its own
        target_name = package.target_name(fullname)
        try:
            module = importlib.import_module(target_name)
        except ModuleNotFoundError as error:
            missing = error.name or ""
            if missing == target_name or target_name.startswith(missing + "."):
                raise ModuleNotFoundError(
                    f"No module named {fullname!r}: `{package.alias}` is served by myfla "
                    f"(myfla.{package.installer} or the PYTHONPATH shim), and myfla has no {target_name!r}",
                    name=fullname) from None
            raise
        return importlib.util.spec_from_loader(
            fullname, _AliasLoader(module), origin=getattr(module, "__file__", None),
            is_package=hasattr(module, "__path__"))


class FlaAliasFinder(PackageAliasFinder):
    """Meta-path finder that serves ``fla`` and ``fla.*`` from ``myfla`` and ``myfla.*``."""

    def __init__(self, force: bool = False):
        super().__init__(FLA, force)


class CausalConv1dAliasFinder(PackageAliasFinder):
    """Meta-path finder that serves ``causal_conv1d`` and ``causal_conv1d.*`` from ``myfla._causal_conv1d``."""

    def __init__(self, force: bool = False):
        super().__init__(CAUSAL_CONV1D_PACKAGE, force)


_FINDER_CLASSES = {ALIAS: FlaAliasFinder, CAUSAL_CONV1D: CausalConv1dAliasFinder}


def _would_serve(package: ServedPackage, force: bool) -> bool:
    """myfla serves the name unless a real package is installed and can run here (or ``force``)."""
    return force or _find_real(package) is None or not package.can_run()


def _finder(package: ServedPackage = FLA) -> Optional[PackageAliasFinder]:
    for finder in sys.meta_path:
        if isinstance(finder, PackageAliasFinder) and finder.package is package:
            return finder
    return None


def _clients_bound_to_fallback(package: ServedPackage = FLA) -> List[str]:
    """transformers modeling modules already imported whose functions backed by ``package`` fell
    back to torch.

    transformers' ``use_kernel_func_from_hub_with_fallback(name, "fla")`` (or ``"causal_conv1d"``)
    tries the import once, when the modeling module is imported, and keeps the answer in the
    wrapper's closure (``package``, ``is_new_implementation``). Best effort: another transformers
    layout finds nothing.
    """
    bound = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("transformers.models.") or ".modeling_" not in name or module is None:
            continue
        for attr in list(vars(module).values()):
            try:
                code, cells = getattr(attr, "__code__", None), getattr(attr, "__closure__", None)
                if code is None or not cells:
                    continue
                free = dict(zip(code.co_freevars, (c.cell_contents for c in cells)))
            except Exception:                     # an empty cell, or an object with odd attributes
                continue
            if free.get("package") == package.alias and free.get("is_new_implementation") is False:
                bound.append(name)
                break
    return sorted(bound)


def _install(package: ServedPackage, force: bool) -> str:
    alias = package.alias
    current = sys.modules.get(alias)
    if current is not None and current is not sys.modules.get(package.target):
        if not force and package.can_run():
            logger.info("%s: the real %s (%s) is already imported and can run; myfla not installed",
                        alias, alias, getattr(current, "__file__", "?"))
            return alias
        raise RuntimeError(
            f"a real {alias} is already imported from {getattr(current, '__file__', '?')}; call "
            f"myfla.{package.installer}() before anything imports {alias}, or use the PYTHONPATH shim "
            f"({package.shim_hint()})")
    finder = _finder(package)
    if finder is None or (force and not finder.force):
        if finder is not None:
            sys.meta_path.remove(finder)
        finder = _FINDER_CLASSES[alias](force=force)
        sys.meta_path.insert(0, finder)
    if current is not None:
        finder.serving = True
    active = "myfla" if finder.decide() else alias
    late = _clients_bound_to_fallback(package)
    if active == "myfla" and late:
        warnings.warn(
            f"{', '.join(late)} imported before myfla.{package.installer}(): their {package.what} stay "
            f"bound to transformers' torch fallback. Call {package.installer}() before importing them (or "
            f"set PYTHONPATH to the shim: {package.shim_hint()}).", RuntimeWarning, stacklevel=3)
    if active == "myfla":
        logger.info("%s: served by myfla %s (%s)", alias, package.version(),
                    os.path.dirname(os.path.abspath(__file__)))
    else:
        logger.info("%s: a real %s that can run is installed (%s); myfla does not shadow it "
                    "(%s(force=True) would)", alias, alias, _find_real(package).origin, package.installer)
    return active


def install_as_fla(force: bool = False) -> str:
    """Make ``import fla`` give myfla in this process; returns ``"myfla"`` or ``"fla"`` (a real fla
    that can run, left in place unless ``force``).

    Call it before anything imports fla or a transformers modeling module that uses fla: transformers
    picks fla or its torch fallback when the modeling module is imported, and a module imported
    earlier keeps the fallback (a warning names it). Raises ``RuntimeError`` when a real fla is
    already imported and would have to be replaced.
    """
    return _install(FLA, force)


def install_as_causal_conv1d(force: bool = False) -> str:
    """Make ``import causal_conv1d`` give myfla's re-expression of the causal-conv1d package
    (``causal_conv1d_fn`` with ``seq_idx`` for packed sequences, ``causal_conv1d_update``) in this
    process; returns ``"myfla"`` or ``"causal_conv1d"`` (a real package that can run, left in place
    unless ``force``).

    The same rules as :func:`install_as_fla`: call it before transformers' modeling modules are
    imported (they bind their conv then; a module imported earlier keeps the fallback and a warning
    names it); raises ``RuntimeError`` when a real causal_conv1d is already imported.
    """
    return _install(CAUSAL_CONV1D_PACKAGE, force)


def _uninstall(package: ServedPackage) -> None:
    finder = _finder(package)
    while finder is not None:
        sys.meta_path.remove(finder)
        finder = _finder(package)
    for name in [n for n in sys.modules if package.is_alias_name(n)]:
        module = sys.modules[name]
        if module is not None and getattr(module, "__name__", "").split(".")[0] == TARGET:
            del sys.modules[name]


def uninstall_as_fla() -> None:
    """Remove the finder and forget the ``fla`` names that point at myfla modules."""
    _uninstall(FLA)


def uninstall_as_causal_conv1d() -> None:
    """Remove the finder and forget the ``causal_conv1d`` names that point at myfla modules."""
    _uninstall(CAUSAL_CONV1D_PACKAGE)


def _active(package: ServedPackage) -> Optional[str]:
    alias = package.alias
    current = sys.modules.get(alias)
    if current is not None:
        return "myfla" if current is sys.modules.get(package.target) else alias
    finder = _finder(package)
    if finder is not None:
        return "myfla" if finder.decide() else alias
    if any(_in_dir(package.shim_dir, p) for p in sys.path):
        mode = _shim_mode(package)
        if mode != "off":
            return "myfla" if _would_serve(package, mode == "force") else alias
    return alias if _find_real(package) is not None else None


def active_fla() -> Optional[str]:
    """What ``import fla`` gives in this process: ``"myfla"``, ``"fla"`` (a real fla) or ``None``
    (no fla importable). Decides, without importing fla, when fla has not been imported yet."""
    return _active(FLA)


def active_causal_conv1d() -> Optional[str]:
    """What ``import causal_conv1d`` gives in this process: ``"myfla"``, ``"causal_conv1d"`` (the real
    package) or ``None`` (not importable). Imports neither when it has not been imported yet."""
    return _active(CAUSAL_CONV1D_PACKAGE)


def _myfla_version() -> str:
    return FLA.version()


def _shim_mode(package: ServedPackage) -> str:
    raw = os.environ.get(package.env_var, "auto")
    mode = raw.strip().lower() or "auto"
    aliases = {"1": "auto", "true": "auto", "yes": "auto", "on": "auto", "0": "off", "false": "off", "no": "off"}
    mode = aliases.get(mode, mode)
    if mode not in _MODES:
        raise ImportError(f"{package.env_var}={raw!r}: expected one of auto, force, off")
    return mode


def shim_mode() -> str:
    """``MYFLA_AS_FLA`` for the shim: ``auto`` (default), ``force`` or ``off``."""
    return _shim_mode(FLA)


def _activate_from_shim(package: ServedPackage, shim_module_name: str) -> None:
    alias = package.alias
    if shim_module_name != alias:
        raise ImportError(f"{shim_module_name} is the `{alias}` shim of myfla.alias: put its directory "
                          f"({package.shim_dir}) on PYTHONPATH instead of importing it")
    mode = _shim_mode(package)
    serve = False
    if mode != "off":
        finder = _finder(package)
        if finder is None:
            finder = _FINDER_CLASSES[alias](force=mode == "force")
            sys.meta_path.insert(0, finder)
        serve = finder.decide()
    if serve:
        sys.modules[alias] = importlib.import_module(package.target)
        logger.info("%s: served by myfla %s through the PYTHONPATH shim", alias, package.version())
        return
    real = _find_real(package)
    if real is None:
        del sys.modules[alias]
        raise ModuleNotFoundError(f"No module named {alias!r} ({package.env_var}=off and no other "
                                  f"{alias} installed)", name=alias)
    module = importlib.util.module_from_spec(real)
    sys.modules[alias] = module
    try:
        real.loader.exec_module(module)
    except BaseException:
        del sys.modules[alias]
        raise


def activate_from_shim(shim_module_name: str) -> None:
    """Body of the shim's ``fla/__init__.py``: replace the shim in ``sys.modules['fla']`` with myfla
    or with the real fla, as ``MYFLA_AS_FLA`` and the machine decide."""
    _activate_from_shim(FLA, shim_module_name)


def activate_causal_conv1d_from_shim(shim_module_name: str) -> None:
    """Body of the shim's ``causal_conv1d/__init__.py``: replace the shim in
    ``sys.modules['causal_conv1d']`` with myfla's or with the real package, as
    ``MYFLA_AS_CAUSAL_CONV1D`` and the machine decide."""
    _activate_from_shim(CAUSAL_CONV1D_PACKAGE, shim_module_name)


def _describe(package: ServedPackage) -> str:
    alias = package.alias
    real = _find_real(package)
    active = _active(package)
    if active == "myfla":
        # the target's directory, without importing it: myfla/ or myfla/_causal_conv1d/
        where = os.path.join(os.path.dirname(os.path.abspath(__file__)), *package.target.split(".")[1:])
        why = "" if real is None else (
            f"; a real {alias} at {real.origin} is shadowed "
            f"({'forced' if package.can_run() else 'it cannot run here'})")
        return f"{alias} -> myfla {package.version()} ({where}){why}"
    if active == alias:
        return f"{alias} -> the real {alias} ({real.origin if real else sys.modules[alias].__file__})"
    return (f"{alias} -> not importable (myfla.{package.installer}() or the PYTHONPATH shim would "
            f"serve myfla)")


def describe() -> str:
    """One line: what ``import fla`` gives in this process and why."""
    return _describe(FLA)


def describe_causal_conv1d() -> str:
    """One line: what ``import causal_conv1d`` gives in this process and why."""
    return _describe(CAUSAL_CONV1D_PACKAGE)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m myfla.alias [--shim-dir [NAME ...]]``: say what ``import fla`` and ``import
    causal_conv1d`` give here, or print the shim directories to put on PYTHONPATH."""
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m myfla.alias",
        description="Say what `import fla` and `import causal_conv1d` give in this environment (myfla, the "
                    "real package, or nothing), or print the shim directories to put on PYTHONPATH so that "
                    "those imports serve myfla.")
    parser.add_argument("--shim-dir", nargs="*", metavar="NAME", choices=sorted(_PACKAGES), default=None,
                        help="print the directory (several: joined with the path separator) to put on "
                             "PYTHONPATH so that `import NAME` serves myfla; NAME is fla (the default) "
                             "or causal_conv1d")
    args = parser.parse_args(argv)
    if args.shim_dir is not None:
        names = args.shim_dir or [ALIAS]
        print(os.pathsep.join(_PACKAGES[name].shim_dir for name in dict.fromkeys(names)))
        return 0
    importlib.import_module(TARGET)
    print(describe())
    print(describe_causal_conv1d())
    return 0


if __name__ == "__main__":
    sys.exit(main())
