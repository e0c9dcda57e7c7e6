"""Audit data a port ships with itself: manifests, their ratchet baselines and golden fixtures.

A port package carries them as package data in an ``audit/`` folder (``myfla/audit/kda.yaml``,
``myfla/audit/baseline/kda.json``, ``myfla/audit/golden/``), so that after a plain ``pip install``
they are named by reference instead of by path::

    portaudit check --manifest myfla:kda        # one manifest
    portaudit check --manifest myfla:           # every manifest the package ships
    portaudit golden check --fixtures myfla:golden

In a source checkout the package folder has no ``audit/``; the data lives beside the package, where
the wheel build takes it from: ``manifests/*.yaml``, ``manifests/baseline/`` and
``tests/fixtures/golden/`` next to the package folder. The package is located with
``importlib.util.find_spec`` on its top-level name, which imports nothing.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import List, Optional

from portaudit.errors import UsageError

AUDIT_DIR = "audit"
# where a source checkout keeps what the wheel ships as <package>/audit/ (relative to the checkout root)
CHECKOUT_MANIFESTS = Path("manifests")
CHECKOUT_FIXTURES = Path("tests/fixtures")
GOLDEN = "golden"
# the golden fixture sets a port may ship (each <package>/audit/<name>/, tests/fixtures/<name>/ in a checkout)
FIXTURE_SETS = (GOLDEN, "golden_rwkv7")
GOLDEN_INDEX = "index.json"   # portaudit.numerics.fixtures.INDEX (that half imports torch)

_REFERENCE = re.compile(r"^(?P<package>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):(?P<name>[A-Za-z0-9_.-]*)$")


def is_reference(text: str) -> bool:
    """``PACKAGE:NAME`` (or ``PACKAGE:``) that is not an existing path."""
    return bool(_REFERENCE.match(text)) and not Path(text).exists()


def package_dir(package: str) -> Optional[Path]:
    """The folder of an importable top-level package, found without importing it."""
    top = package.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def _locate(package: str, reference: str) -> Path:
    found = package_dir(package)
    if found is None:
        raise UsageError(f"{reference}: no package '{package}' is installed here (portaudit looks for its "
                         f"{AUDIT_DIR}/ folder without importing it); install it, e.g. "
                         f"`pip install --no-deps {package}`, or pass a file path")
    return found


def manifest_dir(package: str, reference: str) -> Path:
    """The folder of the manifests ``package`` ships (installed) or keeps beside it (checkout)."""
    pkg = _locate(package, reference)
    for candidate in (pkg / AUDIT_DIR, pkg.parent / CHECKOUT_MANIFESTS):
        if any(candidate.glob("*.yaml")):
            return candidate
    raise UsageError(f"{reference}: the package at {pkg} ships no manifests (looked in {pkg / AUDIT_DIR} "
                     f"and {pkg.parent / CHECKOUT_MANIFESTS})")


def resolve_manifest_reference(text: str) -> List[Path]:
    """``PACKAGE:NAME`` -> that manifest file; ``PACKAGE:`` -> all of them (sorted)."""
    match = _REFERENCE.match(text)
    if match is None:
        raise UsageError(f"'{text}' is not a manifest reference; write PACKAGE:NAME, e.g. myfla:kda")
    folder = manifest_dir(match["package"], text)
    name = match["name"]
    if not name:
        return sorted(folder.glob("*.yaml"))
    for suffix in (".yaml", ".yml"):
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return [path]
    shipped = ", ".join(p.stem for p in sorted(folder.glob("*.yaml")))
    raise UsageError(f"{text}: no manifest '{name}' in {folder}; the package ships: {shipped}")


def resolve_fixtures_reference(text: str) -> Path:
    """``PACKAGE:golden`` (or another of :data:`FIXTURE_SETS`) -> the golden fixtures the package
    ships (or keeps beside it, checkout)."""
    match = _REFERENCE.match(text)
    if match is None or match["name"] not in FIXTURE_SETS:
        raise UsageError(f"'{text}' is not a fixture reference; write PACKAGE:NAME with NAME one of "
                         f"{', '.join(FIXTURE_SETS)}, e.g. myfla:{GOLDEN}")
    pkg = _locate(match["package"], text)
    name = match["name"]
    for candidate in (pkg / AUDIT_DIR / name, pkg.parent / CHECKOUT_FIXTURES / name):
        if (candidate / GOLDEN_INDEX).is_file():
            return candidate
    raise UsageError(f"{text}: the package at {pkg} ships no golden fixtures '{name}' (looked in "
                     f"{pkg / AUDIT_DIR / name} and {pkg.parent / CHECKOUT_FIXTURES / name})")
