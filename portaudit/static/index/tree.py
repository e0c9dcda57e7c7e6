"""A static index of Python definitions, built with libcst, parsed lazily and cached by content.

A :class:`TreeIndex` covers one source tree (an upstream root or a port root). Modules are parsed
only when a symbol in them is asked for, so only the files reachable from a manifest are ever
read. Each parsed module becomes a :class:`~.model.ModuleInfo`: its definitions (functions, classes,
methods, autograd.Functions, nn.Modules, ``@triton.jit`` kernels, module constants) with full
signatures, decorators, 1-based line ranges (decorators included), docstrings, citations, body
facts, and the names each definition uses (for the scaffold's closure), plus its imports so that
re-exports through ``__init__.py`` chains and relative imports resolve. Nothing is imported or
executed. Parse results are cached under ``<cache>/index/`` keyed by the file's content hash, as
checked JSON (:mod:`.cache`): a cache entry is data, never code.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
from pathlib import Path
from typing import Callable, Optional

from portaudit.errors import UsageError
from portaudit.safe_io import describe_mode, make_private_dir, read_regular, replace_entry
from portaudit.static.index import cache as index_cache
from portaudit.static.index.model import ModuleInfo, Resolved
from portaudit.static.source import MAX_SOURCE_BYTES

INDEX_FORMAT = 8  # bump when the cached shape (the classes in model.py) changes


def _parser_key() -> str:
    """Cache entries are tied to the parser's own source, so a changed parser never reads stale data,
    and to the Python minor version, whose ``ast`` prints a few constructs differently
    (``portaudit.static.unparse``)."""
    h = hashlib.sha256(f"{INDEX_FORMAT}:{sys.version_info[0]}.{sys.version_info[1]}".encode())
    here = Path(__file__).resolve().parent
    for path in (here / "model.py", here / "tree.py", here / "parse.py", here / "cache.py",
                 here / "body_source.py", here.parent / "citations.py", here.parent / "source.py",
                 here.parent / "unparse.py"):
        try:
            h.update(path.read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:16]


_PARSER_KEY: Optional[str] = None


def parser_key() -> str:
    global _PARSER_KEY
    if _PARSER_KEY is None:
        _PARSER_KEY = _parser_key()
    return _PARSER_KEY


def _is_source_file(path: Path) -> bool:
    """Whether a module file is there. A link loop, an unreadable folder or a FIFO/device where a
    module belongs is a UsageError naming it (it is not silently "missing")."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return False
        raise UsageError(f"{path}: cannot read the module: {exc.strerror or exc}") from None
    if stat.S_ISREG(st.st_mode):
        return True
    if stat.S_ISDIR(st.st_mode):
        return False
    raise UsageError(f"{path}: the module is {describe_mode(st.st_mode)}, not a regular file")


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
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if _is_source_file(candidate):
                found = candidate
                break
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

    def cache_file(self, module: str, is_pkg: bool, sha: str) -> Optional[Path]:
        """Where the parse of this content of this module is cached (None without a cache)."""
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(f"{parser_key()}:{module}:{is_pkg}:{sha}".encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def _load(self, module: str, path: Path) -> ModuleInfo:
        data = read_regular(path, MAX_SOURCE_BYTES, "source file")
        sha = hashlib.sha256(data).hexdigest()
        self.loaded_files.append(str(path))
        is_pkg = path.name == "__init__.py"
        cache_file = self.cache_file(module, is_pkg, sha)
        if cache_file is not None:
            try:
                entry = read_regular(cache_file, index_cache.MAX_ENTRY_BYTES, "cache entry")
                info = index_cache.decode(entry, parser_key(), module, sha)
                info.path = str(path)
                return info
            except (UsageError, index_cache.CacheEntryError):
                pass   # absent, or not what this version wrote for this file: parse again
        from portaudit.static.index.parse import parse_module_bytes  # libcst is imported only on a miss

        if self.on_parse is not None:
            self.on_parse(f"parsing {self.relpath(str(path))}")

        info = parse_module_bytes(data, module, str(path), sha, is_pkg)
        self.parsed_files.append(str(path))
        if cache_file is not None:
            try:
                make_private_dir(cache_file.parent)
                replace_entry(cache_file, index_cache.encode(info, parser_key()))
            except (OSError, ValueError):
                pass   # a read-only or full cache only costs the next run a parse
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
