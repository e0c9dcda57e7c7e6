"""Implementations described by data: the numerics view of a manifest, and implementation files.

``portaudit invariants --manifest FILE`` reads from FILE (a port manifest, or a manifest-shaped
implementation file such as ``examples/impl/transformers-qwen3-next.yaml``):

    port:       {package: transformers, modules: {fla.ops.gated_delta_rule.chunk: transformers.models...}}
    stages:     optional; the listed symbols pick which invariants run
    numerics:
      cases: fla-0.4.0                 # the case registry (built-in name or module path)
      tolerances: [...]                # overrides, each with a reason
      implementation:                  # a mapping, or the path of a YAML file holding one
        name: transformers-qwen3-next
        requires: [transformers]       # imported first; absent -> one clear line, exit 2
        mirror: false                  # only the symbols below exist (default true: port.modules mirror)
        precision: fp32                # tolerance profile: fp32, or tf32 for GPU kernels
        lacks: {float64: REASON}       # capabilities the whole implementation lacks
        symbols:
          fla.ops.gated_delta_rule.chunk.chunk_gated_delta_rule:
            name: torch_chunk_gated_delta_rule      # or port: a.b.c (full path)
            lacks: {backward: REASON, float64: REASON}
            call:                                   # functions; classes take init: and forward:
              arguments:
                q: query
                k: {to: key, permute: [0, 2, 1, 3]}
                cu_seqlens: {absent: REASON}
                activation: {absent: REASON, accepts: [swish, silu]}
                g: {required: REASON}
              extra: {chunk_size: 64}
              returns: [{from: 0, permute: [0, 2, 1]}, {absent: REASON}]

Everything is validated with ``file:line:col`` in the error; nothing is evaluated. Building the
implementation imports the port's modules (that is what numerics is for) and checks every adapter
against the upstream signature (read from source) and the port's own (docs/numerics-registry.md).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from portaudit.errors import UsageError
from portaudit.numerics.adapters import AdapterSpec, ArgRule, CallAdapter, OutputRule, adapt_class, adapt_function
from portaudit.numerics.impl import Implementation, MissingSymbol
from portaudit.numerics.tolerances import Tolerance, overrides_from_manifest
from portaudit.numerics.upstream_code import upstream_signature

TOP_KEYS = ("name", "description", "upstream", "port", "stages", "waivers", "deviations", "entry_points",
            "numerics")
PRECISIONS = ("fp32", "tf32")
CAPABILITIES = ("float64", "backward")


@dataclass
class SymbolSpec:
    api: str
    port: Optional[str] = None          # full dotted path of the port's object
    name: Optional[str] = None          # its name in the module port.modules maps the API's module to
    lacks: Dict[str, str] = field(default_factory=dict)
    call: Optional[AdapterSpec] = None
    init: Optional[AdapterSpec] = None
    forward: Optional[AdapterSpec] = None
    where: str = ""


@dataclass
class ImplementationSpec:
    name: str
    package: str                         # the port package (mirror target of the upstream package)
    upstream_package: str = "fla"
    modules: Dict[str, str] = field(default_factory=dict)   # upstream module -> port module
    mirror: bool = True
    requires: List[str] = field(default_factory=list)
    precision: str = "fp32"
    lacks: Dict[str, str] = field(default_factory=dict)
    symbols: Dict[str, SymbolSpec] = field(default_factory=dict)
    description: str = ""
    where: str = ""

    def port_path(self, api: str) -> str:
        """The port's dotted path for an upstream API path (declared, renamed, or mirrored)."""
        sym = self.symbols.get(api)
        if sym is not None and sym.port:
            return sym.port
        module, _, name = api.rpartition(".")
        if sym is not None and sym.name:
            name = sym.name
        return f"{self._port_module(module)}.{name}"

    def _port_module(self, module: str) -> str:
        best = max((m for m in self.modules if module == m or module.startswith(m + ".")), key=len, default="")
        if best:
            return self.modules[best] + module[len(best):]
        pkg = self.upstream_package
        if module == pkg or module.startswith(pkg + "."):
            return self.package + module[len(pkg):]
        return module


