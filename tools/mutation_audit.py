#!/usr/bin/env python3
"""Mutation audit of myfla's tests: can they fail when the code they cover is wrong?

Each mutant in ``tests/mutation/mutants.yaml`` replaces one unique source snippet of a shipped file
with a variant a porter could plausibly write (an off-by-one, a sign, a dropped gradient term...).
The driver copies the repository's files (tracked and untracked-not-ignored, never ``.git``) into a
scratch directory once, then for every mutant writes the mutated file there, runs the mutant's
pytest targets on that copy (``-x -q -n 0 -p no:cacheprovider``, one thread, a timeout), restores
the file and records the outcome:

    killed    a target failed or errored (collection errors included: the mutant broke an import)
    survived  every target passed
    timeout   the targets ran past ``--timeout`` (the mutant hung a loop or exploded the runtime)
    error     the mutant could not be applied or the targets collected nothing (a defect of the list)

With ``--wide`` a mutant that survives its targets is run once more against all of ``tests/myfla``
(its ``wide`` outcome), as the audit's rule is to call a survivor a hole only after that.
The worktree is never modified. Bytecode is not written in the copy (``PYTHONDONTWRITEBYTECODE``,
no ``__pycache__`` copied): a restored file with the mutant's size and mtime second cannot then be
served from a stale ``.pyc``.

    python tools/mutation_audit.py                               # all mutants, their targets
    python tools/mutation_audit.py --only kda-bwd-dh0-none,cumsum-reverse-exclusive --wide
    python tools/mutation_audit.py --baseline                    # the targets pass unmutated?
    python tools/mutation_audit.py --list                        # ids and what bug each models
    python tools/mutation_audit.py --refresh                     # re-render with the list's verdicts

A mutant with ``hide_modules: [pkg]`` runs its targets with ``pkg`` unimportable (see
``HIDE_PLUGIN_SOURCE``). Writes ``benchmarks/results/mutation_audit.json`` and ``.md`` (``--json`` /
``--markdown``) after every mutant; with ``--only`` the new outcomes are merged into the existing
JSON by mutant id. Exit status: 0 when every
run mutant was killed or carries an ``equivalent`` verdict in the list, 1 when one survived without
such a verdict (or timed out or errored), 2 on a bad mutants file or arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MUTANTS = ROOT / "tests" / "mutation" / "mutants.yaml"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "mutation_audit.json"
WIDE_TARGET = "tests/myfla"
PYTEST_ARGS = ["-x", "-q", "-n", "0", "-p", "no:cacheprovider"]
KEYS = {"id", "file", "snippet", "replacement", "targets", "models", "verdict", "hide_modules"}
HIDE_PLUGIN = "mutation_hide_modules"
# A pytest plugin (loaded with -p before any test module) that makes the listed top-level packages
# unimportable, so that targets run as in an environment without them (e.g. LegacyFLACache, which
# only constructs without transformers or with transformers <= 4.53.3, as in the runtime-floor run).
HIDE_PLUGIN_SOURCE = '''import os, sys
HIDDEN = set(filter(None, os.environ.get("MUTATION_HIDE_MODULES", "").split(",")))
class _Hide:
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden by the mutation audit)")
        return None
sys.meta_path.insert(0, _Hide())
'''


class MutantsFileError(Exception):
    """The mutants file is malformed (message says which entry and how)."""


@dataclass
class Mutant:
    id: str
    file: str
    snippet: str
    replacement: str
    targets: List[str]
    models: str
    verdict: Optional[str] = None      # 'equivalent: why' for survivors no input can tell apart
    hide_modules: List[str] = field(default_factory=list)   # run the targets as if these were absent

    def apply(self, source: str) -> str:
        """The mutated source; the snippet must occur exactly once."""
        count = source.count(self.snippet)
        if count != 1:
            raise MutantsFileError(f"mutant {self.id}: snippet occurs {count} times in {self.file} (must be once)")
        return source.replace(self.snippet, self.replacement)


@dataclass
class Outcome:
    id: str
    file: str
    models: str
    targets: List[str]
    status: str                        # killed | survived | timeout | error
    killed_by: Optional[str] = None    # first failing test (or the collection error)
    seconds: float = 0.0
    wide: Optional[str] = None         # outcome against tests/myfla, for survivors under --wide
    wide_killed_by: Optional[str] = None
    verdict: Optional[str] = None
    detail: Optional[str] = None
    notes: Dict[str, str] = field(default_factory=dict)


def load_mutants(path: Path) -> List[Mutant]:
    """Parse and validate the mutants file (ids unique, every field present and typed)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MutantsFileError(f"{path}: cannot read mutants ({exc})") from None
    entries = data.get("mutants") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise MutantsFileError(f"{path}: expected a mapping with a 'mutants' list")
    mutants, seen = [], set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise MutantsFileError(f"{path}: entry {i} is not a mapping")
        missing = {"id", "file", "snippet", "replacement", "targets", "models"} - set(e)
        unknown = set(e) - KEYS
        if missing or unknown:
            raise MutantsFileError(f"{path}: entry {i} ({e.get('id')}): missing {sorted(missing)}, unknown {sorted(unknown)}")
        if e["id"] in seen:
            raise MutantsFileError(f"{path}: duplicate mutant id {e['id']}")
        seen.add(e["id"])
        targets = e["targets"] if isinstance(e["targets"], list) else [e["targets"]]
        if e["snippet"] == e["replacement"]:
            raise MutantsFileError(f"{path}: mutant {e['id']}: replacement equals the snippet")
        mutants.append(Mutant(id=str(e["id"]), file=str(e["file"]), snippet=str(e["snippet"]),
                              replacement=str(e["replacement"]), targets=[str(t) for t in targets],
                              models=str(e["models"]), verdict=e.get("verdict"),
                              hide_modules=[str(x) for x in e.get("hide_modules", [])]))
    return mutants


