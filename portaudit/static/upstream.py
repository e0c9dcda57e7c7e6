"""Locate the two trees a manifest compares: the upstream and the port.

The upstream is pinned distributions fetched from the package registry, or a local tree; the port
is the manifest's ``port.path``, an explicit folder or the installed package (:func:`locate_port_root`).

Distributions (``fla-core==0.4.0``) are fetched with ``pip download --no-deps`` into a cache,
unpacked once into ``<cache>/trees/<key>/`` and reused. The cache lives under the user's cache
directory (``~/.cache/portaudit``), overridden by ``$PORTAUDIT_CACHE`` or an explicit argument.
Nothing here imports upstream code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

from portaudit.errors import UpstreamError

if TYPE_CHECKING:
    from portaudit.static.manifest import Manifest

CACHE_ENV = "PORTAUDIT_CACHE"
_DONE_MARKER = ".portaudit-complete"

Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "portaudit"


def parse_distributions(spec: str | Sequence[str]) -> list[str]:
    """``"a==1,b==2"`` or ``["a==1", "b==2"]`` -> ``["a==1", "b==2"]``; each must pin ``==``."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = [s.strip() for s in items if s and s.strip()]
    if not out:
        raise UpstreamError("no upstream distributions given; expected e.g. 'fla-core==0.4.0'")
    for s in out:
        name, sep, ver = s.partition("==")
        if not sep or not name.strip() or not ver.strip():
            raise UpstreamError(f"upstream distribution '{s}' is not pinned; write it as NAME==VERSION")
    return out


def _tree_key(dists: Sequence[str]) -> str:
    canon = ",".join(sorted(d.replace("_", "-").lower() for d in dists))
    slug = "+".join(sorted(d.replace("==", "-").replace("/", "_") for d in dists))
    return f"{slug[:80]}-{hashlib.sha256(canon.encode()).hexdigest()[:10]}"


def _pip_download(dist: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), dist]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpstreamError(f"could not run pip to fetch '{dist}': {exc}") from exc
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        last = next((ln for ln in reversed(detail) if ln.strip() and "WARNING" not in ln), "no wheel found")
        raise UpstreamError(
            f"could not fetch '{dist}' from the package registry ({last.strip()}); "
            "check the version and the network, or pass --upstream-path DIR")
    return wheels[0]


def _unpack(wheel: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise UpstreamError(f"wheel {wheel.name} is corrupt (bad member {bad})")
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise UpstreamError(f"wheel {wheel.name} is corrupt: {exc}") from exc


def fetch_distributions(
    dists: str | Sequence[str],
    cache_dir: Optional[Path] = None,
    progress: Optional[Progress] = None,
    wheel_dir: Optional[Path] = None,
) -> Path:
    """Fetch and unpack the pinned distributions once; return the root of the unpacked tree.

    ``wheel_dir``: take wheels from this folder (``pip download --no-index --find-links``
    semantics: any ``*.whl`` whose name matches) instead of the registry, e.g. for offline tests.
    """
    dists = parse_distributions(dists)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    root = cache / "trees" / _tree_key(dists)
    if (root / _DONE_MARKER).is_file():
        return root
    try:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "trees").mkdir(exist_ok=True)
    except OSError as exc:
        raise UpstreamError(f"cannot create the cache directory {cache}: {exc}") from exc
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache / "trees"))
    try:
        for dist in dists:
            if progress:
                progress(f"fetching {dist}")
            if wheel_dir is not None:
                wheel = _find_local_wheel(dist, Path(wheel_dir))
            else:
                dl = Path(tempfile.mkdtemp(prefix=".dl-", dir=cache))
                try:
                    wheel = _pip_download(dist, dl)
                    kept = cache / "wheels" / wheel.name
                    kept.parent.mkdir(exist_ok=True)
                    shutil.copy2(wheel, kept)
                    wheel = kept
                finally:
                    shutil.rmtree(dl, ignore_errors=True)
            if progress:
                progress(f"unpacking {wheel.name}")
            _unpack(wheel, tmp)
        (tmp / _DONE_MARKER).write_text("\n".join(dists) + "\n")
        _publish(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _publish(tmp: Path, root: Path) -> None:
    """Move a finished tree into place. Several processes (pytest-xdist workers, parallel CI jobs)
    may fetch the same upstream at once: the first complete tree wins and is never removed under
    a reader; a later one is discarded. Only an incomplete leftover (a killed run) is replaced."""
    if (root / _DONE_MARKER).is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)
    try:
        os.replace(tmp, root)
    except OSError:
        if not (root / _DONE_MARKER).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _find_local_wheel(dist: str, wheel_dir: Path) -> Path:
    name, _, ver = dist.partition("==")
    norm = name.strip().replace("-", "_").lower()
    for w in sorted(wheel_dir.glob("*.whl")):
        parts = w.name.split("-")
        if len(parts) >= 2 and parts[0].lower() == norm and parts[1] == ver.strip():
            return w
    raise UpstreamError(f"no wheel for '{dist}' in {wheel_dir}")


def local_tree(path: str | Path, package: Optional[str] = None) -> Path:
    """Validate ``--upstream-path DIR``: DIR holds the package folder (or is it); return the root."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UpstreamError(f"upstream path {p} is not a directory")
    if package:
        if (p / package / "__init__.py").is_file():
            return p
        if p.name == package and (p / "__init__.py").is_file():
            return p.parent
        raise UpstreamError(
            f"upstream path {p} does not contain the package '{package}' "
            f"(expected {p / package / '__init__.py'})")
    return p


def resolve_upstream(
    distributions: str | Sequence[str] | None = None,
    upstream_path: str | Path | None = None,
    package: Optional[str] = None,
    cache_dir: Optional[Path] = None,
    progress: Optional[Progress] = None,
) -> Path:
    """Return the root directory that contains the upstream package folder."""
    if upstream_path is not None:
        return local_tree(upstream_path, package)
    if not distributions:
        raise UpstreamError("no upstream given: name distributions or pass --upstream-path DIR")
    root = fetch_distributions(distributions, cache_dir=cache_dir, progress=progress)
    if package and not (root / package).is_dir():
        raise UpstreamError(f"the fetched distributions do not contain the package '{package}'")
    return root


def iter_python_files(root: Path, package: str) -> Iterable[Path]:
    yield from sorted((root / package).rglob("*.py"))


def locate_port_root(manifest: Manifest, override: Optional[str | Path] = None) -> Optional[Path]:
    """The directory holding the manifest's port package, found without importing the port: the
    override; else ``port.path`` (relative to the manifest) when the package is there; else the
    package the manifest is shipped in; else the installed package; else ``port.path`` as given."""
    if override is not None:
        p = Path(override).expanduser().resolve()
        if (p / "__init__.py").is_file() and p.name == manifest.port.package.split(".")[0]:
            return p.parent
        return p
    from portaudit.static.bundled import AUDIT_DIR, package_dir

    top = manifest.port.package.split(".")[0]
    declared = (manifest.path.parent / manifest.port.path).resolve() if manifest.port.path else None
    if declared is not None and (declared / top).is_dir():
        return declared
    # a manifest a port ships inside itself (<package>/audit/NAME.yaml) audits that very package
    shipped_in = manifest.path.resolve().parent
    if shipped_in.name == AUDIT_DIR and shipped_in.parent.name == top and (shipped_in.parent / "__init__.py").is_file():
        return shipped_in.parent.parent
    # a manifest copied away from its port: port.path no longer leads to the package, the installed one does
    installed = package_dir(top)
    if installed is not None:
        return installed.parent
    return declared
