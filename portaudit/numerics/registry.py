"""The implementations that ``--impl`` names: ``myfla`` (the port), ``fla`` (the real upstream), ``ref``.

Kept apart from :mod:`.impl` because ``ref`` is built by :mod:`.reference`, which itself builds on
:mod:`.impl`'s classes; the reference is imported only when asked for (it loads upstream code).
"""

from __future__ import annotations

from portaudit.errors import UsageError
from portaudit.numerics.impl import Implementation, ModuleImplementation


def get_implementation(name: str, upstream_root=None) -> Implementation:
    """``myfla`` | ``fla`` | ``ref`` (the CPU reference; needs the fetched upstream tree)."""
    if name == "myfla":
        return ModuleImplementation("myfla", {"fla": "myfla"})
    if name == "fla":
        return ModuleImplementation("fla", {})
    if name == "ref":
        if upstream_root is None:
            raise UsageError("--impl ref needs the upstream tree (fetched with --upstream or --upstream-path)")
        from portaudit.numerics.reference import reference_implementation
        return reference_implementation(upstream_root)
    raise UsageError(f"unknown implementation '{name}'; choose one of: myfla, fla, ref")
