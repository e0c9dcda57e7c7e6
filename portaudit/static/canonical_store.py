"""Canonical forms kept on disk, so a warm ``check`` of a copy re-parses no body.

A module's canonical forms depend on its content and imports, on the renames applied and on the
canonicalisation code itself: these make the key of one JSON file per module
(``<cache>/canonical/<key[:2]>/<key>.json``). They also depend on how other tree modules re-export
names the module imports (the look-through of :meth:`~portaudit.static.body.Scope.spelled`): the
spellings that needed it are stored with the forms and checked again on every read; any
difference discards the file. Files are checked JSON (``{"forms": {name: [text, [rename keys]]},
"spelled": {alias: spelling}}``); anything else is ignored and rebuilt. Written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Optional

from portaudit.static.body import Canonical, Scope, canonical, fingerprint
from portaudit.static.index.model import Definition, ModuleInfo

FORMAT = 1
_CODE_KEY: Optional[str] = None


def _code_key() -> str:
    """The canonicalisation code's own hash: changed code never reads old forms."""
    global _CODE_KEY
    if _CODE_KEY is None:
        h = hashlib.sha256(str(FORMAT).encode())
        here = Path(__file__).resolve().parent
        for p in (here / "body.py", here / "index" / "body_source.py"):
            try:
                h.update(p.read_bytes())
            except OSError:
                pass
        _CODE_KEY = h.hexdigest()[:16]
    return _CODE_KEY


class CanonicalStore:
    def __init__(self, cache_dir: Optional[Path]):
        self.root = Path(cache_dir) / "canonical" if cache_dir else None
        self._files: dict[str, dict] = {}
        self._dirty: set[str] = set()

    def _key(self, info: ModuleInfo, scope: Scope, renames: Mapping[str, str]) -> str:
        imports = sorted((alias, ref.module, ref.name) for alias, ref in scope.imports.items())
        text = json.dumps([_code_key(), info.module, info.sha, imports, sorted(scope.internal_tops),
                           sorted(renames.items())])
        return hashlib.sha256(text.encode()).hexdigest()

    @staticmethod
    def _valid(raw) -> bool:
        if not isinstance(raw, dict) or not isinstance(raw.get("forms"), dict) \
                or not isinstance(raw.get("spelled"), dict):
            return False
        forms_ok = all(isinstance(k, str) and isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
                       and isinstance(v[1], list) and all(isinstance(x, str) for x in v[1])
                       for k, v in raw["forms"].items())
        return forms_ok and all(isinstance(k, str) and (v is None or isinstance(v, str))
                                for k, v in raw["spelled"].items())

    def _load(self, key: str, scope: Scope) -> dict:
        if key in self._files:
            return self._files[key]
        data: dict = {"forms": {}, "spelled": {}}
        if self.root is not None:
            path = self.root / key[:2] / f"{key}.json"
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                # the re-exports it looked through must still read the same
                if self._valid(raw) and all(scope.spelled(a) == v for a, v in raw["spelled"].items()):
                    data = raw
            except (OSError, ValueError):
                pass
        self._files[key] = data
        return data

    def canonical(self, info: ModuleInfo, d: Definition, scope: Scope,
                  renames: Optional[Mapping[str, str]] = None) -> Optional[Canonical]:
        renames = renames or {}
        key = self._key(info, scope, renames)
        data = self._load(key, scope)
        hit = data["forms"].get(d.name)
        if hit is not None:
            return Canonical(hit[0], fingerprint(hit[0]), frozenset(hit[1]))
        c = canonical(d, scope, renames)
        if c is not None:
            data["forms"][d.name] = [c.text, sorted(c.used_renames)]
            data["spelled"].update({a: scope.spelled(a) for a in scope.looked})
            self._dirty.add(key)
        return c

    def flush(self) -> None:
        if self.root is None:
            return
        for key in sorted(self._dirty):
            path = self.root / key[:2] / f"{key}.json"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(self._files[key], sort_keys=True), encoding="utf-8")
                os.replace(tmp, path)
            except OSError:
                pass
        self._dirty.clear()
