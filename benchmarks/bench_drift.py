"""Speed of `portaudit drift`: both bundled manifests from fla 0.4.0 to fla 0.6.0, with both
releases already fetched (the wheels are unpacked in the portaudit cache).

Measured (medians): the in-process drift with the parsed-file cache warm (fresh indexes that read
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
    from portaudit.index import TreeIndex
    from portaudit.manifest import load_manifest

    manifests = [load_manifest(p) for p in MANIFESTS]
    old = Release(old_root, TreeIndex(old_root, cache), "fla 0.4.0", "0.4.0")
    new = Release(new_root, TreeIndex(new_root, cache), "fla 0.6.0", "0.6.0")
    port = TreeIndex(ROOT, cache)
    t0 = time.perf_counter()
    run = run_drift(manifests, lambda m: (old, new), lambda m: (port, "myfla"))
    dt = time.perf_counter() - t0
    return {"seconds": dt, "symbols": sum(len(m.symbols) for m in run.manifests),
            "new": sum(len(m.new_symbols) for m in run.manifests), "citations": len(run.citations),
            "parsed_files": len(old.index.parsed_files) + len(new.index.parsed_files) + len(port.parsed_files)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from portaudit.upstream import default_cache_dir, resolve_upstream

    cache = default_cache_dir()
    old_root = resolve_upstream(FROM, package="fla", cache_dir=cache)
    new_root = resolve_upstream(TO, package="fla", cache_dir=cache)
    drift_once(old_root, new_root, cache)   # fills the parse cache
    warm = [drift_once(old_root, new_root, cache) for _ in range(args.repeats)]
    cold = [drift_once(old_root, new_root, None) for _ in range(max(1, args.repeats // 2))]
    cli = []
    cmd = [sys.executable, "-m", "portaudit", "drift", "--manifest", str(MANIFESTS[0]), "--manifest",
           str(MANIFESTS[1]), "--to", ",".join(TO), "--format", "json", "--no-progress"]
    for _ in range(max(1, args.repeats // 2)):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        cli.append(time.perf_counter() - t0)
        assert proc.returncode == 1, proc.stderr   # 0.4.0 -> 0.6.0 drifts
    rows = [("drift, parse cache warm (in-process)", statistics.median(r["seconds"] for r in warm), warm[0]),
            ("drift, no parse cache (libcst parses all)", statistics.median(r["seconds"] for r in cold), cold[0]),
            ("CLI end to end (subprocess, warm cache)", statistics.median(cli), None)]
    print(f"portaudit drift: {len(MANIFESTS)} manifests, fla 0.4.0 -> 0.6.0, both releases cached")
    print(f"{'measurement':44} {'median s':>9}  {'symbols':>7} {'new':>4} {'citations':>9} {'parsed':>6}")
    for name, sec, info in rows:
        extra = (f"{info['symbols']:>7} {info['new']:>4} {info['citations']:>9} {info['parsed_files']:>6}"
                 if info else "")
        print(f"{name:44} {sec:9.3f}  {extra}")
    print(f"target < 5 s: {'met' if max(r[1] for r in rows) < 5 else 'NOT met'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "bench_drift", "machine": platform.platform(), "python": platform.python_version(),
              "cpu_count": os.cpu_count(), "repeats": args.repeats,
              "results": [{"measurement": n, "median_s": round(s, 4), **(i or {})} for n, s, i in rows],
              "target_s": 5.0}
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