@dataclass
class NumericsConfig:
    """What ``invariants``/``golden`` take from one manifest file."""
    path: Path
    name: str
    symbols: Set[str]                     # stage symbols (empty: the file lists none)
    cases: Optional[str]                  # the case registry named by numerics.cases
    tolerances: List[Tolerance]
    implementation: Optional[ImplementationSpec]
    port_package: Optional[str] = None
    port_modules: Dict[str, str] = field(default_factory=dict)
    upstream_package: str = "fla"

    def implementation_spec(self) -> ImplementationSpec:
        """numerics.implementation, or else the port section read as a mirror of the upstream."""
        if self.implementation is not None:
            return self.implementation
        if not self.port_package:
            raise UsageError(f"{self.path}: neither numerics.implementation nor port.package says what to run")
        return ImplementationSpec(name=self.port_package, package=self.port_package,
                                  upstream_package=self.upstream_package, modules=dict(self.port_modules),
                                  where=str(self.path))


# -- YAML reading ---------------------------------------------------------------------------------

def _read_yaml(path: Path):
    from portaudit.static.manifest import _Positions, _Validator
    from portaudit.static.yaml_loader import load_yaml_file

    doc = load_yaml_file(path)   # bounded, regular files only, no duplicate keys, aliases measured
    return doc.data, _Validator(str(path), _Positions(str(path), doc.node), set())


def _axes(v, value: Any, path: tuple) -> Tuple[int, ...]:
    axes = v.seq(value, path)
    if not axes or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes) or \
            sorted(axes) != list(range(len(axes))):
        v.fail(path, f"expected a permutation of 0..n-1 such as [0, 2, 1], got {value!r}")
    return tuple(axes)


def _scalar(v, value: Any, path: tuple) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list) and all(x is None or isinstance(x, (bool, int, float, str)) for x in value):
        return list(value)
    v.fail(path, "expected a YAML scalar (or a list of scalars): values are passed as they are, never evaluated")


def _reason(v, value: Any, path: tuple) -> str:
    return v.string(value, path)


def _adapter(v, value: Any, path: tuple) -> AdapterSpec:
    d = v.mapping(value, path, {"arguments": False, "extra": False, "returns": False})
    spec = AdapterSpec(where=str(v.pos.at(path)))
    args = d.get("arguments") or {}
    if not isinstance(args, dict):
        v.fail(path + ("arguments",), "expected a mapping of upstream parameter -> port name or rule")
    for name, rule in args.items():
        rp = path + ("arguments", name)
        name = v.string(name, rp)
        where = str(v.pos.at(rp, key=True))
        if isinstance(rule, str):
            if not rule.isidentifier():
                v.fail(rp, f"'{rule}' is not a parameter name")
            spec.arguments[name] = ArgRule(name, to=rule, where=where)
            continue
        r = v.mapping(rule, rp, {"to": False, "permute": False, "repeat": False, "absent": False, "accepts": False,
                                 "required": False})
        to = r.get("to")
        if to is not None and not (isinstance(to, str) and to.isidentifier()):
            v.fail(rp + ("to",), f"'{to}' is not a parameter name")
        repeat = None
        if r.get("repeat") is not None:
            rr = v.mapping(r["repeat"], rp + ("repeat",), {"dim": True, "like": True})
            if not isinstance(rr["dim"], int) or isinstance(rr["dim"], bool):
                v.fail(rp + ("repeat", "dim"), "expected an integer axis")
            repeat = (rr["dim"], v.string(rr["like"], rp + ("repeat", "like")))
        accepts = r.get("accepts")
        if accepts is not None and not isinstance(accepts, list):
            accepts = [accepts]
        spec.arguments[name] = ArgRule(
            name, to=to, permute=_axes(v, r["permute"], rp + ("permute",)) if r.get("permute") is not None else None,
            repeat=repeat, absent=_reason(v, r["absent"], rp + ("absent",)) if "absent" in r else None,
            accepts=tuple(_scalar(v, a, rp + ("accepts", i)) for i, a in enumerate(accepts or [])),
            required=_reason(v, r["required"], rp + ("required",)) if "required" in r else None, where=where)
        if spec.arguments[name].absent and (to or repeat or r.get("permute") is not None or "required" in r):
            v.fail(rp, "an absent argument takes only 'absent' and 'accepts'")
    extra = d.get("extra") or {}
    if not isinstance(extra, dict):
        v.fail(path + ("extra",), "expected a mapping of port parameter -> value")
    spec.extra = {v.string(k, path + ("extra", k)): _scalar(v, x, path + ("extra", k)) for k, x in extra.items()}
    if d.get("returns") is not None:
        ret = d["returns"]

        def out_rule(item, op):
            o = v.mapping(item, op, {"from": False, "permute": False, "absent": False})
            if "absent" in o:
                if "from" in o or "permute" in o:
                    v.fail(op, "an absent output takes only 'absent'")
                return OutputRule(absent=_reason(v, o["absent"], op + ("absent",)))
            src = o.get("from")
            if not isinstance(src, int) or isinstance(src, bool) or src < 0:
                v.fail(op, "expected 'from: N' (the index of the port's output) or 'absent: REASON'")
            return OutputRule(source=src, permute=_axes(v, o["permute"], op + ("permute",))
                              if o.get("permute") is not None else None)
        if isinstance(ret, list):
            spec.returns = [out_rule(item, path + ("returns", i)) for i, item in enumerate(ret)]
        else:
            spec.returns = out_rule(ret, path + ("returns",))
    return spec


