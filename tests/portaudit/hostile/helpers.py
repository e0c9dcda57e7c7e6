"""Running the real `portaudit` entry point in a child process, as a user's shell would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[3]


def run_cli(args: list[str], cwd: Optional[Path] = None, env: Optional[dict] = None, timeout: float = 120,
            stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    """``python -m portaudit ARGS`` with this checkout first on the path; never a terminal."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.pop("PORTAUDIT_DEBUG", None)
    full_env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"})
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "portaudit", *args], cwd=str(cwd or REPO), env=full_env,
                          capture_output=True, text=True, timeout=timeout, stdin=stdin)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """Exit ``code``, exactly one non-empty stderr line containing every fragment, no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    detail = f"rc={proc.returncode}\nstdout={proc.stdout[-2000:]}\nstderr={proc.stderr[-4000:]}"
    assert proc.returncode == code, detail
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, detail
    assert len(lines) == 1, detail
    for frag in fragments:
        assert frag in lines[0], f"{frag!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(root: Path, skip: tuple = ()) -> dict:
    """Every path under ``root`` with its type, size and mtime: 'nothing was written' is equality."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        for name in dirnames + filenames:
            if (rel_dir / name).parts[0] in skip:
                continue
            p = Path(dirpath) / name
            try:
                st = os.lstat(p)
            except OSError:
                continue
            out[str(rel_dir / name)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out
