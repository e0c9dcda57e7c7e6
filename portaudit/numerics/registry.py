"""The implementation under test: a named preset (``myfla``, ``fla``, ``ref``) or one described by data.

Presets are data too (a prefix map and the capabilities each lacks): ``myfla`` is the port, which
mirrors fla's module tree; ``fla`` is the real upstream (Triton kernels on a GPU: TF32 dots, no
float64); ``ref`` is the case registry's CPU reference. Anything else is an implementation file or
a manifest (:mod:`.impl_spec`). The reference is imported only when asked for (it loads upstream
code).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from portaudit.errors import UsageError
from portaudit.numerics.impl import Implementation, ModuleImplementation

if TYPE_CHECKING:
    from portaudit.numerics.case_registry import CaseRegistry
    from portaudit.numerics.impl_spec import ImplementationSpec

PRESETS = ("myfla", "fla", "ref")
# fla implements these in torch (not Triton), so they take float64 on a GPU too.
FLA_TORCH_PATHS = ("fla.layers.utils.index_first_axis", "fla.layers.utils.pad_input")


def is_preset(name: str) -> bool:
    return name in PRESETS


def get_implementation(name: str, registry: "CaseRegistry", upstream_root: Optional[Path] = None) -> Implementation:
    """A preset by name, or the implementation an implementation/manifest file at ``name`` describes."""
    if name == "myfla":
        return ModuleImplementation("myfla", {"fla": "myfla"})
    if name == "fla":
        return ModuleImplementation("fla", {}, precision="tf32", no_float64="fla's Triton kernels take no float64",
                                    float64_paths=FLA_TORCH_PATHS)
    if name == "ref":
        if upstream_root is None:
            raise UsageError("--impl ref needs the upstream tree (fetched with --upstream or --upstream-path)")
        return registry.reference(Path(upstream_root), False)
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        from portaudit.numerics.impl_spec import load_numerics_config
        config = load_numerics_config(path)
        return build_implementation(config.implementation_spec(), upstream_root)
    raise UsageError(f"unknown implementation '{name}'; choose one of: {', '.join(PRESETS)}, or the path of an "
                     f"implementation YAML file")


def build_implementation(spec: "ImplementationSpec", upstream_root: Optional[Path]) -> Implementation:
    """The implementation a spec describes (imports the port; checks its adapters)."""
    from portaudit.numerics.impl_spec import SpecImplementation
    return SpecImplementation(spec, upstream_root)
