"""Upstreams that are not registry releases: a git repository at a commit or tag, or an archive.

Real copies are taken from an upstream's main branch between releases, so a manifest may say::

    upstream: {package: fla, git: ../fla, rev: 9f1c2ab}      # a local clone or bare mirror
    upstream: {package: fla, archive: ../fla-9f1c2ab.tar.gz} # a tar/zip of the tree

The tree at that revision is materialised once into ``<cache>/trees/git-<commit>-<repo>/`` (only
the package folder) and reused like an unpacked wheel. History queries (:meth:`GitRepo.path_history`,
:meth:`GitRepo.read_blobs`) serve ``portaudit provenance``. Nothing here runs upstream code.

Safety: revisions and paths from a manifest or the command line are validated and always follow
``--end-of-options`` (or are full object names), so they can never be read as git options; the
repository path is made absolute first. Only plumbing that reads objects is used (``rev-parse``,
``ls-tree``, ``cat-file``, ``log``): files are written from blob contents by portaudit itself, not by
``git archive`` or a checkout, so no filter, hook or fsmonitor configured in the repository runs.
Paths are checked (no absolute paths, ``..``, links or submodules). Archive members are extracted
only when they are plain files or folders inside the target.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from portaudit.errors import UpstreamError

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
# a revision as a person writes it: a tag, a branch, a commit prefix, `main~3`; never an option
_REV_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./~^@{}+-]{0,199}$")
_DONE_MARKER = ".portaudit-complete"
_GIT_TIMEOUT = 300


def validate_rev(rev: str) -> str:
    rev = str(rev).strip()
    if not _REV_RE.match(rev) or ".." in rev:
        raise UpstreamError(f"'{rev}' is not a git revision portaudit accepts (a tag, branch or commit "
                            "id: letters, digits and ._/~^@{}+- , not starting with '-', no '..')")
    return rev


@dataclass(frozen=True)
class Commit:
    sha: str
    date: str           # committer date, ISO 8601
    subject: str


class GitRepo:
    """A local git repository (a clone or a bare mirror), read through the git command line."""

    def __init__(self, path: str | Path):
        p = Path(path).expanduser().resolve()
        if not p.exists():
            raise UpstreamError(f"git repository {p} does not exist")
        self.path = p
        out = self._git("rev-parse", "--absolute-git-dir", what="open the git repository")
        self.git_dir = Path(out.strip())
        self._tags: Optional[dict[str, list[str]]] = None

    # -- plumbing --------------------------------------------------------------------------
    def _git(self, *args: str, what: str, input_bytes: Optional[bytes] = None, binary: bool = False):
        cmd = ["git", "--no-pager", "-C", str(self.path), "-c", "core.quotepath=off", "-c", "core.fsmonitor=false",
               *args]
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", LC_ALL="C")
        try:
            proc = subprocess.run(cmd, input=input_bytes, capture_output=True, timeout=_GIT_TIMEOUT, env=env)
        except FileNotFoundError as exc:
            raise UpstreamError("git is not installed; it is needed for a 'git:' upstream") from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UpstreamError(f"could not run git to {what} in {self.path}: {exc}") from exc
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise UpstreamError(f"git could not {what} in {self.path}: {err[-1] if err else 'failed'}")
        return proc.stdout if binary else proc.stdout.decode("utf-8", "replace")

    def resolve(self, rev: str) -> str:
        """The full commit id a revision names."""
        rev = validate_rev(rev)
        out = self._git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}",
                        what=f"find revision '{rev}'")
        sha = out.strip()
        if not _SHA_RE.match(sha):
            raise UpstreamError(f"revision '{rev}' does not name a commit in {self.path}")
        return sha

    def commit(self, sha: str) -> Commit:
        out = self._git("show", "-s", "--format=%H%x00%cI%x00%s", "--end-of-options", self._sha(sha),
                        what="read a commit")
        h, date, subject = (out.strip().split("\x00") + ["", ""])[:3]
        return Commit(h, date, subject)

    @staticmethod
    def _sha(sha: str) -> str:
        if not _SHA_RE.match(sha):
            raise UpstreamError(f"'{sha}' is not a full commit id")
        return sha

    def tags(self) -> dict[str, list[str]]:
        """commit id -> tag names pointing at it."""
        if self._tags is None:
            out = self._git("for-each-ref", "--format=%(objectname) %(*objectname) %(refname:short)",
                            "refs/tags", what="list tags")
            tags: dict[str, list[str]] = {}
            for line in out.splitlines():
                parts = line.split()
                if len(parts) == 3:
                    obj, peeled, name = parts
                elif len(parts) == 2:
                    obj, name = parts
                    peeled = ""
                else:
                    continue
                tags.setdefault(peeled or obj, []).append(name)
            self._tags = tags
        return self._tags

    def describe_line(self, line: Sequence["Commit"]) -> dict[str, str]:
        """Names for a first-parent line, oldest first: ``v0.3.2``, ``v0.3.2+14`` (14 commits after
        the tag on the line) or the short id before the first tag; no git call per commit."""
        tags = self.tags()
        out, last, n = {}, None, 0
        for c in line:
            if c.sha in tags:
                last, n = sorted(tags[c.sha])[-1], 0
            else:
                n += 1
            out[c.sha] = c.sha[:10] if last is None else (last if n == 0 else f"{last}+{n}")
        return out

    def describe(self, sha: str) -> str:
        """``v0.3.2``, ``v0.3.2+14`` (14 first-parent commits after the tag) or the short id."""
        try:
            out = self._git("describe", "--tags", "--first-parent", "--long", "--end-of-options",
                            self._sha(sha), what="describe a commit").strip()
        except UpstreamError:
            return sha[:10]
        m = re.match(r"^(.*)-(\d+)-g[0-9a-f]+$", out)
        if not m:
            return sha[:10]
        tag, n = m.group(1), int(m.group(2))
        return tag if n == 0 else f"{tag}+{n}"

    # -- trees -----------------------------------------------------------------------------
    def tree(self, sha: str, package: str, cache_dir: Path) -> Path:
        """The package folder at ``sha``, materialised once under the cache; returns the root."""
        sha = self._sha(sha)
        repo_key = hashlib.sha256(str(self.git_dir).encode()).hexdigest()[:8]
        root = Path(cache_dir) / "trees" / f"git-{sha[:16]}-{repo_key}-{_safe(package)}"
        if (root / _DONE_MARKER).is_file():
            return root
        top = package.split(".")[0]
        files = self.files_at(sha, top)
        if not files:
            raise UpstreamError(f"the package folder '{top}/' does not exist at {sha[:10]} in {self.path}")
        contents = self.read_blobs(files.values())
        (Path(cache_dir) / "trees").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=Path(cache_dir) / "trees"))
        try:
            for path, blob in files.items():
                target = tmp / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(contents[blob])
            (tmp / _DONE_MARKER).write_text(f"git {self.git_dir} {sha}\n")
            publish(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return root

    def files_at(self, sha: str, folder: str) -> dict[str, str]:
        """Regular files under ``folder`` at a commit: path -> blob id (links and submodules left out)."""
        out = self._git("ls-tree", "-r", "--full-tree", "--end-of-options", self._sha(sha), "--", folder,
                        what="list files")
        files = {}
        for line in out.splitlines():
            meta, _, path = line.partition("\t")
            parts = meta.split()
            if len(parts) == 3 and parts[1] == "blob" and parts[0] in ("100644", "100755") \
                    and _member_ok(path) and (path == folder or path.startswith(folder + "/")):
                files[path] = parts[2]
        return files

    # -- history ---------------------------------------------------------------------------
    def first_parent_commits(self, until: str, since: Optional[str] = None,
                             paths: Sequence[str] = ()) -> list[Commit]:
        """Commits on the first-parent line of ``until`` (after ``since``), oldest first, that touch
        ``paths`` (all commits when no paths are given)."""
        until_sha = self.resolve(until)
        args = ["log", "--first-parent", "--reverse", "--format=%H%x00%cI%x00%s"]
        revs = [until_sha] if since is None else [f"^{self.resolve(since)}", until_sha]
        out = self._git(*args, "--end-of-options", *revs, "--", *paths, what="list history")
        commits = []
        for line in out.splitlines():
            h, _, rest = line.partition("\x00")
            date, _, subject = rest.partition("\x00")
            if _SHA_RE.match(h):
                commits.append(Commit(h, date, subject))
        return commits

    def path_states(self, until: str, since: Optional[str], paths: Sequence[str]) -> dict[str, dict[str, str]]:
        """commit id -> {path: blob id} along the first-parent line of ``until`` (after ``since``),
        for every commit that changes one of ``paths`` and the line's first commit: one ``git log
        --raw`` call replayed from the first commit's tree."""
        line = self.first_parent_commits(until, since)
        if not line or not paths:
            return {}
        first = line[0].sha
        state = self.blobs_at(first, paths)
        out = {first: dict(state)}
        out_raw = self._git("log", "--first-parent", "--reverse", "--raw", "--no-abbrev", "--no-renames",
                            "--format=%x00%H", "--end-of-options", f"^{first}", self.resolve(until), "--",
                            *paths, what="read file history")
        current = None
        for line_ in out_raw.splitlines():
            if line_.startswith("\x00"):
                if current is not None:
                    out[current] = dict(state)
                current = line_[1:].strip()
            elif line_.startswith(":") and "\t" in line_:
                meta, _, path = line_.partition("\t")
                parts = meta.split()
                if len(parts) >= 5:
                    new_blob, status = parts[3], parts[4]
                    if status.startswith("D") or set(new_blob) == {"0"}:
                        state.pop(path, None)
                    else:
                        state[path] = new_blob
        if current is not None:
            out[current] = dict(state)
        return out

    def blobs_at(self, sha: str, paths: Sequence[str]) -> dict[str, str]:
        """path -> blob id at a commit, for those of ``paths`` that exist there."""
        if not paths:
            return {}
        out = self._git("ls-tree", "-r", "--full-tree", "--end-of-options", self._sha(sha), "--",
                        *paths, what="list files")
        found = {}
        for line in out.splitlines():
            meta, _, path = line.partition("\t")
            parts = meta.split()
            if len(parts) == 3 and parts[1] == "blob":
                found[path] = parts[2]
        return found

    def read_blobs(self, blob_ids: Iterable[str]) -> dict[str, bytes]:
        """Contents of many blobs in one ``git cat-file --batch`` call."""
        ids = [b for b in dict.fromkeys(blob_ids) if _SHA_RE.match(b)]
        if not ids:
            return {}
        data = self._git("cat-file", "--batch", input_bytes=("\n".join(ids) + "\n").encode(), binary=True,
                         what="read file contents")
        out: dict[str, bytes] = {}
        pos = 0
        for _ in ids:
            nl = data.index(b"\n", pos)
            header = data[pos:nl].decode().split()
            pos = nl + 1
            if len(header) < 3 or header[1] == "missing":
                continue
            size = int(header[2])
            out[header[0]] = data[pos:pos + size]
            pos += size + 1
        return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]