def _lacks(v, value: Any, path: tuple) -> Dict[str, str]:
    d = v.mapping(value, path, {c: False for c in CAPABILITIES})
    return {k: _reason(v, x, path + (k,)) for k, x in d.items()}


def _port_modules(v, port: Dict[str, Any]) -> Dict[str, str]:
    """``port.modules``, upstream module -> port module, as validated dotted names (a YAML ``false``
    or number is read as the text written, never kept as a bool or int)."""
    modules = port.get("modules") or {}
    if not isinstance(modules, dict):
        v.fail(("port", "modules"), "expected a mapping of upstream module -> port module")
    return {v.dotted(k, ("port", "modules", k)): v.dotted(m, ("port", "modules", k)) for k, m in modules.items()}


def _implementation(v, d: Any, path: tuple, port: Dict[str, Any], upstream_package: str,
                    default_name: str, default_description: str = "") -> ImplementationSpec:
    d = v.mapping(d, path, {"name": False, "description": False, "requires": False, "mirror": False,
                            "precision": False, "lacks": False, "symbols": False})
    package = port.get("package")
    if not package:
        v.fail(("port",), "an implementation needs port.package (the package its callables come from)")
    mirror = d.get("mirror", True)
    if not isinstance(mirror, bool):
        v.fail(path + ("mirror",), "expected true or false")
    precision = d.get("precision", "fp32")
    if precision not in PRECISIONS:
        v.fail(path + ("precision",), f"expected one of {', '.join(PRECISIONS)}")
    spec = ImplementationSpec(
        name=v.string(d.get("name") or default_name, path + ("name",)), package=v.dotted(package, ("port", "package")),
        upstream_package=upstream_package, modules=_port_modules(v, port), mirror=mirror,
        requires=[v.dotted(r, path + ("requires", i)) for i, r in enumerate(v.seq(d.get("requires"), path + ("requires",)))],
        precision=precision, lacks=_lacks(v, d["lacks"], path + ("lacks",)) if d.get("lacks") else {},
        description=str(d.get("description") or default_description), where=str(v.pos.at(path)))
    symbols = d.get("symbols") or {}
    if not isinstance(symbols, dict):
        v.fail(path + ("symbols",), "expected a mapping of upstream API path -> how the port provides it")
    for api, body in symbols.items():
        sp = path + ("symbols", api)
        api = v.dotted(api, sp)
        if not api.startswith(upstream_package + "."):
            v.fail(sp, f"'{api}' is not an API path of the upstream package '{upstream_package}'", key=True)
        s = v.mapping(body or {}, sp, {"port": False, "name": False, "lacks": False, "call": False, "init": False,
                                       "forward": False})
        sym = SymbolSpec(api, where=str(v.pos.at(sp, key=True)))
        if s.get("port") is not None:
            sym.port = v.dotted(s["port"], sp + ("port",))
        if s.get("name") is not None:
            sym.name = v.string(s["name"], sp + ("name",))
            if not sym.name.isidentifier():
                v.fail(sp + ("name",), f"'{sym.name}' is not a Python name (use port: for a full path)")
        if sym.port and sym.name:
            v.fail(sp, "give either port (a full path) or name (a rename in the mapped module), not both")
        if s.get("lacks"):
            sym.lacks = _lacks(v, s["lacks"], sp + ("lacks",))
        for key in ("call", "init", "forward"):
            if s.get(key) is not None:
                setattr(sym, key, _adapter(v, s[key], sp + (key,)))
        if sym.call and (sym.init or sym.forward):
            v.fail(sp, "call: adapts a function; init: and forward: adapt a class: not both")
        spec.symbols[api] = sym
    if not spec.mirror and not spec.symbols:
        v.fail(path, "mirror: false needs symbols (the implementation would provide nothing)")
    return spec


