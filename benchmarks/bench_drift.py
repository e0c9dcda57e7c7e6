"""Speed of `portaudit drift`: both bundled manifests from fla 0.4.0 to fla 0.6.0, with both
releases already fetched (the wheels are unpacked in the portaudit cache).

Measured (medians of wall time and of CPU time; the CPU time is what to compare when other work
shares this 2-core machine, and the load average is recorded with the results): the in-process drift with the parsed-file cache warm (fresh indexes that read
the cached parses, fresh matchers), the same with no parse cache (every file parsed by libcst),
and the whole CLI as a subprocess (interpreter start and imports included). The target: under 5 s.
Prints a table and writes benchmarks/results/bench_drift.json.

    python benchmarks/bench_drift.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_drift.json"
FROM = ["fla-core==0.4.0", "flash-linear-attention==0.4.0"]
TO = ["fla-core==0.6.0", "flash-linear-attention==0.6.0"]
MANIFESTS = [ROOT / "manifests" / "kda.yaml", ROOT / "manifests" / "gated_deltanet.yaml"]


def drift_once(old_root: Path, new_root: Path, cache) -> dict:
    from portaudit.drift.engine import Release, run_drift
    from portaudit.static.index.tree import TreeIndex
    from portaudit.static.manifest import load_manifest

    manifests = [load_manifest(p) for p in MANIFESTS]
    old = Release(old_root, TreeIndex(old_root, cache), "fla 0.4.0", "0.4.0")
    new = Release(new_root, TreeIndex(new_root, cache), "fla 0.6.0", "0.6.0")
    port = TreeIndex(ROOT, cache)
    t0, c0 = time.perf_counter(), time.process_time()
    run = run_drift(manifests, lambda m: (old, new), lambda m: (port, "myfla"))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": dt, "cpu_seconds": cpu, "symbols": sum(len(m.symbols) for m in run.manifests),
            "new": sum(len(m.new_symbols) for m in run.manifests), "citations": len(run.citations),
            "parsed_files": len(old.index.parsed_files) + len(new.index.parsed_files) + len(port.parsed_files)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from portaudit.static.upstream import default_cache_dir, resolve_upstream

    cache = default_cache_dir()
    old_root = resolve_upstream(FROM, package="fla", cache_dir=cache)
    new_root = resolve_upstream(TO, package="fla", cache_dir=cache)
    drift_once(old_root, new_root, cache)   # fills the parse cache
    warm = [drift_once(old_root, new_root, cache) for _ in range(args.repeats)]
    cold = [drift_once(old_root, new_root, None) for _ in range(max(1, args.repeats // 2))]
    cli, cli_cpu = [], []
    cmd = [sys.executable, "-m", "portaudit", "drift", "--manifest", str(MANIFESTS[0]), "--manifest",
           str(MANIFESTS[1]), "--to", ",".join(TO), "--format", "json", "--no-progress"]
    for _ in range(max(1, args.repeats // 2)):
        t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cli.append(time.perf_counter() - t0)
        cli_cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
        assert proc.returncode == 1, proc.stderr   # 0.4.0 -> 0.6.0 drifts
    med = statistics.median
    rows = [("drift, parse cache warm (in-process)", med(r["seconds"] for r in warm),
             med(r["cpu_seconds"] for r in warm), warm[0]),
            ("drift, no parse cache (libcst parses all)", med(r["seconds"] for r in cold),
             med(r["cpu_seconds"] for r in cold), cold[0]),
            ("CLI end to end (subprocess, warm cache)", med(cli), med(cli_cpu), None)]
    load = os.getloadavg()[0]
    print(f"portaudit drift: {len(MANIFESTS)} manifests, fla 0.4.0 -> 0.6.0, both releases cached "
          f"(load average {load:.1f} on {os.cpu_count()} cores)")
    print(f"{'measurement':44} {'wall s':>7} {'cpu s':>7}  {'symbols':>7} {'new':>4} {'citations':>9} {'parsed':>6}")
    for name, sec, cpu, info in rows:
        extra = (f"{info['symbols']:>7} {info['new']:>4} {info['citations']:>9} {info['parsed_files']:>6}"
                 if info else "")
        print(f"{name:44} {sec:7.3f} {cpu:7.3f}  {extra}")
    warm_rows = [rows[0], rows[2]]
    print(f"target < 5 s with the releases cached: wall {'met' if max(r[1] for r in warm_rows) < 5 else 'NOT met'}, "
          f"cpu {'met' if max(r[2] for r in warm_rows) < 5 else 'NOT met'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "bench_drift", "machine": platform.platform(), "python": platform.python_version(),
              "cpu_count": os.cpu_count(), "load_average": round(load, 2), "repeats": args.repeats,
              "results": [{"measurement": n, "median_s": round(s, 4), "median_cpu_s": round(c, 4), **(i or {})}
                          for n, s, c, i in rows],
              "target_s": 5.0}
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
