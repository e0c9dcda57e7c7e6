"""A static index of Python definitions, built with libcst, parsed lazily and cached by content.

A :class:`TreeIndex` covers one source tree (an upstream root or a port root). Modules are parsed
only when a symbol in them is asked for, so only the files reachable from a manifest are ever
read. Each parsed module becomes a :class:`~.model.ModuleInfo`: its definitions (functions, classes,
methods, autograd.Functions, nn.Modules, ``@triton.jit`` kernels, module constants) with full
signatures, decorators, 1-based line ranges (decorators included), docstrings, citations, body
facts, and the names each definition uses (for the scaffold's closure), plus its imports so that
re-exports through ``__init__.py`` chains and relative imports resolve. Nothing is imported or
executed. Parse results are pickled under ``<cache>/index/`` keyed by the file's content hash.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Callable, Optional

from portaudit.static.index.model import ModuleInfo, Resolved

INDEX_FORMAT = 6  # bump when the pickled shape (the classes in model.py) changes


def _parser_key() -> str:
    """Cache entries are tied to the parser's own source, so a changed parser never reads stale data."""
    h = hashlib.sha256(str(INDEX_FORMAT).encode())
    here = Path(__file__).resolve().parent
    for path in (here / "model.py", here / "tree.py", here / "parse.py", here / "body_source.py",
                 here.parent / "citations.py"):
        try:
            h.update(path.read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:16]


_PARSER_KEY: Optional[str] = None


class TreeIndex:
    """Lazily parsed index of one tree; ``root`` contains the top-level package folder(s)."""

    def __init__(self, root: Path, cache_dir: Optional[Path] = None,
                 on_parse: Optional[Callable[[str], None]] = None):
        self.root = Path(root)
        self.on_parse = on_parse          # told about each file parsed (a cache miss)
        self.cache_dir = Path(cache_dir) / "index" if cache_dir else None
        self._modules: dict[str, Optional[ModuleInfo]] = {}
        self._paths: dict[str, Optional[Path]] = {}
        self.parsed_files: list[str] = []     # files parsed by libcst in this process
        self.loaded_files: list[str] = []     # files read (parsed or from the cache)

    # -- modules -------------------------------------------------------------------------
    def module_path(self, module: str) -> Optional[Path]:
        if module in self._paths:          # asked for again and again while resolving symbols
            return self._paths[module]
        base = self.root.joinpath(*module.split("."))
        found = None
        if base.with_suffix(".py").is_file():
            found = base.with_suffix(".py")
        elif (base / "__init__.py").is_file():
            found = base / "__init__.py"
        self._paths[module] = found
        return found

    def module(self, module: str) -> Optional[ModuleInfo]:
        if module in self._modules:
            return self._modules[module]
        path = self.module_path(module)
        info = self._load(module, path) if path is not None else None
        self._modules[module] = info
        return info

    def loaded_modules(self) -> list[ModuleInfo]:
        return [m for m in self._modules.values() if m is not None]

    def _load(self, module: str, path: Path) -> ModuleInfo:
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        self.loaded_files.append(str(path))
        is_pkg = path.name == "__init__.py"
        cache_file = None
        if self.cache_dir is not None:
            global _PARSER_KEY
            if _PARSER_KEY is None:
                _PARSER_KEY = _parser_key()
            key = hashlib.sha256(f"{_PARSER_KEY}:{module}:{is_pkg}:{sha}".encode()).hexdigest()
            cache_file = self.cache_dir / key[:2] / f"{key}.pkl"
            if cache_file.is_file():
                try:
                    with open(cache_file, "rb") as fh:
                        info = pickle.load(fh)
                    info.path = str(path)
                    return info
                except Exception:  # a corrupt cache entry is rebuilt
                    pass
        from portaudit.static.index.parse import parse_module_source  # libcst is imported only on a miss

        if self.on_parse is not None:
            self.on_parse(f"parsing {self.relpath(str(path))}")

        info = parse_module_source(data.decode("utf-8"), module, str(path), sha, is_pkg)
        self.parsed_files.append(str(path))
        if cache_file is not None:
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
                with open(tmp, "wb") as fh:
                    pickle.dump(info, fh, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(tmp, cache_file)
            except OSError:
                pass
        return info

    # -- symbols -------------------------------------------------------------------------
    def split_symbol(self, symbol: str) -> tuple[Optional[str], list[str]]:
        """Longest module prefix of a dotted symbol that is a file here, and the remaining parts."""
        parts = symbol.split(".")
        for cut in range(len(parts), 0, -1):
            mod = ".".join(parts[:cut])
            if self.module_path(mod) is not None:
                return mod, parts[cut:]
        return None, parts

    def resolve(self, symbol: str) -> Optional["Resolved"]:
        """Find the definition a dotted symbol names, following re-exports and relative imports."""
        mod, rest = self.split_symbol(symbol)
        if mod is None:
            return None
        if not rest:
            return None
        return self.resolve_in(mod, rest, set())

    def resolve_in(self, module: str, parts: list[str], seen: set) -> Optional["Resolved"]:
        key = (module, tuple(parts))
        if key in seen:
            return None
        seen.add(key)
        info = self.module(module)
        if info is None:
            return None
        qual = ".".join(parts)
        if qual in info.definitions:
            return Resolved(info, info.definitions[qual])
        head, tail = parts[0], parts[1:]
        ref = info.imports.get(head)
        if ref is not None:
            if ref.name is None:
                return self.resolve_in_module_path(ref.module, tail, seen)
            target = self.resolve_in(ref.module, [ref.name] + tail, seen)
            if target is None:   # `from pkg import submodule`
                return self.resolve_in_module_path(f"{ref.module}.{ref.name}", tail, seen)
            return target
        if tail and self.module_path(f"{module}.{head}") is not None:
            return self.resolve_in(f"{module}.{head}", tail, seen)
        for star in info.star_imports:
            found = self.resolve_in(star, parts, seen)
            if found is not None:
                return found
        return None

    def resolve_in_module_path(self, module: str, parts: list[str], seen: set) -> Optional["Resolved"]:
        if not parts:
            return None
        mod_parts = module.split(".") + parts
        for cut in range(len(mod_parts), len(module.split(".")) - 1, -1):
            mod = ".".join(mod_parts[:cut])
            if cut < len(mod_parts) and self.module_path(mod) is not None:
                return self.resolve_in(mod, mod_parts[cut:], seen)
        return None

    def has_module(self, module: str) -> bool:
        return self.module_path(module) is not None

    def relpath(self, path: str) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return path
