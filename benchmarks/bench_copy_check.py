"""Benchmark `portaudit check` of a copy: ~150 symbols with body comparison (issue 10's target).

The copy is built here, offline, the way vendoring does it: fla 0.4.0 (fetched by portaudit into
its cache) copied into a temporary folder as the package ``vendored_fla``, its absolute imports
rewritten (``from fla.x import y`` -> ``from vendored_fla.x import y``), so every file differs from
the upstream's and is parsed on its own. The manifest: the first 150 distinct symbols of the two
bundled manifests (kernels included), ``fidelity: copy``, citations off (a vendored copy carries
none).

Measures (medians; the thread count is irrelevant, portaudit is single-threaded Python):
* warm: ``python -m portaudit check -m copy.yaml -f json`` as a subprocess, parse cache warm
  (interpreter start and imports included); target < 3 s on the 2-core machine;
* warm in-process: the audit alone, indexes cached on disk, a fresh Session each time;
* cold: the same with an empty parse cache, and its cost against the files reached (manifests cut
  to the first k modules: linear when the time per parsed line stays flat).

Writes benchmarks/results/bench_copy_check.json. Run: python benchmarks/bench_copy_check.py
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from portaudit.static.manifest import load_manifest  # noqa: E402
from portaudit.static.session import Session  # noqa: E402
from portaudit.static.upstream import default_cache_dir  # noqa: E402

MANIFESTS = [ROOT / "manifests/kda.yaml", ROOT / "manifests/gated_deltanet.yaml"]
SYMBOLS = 150
REPEATS = 5
_IMPORT_RE = re.compile(r"^(\s*)(from|import)\s+fla(\.|\s)", re.M)


def vendored_copy(upstream_root: Path, dest: Path) -> Path:
    """fla copied as vendored_fla with its absolute imports rewritten; returns the root."""
    shutil.copytree(upstream_root / "fla", dest / "vendored_fla")
    for p in (dest / "vendored_fla").rglob("*.py"):
        text = p.read_text(encoding="utf-8")
        new = _IMPORT_RE.sub(lambda m: f"{m.group(1)}{m.group(2)} vendored_fla{m.group(3)}", text)
        if new != text:
            p.write_text(new, encoding="utf-8")
    return dest


def symbols(n: int) -> list[str]:
    seen: dict[str, str] = {}
    for path in MANIFESTS:
        for e in load_manifest(path).entries:
            item = e.symbol if e.kind != "kernel" else f"{{symbol: {e.symbol}, kind: kernel}}"
            seen.setdefault(e.symbol, item)
    return list(seen.values())[:n]


def write_manifest(path: Path, upstream_root: Path, port_root: Path, items: list[str]) -> Path:
    lines = ["name: vendored-copy", "upstream:", "  package: fla", f"  path: {upstream_root}",
             '  version: "0.4.0"', "port:", "  package: vendored_fla", f"  path: {port_root}",
             "  fidelity: copy", "citations: {style: off, reason: a vendored copy carries no Source lines}",
             "stages:", '  - id: "1"', "    title: copy", "    symbols:"]
    lines += [f"      - {s}" for s in items]
    path.write_text("\n".join(lines) + "\n")
    return path


def audit(manifest: Path, cache: Path) -> tuple[float, Session, object]:
    s = Session(cache_dir=cache)
    m = load_manifest(manifest)
    t = time.perf_counter()
    r = s.audit(m)
    return time.perf_counter() - t, s, r


def main() -> None:
    up_root = Session(cache_dir=default_cache_dir()).upstream_root(load_manifest(MANIFESTS[0]))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        port_root = vendored_copy(up_root, tmp / "port")
        items = symbols(SYMBOLS)
        manifest = write_manifest(tmp / "copy.yaml", up_root, port_root, items)
        cache = tmp / "cache"

        # cold: empty parse cache each time
        colds = []
        for i in range(3):
            t, s, r = audit(manifest, tmp / f"cold{i}")
            colds.append(t)
        files_cold = len(s.parsed_files)
        lines_cold = sum(Path(p).read_text().count("\n") for p in s.parsed_files)
        body = [x for x in r.findings if x.code == "PA601"]
        compared = sum(1 for x in r.symbols if x.rules.get("body") in ("pass", "fail"))

        # warm in-process and as a subprocess
        audit(manifest, cache)
        warm_in = [audit(manifest, cache)[0] for _ in range(REPEATS)]
        cmd = [sys.executable, "-m", "portaudit", "check", "-m", str(manifest), "-f", "json", "--no-progress",
               "--cache-dir", str(cache)]
        warm_sub = []
        for _ in range(REPEATS):
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            warm_sub.append(time.perf_counter() - t)
            if proc.returncode not in (0, 1):
                raise SystemExit(f"portaudit check failed: {proc.stderr.strip()}")

        # cold cost against files reached
        scaling = []
        for k in (SYMBOLS // 4, SYMBOLS // 2, 3 * SYMBOLS // 4, SYMBOLS):
            cut = write_manifest(tmp / f"copy{k}.yaml", up_root, port_root, items[:k])
            ts, files, lines = [], 0, 0
            for i in range(3):
                t, s, _ = audit(cut, tmp / f"cold-{k}-{i}")
                ts.append(t)
                files = len(s.parsed_files)
                lines = sum(Path(p).read_text().count("\n") for p in s.parsed_files)
            med = statistics.median(ts)
            scaling.append({"symbols": k, "files_parsed": files, "lines_parsed": lines, "cold_s": round(med, 3),
                            "ms_per_file": round(1e3 * med / files, 1), "us_per_line": round(1e6 * med / lines, 1)})

    record = {
        "benchmark": "bench_copy_check", "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "symbols": len(items), "bodies_compared": compared,
        "body_findings": len(body),
        "warm_subprocess_s": {"median": round(statistics.median(warm_sub), 3), "all": [round(x, 3) for x in warm_sub]},
        "warm_in_process_s": {"median": round(statistics.median(warm_in), 3), "all": [round(x, 3) for x in warm_in]},
        "cold_in_process_s": {"median": round(statistics.median(colds), 3), "all": [round(x, 3) for x in colds]},
        "files_parsed_cold": files_cold, "lines_parsed_cold": lines_cold, "scaling": scaling, "target_warm_s": 3.0,
    }
    print(f"portaudit check of a vendored copy: {record['symbols']} symbols, {compared} bodies compared, "
          f"{len(body)} body finding(s)")
    print(f"{'measure':<36}{'median s':>10}")
    print(f"{'warm (subprocess, incl. startup)':<36}{record['warm_subprocess_s']['median']:>10.3f}")
    print(f"{'warm (in-process, audit only)':<36}{record['warm_in_process_s']['median']:>10.3f}")
    print(f"{'cold (in-process, empty cache)':<36}{record['cold_in_process_s']['median']:>10.3f}")
    print(f"files parsed cold: {files_cold} ({lines_cold} lines, upstream and port)")
    print(f"{'symbols':>8}{'files':>7}{'lines':>8}{'cold s':>8}{'ms/file':>9}{'us/line':>9}")
    for row in scaling:
        print(f"{row['symbols']:>8}{row['files_parsed']:>7}{row['lines_parsed']:>8}{row['cold_s']:>8.3f}"
              f"{row['ms_per_file']:>9.1f}{row['us_per_line']:>9.1f}")
    ok = record["warm_subprocess_s"]["median"] < 3.0
    print(f"warm < 3 s: {'PASS' if ok else 'FAIL'}")
    out = ROOT / "benchmarks/results/bench_copy_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
