#!/usr/bin/env python3
"""Run fla's own test suite against myfla, with ``import fla`` served by myfla.

fla's test files are fla's code: this script extracts them from an fla source (a git repository,
bare or not, at ``--ref``; a source tree; or a .tar.gz/.tgz/.zip archive) into a temporary directory,
never into this repository. For every test file it reads the ``fla`` imports statically and checks,
with the alias installed, that myfla provides each module and name; the files myfla can serve run
under pytest, one subprocess per file (``import fla`` served through myfla's PYTHONPATH shim with
``MYFLA_AS_FLA=force``, so a real fla installed next to it is not picked up), and the others are
listed with what they need. The report gives pass/fail/skip/error counts per file and the first line
of every failure.

    python tools/run_fla_tests.py /work/.mirror/fla-org+flash-linear-attention/repo --ref v0.4.0
    python tools/run_fla_tests.py fla-src.tar.gz -f tests/ops/test_kda.py -k "naive or fused" -n 2
    python tools/run_fla_tests.py ~/src/flash-linear-attention --json benchmarks/results/fla_tests.json
    python tools/run_fla_tests.py REPO -f tests/modules/test_conv.py --causal-conv1d   # causal_conv1d served too

Exit status: 0 when every selected file that myfla can serve passed (skips allowed), 1 when a test
failed or errored, 2 on bad arguments or an unreadable source.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent


class SourceError(Exception):
    """The fla source cannot be read (exit status 2)."""


# -- extraction ------------------------------------------------------------------------------------

def _is_git_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    probe = subprocess.run(["git", "--git-dir", str(path), "rev-parse", "--git-dir"],
                           capture_output=True, text=True)
    if probe.returncode == 0:
        return True
    probe = subprocess.run(["git", "-C", str(path), "rev-parse", "--git-dir"], capture_output=True, text=True)
    return probe.returncode == 0 and not (path / "tests").is_dir()


def _git_args(path: Path) -> List[str]:
    bare = subprocess.run(["git", "--git-dir", str(path), "rev-parse", "--is-bare-repository"],
                          capture_output=True, text=True)
    if bare.returncode == 0 and bare.stdout.strip() == "true":
        return ["git", "--git-dir", str(path)]
    return ["git", "-C", str(path)]


def _safe_members(names: List[str]) -> Dict[str, str]:
    """Archive member -> path relative to the extraction root, for the files under a ``tests/``
    directory (an optional single top-level directory is dropped); unsafe paths are refused."""
    out = {}
    for name in names:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            continue
        if parts[0] != "tests":
            parts = parts[1:]
        if len(parts) >= 2 and parts[0] == "tests" and not name.endswith("/"):
            out[name] = str(Path(*parts))
    return out


def extract_tests(source: Path, ref: str, dest: Path) -> str:
    """Put the source's ``tests/`` tree under ``dest``; returns a description of what was read."""
    if _is_git_dir(source):
        git = _git_args(source)
        archive = subprocess.run(git + ["archive", "--format=tar", ref, "tests"], capture_output=True)
        if archive.returncode != 0:
            raise SourceError(f"{source}: git archive {ref} tests failed: "
                              f"{archive.stderr.decode(errors='replace').strip()}")
        commit = subprocess.run(git + ["rev-parse", ref + "^{commit}"], capture_output=True, text=True).stdout.strip()
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            _extract_tar(tar, dest)
        return f"git {source} at {ref} ({commit[:10]})"
    if source.is_dir():
        if not (source / "tests").is_dir():
            raise SourceError(f"{source}: no tests/ directory (pass an fla checkout, a git repository or an archive)")
        shutil.copytree(source / "tests", dest / "tests")
        return f"tree {source}"
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(source) as tar:
            _extract_tar(tar, dest)
        return f"archive {source}"
    if source.is_file() and source.name.endswith(".zip"):
        with zipfile.ZipFile(source) as zf:
            members = _safe_members(zf.namelist())
            for name, rel in members.items():
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
        return f"archive {source}"
    raise SourceError(f"{source}: not a git repository, a directory with tests/, or a .tar.gz/.tgz/.zip archive")


def _extract_tar(tar: tarfile.TarFile, dest: Path) -> None:
    members = _safe_members([m.name for m in tar.getmembers() if m.isfile()])
    for member in tar.getmembers():
        rel = members.get(member.name)
        if rel is None or not member.isfile():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        data = tar.extractfile(member)
        target.write_bytes(data.read() if data is not None else b"")
    if not (dest / "tests").is_dir():
        raise SourceError("the source has no tests/ directory")


# -- what a test file needs from fla ------------------------------------------------------------

