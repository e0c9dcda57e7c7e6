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


_DECODERS: dict = {}


def _load(tp: Any, value: Any, where: str) -> Any:
    return _decoder(tp)(value, where)


def _decoder(tp: Any):
    """A function (value, where) -> checked value for annotation ``tp``, built once per type (the
    warm cache decodes thousands of definitions per run)."""
    key = tp
    if key not in _DECODERS:
        _DECODERS[key] = _build(tp)
    return _DECODERS[key]


def _fail(where: str, what: str):
    raise CacheEntryError(f"{where}: {what}")


def _build(tp: Any):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1 or type(None) not in args:
            raise CacheEntryError(f"unsupported union {tp!r}")
        sub = _decoder(inner[0])
        return lambda v, w: None if v is None else sub(v, w)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp)
    if origin is list:
        item = _decoder(args[0])

        def decode_list(v, w):
            if type(v) is not list:
                _fail(w, "expected a list")
            return [item(x, w) for x in v]
        return decode_list
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = _decoder(args[0])

            def decode_var_tuple(v, w):
                if type(v) is not list:
                    _fail(w, "expected a list")
                return tuple(item(x, w) for x in v)
            return decode_var_tuple
        items = [_decoder(a) for a in args]

        def decode_tuple(v, w):
            if type(v) is not list or len(v) != len(items):
                _fail(w, f"expected {len(items)} items")
            return tuple(d(x, w) for d, x in zip(items, v))
        return decode_tuple
    if origin is dict:
        if args[0] is not str:
            raise CacheEntryError(f"unsupported mapping {tp!r}")
        val = _decoder(args[1])

        def decode_dict(v, w):
            if type(v) is not dict:
                _fail(w, "expected an object")
            return {k: val(x, w) for k, x in v.items()}
        return decode_dict
    if tp in (str, bool, int):
        def decode_exact(v, w):
            if type(v) is not tp:   # exact: a bool is no int here
                _fail(w, f"expected {tp.__name__}")
            return v
        return decode_exact
    if tp is float:
        def decode_float(v, w):
            if type(v) not in (int, float):
                _fail(w, "expected a number")
            return float(v)
        return decode_float
    raise CacheEntryError(f"unsupported type {tp!r}")


def _build_dataclass(cls: type):
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = frozenset(f.name for f in fields)
    required = frozenset(f.name for f in fields if f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
    plan: list = []   # filled after registration, so recursive dataclasses resolve

    def decode(v, w):
        if type(v) is not dict:
            _fail(w, "expected an object")
        if not names.issuperset(v):
            _fail(w, f"unknown field {sorted(set(v) - names)[0]!r}")
        if not required.issubset(v):
            _fail(w, f"missing field {sorted(required - set(v))[0]!r}")
        return cls(**{name: sub(v[name], w) for name, sub in plan if name in v})

    _DECODERS[cls] = decode
    plan.extend((f.name, _decoder(hints[f.name])) for f in fields)
    return decode
