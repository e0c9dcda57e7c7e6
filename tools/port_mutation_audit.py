"""Does portaudit catch a bad port? Plant one port-side mutant at a time in a scratch copy and see.

    python -m tools.port_mutation_audit                   # every mutant of tests/portaudit/port_mutants.yaml
    python -m tools.port_mutation_audit --only kda-stub-pass --only gdn-default-chunk-size
    python -m tools.port_mutation_audit --list            # ids, manifests, expected codes
    python -m tools.port_mutation_audit --other-layers    # also run the tests that catch the static misses

Each mutant names a port file, a snippet that occurs exactly once in it and its replacement (or a
``move_to`` path: the module moved), the manifest it concerns and the finding codes a faithful
auditor should raise. The port and the manifests are copied once into a scratch folder; every
mutant is applied there, ``python -m portaudit check -m MANIFEST -f json`` and ``gate`` run on the
copy (fixed arguments, never manifest text), and the file is restored byte for byte before the next.
A mutant is **caught** when the mutated copy has open findings that the unmutated copy does not
(compared by finding key, so a real port's existing findings do not count) and the gate fails.

Mutants with ``port: <name>`` plant a change in a real port nobody here wrote (a wheel that
``tools/realports.py`` unpacks under /tmp/realports); those are skipped when the wheel is absent.
The ratchet for such a port is a baseline the tool records from the unmutated copy, so the gate
fails exactly on what the mutant added.

A mutant static checks cannot see names ``other_layer`` (what catches it) and, where a test does,
``other_test`` (pytest node ids). With ``--other-layers`` those tests run on the mutated copy
(``tests/`` copied beside it, ``python -m pytest -q -n 0``) and the report says whether they fail,
as they must.

Writes ``benchmarks/results/port_mutation_audit.json`` and ``.md`` (``--out`` changes the stem).
Exit 0 when every mutant behaved as the list expects (caught with the expected codes, or missed
where the list names the other layer that catches it), 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "tests" / "portaudit" / "port_mutants.yaml"
OUT = ROOT / "benchmarks" / "results" / "port_mutation_audit"
BUNDLED = ("kda", "gated_deltanet", "modules", "models", "rwkv7")
REALPORTS = Path("/tmp/realports")
# real ports: the unpacked wheel folder and the example manifest that describes it
REAL = {"vllm-0.33.0": ("vllm-0.33.0", "examples/manifests/vllm-0.33.0.yaml"),
        "vllm-0.10.2": ("vllm-0.10.2", "examples/manifests/vllm-0.10.2.yaml"),
        "sglang-0.5.23": ("sglang-0.5.23", "examples/manifests/sglang-0.5.23.yaml")}
KEYS = {"id", "models", "manifest", "port", "file", "snippet", "replacement", "move_to", "expect",
        "other_layer", "other_test"}


@dataclass
class Mutant:
    id: str
    models: str
    manifest: str
    file: str
    snippet: Optional[str] = None
    replacement: Optional[str] = None
    move_to: Optional[str] = None
    port: Optional[str] = None            # a real port (REAL) instead of myfla
    expect: list = field(default_factory=list)
    other_layer: Optional[str] = None     # a mutant static checks cannot see: what catches it
    other_test: list = field(default_factory=list)   # pytest node ids that fail under the mutant

    @property
    def target(self) -> str:
        return self.port or "myfla"


def load_mutants(path: Path = MUTANTS) -> list[Mutant]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    out, seen = [], set()
    for i, raw in enumerate(data["mutants"]):
        unknown = set(raw) - KEYS
        if unknown:
            raise SystemExit(f"{path}: mutant {i} has unknown keys {sorted(unknown)}")
        m = Mutant(**raw)
        if m.id in seen:
            raise SystemExit(f"{path}: mutant id {m.id!r} is listed twice")
        seen.add(m.id)
        if m.port is None and m.manifest not in BUNDLED or m.port is not None and m.port not in REAL:
            raise SystemExit(f"{path}: mutant {m.id}: unknown manifest/port {m.manifest!r}/{m.port!r}")
        if (m.snippet is None) == (m.move_to is None) or (m.snippet is None) != (m.replacement is None):
            raise SystemExit(f"{path}: mutant {m.id}: give snippet + replacement, or move_to")
        if not m.expect and not m.other_layer:
            raise SystemExit(f"{path}: mutant {m.id}: a mutant that no code catches must name other_layer")
        if m.other_test and (m.port is not None or m.expect):
            raise SystemExit(f"{path}: mutant {m.id}: other_test is for myfla mutants that static checks miss")
        out.append(m)
    return out


def source_root(target: str) -> Path:
    """Where the unmutated port lives: the repository (myfla) or the unpacked wheel."""
    return ROOT if target == "myfla" else REALPORTS / REAL[target][0]


def snippet_count(m: Mutant, root: Optional[Path] = None) -> int:
    text = ((root or source_root(m.target)) / m.file).read_text(encoding="utf-8")
    return text.count(m.snippet) if m.snippet is not None else 1


# -- the scratch copy ------------------------------------------------------------------------

class Scratch:
    """The port and its manifests copied once; mutants are applied to the copy and undone."""

    def __init__(self, where: Path, targets: set[str], with_tests: bool = False):
        self.where = where
        self.roots: dict[str, Path] = {}
        self.manifests: dict[str, Path] = {}
        repo = where / "repo"
        if "myfla" in targets:
            shutil.copytree(ROOT / "myfla", repo / "myfla", ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copytree(ROOT / "manifests", repo / "manifests")
            self.roots["myfla"] = repo
            if with_tests:   # the port's own tests, run on the mutated copy (--other-layers)
                shutil.copytree(ROOT / "tests", repo / "tests", ignore=shutil.ignore_patterns("__pycache__"))
                shutil.copy2(ROOT / "pyproject.toml", repo / "pyproject.toml")
            for name in BUNDLED:
                self.manifests[name] = repo / "manifests" / f"{name}.yaml"
        real = [t for t in targets if t != "myfla"]
        if real:
            shutil.copytree(ROOT / "examples" / "manifests", repo / "examples" / "manifests")
        for t in real:
            folder, manifest = REAL[t]
            shutil.copytree(REALPORTS / folder, where / folder, ignore=shutil.ignore_patterns("__pycache__"))
            self.roots[t] = where / folder
            self.manifests[t] = repo / manifest
        self.baselines = where / "baselines"      # the ratchet of each real port, unmutated

    def manifest_of(self, m: Mutant) -> Path:
        return self.manifests[m.port or m.manifest]

    def apply(self, m: Mutant) -> tuple[Path, bytes, Optional[Path]]:
        path = self.roots[m.target] / m.file
        original = path.read_bytes()
        if m.move_to is not None:
            dest = self.roots[m.target] / m.move_to
            dest.parent.mkdir(parents=True, exist_ok=True)
            path.rename(dest)
            return path, original, dest
        text = original.decode("utf-8")
        if text.count(m.snippet) != 1:
            raise SystemExit(f"mutant {m.id}: the snippet occurs {text.count(m.snippet)} times in {m.file}")
        path.write_bytes(text.replace(m.snippet, m.replacement).encode("utf-8"))
        return path, original, None

    @staticmethod
    def undo(path: Path, original: bytes, moved: Optional[Path]) -> None:
        if moved is not None:
            moved.unlink()
        path.write_bytes(original)
        if hashlib.sha256(path.read_bytes()).digest() != hashlib.sha256(original).digest():
            raise SystemExit(f"could not restore {path}")


# -- running portaudit ---------------------------------------------------------------------------

def portaudit(args: list[str], out: Path) -> tuple[int, Optional[dict], str]:
    """``python -m portaudit ARGS -f json -o OUT`` from this checkout: (exit code, report, stderr)."""
    if out.exists():
        out.unlink()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "portaudit", *args, "-f", "json", "-o", str(out), "--no-progress"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text(encoding="utf-8")) if out.exists() else None
    return p.returncode, report, p.stderr.strip()


def port_args(scratch: Scratch, target: str) -> list[str]:
    return [] if target == "myfla" else ["--port-path", str(scratch.roots[target])]


def open_findings(report: Optional[dict]) -> dict[str, dict]:
    if report is None:
        return {}
    return {f["key"]: f for man in report["manifests"] for f in man["findings"] if f["status"] == "open"}


def run_tests(scratch: Scratch, node_ids: list[str]) -> dict:
    """``python -m pytest -q -n 0 NODE...`` on the mutated copy: which node ids fail."""
    repo = scratch.roots["myfla"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *node_ids],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    failed = sorted({line.split()[1].split("[")[0] for line in p.stdout.splitlines()
                     if line.startswith(("FAILED ", "ERROR "))})
    return {"exit": p.returncode, "failed": failed, "tail": p.stdout.strip().splitlines()[-1:] or [""]}


def run_mutant(scratch: Scratch, m: Mutant, before: dict[str, dict], work: Path,
               other_layers: bool = False) -> dict:
    manifest = scratch.manifest_of(m)
    extra = port_args(scratch, m.target)
    gate_base = ["--baseline", str(scratch.baselines / f"{m.target}.json")] if m.port else []
    path, original, moved = scratch.apply(m)
    t0 = time.perf_counter()
    try:
        rc, report, err = portaudit(["check", "-m", str(manifest), *extra], work / "check.json")
        grc, _, gerr = portaudit(["gate", "-m", str(manifest), *extra, *gate_base], work / "gate.json")
        tests = run_tests(scratch, m.other_test) if other_layers and m.other_test else None
    finally:
        Scratch.undo(path, original, moved)
    seconds = time.perf_counter() - t0
    new = {k: f for k, f in open_findings(report).items() if k not in before}
    codes = sorted({f["code"] for f in new.values()})
    errors = sorted({f["code"] for f in new.values() if f["severity"] == "error"})
    caught = bool(errors) and grc == 1
    expected_hit = sorted(set(m.expect) & set(codes))
    if m.expect:
        as_expected = caught and bool(expected_hit)
    else:
        as_expected = not caught
    return {
        "id": m.id, "target": m.target, "manifest": m.manifest, "file": m.file, "models": m.models,
        "expect": m.expect, "other_layer": m.other_layer,
        "check_exit": rc, "gate_exit": grc, "caught": caught, "new_codes": codes, "expected_hit": expected_hit,
        "new_findings": [{"code": f["code"], "symbol": f["symbol"], "message": f["message"]}
                         for f in sorted(new.values(), key=lambda f: (f["code"], f["symbol"]))][:12],
        "other_test": m.other_test, "other_test_run": tests,
        "as_expected": as_expected and (tests is None or tests["exit"] == 1), "seconds": round(seconds, 2),
        "error": (err or gerr).splitlines()[-1] if report is None and (err or gerr) else None,
    }


def baseline_findings(scratch: Scratch, targets: list[tuple[str, str]], work: Path) -> dict[str, dict]:
    """Open findings of every unmutated (target, manifest); real ports also get their ratchet baseline."""
    out: dict[str, dict] = {}
    scratch.baselines.mkdir(exist_ok=True)
    for target, manifest_name in targets:
        manifest = scratch.manifests[target if target != "myfla" else manifest_name]
        extra = port_args(scratch, target)
        _, report, err = portaudit(["check", "-m", str(manifest), *extra], work / "base.json")
        if report is None:
            raise SystemExit(f"the unmutated {target}/{manifest_name} does not check: {err}")
        out[f"{target}/{manifest_name}"] = open_findings(report)
        if target != "myfla":
            portaudit(["gate", "-m", str(manifest), *extra, "--baseline", str(scratch.baselines / f"{target}.json"),
                      "--update-baseline"], work / "base-gate.json")
    return out


# -- reports ---------------------------------------------------------------------------------

def verdict(r: dict) -> str:
    if r.get("skipped"):
        return "skipped: " + r["skipped"]
    if r["caught"]:
        return "caught " + ", ".join(r["new_codes"])
    text = "missed -> " + (r["other_layer"] or "(nothing)")
    run = r.get("other_test_run")
    if run is not None:
        text += f" [{', '.join(r['other_test'])}: " + ("fails under the mutant" if run["exit"] == 1
                                                       else f"does NOT fail (exit {run['exit']})") + "]"
    elif r.get("other_test"):
        text += f" [{', '.join(r['other_test'])}]"
    return text


def markdown(results: list[dict], totals: dict) -> str:
    lines = ["| # | mutant | target / manifest | what it models | expected | result |",
             "|---:|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        mark = "" if r.get("skipped") or r["as_expected"] else " **(unexpected)**"
        lines.append(f"| {i} | `{r['id']}` | {r['target']} / {r['manifest']} | {r['models']} | "
                     f"{', '.join(r['expect']) or 'out of static scope'} | {verdict(r)}{mark} |")
    t = totals
    tested = (f"{t['missed_test_fails']} of them fail a myfla test run on the mutated copy"
              if t["other_layers_run"] else "their tests not run (--other-layers runs them)")
    lines += ["", f"{t['mutants']} mutants ({t['run']} run, {t['skipped']} skipped): {t['caught']} caught by "
                  f"`check` and failing `gate`; {t['missed']} missed, each out of static scope by the list "
                  f"({tested}; the others say which layer, if any, sees them); {t['unexpected']} not as the "
                  f"list expects; {t['seconds']:.0f} s in all (machine under load)."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=Path, default=MUTANTS)
    ap.add_argument("--only", action="append", default=[], help="run only this mutant id (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--out", type=Path, default=OUT, help="stem of the .json and .md written")
    ap.add_argument("--other-layers", action="store_true",
                    help="run each missed mutant's other_test on the mutated copy")
    args = ap.parse_args(argv)
    mutants = load_mutants(args.mutants)
    if args.only:
        unknown = set(args.only) - {m.id for m in mutants}
        if unknown:
            raise SystemExit(f"no mutant {sorted(unknown)}")
        mutants = [m for m in mutants if m.id in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.id:40} {m.target}/{m.manifest:16} {','.join(m.expect) or '-'}")
        return 0
    skipped = {m.id: f"{REALPORTS / REAL[m.port][0]} absent (python -m tools.realports fetches it)"
               for m in mutants if m.port and not (REALPORTS / REAL[m.port][0]).is_dir()}
    runnable = [m for m in mutants if m.id not in skipped]
    t0 = time.perf_counter()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="port-mutants-") as tmp:
        work = Path(tmp) / "out"
        work.mkdir()
        scratch = Scratch(Path(tmp), {m.target for m in runnable}, with_tests=args.other_layers)
        pairs = sorted({(m.target, m.manifest) for m in runnable})
        before = baseline_findings(scratch, pairs, work)
        for m in mutants:
            if m.id in skipped:
                results.append({"id": m.id, "target": m.target, "manifest": m.manifest, "models": m.models,
                                "expect": m.expect, "skipped": skipped[m.id]})
                continue
            r = run_mutant(scratch, m, before[f"{m.target}/{m.manifest}"], work, args.other_layers)
            results.append(r)
            print(f"{m.id:44} {verdict(r)}{'' if r['as_expected'] else '   UNEXPECTED'}", flush=True)
    ran = [r for r in results if not r.get("skipped")]
    totals = {"mutants": len(results), "run": len(ran), "skipped": len(results) - len(ran),
              "caught": sum(r["caught"] for r in ran), "missed": sum(not r["caught"] for r in ran),
              "missed_out_of_scope": sum(not r["caught"] and bool(r["other_layer"]) for r in ran),
              "missed_test_fails": sum(not r["caught"] and (r.get("other_test_run") or {}).get("exit") == 1
                                       for r in ran),
              "other_layers_run": args.other_layers,
              "unexpected": sum(not r["as_expected"] for r in ran),
              "seconds": round(time.perf_counter() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m tools.port_mutation_audit" + (" --other-layers" if args.other_layers else "")
    doc = {"schema": "portaudit.port_mutation_audit/1", "command": command,
           "threads": 1, "note": "seconds measured on a shared 2-core machine under load",
           "totals": totals, "mutants": results}
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(results, totals), encoding="utf-8")
    print(f"\n{totals}")
    return 0 if totals["unexpected"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
