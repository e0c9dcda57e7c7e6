"""Benchmark `portaudit check` on the bundled manifests.

Measures (medians):
* warm: `python -m portaudit check -m manifests/kda.yaml -m manifests/gated_deltanet.yaml` as a
  subprocess with the parse cache warm (interpreter start and imports included); target < 3 s;
* cold: the same in-process with an empty parse cache (every reached file parsed by libcst);
* scaling: cold cost against the number of files reached, for manifests cut to the first k
  modules (linear: the time per parsed line stays flat);
* reach: the files parsed are exactly the modules the manifests name (upstream and port); the
  rest of the upstream tree is never parsed (asserted).

Writes benchmarks/results/bench_check.json. Run: python benchmarks/bench_check.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from portaudit.static.manifest import Manifest, Stage, load_manifest  # noqa: E402
from portaudit.static.session import Session  # noqa: E402
from portaudit.static.upstream import default_cache_dir  # noqa: E402

MANIFESTS = [ROOT / "manifests/kda.yaml", ROOT / "manifests/gated_deltanet.yaml"]
REPEATS = 5


def warm_subprocess() -> list[float]:
    cmd = [sys.executable, "-m", "portaudit", "check", "--no-progress", "-f", "json"]
    for m in MANIFESTS:
        cmd += ["-m", str(m)]
    subprocess.run(cmd, cwd=ROOT, capture_output=True)          # make sure the cache is warm
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"portaudit check failed: {proc.stderr.strip()}")
    return times


def cold_in_process(manifests: list[Manifest]) -> tuple[float, Session]:
    with tempfile.TemporaryDirectory() as tmp:
        # the upstream tree comes from the normal cache (fetched once); only the parse cache is empty
        s = Session(cache_dir=Path(tmp),
                    upstream_path=Session(cache_dir=default_cache_dir()).upstream_root(manifests[0]))
        t = time.perf_counter()
        for m in manifests:
            s.audit(m)
        return time.perf_counter() - t, s


def cut(manifest: Manifest, k: int) -> Manifest:
    """The manifest restricted to the symbols of its first k modules."""
    mods: list[str] = []
    for e in manifest.entries:
        mod = e.symbol.rsplit(".", 1)[0]
        if mod not in mods:
            mods.append(mod)
    keep = set(mods[:k])
    stages = [Stage(s.id, s.title, [e for e in s.entries if e.symbol.rsplit(".", 1)[0] in keep], s.loc)
              for s in manifest.stages]
    return Manifest(manifest.path, f"{manifest.name}-{k}", manifest.upstream, manifest.port,
                    [s for s in stages if s.entries], [], [])


def main() -> None:
    manifests = [load_manifest(p) for p in MANIFESTS]
    warm = warm_subprocess()

    colds, session = [], None
    for _ in range(3):
        t, session = cold_in_process(manifests)
        colds.append(t)

    # reach: parsed files == modules named by the manifests (upstream + mirrored port modules)
    up_root = session.upstream_path
    allowed = set()
    for m in manifests:
        for e in m.entries:
            mod = e.symbol.rsplit(".", 1)[0]
            allowed.add(str((up_root / Path(*mod.split("."))).with_suffix(".py")))
            pmod = m.port_name_for(mod)
            allowed.add(str((ROOT / Path(*pmod.split("."))).with_suffix(".py")))
    parsed = set(session.parsed_files)
    outside = sorted(p for p in parsed if p not in allowed)
    upstream_total = sum(1 for _ in (up_root / "fla").rglob("*.py"))
    upstream_parsed = sum(1 for p in parsed if p.startswith(str(up_root)))
    assert not outside, f"files outside the manifests' reach were parsed: {outside}"

    # scaling: cold cost against files reached
    kda = manifests[0]
    n_mods = len({e.symbol.rsplit('.', 1)[0] for e in kda.entries})
    scaling = []
    for k in sorted({max(1, n_mods // 4), max(1, n_mods // 2), max(1, 3 * n_mods // 4), n_mods}):
        ts, files, lines = [], 0, 0
        for _ in range(3):
            t, s = cold_in_process([cut(kda, k)])
            ts.append(t)
            files = len(s.parsed_files)
            lines = sum(Path(p).read_text().count("\n") for p in s.parsed_files)
        med = statistics.median(ts)
        scaling.append({"modules": k, "files_parsed": files, "lines_parsed": lines, "cold_s": round(med, 3),
                        "ms_per_file": round(1e3 * med / files, 1), "us_per_line": round(1e6 * med / lines, 1)})

    record = {
        "benchmark": "bench_check", "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "manifests": [str(p.relative_to(ROOT)) for p in MANIFESTS],
        "symbols": sum(len(m.entries) for m in manifests),
        "warm_subprocess_s": {"median": round(statistics.median(warm), 3), "all": [round(x, 3) for x in warm]},
        "cold_in_process_s": {"median": round(statistics.median(colds), 3), "all": [round(x, 3) for x in colds]},
        "files_parsed_cold": len(parsed), "upstream_files_parsed": upstream_parsed,
        "upstream_files_total": upstream_total, "parsed_outside_reach": outside,
        "scaling": scaling, "target_warm_s": 3.0,
    }
    print(f"portaudit check, both manifests ({record['symbols']} symbols)")
    print(f"{'measure':<34}{'median s':>10}")
    print(f"{'warm (subprocess, incl. startup)':<34}{record['warm_subprocess_s']['median']:>10.3f}")
    print(f"{'cold (in-process, empty cache)':<34}{record['cold_in_process_s']['median']:>10.3f}")
    print(f"files parsed cold: {len(parsed)} (upstream {upstream_parsed} of {upstream_total} .py files); "
          f"outside the manifests' reach: {len(outside)}")
    print(f"{'modules':>8}{'files':>7}{'lines':>8}{'cold s':>8}{'ms/file':>9}{'us/line':>9}")
    for row in scaling:
        print(f"{row['modules']:>8}{row['files_parsed']:>7}{row['lines_parsed']:>8}{row['cold_s']:>8.3f}"
              f"{row['ms_per_file']:>9.1f}{row['us_per_line']:>9.1f}")
    ok = record["warm_subprocess_s"]["median"] < 3.0
    print(f"warm < 3 s: {'PASS' if ok else 'FAIL'}")
    out = ROOT / "benchmarks/results/bench_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
