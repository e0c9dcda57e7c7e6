"""Item 4: `-o FILE` writes through links and refuses what is not a regular file.

A link stays a link and its target gets the report; a device, a FIFO, a directory, a link loop
or a file the command reads (the manifest, the baseline) are refused with one line, untouched.
"""

from __future__ import annotations

import os
import stat
import threading

import pytest
from typer.testing import CliRunner

from portaudit.cli import app
from portaudit.errors import UsageError
from portaudit.safe_io import read_regular, write_file

from tests.portaudit.hostile.helpers import assert_one_line_error, run_cli

UP = {"up/m.py": "def f(x):\n    return x\n"}
PO = {"po/m.py": 'def f(x):\n    """Source: up/m.py:L1-L2 (up 1.0)"""\n    return x\n'}


@pytest.fixture
def clean(ws):
    ws.files(UP, PO)
    ws.manifest(["up.m.f"])
    return ws


def check(clean, *extra):
    return CliRunner().invoke(app, ["check", *clean.cli_args(), "-f", "json", *extra])


def test_symlink_target_gets_the_report_and_the_link_stays(clean, tmp_path):
    target = tmp_path / "reports" / "real.json"
    target.parent.mkdir()
    target.write_text("old report")
    os.chmod(target, 0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    r = check(clean, "-o", str(link))
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and '"schema": "portaudit.check/1"' in target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "new" / "made.json")
    assert check(clean, "-o", str(dangling)).exit_code == 0
    assert dangling.is_symlink() and (tmp_path / "new" / "made.json").is_file()
    assert not [p for p in tmp_path.rglob("*portaudit-tmp*")]


def test_fifo_directory_and_link_loop_are_refused(clean, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    for target, what in ((fifo, "FIFO"), (tmp_path, "directory"), (loop, "symbolic links")):
        r = check(clean, "-o", str(target))
        assert r.exit_code == 2, r.output
        assert what in r.output and r.output.count("\n") == 1, r.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
def test_device_node_is_refused_through_the_real_cli(clean, tmp_path):
    """As root the old code replaced a device (`-o /dev/null` would replace the system's).
    A private copy of /dev/null is used here."""
    dev = tmp_path / "null"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    link = tmp_path / "to-null"
    link.symlink_to(dev)
    for target in (dev, link):
        proc = run_cli(["check", *clean.cli_args(), "-f", "json", "-o", str(target)])
        assert_one_line_error(proc, 2, "character device")
    assert stat.S_ISCHR(os.lstat(dev).st_mode) and link.is_symlink()


def test_report_never_replaces_an_input(clean, tmp_path):
    manifest = clean.tmp / "m.yaml"
    before = manifest.read_bytes()
    r = check(clean, "-o", str(manifest))
    assert r.exit_code == 2 and "which this command reads" in r.output
    alias = tmp_path / "alias.yaml"
    alias.symlink_to(manifest)
    assert check(clean, "-o", str(alias)).exit_code == 2
    assert manifest.read_bytes() == before
    base = tmp_path / "base"
    assert CliRunner().invoke(app, ["gate", *clean.cli_args(), "--baseline", str(base),
                                    "--update-baseline"]).exit_code == 0
    r = CliRunner().invoke(app, ["gate", *clean.cli_args(), "--baseline", str(base), "-f", "json",
                                 "-o", str(base / "m.json")])
    assert r.exit_code == 2 and "which this command reads" in r.output


def test_safe_io_reads_only_regular_files_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = []
    t = threading.Thread(target=lambda: done.append(pytest.raises(UsageError, read_regular, fifo, 100)))
    t.start()
    t.join(10)
    assert done, "reading a FIFO blocked"
    with pytest.raises(UsageError, match="character device"):
        read_regular("/dev/zero", 100)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(UsageError, match="over the 100-byte limit"):
        read_regular(big, 100)
    assert read_regular(big, 101) == b"x" * 101
    out = write_file(tmp_path / "sub" / "new.txt", "hi")
    assert out.read_text() == "hi" and stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m
