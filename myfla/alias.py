"""Serve ``import fla`` from myfla, on request (port-only; fla has no such module).

Code written against fla (transformers' Qwen3-Next and Kimi Linear, fla's own tests, user code)
imports ``fla.*``. myfla keeps fla's module tree, so ``fla.X.Y`` can be answered with ``myfla.X.Y``
itself: the same module object under both names (``sys.modules['fla.ops.kda'] is myfla.ops.kda``),
so classes, functions and their ``__module__`` stay myfla's and pickles made under the alias load
without it.

Two opt-in switches, both served by one meta-path finder (``FlaAliasFinder``):

- in code: ``myfla.install_as_fla()`` before anything imports fla (transformers binds its fla ops
  when a modeling module is imported: install first, then import the modeling module);
- in the environment, without touching the client's code: put the shim directory
  (``python -m myfla.alias --shim-dir``) on ``PYTHONPATH``; its ``fla`` package hands ``import fla``
  to the finder. ``MYFLA_AS_FLA`` tunes it: ``auto`` (default), ``force`` or ``off``.

Neither shadows a real fla that can run (fla imports, Triton is installed and a GPU is present)
unless forced: then ``import fla`` keeps loading the real one. ``active_fla()`` and
``python -m myfla.alias`` say which one ``import fla`` gives.
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
from typing import List, Optional

logger = logging.getLogger("myfla")

ALIAS = "fla"
TARGET = "myfla"
ENV_VAR = "MYFLA_AS_FLA"
SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_fla_shim")
_MODES = ("auto", "force", "off")


def _target_name(fullname: str) -> str:
    return TARGET + fullname[len(ALIAS):]


def _is_alias_name(fullname: str) -> bool:
    return fullname == ALIAS or fullname.startswith(ALIAS + ".")


def _in_shim(path: Optional[str]) -> bool:
    if not path:
        return False
    shim = os.path.normcase(os.path.realpath(SHIM_DIR))
    here = os.path.normcase(os.path.realpath(path))
    return here == shim or here.startswith(shim + os.sep)


def find_real_fla() -> Optional[importlib.machinery.ModuleSpec]:
    """The spec of an fla other than myfla that ``import fla`` would load without the alias (a
    directory named ``fla`` without ``__init__.py``, a namespace package, is not an fla install)."""
    for finder in sys.meta_path:
        if isinstance(finder, FlaAliasFinder) or not hasattr(finder, "find_spec"):
            continue
        try:
            if finder is importlib.machinery.PathFinder:
                spec = finder.find_spec(ALIAS, [p for p in sys.path if not _in_shim(p)])
            else:
                spec = finder.find_spec(ALIAS, None)
        except (ImportError, ValueError):        # a finder that refuses `fla` is not an install
            continue
        if spec is None or spec.loader is None or spec.origin in (None, "namespace"):
            continue
        if not _in_shim(spec.origin):
            return spec
    return None


def real_fla_can_run() -> bool:
    """Whether a real fla could run here: Triton is installed and torch sees a GPU Triton drives."""
    if importlib.util.find_spec("triton") is None:
        return False
    import torch
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


class _AliasLoader(importlib.abc.Loader):
    """Hands the already imported ``myfla.X`` module to the import system as ``fla.X``."""

    def __init__(self, module: ModuleType):
        self.module = module
        self.own_spec = getattr(module, "__spec__", None)

    def create_module(self, spec):
        return self.module

    def exec_module(self, module):
        # the import system overwrote __spec__ with the alias's spec: give the module its own back,
        # so reload(), relative imports and -m keep seeing myfla.X
        module.__spec__ = self.own_spec


class FlaAliasFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that serves ``fla`` and ``fla.*`` from ``myfla`` and ``myfla.*``.

    Submodules resolve lazily: ``import fla.ops.kda`` imports ``myfla.ops.kda`` (under its own name,
    once) when it is first asked for. Whether ``fla`` itself is myfla is decided on the first
    ``import fla``: myfla unless a real fla is importable and can run (``force`` overrides).
    """

    def __init__(self, force: bool = False):
        self.force = force
        self.serving: Optional[bool] = None       # decided on the first `import fla`

    def decide(self) -> bool:
        """Serve myfla? Decided once per finder."""
        if self.serving is None:
            self.serving = _would_serve(self.force)
        return self.serving

    def find_spec(self, fullname, path=None, target=None):
        if not _is_alias_name(fullname):
            return None
        if fullname == ALIAS:
            if not self.decide():
                return None
        else:
            parent = sys.modules.get(ALIAS)
            if parent is None or parent is not sys.modules.get(TARGET):
                return None                       # `fla` is a real fla: its submodules are its own
        target_name = _target_name(fullname)
        try:
            module = importlib.import_module(target_name)
        except ModuleNotFoundError as error:
            missing = error.name or ""
            if missing == target_name or target_name.startswith(missing + "."):
                raise ModuleNotFoundError(
                    f"No module named {fullname!r}: `fla` is served by myfla (myfla.install_as_fla or "
                    f"the PYTHONPATH shim), and myfla has no {target_name!r}", name=fullname) from None
            raise
        return importlib.util.spec_from_loader(
            fullname, _AliasLoader(module), origin=getattr(module, "__file__", None),
            is_package=hasattr(module, "__path__"))