def load_numerics_config(path: Path) -> NumericsConfig:
    """The numerics view of a manifest file (port manifest or implementation file)."""
    path = Path(path)
    data, v = _read_yaml(path)
    if data is None:
        v.fail((), "the file is empty")
    if isinstance(data, dict) and "stages" in data:
        # a port manifest: validated in full by the manifest loader, as `check` does
        from portaudit.static.manifest import load_manifest
        load_manifest(path)
    top = v.mapping(data, (), {k: False for k in TOP_KEYS})
    up = top.get("upstream") or {}
    if not isinstance(up, dict):
        v.fail(("upstream",), "expected a mapping")
    upstream_package = str(up.get("package") or "fla")
    port = top.get("port") or {}
    if not isinstance(port, dict):
        v.fail(("port",), "expected a mapping")
    if port.get("modules") is not None and not isinstance(port["modules"], dict):
        v.fail(("port", "modules"), "expected a mapping of upstream module -> port module")
    symbols: Set[str] = set()
    for si, stage in enumerate(v.seq(top.get("stages"), ("stages",))):
        if not isinstance(stage, dict):
            v.fail(("stages", si), "expected a mapping")
        for ei, sym in enumerate(v.seq(stage.get("symbols"), ("stages", si, "symbols"))):
            symbols.add(str(sym.get("symbol")) if isinstance(sym, dict) else str(sym))
    num = top.get("numerics") or {}
    num = v.mapping(num, ("numerics",), {"tolerances": False, "cases": False, "implementation": False})
    cases = v.string(num["cases"], ("numerics", "cases")) if num.get("cases") is not None else None
    name = str(top.get("name") or path.stem)
    description = str(top.get("description") or "")
    impl = None
    if num.get("implementation") is not None:
        raw = num["implementation"]
        if isinstance(raw, str):
            impl = load_implementation_file(path.parent / raw, port, upstream_package, name, description)
        else:
            impl = _implementation(v, raw, ("numerics", "implementation"), port, upstream_package, name,
                                   description)
    tolerances = overrides_from_manifest(data, where=str(path))
    modules = _port_modules(v, port)
    package = v.dotted(port["package"], ("port", "package")) if port.get("package") else None
    return NumericsConfig(path, name, symbols, cases, tolerances, impl, package, modules, upstream_package)


def load_implementation_file(path: Path, port: Dict[str, Any], upstream_package: str,
                             default_name: str, default_description: str = "") -> ImplementationSpec:
    """A YAML file whose top level is an implementation mapping (``numerics.implementation: FILE``)."""
    data, v = _read_yaml(Path(path))
    if data is None:
        v.fail((), "the implementation file is empty")
    return _implementation(v, data, (), port, upstream_package, default_name, default_description)


# -- building the implementation -------------------------------------------------------------------

