"""Speed of `portaudit drift`: both bundled manifests from fla 0.4.0 to fla 0.6.0, with both
releases already fetched (the wheels are unpacked in the portaudit cache).

Measured (medians of wall time and of CPU time; the CPU time is what to compare when other work
shares this 2-core machine, and the load average is recorded with the results): the in-process drift with the parsed-file cache warm (fresh indexes that read
the cached parses, fresh matchers), the same with no parse cache (every file parsed by libcst),
and the whole CLI as a subprocess (interpreter start and imports included). The target: under 5 s.

Three-way (issue 11): a vendored copy of fla 0.4.0 (``host.vendored_fla``, imports rewritten, built
here offline from the cached wheel) inside a host project with 2,000 unrelated modules, a
120-symbol copy manifest (the first 120 distinct symbols of the bundled manifests), drifted
0.4.0 -> 0.6.0 with the port's state per symbol: warm (parse and canonical caches filled) and cold
(an empty cache), and the cold run cut to 30/60/120 symbols with the files it parsed (linear in
the files the manifest reaches; the host's unrelated files are never parsed).
Prints a table and writes benchmarks/results/bench_drift.json.

    python benchmarks/bench_drift.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
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


HOST_FILES = 2000
_IMPORT_RE = re.compile(r"^(\s*)(from|import)\s+fla(\.|\s)", re.M)


def vendored_host(upstream_root: Path, dest: Path) -> Path:
    """fla 0.4.0 copied as host.vendored_fla (imports rewritten) beside 2,000 unrelated modules."""
    shutil.copytree(upstream_root / "fla", dest / "host" / "vendored_fla")
    (dest / "host" / "__init__.py").write_text("")
    for p in (dest / "host" / "vendored_fla").rglob("*.py"):
        text = p.read_text(encoding="utf-8")
        new = _IMPORT_RE.sub(lambda m: f"{m.group(1)}{m.group(2)} host.vendored_fla{m.group(3)}", text)
        if new != text:
            p.write_text(new, encoding="utf-8")
    for i in range(HOST_FILES):
        d = dest / "host" / "app" / f"m{i // 100}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "__init__.py").write_text("")
        (d / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n")
    (dest / "host" / "app" / "__init__.py").write_text("")
    return dest


def copy_manifest(path: Path, old_root: Path, port_root: Path, n: int) -> Path:
    from portaudit.static.manifest import load_manifest

    seen: dict[str, str] = {}
    for mp in MANIFESTS:
        for e in load_manifest(mp).entries:
            seen.setdefault(e.symbol, e.symbol if e.kind != "kernel" else f"{{symbol: {e.symbol}, kind: kernel}}")
    items = list(seen.values())[:n]
    lines = ["name: vendored-copy", "upstream:", "  package: fla", f"  path: {old_root}", '  version: "0.4.0"',
             "port:", "  package: host.vendored_fla", f"  path: {port_root}", "  fidelity: copy",
             "citations: {style: \"off\", reason: a vendored copy carries no Source lines}",
             "stages:", '  - id: "1"', "    title: copy", "    symbols:"] + [f"      - {s}" for s in items]
    path.write_text("\n".join(lines) + "\n")
    return path


def threeway_once(manifest: Path, old_root: Path, new_root: Path, port_root: Path, cache) -> dict:
    from portaudit.drift.engine import Release, run_drift
    from portaudit.static.index.tree import TreeIndex
    from portaudit.static.manifest import load_manifest

    m = load_manifest(manifest)
    old = Release(old_root, TreeIndex(old_root, cache), "fla 0.4.0", "0.4.0")
    new = Release(new_root, TreeIndex(new_root, cache), "fla 0.6.0", "0.6.0")
    port = TreeIndex(port_root, cache)
    t0, c0 = time.perf_counter(), time.process_time()
    run = run_drift([m], lambda _: (old, new), lambda _: (port, m.port.package))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    parsed = old.index.parsed_files + new.index.parsed_files + port.parsed_files
    stray = [p for p in port.parsed_files if "/host/app/" in p]
    assert not stray, f"the host's unrelated files were parsed: {stray[:3]}"
    return {"seconds": dt, "cpu_seconds": cpu, "symbols": len(run.manifests[0].symbols),
            "port_states": run.manifests[0].port_counts(), "parsed_files": len(parsed),
            "parsed_port_files": len(port.parsed_files)}


def bench_threeway(old_root: Path, new_root: Path, repeats: int) -> list[dict]:
    med = statistics.median
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-drift3-") as tmp:
        tmp = Path(tmp)
        port_root = vendored_host(old_root, tmp / "port")
        man = copy_manifest(tmp / "copy.yaml", old_root, port_root, 120)
        cache = tmp / "cache"
        threeway_once(man, old_root, new_root, port_root, cache)     # fills the caches
        warm = [threeway_once(man, old_root, new_root, port_root, cache) for _ in range(repeats)]
        out.append({"measurement": "three-way, 120-symbol copy, caches warm (in-process)",
                    "median_s": round(med(r["seconds"] for r in warm), 4),
                    "median_cpu_s": round(med(r["cpu_seconds"] for r in warm), 4), **warm[0]})
        for n in (30, 60, 120):
            cut = copy_manifest(tmp / f"copy{n}.yaml", old_root, port_root, n)
            cold = [threeway_once(cut, old_root, new_root, port_root, tmp / f"cold{n}-{i}")
                    for i in range(max(1, repeats // 2))]
            out.append({"measurement": f"three-way, {n}-symbol copy, cold (empty cache)",
                        "median_s": round(med(r["seconds"] for r in cold), 4),
                        "median_cpu_s": round(med(r["cpu_seconds"] for r in cold), 4), **cold[0]})
    return out


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
    three = bench_threeway(old_root, new_root, args.repeats)
    print(f"{'three-way measurement':52} {'wall s':>7} {'cpu s':>7}  {'symbols':>7} {'parsed':>6} {'port':>5}")
    for r in three:
        print(f"{r['measurement']:52} {r['median_s']:7.3f} {r['median_cpu_s']:7.3f}  {r['symbols']:>7} "
              f"{r['parsed_files']:>6} {r['parsed_port_files']:>5}")
    print(f"three-way port states (120 symbols): {three[0]['port_states']}")
    warm_rows = [rows[0], rows[2]]
    print(f"target < 5 s with the releases cached: wall {'met' if max(r[1] for r in warm_rows) < 5 else 'NOT met'}, "
          f"cpu {'met' if max(r[2] for r in warm_rows) < 5 else 'NOT met'}; three-way warm "
          f"{'met' if three[0]['median_s'] < 5 else 'NOT met'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "bench_drift", "machine": platform.platform(), "python": platform.python_version(),
              "cpu_count": os.cpu_count(), "load_average": round(load, 2), "repeats": args.repeats,
              "results": [{"measurement": n, "median_s": round(s, 4), "median_cpu_s": round(c, 4), **(i or {})}
                          for n, s, c, i in rows] + three,
              "target_s": 5.0}
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
