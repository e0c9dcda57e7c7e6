"""Case registries: the invariants, golden cases, oracle and tolerances for one upstream's API.

portaudit's runners (:mod:`.invariants`, :mod:`.golden`, :mod:`.record`) are generic; what they
run comes from a :class:`CaseRegistry`. A manifest names one with ``numerics.cases``: a built-in
name (``fla-0.4.0``) or the dotted path of a module that defines ``REGISTRY`` (a port of another
library brings its own; importing it runs that module, as loading an implementation does). The
interface is documented in docs/numerics-registry.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Tuple

from portaudit.errors import UsageError

if TYPE_CHECKING:
    from portaudit.numerics.golden_cases import GoldenCase
    from portaudit.numerics.impl import Implementation
    from portaudit.numerics.invariants import Invariant
    from portaudit.numerics.tolerances import Tolerance

DEFAULT_REGISTRY = "fla-0.4.0"
# Built-in registries: name -> module defining REGISTRY (imported only when named).
BUILTIN: Dict[str, str] = {"fla-0.4.0": "portaudit.numerics.fla040"}


def _no_hypothesis(n: int, seed: int) -> List[Dict[str, Any]]:
    return []


@dataclass(frozen=True)
class CaseRegistry:
    """What portaudit checks for one upstream release, as data plus the code that runs each case.

    ``invariants()`` and ``golden_cases()`` return fresh lists; ``reference(upstream_root, fp64)``
    builds the oracle implementation (``--impl ref``; ``fp64=True`` for the invariants' float64
    oracle) from the fetched upstream tree (``upstream`` distributions); ``invariant_rules(precision)``
    and ``golden_rules()`` give the built-in tolerances (``precision`` is the implementation's:
    ``fp32`` or ``tf32``); ``hypothesis_cases(n, seed)`` draws random cases for invariants marked
    ``hypothesis=True``."""
    name: str
    upstream_package: str                       # API paths start with it ("fla")
    upstream: Tuple[str, ...]                   # pinned distributions the oracles are read from
    invariants: Callable[[], List["Invariant"]]
    golden_cases: Callable[[], List["GoldenCase"]]
    reference: Callable[[Path, bool], "Implementation"]
    invariant_rules: Callable[[str], List["Tolerance"]]
    golden_rules: Callable[[], List["Tolerance"]]
    hypothesis_cases: Callable[[int, int], List[Dict[str, Any]]] = field(default=_no_hypothesis)
    description: str = ""


def load_case_registry(name: str = DEFAULT_REGISTRY) -> CaseRegistry:
    """A built-in registry by name, or ``REGISTRY`` of the module ``name`` (a dotted path)."""
    module_name = BUILTIN.get(name, name)
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise UsageError(f"case registry '{name}' is neither a built-in ({', '.join(BUILTIN)}) nor a dotted "
                         f"module path")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UsageError(f"case registry '{name}' is neither a built-in ({', '.join(BUILTIN)}) nor an importable "
                         f"module ({exc}); put its package on PYTHONPATH") from exc
    registry = getattr(module, "REGISTRY", None)
    if not isinstance(registry, CaseRegistry):
        raise UsageError(f"case registry module {module_name} must define REGISTRY = CaseRegistry(...) "
                         f"(docs/numerics-registry.md)")
    return registry