def copy_tree(dest: Path) -> None:
    """Copy the repository's tracked and untracked-not-ignored files (no .git, no bytecode) to ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if not src.is_file():
            continue                                    # deleted but still tracked
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)


_FAILED = re.compile(r"^(FAILED|ERROR) (\S+)")


def first_failure(output: str) -> Optional[str]:
    for line in output.splitlines():
        m = _FAILED.match(line)
        if m:
            return m.group(2)
    return None


def run_targets(tree: Path, targets: List[str], timeout: float, hide_modules: List[str] = ()):
    """``(status, killed_by, seconds, tail)`` of pytest on ``targets`` in ``tree`` (with
    ``hide_modules`` made unimportable, see ``HIDE_PLUGIN_SOURCE``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_XDIST_WORKER_COUNT", None)
    plugin = []
    if hide_modules:
        plugin_dir = tree.parent / "plugins"
        plugin_dir.mkdir(exist_ok=True)
        (plugin_dir / f"{HIDE_PLUGIN}.py").write_text(HIDE_PLUGIN_SOURCE)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_dir), env.get("PYTHONPATH")]))
        env["MUTATION_HIDE_MODULES"] = ",".join(hide_modules)
        plugin = ["-p", HIDE_PLUGIN]
    cmd = [sys.executable, "-m", "pytest", *PYTEST_ARGS, *plugin, *targets]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return "timeout", None, time.monotonic() - start, out[-2000:]
    seconds = time.monotonic() - start
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return "survived", None, seconds, out[-2000:]
    if proc.returncode in (1, 2):                       # failures; 2: interrupted (a collection error)
        return "killed", first_failure(out) or f"pytest exit {proc.returncode}", seconds, out[-2000:]
    return "error", None, seconds, out[-2000:]          # 3 internal, 4 usage, 5 nothing collected


