"""Reading and writing files when the paths may be careless or hostile.

Every file portaudit writes (reports, baselines, manifests, rewritten port sources, cache
entries) goes through :func:`write_file`, and every input it reads whole (manifests, baselines,
fixture indexes, source files, cache entries) through :func:`read_regular`:

* only regular files are read or written: a FIFO, a device (``/dev/zero``, ``/dev/null``), a
  socket or a directory is refused with one line, before anything blocks or is replaced;
* reads are bounded: a file over its limit is refused, never loaded whole;
* a write goes through symbolic links to the file they name (the link stays a link), keeps the
  target's permission bits (and owner where allowed), and replaces the content atomically from a
  temporary file in the same directory. A file with several hard links is rewritten in place so
  every link keeps seeing it;
* temporary files never outlive the call, also on Ctrl-C and SIGTERM (both raise through here:
  see :mod:`portaudit.interrupts`).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Union

from portaudit.errors import UsageError

PathLike = Union[str, "os.PathLike[str]"]


def describe_mode(mode: int) -> str:
    """What a non-regular file is, for messages: 'a directory', 'a FIFO', ..."""
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def read_regular(path: PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; anything else is a UsageError.

    The file is opened without blocking (a FIFO would otherwise wait for a writer forever) and
    checked with ``fstat`` on the open descriptor, so what is read is what was checked.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UsageError(f"{name}: {what} not found")
    except OSError as exc:
        raise UsageError(f"{name}: cannot read the {what}: {_os_reason(exc)}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{name}: the {what} is {describe_mode(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise UsageError(f"{name}: the {what} is {st.st_size} bytes, over the {limit}-byte limit")
        chunks = []
        size = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:   # it grew while we read
                raise UsageError(f"{name}: the {what} is over the {limit}-byte limit")
        return b"".join(chunks)
    except OSError as exc:
        raise UsageError(f"{name}: cannot read the {what}: {_os_reason(exc)}")
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def final_target(path: PathLike) -> Path:
    """The file a write to ``path`` must change: symbolic links followed to their end (a dangling
    link names the file to create). A link loop is a UsageError."""
    name = os.fspath(path)
    real = os.path.realpath(name)
    try:
        os.stat(real)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UsageError(f"{name}: cannot write here: {_os_reason(exc)}")
    return Path(real)


def write_file(path: PathLike, data: Union[bytes, str], what: str = "file") -> Path:
    """Write ``data`` (str is written as UTF-8) to ``path`` as described in the module docstring.

    Returns the path actually written (the link target when ``path`` is a link).
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    name = os.fspath(path)
    target = final_target(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UsageError(f"{name}: cannot write the {what}: {_os_reason(exc)}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{name}: refusing to write the {what}: the target is {describe_mode(st.st_mode)}, "
                         "not a regular file; name a regular file (or leave -o out to print to stdout)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{name}: cannot create the directory {target.parent}: {_os_reason(exc)}")
    if st is not None and st.st_nlink > 1:
        _rewrite_in_place(target, payload, name, what)
        return target
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".portaudit-tmp", dir=str(target.parent))
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        if st is not None:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()) and hasattr(os, "chown"):
                try:
                    os.chown(tmp, st.st_uid, st.st_gid)
                except OSError:
                    pass   # not allowed: the file becomes ours, as any editor's save would make it
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise UsageError(f"{name}: cannot write the {what}: {_os_reason(exc)}")
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return target


def _rewrite_in_place(target: Path, payload: bytes, name: str, what: str) -> None:
    """A hard-linked file: a rename would split the links, so the bytes are rewritten in place."""
    try:
        with open(target, "r+b") as fh:
            fh.write(payload)
            fh.truncate()
    except OSError as exc:
        raise UsageError(f"{name}: cannot write the {what}: {_os_reason(exc)}")


def replace_entry(path: PathLike, data: bytes) -> None:
    """Atomically replace the directory entry ``path`` itself, for files in portaudit's own cache:
    a link planted there is replaced, never followed. OSError is the caller's to handle."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".portaudit-tmp", dir=str(target.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def resolved(path: PathLike, what: str = "path") -> Path:
    """``Path(path).resolve()``, with a link loop or an unreadable component as one UsageError
    line. Before Python 3.13 ``resolve`` raises RuntimeError for a loop; from 3.13 it returns the
    path where the loop starts, which ``stat`` then refuses with ELOOP."""
    loop = f"{os.fspath(path)}: cannot resolve the {what}: a symbolic link loop"
    try:
        result = Path(path).expanduser().resolve()
    except RuntimeError:
        raise UsageError(loop) from None
    except OSError as exc:
        reason = exc.strerror or "a symbolic link loop"
        raise UsageError(f"{os.fspath(path)}: cannot resolve the {what}: {reason}") from None
    try:
        os.stat(result)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(loop) from None
    return result


def is_regular_file(path: PathLike) -> bool:
    """Whether ``path`` is a regular file (links followed). A path that cannot exist (a name longer
    than the file system allows, a NUL) is not one: paths built from citations and manifests are
    data, and a bad one is a finding, not a crash."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name the same existing file (links followed)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def make_private_dir(path: PathLike) -> Path:
    """Create a cache directory (and parents) readable only by this user when it is new."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    return p