def _would_serve(force: bool) -> bool:
    """myfla serves ``fla`` unless a real fla is installed and can run here (or ``force``)."""
    return force or find_real_fla() is None or not real_fla_can_run()


def _finder() -> Optional[FlaAliasFinder]:
    for finder in sys.meta_path:
        if isinstance(finder, FlaAliasFinder):
            return finder
    return None


def _clients_bound_to_fallback() -> List[str]:
    """transformers modeling modules already imported whose fla-backed functions fell back to torch.

    transformers' ``use_kernel_func_from_hub_with_fallback(name, "fla")`` tries ``import fla`` once,
    when the modeling module is imported, and keeps the answer in the wrapper's closure
    (``package``, ``is_new_implementation``). Best effort: another transformers layout finds nothing.
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
            if free.get("package") == ALIAS and free.get("is_new_implementation") is False:
                bound.append(name)
                break
    return sorted(bound)


def install_as_fla(force: bool = False) -> str:
    """Make ``import fla`` give myfla in this process; returns ``"myfla"`` or ``"fla"`` (a real fla
    that can run, left in place unless ``force``).

    Call it before anything imports fla or a transformers modeling module that uses fla: transformers
    picks fla or its torch fallback when the modeling module is imported, and a module imported
    earlier keeps the fallback (a warning names it). Raises ``RuntimeError`` when a real fla is
    already imported and would have to be replaced.
    """
    current = sys.modules.get(ALIAS)
    if current is not None and current is not sys.modules.get(TARGET):
        if not force and real_fla_can_run():
            logger.info("fla: the real fla (%s) is already imported and can run; myfla not installed",
                        getattr(current, "__file__", "?"))
            return "fla"
        raise RuntimeError(
            f"a real fla is already imported from {getattr(current, '__file__', '?')}; call "
            f"myfla.install_as_fla() before anything imports fla, or use the PYTHONPATH shim "
            f"(python -m myfla.alias --shim-dir)")
    finder = _finder()
    if finder is None or (force and not finder.force):
        if finder is not None:
            sys.meta_path.remove(finder)
        finder = FlaAliasFinder(force=force)
        sys.meta_path.insert(0, finder)
    if current is not None:
        finder.serving = True
    active = "myfla" if finder.decide() else "fla"
    late = _clients_bound_to_fallback()
    if active == "myfla" and late:
        warnings.warn(
            f"{', '.join(late)} imported before myfla.install_as_fla(): their fla ops stay bound to "
            f"transformers' torch fallback. Call install_as_fla() before importing them (or set "
            f"PYTHONPATH to the shim: python -m myfla.alias --shim-dir).", RuntimeWarning, stacklevel=2)
    if active == "myfla":
        logger.info("fla: served by myfla %s (%s)", _myfla_version(), os.path.dirname(os.path.abspath(__file__)))
    else:
        logger.info("fla: a real fla that can run is installed (%s); myfla does not shadow it "
                    "(install_as_fla(force=True) would)", find_real_fla().origin)
    return active


def uninstall_as_fla() -> None:
    """Remove the finder and forget the ``fla`` names that point at myfla modules."""
    finder = _finder()
    while finder is not None:
        sys.meta_path.remove(finder)
        finder = _finder()
    for name in [n for n in sys.modules if _is_alias_name(n)]:
        module = sys.modules[name]
        if module is not None and getattr(module, "__name__", "").split(".")[0] == TARGET:
            del sys.modules[name]


def active_fla() -> Optional[str]:
    """What ``import fla`` gives in this process: ``"myfla"``, ``"fla"`` (a real fla) or ``None``
    (no fla importable). Decides, without importing fla, when fla has not been imported yet."""
    current = sys.modules.get(ALIAS)
    if current is not None:
        return "myfla" if current is sys.modules.get(TARGET) else "fla"
    finder = _finder()
    if finder is not None:
        return "myfla" if finder.decide() else "fla"
    if any(_in_shim(p) for p in sys.path):
        mode = shim_mode()
        if mode != "off":
            return "myfla" if _would_serve(mode == "force") else "fla"
    return "fla" if find_real_fla() is not None else None


def _myfla_version() -> str:
    return getattr(sys.modules.get(TARGET), "__version__", "?")


def shim_mode() -> str:
    """``MYFLA_AS_FLA`` for the shim: ``auto`` (default), ``force`` or ``off``."""
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    aliases = {"1": "auto", "true": "auto", "yes": "auto", "on": "auto", "0": "off", "false": "off", "no": "off"}
    mode = aliases.get(mode, mode)
    if mode not in _MODES:
        raise ImportError(f"{ENV_VAR}={os.environ.get(ENV_VAR)!r}: expected one of auto, force, off")
    return mode


def activate_from_shim(shim_module_name: str) -> None:
    """Body of the shim's ``fla/__init__.py``: replace the shim in ``sys.modules['fla']`` with myfla
    or with the real fla, as ``MYFLA_AS_FLA`` and the machine decide."""
    if shim_module_name != ALIAS:
        raise ImportError(f"{shim_module_name} is the `fla` shim of myfla.alias: put its directory "
                          f"({SHIM_DIR}) on PYTHONPATH instead of importing it")
    mode = shim_mode()
    serve = False
    if mode != "off":
        finder = _finder()
        if finder is None:
            finder = FlaAliasFinder(force=mode == "force")
            sys.meta_path.insert(0, finder)
        serve = finder.decide()
    if serve:
        sys.modules[ALIAS] = importlib.import_module(TARGET)
        logger.info("fla: served by myfla %s through the PYTHONPATH shim", _myfla_version())
        return
    real = find_real_fla()
    if real is None:
        del sys.modules[ALIAS]
        raise ModuleNotFoundError(f"No module named {ALIAS!r} ({ENV_VAR}=off and no other fla installed)",
                                  name=ALIAS)
    module = importlib.util.module_from_spec(real)
    sys.modules[ALIAS] = module
    try:
        real.loader.exec_module(module)
    except BaseException:
        del sys.modules[ALIAS]
        raise


def describe() -> str:
    """One line: what ``import fla`` gives in this process and why."""
    real = find_real_fla()
    active = active_fla()
    if active == "myfla":
        why = "" if real is None else (
            f"; a real fla at {real.origin} is shadowed ({'forced' if real_fla_can_run() else 'it cannot run here'})")
        return f"fla -> myfla {_myfla_version()} ({os.path.dirname(os.path.abspath(__file__))}){why}"
    if active == "fla":
        return f"fla -> the real fla ({real.origin if real else sys.modules[ALIAS].__file__})"
    return "fla -> not importable (myfla.install_as_fla() or the PYTHONPATH shim would serve myfla)"


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m myfla.alias [--shim-dir]``: say what ``import fla`` gives here, or print the shim
    directory to put on PYTHONPATH."""
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m myfla.alias",
        description="Say what `import fla` gives in this environment (myfla, a real fla, or nothing), or print "
                    "the shim directory to put on PYTHONPATH so that `import fla` serves myfla.")
    parser.add_argument("--shim-dir", action="store_true",
                        help="print the directory to put on PYTHONPATH so that `import fla` serves myfla")
    args = parser.parse_args(argv)
    if args.shim_dir:
        print(SHIM_DIR)
        return 0
    importlib.import_module(TARGET)
    print(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
