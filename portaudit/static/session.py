"""One audit session: resolves upstream trees and port roots once, shares indexes between manifests.

Reusable by other commands (numerics, drift, provenance): ``Session(...).upstream_root(manifest)``
and ``Session(...).index(root)`` give the trees without re-fetching or re-parsing; the upstream may
be pinned distributions, a local tree, a git repository at a revision (``Session.git_repo``) or
an archive (:mod:`portaudit.static.gittree`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from portaudit.errors import UsageError
from portaudit.safe_io import resolved
from portaudit.static.checks.runner import Auditor
from portaudit.static.gittree import GitRepo, archive_tree
from portaudit.static.index.tree import TreeIndex
from portaudit.static.manifest import Manifest
from portaudit.static.results import ManifestResult
from portaudit.static.upstream import default_cache_dir, locate_port_root, resolve_upstream

Progress = Callable[[str], None]


class Session:
    def __init__(self, upstream_path: Optional[Path] = None, port_path: Optional[Path] = None,
                 cache_dir: Optional[Path] = None, progress: Optional[Progress] = None,
                 use_index_cache: bool = True, upstream_git: Optional[Path] = None,
                 body_figures: bool = False, upstream_rev: Optional[str] = None):
        self.upstream_path = upstream_path
        self.upstream_git = upstream_git      # overrides the manifest's upstream.git
        self.upstream_rev = upstream_rev      # overrides its upstream.rev
        self.body_figures = body_figures
        self.port_path = port_path
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.progress = progress
        self.use_index_cache = use_index_cache
        self._roots: dict[tuple, Path] = {}
        self._repos: dict[str, GitRepo] = {}
        self._indexes: dict[Path, TreeIndex] = {}

    def say(self, msg: str) -> None:
        if self.progress:
            self.progress(msg)

    def git_repo(self, manifest: Manifest) -> GitRepo:
        """The manifest's upstream repository (``upstream.git``, or --upstream-git)."""
        where = self.upstream_git or (manifest.path.parent / manifest.upstream.git)
        key = str(where)
        if key not in self._repos:
            self._repos[key] = GitRepo(where)
        return self._repos[key]

    def upstream_root(self, manifest: Manifest) -> Path:
        up = manifest.upstream
        if self.upstream_path is None and up.git:
            repo = self.git_repo(manifest)
            key = ("git-tree", str(repo.git_dir), up.rev, up.package)
            if key not in self._roots:
                self.say(f"resolving upstream {up.package} at {up.rev} in {repo.path}")
                self._roots[key] = repo.tree(repo.resolve(up.rev), up.package, self.cache_dir)
            return self._roots[key]
        if self.upstream_path is None and up.archive:
            key = ("archive", str(manifest.path.parent / up.archive), up.package)
            if key not in self._roots:
                self._roots[key] = archive_tree(manifest.path.parent / up.archive, up.package, self.cache_dir)
            return self._roots[key]
        local = self.upstream_path
        if local is None and manifest.upstream.path:
            local = resolved(manifest.path.parent / manifest.upstream.path, "upstream path")
        key = (str(local), tuple(manifest.upstream.distributions), manifest.upstream.package)
        if key not in self._roots:
            self.say(f"resolving upstream {', '.join(manifest.upstream.distributions) or local}")
            self._roots[key] = resolve_upstream(
                distributions=manifest.upstream.distributions or None, upstream_path=local,
                package=manifest.upstream.package, cache_dir=self.cache_dir, progress=self.progress)
        return self._roots[key]

    def port_root(self, manifest: Manifest) -> Path:
        root = locate_port_root(manifest, self.port_path)
        top = manifest.port.package.split(".")[0]
        if root is None or not (root / top).is_dir():
            where = f" under {root}" if root is not None else ""
            raise UsageError(f"{manifest.path}: cannot locate the port package '{top}'{where}; "
                             "install it, set 'port.path' in the manifest or pass --port-path DIR")
        return root

    def index(self, root: Path) -> TreeIndex:
        root = resolved(root, "tree root")
        if root not in self._indexes:
            self._indexes[root] = TreeIndex(root, self.cache_dir if self.use_index_cache else None,
                                            on_parse=self.progress)
        return self._indexes[root]

    def retarget(self, manifest: Manifest) -> Manifest:
        """Apply --upstream-rev to a manifest with a git upstream: it is compared with that revision
        (and, unless it sets upstream.version, its citations must name it)."""
        if self.upstream_rev and manifest.upstream.git:
            manifest.upstream.rev = self.upstream_rev
        return manifest

    def audit(self, manifest: Manifest) -> ManifestResult:
        self.retarget(manifest)
        up = self.index(self.upstream_root(manifest))
        port = self.index(self.port_root(manifest))
        self.say(f"indexing and checking {manifest.name}")
        return Auditor(up, port, body_figures=self.body_figures).run(manifest)

    @property
    def parsed_files(self) -> list[str]:
        return [p for ix in self._indexes.values() for p in ix.parsed_files]

    @property
    def loaded_files(self) -> list[str]:
        return [p for ix in self._indexes.values() for p in ix.loaded_files]
