"""Locate the two trees a manifest compares: the upstream and the port.

The upstream is pinned distributions fetched from the package registry, or a local tree; the port
is the manifest's ``port.path``, an explicit folder or the installed package (:func:`locate_port_root`).

Distributions (``fla-core==0.4.0``, validated by :mod:`.requirements`) are fetched with
``pip download --no-deps --only-binary :all: -- NAME==VERSION`` (never a build, never an option
taken from the manifest) into a cache, unpacked once into ``<cache>/trees/<key>/`` (within size
limits) and reused. The cache lives under the user's cache directory (``~/.cache/portaudit``),
overridden by ``$PORTAUDIT_CACHE`` or an explicit argument. Nothing here imports upstream code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

from packaging.utils import canonicalize_name
from packaging.version import Version

from portaudit.errors import UpstreamError, UsageError
from portaudit.safe_io import resolved
from portaudit.static.requirements import PinnedRequirement, RequirementError, parse_pinned_list

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
    """``"a==1,b==2"`` or ``["a==1", "b==2"]`` -> ``["a==1", "b==2"]``; each must be exactly
    ``NAME==VERSION`` (:mod:`.requirements`), else a UsageError (exit 2)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        parse_pinned_list(items)
    except RequirementError as exc:
        raise UsageError(f"upstream distribution: {exc}") from None
    return [s.strip() for s in items if s and s.strip()]


def _tree_key(dists: Sequence[str]) -> str:
    canon = ",".join(sorted(d.replace("_", "-").lower() for d in dists))
    slug = "+".join(sorted(d.replace("==", "-").replace("/", "_") for d in dists))
    return f"{slug[:80]}-{hashlib.sha256(canon.encode()).hexdigest()[:10]}"


def pip_download_command(req: PinnedRequirement, dest: Path) -> list[str]:
    """The exact argv: options first, then ``--`` and one requirement rebuilt from parsed parts.

    ``--only-binary :all:`` means pip never builds (and so never runs) anything; ``--no-deps``
    fetches nothing the manifest did not name.
    """
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
            "--no-input", "--disable-pip-version-check", "-q", "-d", str(dest), "--", str(req)]


def _pip_download(req: PinnedRequirement, dest: Path) -> Path:
    # cwd is the fresh, empty download folder: `python -m pip` puts the working directory first on
    # sys.path, and a `pip/` folder in an audited checkout must never be what runs.
    try:
        proc = subprocess.run(pip_download_command(req, dest), capture_output=True, text=True, timeout=600,
                              cwd=str(dest), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpstreamError(f"could not run pip to fetch '{req}': {exc}") from exc
    wheels = [w for w in sorted(dest.glob("*.whl")) if _wheel_matches(w.name, req)]
    if proc.returncode != 0 or not wheels:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        last = next((ln for ln in reversed(detail) if ln.strip() and "WARNING" not in ln), "no wheel found")
        raise UpstreamError(
            f"could not fetch '{req}' from the package registry ({last.strip()[:300]}); "
            "check the version and the network, or pass --upstream-path DIR")
    return wheels[0]


def _wheel_matches(filename: str, req: PinnedRequirement) -> bool:
    """``fla_core-0.4.0-py3-none-any.whl`` is a wheel of ``fla-core==0.4.0``."""
    parts = filename[:-4].split("-") if filename.endswith(".whl") else []
    if len(parts) < 5:
        return False
    try:
        return canonicalize_name(parts[0]) == req.canonical_name and Version(parts[1]) == Version(req.version)
    except ValueError:   # InvalidVersion, or a release number past Python's int digit limit
        return False


# A wheel is a zip archive: bound what unpacking it may produce (fla's wheels: ~300 files, 3 MB).
MAX_WHEEL_MEMBERS = 50_000
MAX_WHEEL_UNPACKED = 2 << 30


def _unpack(wheel: Path, dest: Path) -> None:
    """Unpack a wheel after checking every member's CRC; a damaged one is an UpstreamError (exit 3)."""
    hint = f"delete {wheel} and run again" if "wheels" in wheel.parts else "fetch it again"
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = zf.infolist()
            if len(members) > MAX_WHEEL_MEMBERS or sum(m.file_size for m in members) > MAX_WHEEL_UNPACKED:
                raise UpstreamError(f"wheel {wheel.name} would unpack to more than {MAX_WHEEL_MEMBERS} files "
                                    f"or {MAX_WHEEL_UNPACKED >> 30} GiB; refusing it")
            bad = zf.testzip()
            if bad is not None:
                raise UpstreamError(f"wheel {wheel} is corrupt (bad CRC in {bad}); {hint}")
            zf.extractall(dest)
    except UpstreamError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError,
            RuntimeError, zlib.error, struct.error) as exc:
        # a truncated member surfaces as EOFError, zlib.error or struct.error from inside zipfile
        raise UpstreamError(f"wheel {wheel} is corrupt ({type(exc).__name__}: {exc}); {hint}") from None
    except OSError as exc:
        raise UpstreamError(f"cannot unpack wheel {wheel}: {exc.strerror or exc}") from None


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
    reqs = parse_pinned_list(dists)
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
        for req in reqs:
            if progress:
                progress(f"fetching {req}")
            if wheel_dir is not None:
                wheel = _find_local_wheel(req, Path(wheel_dir))
            else:
                dl = Path(tempfile.mkdtemp(prefix=".dl-", dir=cache))
                try:
                    wheel = _pip_download(req, dl)
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


def _find_local_wheel(req: PinnedRequirement, wheel_dir: Path) -> Path:
    for w in sorted(wheel_dir.glob("*.whl")):
        if _wheel_matches(w.name, req):
            return w
    raise UpstreamError(f"no wheel for '{req}' in {wheel_dir}")


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
        p = resolved(override, "port path")
        if (p / "__init__.py").is_file() and p.name == manifest.port.package.split(".")[0]:
            return p.parent
        return p
    from portaudit.static.bundled import AUDIT_DIR, package_dir

    top = manifest.port.package.split(".")[0]
    declared = resolved(manifest.path.parent / manifest.port.path, "port path") if manifest.port.path else None
    if declared is not None and (declared / top).is_dir():
        return declared
    # a manifest a port ships inside itself (<package>/audit/NAME.yaml) audits that very package
    shipped_in = resolved(manifest.path, "manifest path").parent
    if shipped_in.name == AUDIT_DIR and shipped_in.parent.name == top and (shipped_in.parent / "__init__.py").is_file():
        return shipped_in.parent.parent
    # a manifest copied away from its port: port.path no longer leads to the package, the installed one does
    installed = package_dir(top)
    if installed is not None:
        return installed.parent
    return declared


def locate_tree(path: str | Path, package: str) -> Path:
    """The root holding ``package`` (dotted), given that root or a folder on the package's path."""
    p = Path(path).expanduser().resolve()
    parts = package.split(".")
    if (p / parts[0]).is_dir():
        return p
    for i in range(len(parts), 0, -1):       # e.g. .../vllm/model_executor for vllm.model_executor.x
        if p.name == parts[i - 1] and len(p.parents) >= i and (p.parents[i - 1] / parts[0]).is_dir():
            return p.parents[i - 1]
    raise UsageError(f"{p} does not hold the package '{parts[0]}' (pass the folder that contains {parts[0]}/)")
