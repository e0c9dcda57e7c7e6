"""bench_ab: two versions of myfla timed side by side in fresh processes, each importing its own tree."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_ab  # noqa: E402

needs_git = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                               reason="needs a git checkout of this repository")


@pytest.mark.parametrize("cells, message", [
    ("", "no cells"),
    ("gdn:1x64x1x16:1", "five positive integers"),
    ("lstm:1x64x1x16x16:1", "op:BxTxHxKxV:threads"),
    ("kda:1x64x1x16x16:0", "threads must be"),
])
def test_bad_cells_exit_2_with_a_message(capsys, cells, message):
    assert bench_ab.main(["--a", "worktree", "--cells", cells]) == 2
    assert message in capsys.readouterr().err


@needs_git
def test_unknown_revision_exits_2(capsys):
    assert bench_ab.main(["--a", "no-such-revision-xyz", "--cells", "gdn:1x64x1x16x16:1", "--rounds", "1"]) == 2
    assert "git archive of 'no-such-revision-xyz' failed" in capsys.readouterr().err


@needs_git
def test_a_revision_against_the_worktree(tmp_path):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    out = tmp_path / "ab.json"
    assert bench_ab.main(["--a", head, "--b", "worktree", "--cells", "kda:1x70x1x16x8:1",
                          "--rounds", "1", "--reps", "1", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    (cell,) = rec["cells"]
    assert (cell["op"], cell["shape"], cell["threads"]) == ("kda", "1x70x1x16x8", 1)
    assert len(cell["ms"]["a"]) == len(cell["ms"]["b"]) == 1
    assert cell["ratio_b_over_a"] == pytest.approx(cell["median_ms"]["b"] / cell["median_ms"]["a"])


def test_the_child_imports_the_given_tree(tmp_path):
    # a tree without myfla: the child fails (it does not fall back on the installed one)
    with pytest.raises(bench_ab.ABError):
        bench_ab.run_child(tmp_path, "gdn", "1x64x1x16x16", 1, 1)


def test_a_directory_holding_myfla_against_the_worktree(tmp_path):
    # dir:PATH (a machine without git history): here a copy of this checkout's myfla/
    shutil.copytree(ROOT / "myfla", tmp_path / "tree" / "myfla", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "ab.json"
    assert bench_ab.main(["--a", f"dir:{tmp_path / 'tree'}", "--cells", "gdn:1x70x1x16x8:1",
                          "--rounds", "1", "--reps", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["a"] == f"dir:{tmp_path / 'tree'}"


def test_a_directory_without_myfla_exits_2(tmp_path, capsys):
    assert bench_ab.main(["--a", f"dir:{tmp_path}", "--cells", "gdn:1x64x1x16x16:1", "--rounds", "1"]) == 2
    assert "no myfla package" in capsys.readouterr().err
