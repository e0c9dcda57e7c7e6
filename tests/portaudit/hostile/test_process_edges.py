"""Item 9 (process edges): interrupts, SIGTERM, a closed stdout, corrupt wheels, temp files.

Each runs the real entry point in a child process where the behaviour is about the process (exit
status, what reaches stderr, what is left on disk).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from portaudit import interrupts
from portaudit.errors import UpstreamError
from portaudit.safe_io import write_file
from portaudit.static.upstream import fetch_distributions

from tests.portaudit.conftest import manifest_text, write_tree
from tests.portaudit.hostile.helpers import REPO, assert_one_line_error, run_cli

SLOW_PIP = '''
import os, sys, time
open(os.environ["FAKE_PIP_STARTED"], "w").close()
time.sleep(120)
'''


def _slow_pip_env(tmp_path):
    fake = tmp_path / "fakepip"
    (fake / "pip").mkdir(parents=True)
    (fake / "pip" / "__init__.py").write_text("")
    (fake / "pip" / "__main__.py").write_text(SLOW_PIP)
    return {"PYTHONPATH": os.pathsep.join([str(REPO), str(fake)]), "FAKE_PIP_STARTED": str(tmp_path / "started"),
            "OMP_NUM_THREADS": "1"}


def _start_slow_fetch(tmp_path, dispositions):
    """``portaudit check`` stuck in a fetch (a fake pip that sleeps), started with the given signal
    dispositions (``{signal: handler}``, set in the child before it runs: a shell's background job
    hands its children SIGINT ignored, as CI runs some stages); returns it and its cache once the
    fetch's temporary folders exist."""
    (tmp_path / "m.yaml").write_text(manifest_text(["up.a.f"]))
    env = dict(os.environ, **_slow_pip_env(tmp_path))
    cache = tmp_path / "cache"

    def set_dispositions():
        for sig, handler in dispositions.items():
            signal.signal(sig, handler)

    proc = subprocess.Popen([sys.executable, "-m", "portaudit", "check", "-m", str(tmp_path / "m.yaml"),
                             "--port-path", str(tmp_path), "--cache-dir", str(cache), "--no-progress"],
                            cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=set_dispositions)
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    assert any((cache / "trees").glob(".partial-*")) and any(cache.glob(".dl-*"))   # temp dirs exist now
    return proc, cache


def _interrupt(proc, cache, sig, code):
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == code, err
    assert lines == [f"portaudit: interrupted ({signal.Signals(sig).name})"], err
    assert not list((cache / "trees").glob(".partial-*")) and not list(cache.glob(".dl-*"))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_a_fetch_cleans_up_and_exits_128_plus_signal(tmp_path, sig, code):
    proc, cache = _start_slow_fetch(tmp_path, {sig: signal.SIG_DFL})
    _interrupt(proc, cache, sig, code)


def test_ignored_sigint_stays_ignored(tmp_path):
    """A process started with SIGINT ignored (a background job of a shell without job control, nohup)
    keeps ignoring Ctrl-C, as the shell asked; SIGTERM still interrupts it cleanly."""
    proc, cache = _start_slow_fetch(tmp_path, {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_DFL})
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None, proc.communicate()
    _interrupt(proc, cache, signal.SIGTERM, 143)


def test_closed_stdout_is_quiet_exit_141():
    proc = subprocess.Popen([sys.executable, "-m", "portaudit", "codes"], cwd=str(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    proc.stdout.close()          # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and err == "", err


def test_temp_file_is_removed_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")

    def interrupted(*a, **k):
        raise interrupts.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_file(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def _wheel(tmp_path) -> Path:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    path = wheels / "up_dist-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("up/__init__.py", "")
        zf.writestr("up/a.py", "def f(x):\n    return x\n" * 200)
    return path


def test_truncated_and_bad_crc_wheels_are_one_line(tmp_path):
    path = _wheel(tmp_path)
    data = path.read_bytes()
    # bad CRC: change one byte of the compressed member data, keep the archive's structure
    start = data.index(b"up/a.py") + len(b"up/a.py") + 10
    path.write_bytes(data[:start] + bytes([data[start] ^ 0xFF]) + data[start + 1:])
    with pytest.raises(UpstreamError, match="corrupt") as info:
        fetch_distributions(["up-dist==1.0"], cache_dir=tmp_path / "c1", wheel_dir=path.parent)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    path.write_bytes(data[: len(data) // 2])          # truncated
    with pytest.raises(UpstreamError, match="corrupt"):
        fetch_distributions(["up-dist==1.0"], cache_dir=tmp_path / "c2", wheel_dir=path.parent)
    assert not list((tmp_path / "c2" / "trees").glob(".partial-*"))


def test_empty_arguments_are_refused(tmp_path):
    proc = run_cli(["check", "--baseline", "", "-m", str(tmp_path / "m.yaml")])
    assert_one_line_error(proc, 2, "an empty value was given after --baseline")
    proc = run_cli(["check", "--cache-dir="])
    assert_one_line_error(proc, 2, "an empty value was given for --cache-dir")


def test_bad_option_is_one_line():
    proc = run_cli(["check", "--no-such-option"])
    assert_one_line_error(proc, 2, "No such option: --no-such-option", "portaudit check --help")
    proc = run_cli(["check", "--fail-under", "nan"])
    assert_one_line_error(proc, 2, "--fail-under")