def publish(tmp: Path, root: Path) -> None:
    """Move a finished tree into place; the first complete tree wins (parallel runs)."""
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


def _member_ok(name: str) -> bool:
    p = Path(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and not name.startswith(("/", "\\"))


def extract_tar(fileobj, dest: Path, what: str) -> None:
    """Extract regular files and folders of a tar stream into ``dest``; anything else is skipped."""
    try:
        with tarfile.open(fileobj=fileobj, mode="r:*") as tf:
            for m in tf:
                if not _member_ok(m.name):
                    raise UpstreamError(f"{what}: member '{m.name}' points outside the tree")
                target = dest / m.name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(m)
                    with open(target, "wb") as fh:
                        shutil.copyfileobj(src, fh)
    except tarfile.TarError as exc:
        raise UpstreamError(f"{what} is not a readable tar archive: {exc}") from exc


def extract_zip(path: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not _member_ok(info.filename):
                    raise UpstreamError(f"archive {path.name}: member '{info.filename}' points outside the tree")
                target = dest / info.filename
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    continue      # a symbolic link: never followed
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as fh:
                    shutil.copyfileobj(src, fh)
    except zipfile.BadZipFile as exc:
        raise UpstreamError(f"archive {path.name} is not a readable zip file: {exc}") from exc


def archive_tree(archive: str | Path, package: str, cache_dir: Path) -> Path:
    """Unpack a tar/zip archive of an upstream tree once; return the folder holding ``package``."""
    path = Path(archive).expanduser().resolve()
    if not path.is_file():
        raise UpstreamError(f"upstream archive {path} does not exist")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    root = Path(cache_dir) / "trees" / f"archive-{digest}"
    if not (root / _DONE_MARKER).is_file():
        (Path(cache_dir) / "trees").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=Path(cache_dir) / "trees"))
        try:
            if zipfile.is_zipfile(path):
                extract_zip(path, tmp)
            else:
                with open(path, "rb") as fh:
                    extract_tar(fh, tmp, f"archive {path.name}")
            (tmp / _DONE_MARKER).write_text(f"archive {path}\n")
            publish(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    top = package.split(".")[0]
    if (root / top).is_dir():
        return root
    # an archive with one leading folder (`fla-main/fla/...`)
    subs = [p for p in root.iterdir() if p.is_dir() and (p / top).is_dir()]
    if len(subs) == 1:
        return subs[0]
    raise UpstreamError(f"archive {path.name} does not contain the package folder '{top}/'")