def fla_imports(path: Path) -> List[Tuple[str, Optional[str]]]:
    """``(module, name)`` pairs of a file's ``fla`` imports (``name`` None for ``import fla.X``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    needs = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            needs += [(a.name, None) for a in node.names if a.name == "fla" or a.name.startswith("fla.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "fla" or node.module.startswith("fla.")):
            needs += [(node.module, a.name) for a in node.names]
    return needs


def missing_from_myfla(needs: List[Tuple[str, Optional[str]]]) -> List[str]:
    """What myfla (served as fla) lacks of ``needs``; the alias must be installed."""
    missing = []
    for module_name, name in needs:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            missing.append(f"{module_name} ({type(error).__name__}: {error})".split("\n")[0])
            continue
        if name is not None and name != "*" and not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"{module_name}.{name}")
    return sorted(set(missing))


def local_needs(path: Path, tests_root: Path) -> List[Path]:
    """Test-package files a file imports relatively (``from .test_modeling_base import ...``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            candidate = path.parent / (node.module.replace(".", "/") + ".py")
            if candidate.is_file():
                out.append(candidate)
    return out


# -- running ---------------------------------------------------------------------------------------

@dataclass
class FileResult:
    file: str
    status: str                                   # passed | failed | not run (...) | timeout | crashed
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    needs: List[str] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)
    skip_reasons: Dict[str, int] = field(default_factory=dict)


def _first_line(text: Optional[str]) -> str:
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return ""


def parse_junit(xml_path: Path, result: FileResult) -> None:
    root = ET.parse(xml_path).getroot()
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        if failure is not None:
            result.failed += 1
            result.failures.append(f"{name}: {_first_line(failure.get('message'))}")
        elif error is not None:
            result.errors += 1
            result.failures.append(f"{name} [error]: {_first_line(error.get('message'))}")
        elif skipped is not None:
            result.skipped += 1
            reason = _first_line(skipped.get("message")) or "skipped"
            result.skip_reasons[reason] = result.skip_reasons.get(reason, 0) + 1
        else:
            result.passed += 1