def audit(mutants: List[Mutant], tree: Path, timeout: float, wide: bool, log, done=None) -> List[Outcome]:
    """Run every mutant; ``done(outcomes)`` after each (the report is written as the audit goes, so
    an interrupted audit keeps what it measured)."""
    outcomes = []
    for n, m in enumerate(mutants, 1):
        path = tree / m.file
        o = Outcome(id=m.id, file=m.file, models=m.models, targets=m.targets, status="error", verdict=m.verdict)
        if m.hide_modules:
            o.notes["hidden_modules"] = ",".join(m.hide_modules)
        try:
            original = path.read_text()
            mutated = m.apply(original)
        except (OSError, MutantsFileError) as exc:
            o.detail = str(exc)
            outcomes.append(o)
            log(f"[{n}/{len(mutants)}] {m.id}: error ({exc})")
            continue
        try:
            path.write_text(mutated)
            o.status, o.killed_by, o.seconds, tail = run_targets(tree, m.targets, timeout, m.hide_modules)
            if o.status == "error":
                o.detail = tail
            if o.status == "survived" and wide:
                o.wide, o.wide_killed_by, secs, tail = run_targets(tree, [WIDE_TARGET], timeout * 4, m.hide_modules)
                o.seconds += secs
        finally:
            path.write_text(original)
        extra = f" (wide: {o.wide} {o.wide_killed_by or ''})" if o.wide else ""
        log(f"[{n}/{len(mutants)}] {m.id}: {o.status} {o.killed_by or ''} {o.seconds:.0f}s{extra}")
        outcomes.append(o)
        if done is not None:
            done(outcomes)
    return outcomes


def accepted(o: Outcome) -> bool:
    """Killed, or a survivor whose list entry explains why it is equivalent."""
    if o.status == "killed" or o.wide == "killed":
        return True
    return o.status == "survived" and bool(o.verdict) and str(o.verdict).startswith("equivalent")


