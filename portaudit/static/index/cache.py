"""The on-disk parse cache: a parsed module as checked, versioned JSON, never pickle.

Cache entries live under a key anyone can compute (the file's content hash), so a shared or
CI-restored cache is input like any other: it must never be able to run code. An entry is JSON
of a fixed schema; decoding rebuilds the :mod:`.model` dataclasses field by field against their
type annotations and refuses anything else (unknown or missing fields, wrong types, duplicate
keys, NaN), as well as an entry for another module, another file content or another parser. A
refused entry is simply parsed again. New fields of the model dataclasses need no change here,
as long as their annotations use str/int/float/bool, Optional, list, tuple, dict[str, ...] and
dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from typing import Any, Union

from portaudit.static.index.model import ModuleInfo

SCHEMA = "portaudit.index/1"
MAX_ENTRY_BYTES = 64 << 20   # a parsed 200k-token module is far below this


class CacheEntryError(ValueError):
    """The entry is not one this version wrote for this file: ignore it and parse again."""


def encode(info: ModuleInfo, parser_key: str) -> bytes:
    doc = {"schema": SCHEMA, "parser": parser_key, "module": _dump(info)}
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def decode(data: bytes, parser_key: str, module: str, sha: str) -> ModuleInfo:
    """The ModuleInfo in ``data``; CacheEntryError unless it is exactly what :func:`encode` wrote
    for this module, this content hash and this parser."""
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        if not isinstance(doc, dict) or set(doc) != {"schema", "parser", "module"}:
            raise CacheEntryError("not an index cache entry")
        if doc["schema"] != SCHEMA or doc["parser"] != parser_key:
            raise CacheEntryError("written by another schema or parser")
        info = _load(ModuleInfo, doc["module"], "module")
    except CacheEntryError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CacheEntryError(f"unreadable entry: {exc}") from None
    if info.module != module or info.sha != sha:
        raise CacheEntryError("the entry describes another module or another content")
    return info


def _unique_keys(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise CacheEntryError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise CacheEntryError(f"{name} is not allowed")


def _dump(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_dump(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _dump(v) for k, v in obj.items()}
    return obj


_HINTS: dict = {}


def _hints(cls: type) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    return _HINTS[cls]


def _load(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        raise CacheEntryError(f"{where}: untyped field")
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise CacheEntryError(f"{where}: unsupported union")
        return _load(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise CacheEntryError(f"{where}: expected an object")
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        unknown = set(value) - set(fields)
        if unknown:
            raise CacheEntryError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        hints = _hints(tp)
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _load(hints[name], value[name], f"{where}.{name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CacheEntryError(f"{where}: missing field {name!r}")
        return tp(**kwargs)
    if origin is list:
        if not isinstance(value, list):
            raise CacheEntryError(f"{where}: expected a list")
        return [_load(args[0], x, f"{where}[{i}]") for i, x in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list):
            raise CacheEntryError(f"{where}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_load(args[0], x, f"{where}[{i}]") for i, x in enumerate(value))
        if len(value) != len(args):
            raise CacheEntryError(f"{where}: expected {len(args)} items")
        return tuple(_load(a, x, f"{where}[{i}]") for i, (a, x) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict) or args[0] is not str:
            raise CacheEntryError(f"{where}: expected an object")
        return {k: _load(args[1], v, f"{where}[{k!r}]") for k, v in value.items()}
    if tp in (str, bool):
        if type(value) is not tp:
            raise CacheEntryError(f"{where}: expected {tp.__name__}")
        return value
    if tp is int:
        if type(value) is not int:
            raise CacheEntryError(f"{where}: expected int")
        return value
    if tp is float:
        if type(value) not in (int, float):
            raise CacheEntryError(f"{where}: expected a number")
        return float(value)
    raise CacheEntryError(f"{where}: unsupported type {tp!r}")