def parse_verbose(stdout: str, result: FileResult) -> None:
    """Outcomes from ``pytest -v`` lines, for a run that ended without its XML report. Without xdist
    a line is ``NODE OUTCOME [ n%]`` and the test that was running when it ended is the last one
    printed without an outcome; with xdist (``-n``) it is ``[gwN] [ n%] OUTCOME NODE`` and a running
    test is not printed. The short test summary at the end repeats outcomes and is not read."""
    words = {"PASSED": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped", "XFAIL": "skipped"}
    for line in stdout.splitlines():
        if "short test summary info" in line:
            break
        tokens = line.split()
        node = next((t for t in tokens if "::" in t), None)
        if node is None:
            continue
        name = node.split("::", 1)[1]
        outcome = next((t for t in tokens if t in words), None)
        if outcome is not None:
            setattr(result, words[outcome], getattr(result, words[outcome]) + 1)
            if outcome in ("FAILED", "ERROR"):
                result.failures.append(f"{name}: {outcome}")
        elif not tokens[0].startswith("[gw"):
            result.failures.append(f"{name}: was running when the process ended")


def run_file(tests_root: Path, rel: str, args, env: Dict[str, str]) -> FileResult:
    result = FileResult(file=rel, status="")
    xml_path = Path(tempfile.mkstemp(suffix=".xml")[1])
    cmd = [sys.executable, "-m", "pytest", rel, "-v", "-p", "no:cacheprovider", "-o", "addopts=",
           "--rootdir", str(tests_root.parent), f"--junitxml={xml_path}", "-o", "junit_family=xunit2"]
    if args.k:
        cmd += ["-k", args.k]
    if args.n and args.n > 1:
        cmd += ["-n", str(args.n)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=str(tests_root.parent), env=env, capture_output=True, text=True,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired as expired:
        result.seconds = time.perf_counter() - start
        result.status = f"timeout after {args.timeout:.0f} s"
        out = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else expired.stdout
        parse_verbose(out or "", result)
        return result
    result.seconds = time.perf_counter() - start
    if xml_path.stat().st_size == 0:
        # killed before pytest wrote its report (e.g. out of memory): count from the -v lines
        result.status = f"crashed (exit status {proc.returncode})"
        parse_verbose(proc.stdout, result)
        tail = _first_line("\n".join(proc.stderr.strip().splitlines()[-3:]))
        if tail:
            result.failures.append(f"stderr: {tail}")
        return result
    parse_junit(xml_path, result)
    xml_path.unlink()
    if proc.returncode == 5 and result.passed + result.failed + result.errors + result.skipped == 0:
        result.status = "no tests selected"
    elif result.failed or result.errors:
        result.status = "failed"
    else:
        result.status = "passed"
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="fla git repository, source tree or archive")
    parser.add_argument("--ref", default="v0.4.0", help="git ref to read tests/ from (default v0.4.0)")
    parser.add_argument("-f", "--files", nargs="*", default=["tests/*/test_*.py", "tests/test_*.py"],
                        help="test files to consider, as glob patterns relative to the source root")
    parser.add_argument("-k", default=None, help="pytest -k expression passed to every file")
    parser.add_argument("-n", type=int, default=0, help="pytest-xdist workers per file")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per file (default 1800)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP/MKL threads for the test processes (default: inherited)")
    parser.add_argument("--json", type=Path, default=None, help="write the per-file results here")
    parser.add_argument("--keep", type=Path, default=None, help="extract into this directory and keep it")
    parser.add_argument("--causal-conv1d", action="store_true",
                        help="also serve `import causal_conv1d` from myfla (its PYTHONPATH shim, "
                             "MYFLA_AS_CAUSAL_CONV1D=force): fla's tests of ShortConvolution(backend='cuda') "
                             "then run instead of skipping")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    import myfla
    myfla.install_as_fla(force=True)

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="fla-tests-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        try:
            origin = extract_tests(args.source, args.ref, workdir)
        except (SourceError, OSError, tarfile.TarError, zipfile.BadZipFile) as error:
            print(f"run_fla_tests: {error}", file=sys.stderr)
            return 2
        tests_root = workdir / "tests"
        files = sorted({str(p.relative_to(workdir)) for pattern in args.files
                        for p in workdir.glob(pattern) if p.is_file()})
        files = [f for f in files if fnmatch.fnmatch(Path(f).name, "test_*.py")]

        from myfla.alias import CAUSAL_CONV1D_SHIM_DIR, SHIM_DIR
        env = dict(os.environ)
        shims = [SHIM_DIR] + ([CAUSAL_CONV1D_SHIM_DIR] if args.causal_conv1d else [])
        env["PYTHONPATH"] = os.pathsep.join(shims + [str(REPO)] + (
            [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["MYFLA_AS_FLA"] = "force"
        if args.causal_conv1d:
            env["MYFLA_AS_CAUSAL_CONV1D"] = "force"
        if args.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)

        results = []
        print(f"fla tests from {origin}; myfla {myfla.__version__} from {Path(myfla.__file__).parent}")
        for rel in files:
            path = workdir / rel
            needs = fla_imports(path)
            for extra in local_needs(path, tests_root):
                needs += fla_imports(extra)
            missing = missing_from_myfla(needs)
            if missing:
                results.append(FileResult(file=rel, status="not run (myfla lacks what it imports)", needs=missing))
                continue
            result = run_file(tests_root, rel, args, env)
            results.append(result)
            print(f"  {rel}: {result.status} (passed {result.passed}, failed {result.failed}, "
                  f"errors {result.errors}, skipped {result.skipped}, {result.seconds:.0f} s)", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)

    report(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"source": origin, "ref": args.ref, "k": args.k,
                                         "files": [asdict(r) for r in results]}, indent=1) + "\n")
    ran = [r for r in results if not r.status.startswith("not run")]
    return 1 if any(r.status not in ("passed", "no tests selected") for r in ran) else 0


def report(results: List[FileResult]) -> None:
    width = max([len(r.file) for r in results] + [4])
    print(f"\n{'file':<{width}}  {'status':<40} {'pass':>5} {'fail':>5} {'err':>4} {'skip':>5} {'s':>6}")
    for r in results:
        print(f"{r.file:<{width}}  {r.status:<40} {r.passed:>5} {r.failed:>5} {r.errors:>4} {r.skipped:>5} "
              f"{r.seconds:>6.0f}")
    for r in results:
        if r.needs:
            print(f"\n{r.file} needs what myfla does not have:")
            for need in r.needs[:8]:
                print(f"    {need}")
            if len(r.needs) > 8:
                print(f"    ... {len(r.needs) - 8} more")
        if r.failures:
            print(f"\n{r.file} failures:")
            for failure in r.failures:
                print(f"    {failure}")
        if r.skip_reasons:
            print(f"\n{r.file} skips:")
            for reason, count in sorted(r.skip_reasons.items()):
                print(f"    {count} x {reason}")
    ran = [r for r in results if not r.status.startswith("not run")]
    print(f"\n{len(results)} files: {len(ran)} run ({sum(r.status == 'passed' for r in ran)} passed), "
          f"{len(results) - len(ran)} not run; tests: {sum(r.passed for r in ran)} passed, "
          f"{sum(r.failed for r in ran)} failed, {sum(r.errors for r in ran)} errors, "
          f"{sum(r.skipped for r in ran)} skipped")


if __name__ == "__main__":
    sys.exit(main())