def markdown(outcomes: List[Outcome]) -> str:
    def cell(s) -> str:
        return str(s or "").replace("|", "\\|").replace("\n", " ")

    rows = ["| mutant | file | models (bug) | result | killed by / verdict |", "|---|---|---|---|---|"]
    for o in outcomes:
        result = o.status + (f", wide: {o.wide}" if o.wide else "")
        by = o.killed_by or o.wide_killed_by or o.verdict or o.detail or ""
        if o.verdict and by != o.verdict:           # e.g. a hole this audit found and a new test kills
            by = f"{by} ({o.verdict})"
        rows.append(f"| `{o.id}` | `{o.file}` | {cell(o.models)} | {result} | {cell(by)} |")
    counts = totals(outcomes)
    rows.append("")
    rows.append("Totals: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(rows) + "\n"


def totals(outcomes: List[Outcome]) -> Dict[str, int]:
    counts = {"mutants": len(outcomes), "killed": 0, "killed_wide": 0, "equivalent": 0,
              "survived": 0, "timeout": 0, "error": 0}
    for o in outcomes:
        if o.status == "killed":
            counts["killed"] += 1
        elif o.wide == "killed":
            counts["killed_wide"] += 1
        elif o.status == "survived" and accepted(o):
            counts["equivalent"] += 1
        else:
            counts[o.status] += 1
    return counts


def merge(previous: Path, outcomes: List[Outcome], order: List[str]) -> List[Outcome]:
    """Outcomes of this run over those of an earlier JSON (by id), in the mutants file's order."""
    merged: Dict[str, Outcome] = {}
    if previous.is_file():
        for d in json.loads(previous.read_text()).get("mutants", []):
            if d.get("id") in order:
                merged[d["id"]] = Outcome(**d)
    for o in outcomes:
        merged[o.id] = o
    return [merged[i] for i in order if i in merged]


def write_report(args, argv, order: List[str], outcomes: List[Outcome], elapsed: float) -> None:
    """Write the JSON and Markdown reports (with ``--only``, merged into the existing JSON by id)."""
    previous = {}
    if args.only and args.json.is_file():
        previous = json.loads(args.json.read_text())
    try:                        # the list as it is now: another audit may have run on a longer one
        order = [m.id for m in load_mutants(args.mutants)]
    except MutantsFileError:
        pass
    all_outcomes = merge(args.json, outcomes, order) if args.only else outcomes
    md_path = args.markdown or args.json.with_suffix(".md")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    runs = previous.get("runs", [])
    if "command" in previous:                                   # a report of the first format
        runs = [{"command": previous["command"], "seconds": previous.get("seconds_this_run")}]
    run = {"command": "python tools/mutation_audit.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "started": args.started, "mutants": len(outcomes), "seconds": round(elapsed, 1)}
    runs = [r for r in runs if r.get("started") != args.started]     # this run's earlier, partial entry
    report = {
        "pytest_args": PYTEST_ARGS,
        "threads": 1,
        "runs": runs + [run] if args.only else [run],
        "totals": totals(all_outcomes),
        "mutants": [asdict(o) for o in all_outcomes],
    }
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text(markdown(all_outcomes))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=Path, default=DEFAULT_MUTANTS)
    ap.add_argument("--only", help="comma-separated mutant ids (outcomes merged into --json)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant's targets (default 300)")
    ap.add_argument("--wide", action="store_true", help=f"re-run survivors against {WIDE_TARGET}")
    ap.add_argument("--baseline", action="store_true", help="run the union of targets unmutated, then stop")
    ap.add_argument("--list", action="store_true", help="print ids and modelled bugs, then stop")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--markdown", type=Path, help="default: --json with .md")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    ap.add_argument("--refresh", action="store_true",
                    help="run nothing: rewrite --json/--markdown with the list's current verdicts")
    args = ap.parse_args(argv)
    args.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    try:
        mutants = load_mutants(args.mutants)
    except MutantsFileError as exc:
        print(f"mutation_audit: {exc}", file=sys.stderr)
        return 2
    order = [m.id for m in mutants]
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [w for w in wanted if w not in order]
        if unknown:
            print(f"mutation_audit: unknown mutant ids {unknown} (see --list)", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.id in wanted]
    if args.refresh:
        if not args.json.is_file():
            print(f"mutation_audit: {args.json} does not exist (run the audit first)", file=sys.stderr)
            return 2
        report = json.loads(args.json.read_text())
        verdicts = {m.id: m.verdict for m in mutants}
        kept = [Outcome(**dict(d, verdict=verdicts[d["id"]])) for d in report["mutants"] if d["id"] in verdicts]
        kept.sort(key=lambda o: order.index(o.id))
        report["mutants"], report["totals"] = [asdict(o) for o in kept], totals(kept)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        (args.markdown or args.json.with_suffix(".md")).write_text(markdown(kept))
        print(f"refreshed {args.json}: {report['totals']}")
        return 0 if all(accepted(o) for o in kept) else 1
    if args.list:
        for m in mutants:
            print(f"{m.id:40s} {m.file}: {m.models}")
        return 0

    scratch = Path(tempfile.mkdtemp(prefix="mut-audit-"))
    tree = scratch / "tree"
    log = lambda s: print(s, flush=True)              # noqa: E731
    try:
        copy_tree(tree)
        log(f"scratch copy: {tree}")
        if args.baseline:
            # one pytest run per set of hidden modules, over the union of its mutants' targets
            groups: Dict[tuple, set] = {}
            for m in mutants:
                groups.setdefault(tuple(sorted(m.hide_modules)), set()).update(m.targets)
            ok = True
            for hidden, targets in sorted(groups.items()):
                status, by, secs, tail = run_targets(tree, sorted(targets), args.timeout * 10, list(hidden))
                hid = f", hiding {','.join(hidden)}" if hidden else ""
                log(f"baseline ({len(targets)} targets{hid}): {'passed' if status == 'survived' else status} "
                    f"{by or ''} {secs:.0f}s")
                if status != "survived":
                    log(tail)
                    ok = False
            return 0 if ok else 1
        start = time.monotonic()
        outcomes = audit(mutants, tree, args.timeout, args.wide, log,
                         done=lambda outs: write_report(args, argv, order, outs, time.monotonic() - start))
        elapsed = time.monotonic() - start
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    write_report(args, argv, order, outcomes, elapsed)
    log(f"{len(outcomes)} mutants in {elapsed:.0f}s: {totals(outcomes)}; wrote {args.json} and "
        f"{args.markdown or args.json.with_suffix('.md')}")
    return 0 if all(accepted(o) for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
