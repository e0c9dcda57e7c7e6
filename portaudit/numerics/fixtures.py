"""Golden fixture directories: ``index.json`` plus one tensor file per case (format in docs/golden.md).

Tensor files are ``.safetensors`` when the ``safetensors`` package is importable, else ``.pt``
files written with ``torch.save`` of a flat ``{name: tensor}`` dict. Loading never unpickles
arbitrary objects: ``.pt`` files go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from portaudit.errors import UsageError
from portaudit.safe_io import read_regular

FORMAT = "portaudit-golden"
FORMAT_VERSION = 1
INDEX = "index.json"


def _has_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def case_filename(name: str, ext: str) -> str:
    """``kda/chunk/base`` -> ``kda__chunk__base.pt`` (flat, portable names)."""
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name.replace("/", "__"))
    return f"{safe}.{ext}"


def save_tensors(path: Path, tensors: Dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(tensors, str(tmp))
    else:
        torch.save(tensors, tmp)
    os.replace(tmp, path)


def load_tensors(path: Path) -> Dict[str, torch.Tensor]:
    if not path.is_file():
        raise UsageError(f"fixture file {path} is missing")
    try:
        if path.suffix == ".safetensors":
            if not _has_safetensors():
                raise UsageError(f"{path} is a safetensors file; install the 'safetensors' package to read it")
            from safetensors.torch import load_file
            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"fixture file {path} cannot be read safely: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in data.items()):
        raise UsageError(f"fixture file {path} is not a flat mapping of names to tensors")
    return data


@dataclass
class CaseRecord:
    name: str
    api: str
    kind: str
    params: Dict[str, Any]
    file: Optional[str]
    status: str = "ok"                # ok | error
    error: str = ""
    seconds: float = 0.0
    tensors: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> Dict[str, Any]:
        d = dict(api=self.api, kind=self.kind, params=self.params, file=self.file, status=self.status,
                 seconds=round(self.seconds, 3), tensors=self.tensors)
        if self.error:
            d["error"] = self.error
        if self.note:
            d["note"] = self.note
        return d


@dataclass
class FixtureSet:
    root: Path
    meta: Dict[str, Any]
    cases: Dict[str, CaseRecord]

    def load_case(self, name: str) -> tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        rec = self.cases[name]
        if rec.file is None:
            raise UsageError(f"case {name} has no tensor file (status {rec.status})")
        data = load_tensors(self.root / rec.file)
        inputs = {k[len("input."):]: v for k, v in data.items() if k.startswith("input.")}
        outputs = {k[len("output."):]: v for k, v in data.items() if k.startswith("output.")}
        return inputs, outputs


class FixtureWriter:
    """Writes cases one by one and rewrites ``index.json`` after each (a killed run keeps a
    consistent directory with the cases done so far)."""

    def __init__(self, root: Path, meta: Dict[str, Any], use_safetensors: Optional[bool] = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta = dict(meta)
        self.ext = "safetensors" if (_has_safetensors() if use_safetensors is None else use_safetensors) else "pt"
        self.cases: Dict[str, CaseRecord] = {}
        self._write_index()

    def add(self, name, api, kind, params, inputs, outputs, seconds, note="") -> CaseRecord:
        fname = case_filename(name, self.ext)
        flat = {f"input.{k}": v for k, v in inputs.items()}
        flat.update({f"output.{k}": v for k, v in outputs.items()})
        save_tensors(self.root / fname, flat)
        tinfo = {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in flat.items()}
        rec = CaseRecord(name, api, kind, params, fname, "ok", "", seconds, tinfo, note)
        self.cases[name] = rec
        self._write_index()
        return rec

    def add_error(self, name, api, kind, params, error, seconds, note="") -> CaseRecord:
        rec = CaseRecord(name, api, kind, params, None, "error", error, seconds, {}, note)
        self.cases[name] = rec
        self._write_index()
        return rec

    def _write_index(self) -> None:
        doc = {"format": FORMAT, "version": FORMAT_VERSION, **self.meta,
               "cases": {n: r.to_json() for n, r in self.cases.items()}}
        fd, tmp = tempfile.mkstemp(prefix=".index-", dir=self.root)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, self.root / INDEX)


def merge_fixtures(sources: list, dest: str | Path) -> FixtureSet:
    """Merge fixture directories recorded in several runs (later sources win per case) into
    ``dest``. Environments must agree on the upstream and library versions."""
    import shutil
    sets = [read_fixtures(s) for s in sources]
    if not sets:
        raise UsageError("nothing to merge")
    keys = ("torch", "triton", "fla-core", "flash-linear-attention", "gpu")
    first = sets[0].meta.get("environment", {})
    for fs in sets[1:]:
        env = fs.meta.get("environment", {})
        diff = [k for k in keys if env.get(k) != first.get(k)]
        if diff:
            raise UsageError(f"{fs.root} was recorded in another environment ({', '.join(diff)} differ)")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    meta = dict(sets[0].meta)
    meta["runs"] = [fs.meta.get("created") for fs in sets]
    meta.pop("format", None)
    meta.pop("version", None)
    writer = FixtureWriter.__new__(FixtureWriter)
    writer.root, writer.meta, writer.cases = dest, meta, {}
    for fs in sets:
        for name, rec in fs.cases.items():
            if rec.file is not None and Path(fs.root, rec.file).resolve() != Path(dest, rec.file).resolve():
                shutil.copy2(fs.root / rec.file, dest / rec.file)
            writer.cases[name] = rec
    writer._write_index()
    return read_fixtures(dest)


def read_fixtures(root: str | Path) -> FixtureSet:
    """Open and validate a fixture directory; every problem is a UsageError (exit 2)."""
    root = Path(root)
    if not root.exists():
        raise UsageError(f"fixture directory {root} does not exist")
    if not root.is_dir():
        raise UsageError(f"fixture path {root} is not a directory")
    index = root / INDEX
    if not os.path.lexists(index):
        raise UsageError(f"{root} is not a golden fixture directory: {INDEX} is missing "
                         f"(record one with `portaudit golden record --out {root}`)")
    raw = read_regular(index, MAX_INDEX_BYTES, "fixture index")
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{index}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise UsageError(f"{index}: invalid JSON: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageError(f"{index}: not a portaudit golden index (expected \"format\": \"{FORMAT}\")")
    if doc.get("version") != FORMAT_VERSION:
        raise UsageError(f"{index}: unsupported fixture format version {doc.get('version')!r} "
                         f"(this portaudit reads version {FORMAT_VERSION})")
    raw_cases = doc.get("cases")
    if not isinstance(raw_cases, dict):
        raise UsageError(f"{index}: \"cases\" must be a mapping of case name to record")
    if not isinstance(doc.get("environment", {}), dict):
        raise UsageError(f"{index}: \"environment\" must be a mapping")
    cases = {}
    for name, r in raw_cases.items():
        problem = _record_problem(r)
        if problem:
            raise UsageError(f"{index}: case {name!r} is malformed ({problem})")
        cases[name] = CaseRecord(name, r["api"], r["kind"], r.get("params", {}), r.get("file"),
                                 r.get("status", "ok"), r.get("error", ""), r.get("seconds", 0.0),
                                 r.get("tensors", {}), r.get("note", ""))
    meta = {k: v for k, v in doc.items() if k != "cases"}
    return FixtureSet(root, meta, cases)


MAX_INDEX_BYTES = 64 << 20
_RECORD_TYPES = {"api": str, "kind": str, "params": dict, "status": str, "error": str, "tensors": dict,
                 "note": str}


def _unique_keys(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _record_problem(r) -> Optional[str]:
    """Why a case record of index.json cannot be used (None when it can)."""
    if not isinstance(r, dict):
        return f"expected a mapping, got {type(r).__name__}"
    for key in ("api", "kind"):
        if key not in r:
            return f"missing '{key}'"
    for key, typ in _RECORD_TYPES.items():
        if key in r and not isinstance(r[key], typ):
            return f"'{key}' must be a {typ.__name__}"
    if r.get("status", "ok") not in ("ok", "error"):
        return "'status' must be 'ok' or 'error'"
    seconds = r.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return "'seconds' must be a number"
    f = r.get("file")
    if f is not None and (not isinstance(f, str) or not f or f in (".", "..") or "/" in f or "\\" in f
                          or "\0" in f):
        return "'file' must be the plain name of a file in the fixture directory"
    return None