def _import_object(path: str) -> Any:
    """Import the longest importable module prefix of ``path`` and walk the rest as attributes."""
    parts = path.split(".")
    errors = []
    for cut in range(len(parts) - 1, 0, -1):
        mod_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            errors.append(str(exc))
            continue
        except Exception as exc:
            raise MissingSymbol(f"{path}: importing {mod_name} failed: {type(exc).__name__}: {exc}") from exc
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            errors.append(f"{mod_name} has no attribute path {'.'.join(parts[cut:])}")
            continue
        return obj
    raise MissingSymbol(f"{path} not found ({'; '.join(errors[:2])})")


def _signature(obj: Any, drop_self: bool = False) -> Optional[inspect.Signature]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    if drop_self:
        params = list(sig.parameters.values())[1:]
        sig = sig.replace(parameters=params)
    return sig


class SpecImplementation(Implementation):
    """An implementation built from an :class:`ImplementationSpec`: declared symbols through their
    adapters, every other path through the port.modules mirror (unless ``mirror: false``)."""

    def __init__(self, spec: ImplementationSpec, upstream_root: Optional[Path]):
        self.spec = spec
        self.name = spec.name
        self.precision = spec.precision
        self.mirrors_upstream = spec.mirror
        for req in spec.requires:
            try:
                importlib.import_module(req)
            except ImportError as exc:
                raise UsageError(f"{spec.where}: implementation {spec.name} needs the '{req}' package ({exc}); "
                                 f"install it to run its checks") from None
        self._built: Dict[str, Any] = {}
        self._missing: Dict[str, str] = {}
        self.resolved: Dict[str, str] = {}     # api -> module.qualname of the object actually imported
        if spec.symbols and upstream_root is None:
            raise UsageError(f"{spec.where}: implementation {spec.name} adapts upstream signatures; it needs "
                             f"the upstream tree (--upstream or --upstream-path)")
        for api, sym in spec.symbols.items():
            self._build(api, sym, Path(upstream_root))  # type: ignore[arg-type]

    def _build(self, api: str, sym: SymbolSpec, root: Path) -> None:
        target = self.spec.port_path(api)
        try:
            obj = _import_object(target)
        except MissingSymbol as exc:
            self._missing[api] = str(exc)
            return
        self.resolved[api] = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', target)}"
        label = f"{api} -> {target}"
        backward = sym.lacks.get("backward") or self.spec.lacks.get("backward")
        if isinstance(obj, type):
            if sym.call:
                raise UsageError(f"{sym.where}: {label}: the port object is a class; adapt it with init: and forward:")
            init = CallAdapter(label + ".__init__", self.name, upstream_signature(root, api, "__init__"),
                               _signature(obj), sym.init or AdapterSpec(where=sym.where))
            fwd = CallAdapter(label + ".forward", self.name, upstream_signature(root, api, "forward"),
                              _signature(getattr(obj, "forward", None), drop_self=True),
                              sym.forward or AdapterSpec(where=sym.where), backward_gap=backward)
            self._built[api] = adapt_class(obj, init, fwd)
        elif callable(obj):
            if sym.init or sym.forward:
                raise UsageError(f"{sym.where}: {label}: the port object is a function; adapt it with call:")
            adapter = CallAdapter(label, self.name, upstream_signature(root, api), _signature(obj),
                                  sym.call or AdapterSpec(where=sym.where), backward_gap=backward)
            self._built[api] = adapt_function(obj, adapter)
        else:
            raise UsageError(f"{sym.where}: {label}: the port object is neither a function nor a class")

    def provides(self, api_path: str) -> bool:
        return self.spec.mirror or api_path in self.spec.symbols

    def resolve(self, api_path: str) -> Any:
        if api_path in self._built:
            return self._built[api_path]
        if api_path in self._missing:
            raise MissingSymbol(self._missing[api_path])
        if self.spec.mirror:
            obj = _import_object(self.spec.port_path(api_path))
            self._built[api_path] = obj
            return obj
        raise MissingSymbol(f"{self.name} does not map {api_path} (mirror: false)")

    def float64_gap(self, api_path: str) -> Optional[str]:
        sym = self.spec.symbols.get(api_path)
        return (sym.lacks.get("float64") if sym else None) or self.spec.lacks.get("float64")

    def describe(self) -> str:
        return f"{self.name} ({self.spec.description})" if self.spec.description else self.name
