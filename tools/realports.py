"""portaudit on real ports: fetch released wheels that vendor or translate fla, check them with the
manifests in examples/manifests/, and measure what changed against portaudit before issue 10.

    python -m tools.realports                 # fetch (once), check, print the figures
    python -m tools.realports --json FILE     # also write them as JSON
    python -m tools.realports -v              # list every finding that went away, and why

Needs the package registry (``pip download --no-deps``) the first time, and a clone of fla's git
repository (``--fla-git``, default the mirror this project uses). Nothing here runs in the default
test command. Wheels are unpacked (``*.py`` only) under ``--work`` (default /tmp/realports); their
code is never copied into this repository.

What it reports, per port:

* the findings of ``portaudit check`` now, by code, and the completeness;
* the findings of portaudit before issue 10 (the tree at ``--before``, default b8e4bd2) on the same
  entries: the manifest without the keys it did not know (fidelity, renames, citation policy, git
  upstreams: the same upstream tree is given by path; citations waived as the copy has none; of
  several port locations the first);
* the findings that went away, grouped by the rule that removed them (annotations as types, named
  constants, bases outside the port, stand-in comments, declared renames), and the new ones
  (bodies, kernel signatures, unresolved bases);
* whether the true findings issue 10 names are found.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
FLA_GIT = "/work/.mirror/fla-org+flash-linear-attention/repo"
BEFORE = "b8e4bd2"          # portaudit on main before issue 10 (the layout restructuring merged)


@dataclass
class RealPort:
    name: str
    requirement: Optional[str]       # a wheel to fetch; None: an installed package (transformers)
    manifest: str
    rev: Optional[str] = None        # compare with this fla revision instead of the manifest's


PORTS = [
    RealPort("vllm-0.10.2", "vllm==0.10.2", "examples/manifests/vllm-0.10.2.yaml"),
    RealPort("vllm-0.33.0", "vllm==0.33.0", "examples/manifests/vllm-0.33.0.yaml"),
    # the same copy against the 0.4.0 release (what issue 10 measured): fla wrote Optional[...] there
    RealPort("vllm-0.33.0@v0.4.0", "vllm==0.33.0", "examples/manifests/vllm-0.33.0.yaml", rev="v0.4.0"),
    RealPort("sglang-0.5.23", "sglang==0.5.23", "examples/manifests/sglang-0.5.23.yaml"),
    RealPort("transformers-5.24", None, "examples/manifests/transformers-5.24.yaml"),
]


@dataclass
class TrueFinding:
    port: str
    what: str
    code: str
    symbol: str
    removed: str          # a line the diff must remove ("" for none)
    added: str            # a line the diff must add
    rev: Optional[str] = None          # --upstream-rev for this check
    no_signature_change: bool = False  # and no PA2xx on the symbol


TRUE_FINDINGS = [
    TrueFinding("vllm-0.10.2", "chunk_fwd_kernel_o uses exp where fla 0.2.2 uses safe_exp", "PA601",
                "fla.ops.common.chunk_o.chunk_fwd_kernel_o", "b_A = b_A * safe_exp(", "b_A = b_A * exp(",
                rev="v0.2.2"),
    TrueFinding("vllm-0.10.2", "chunk_gated_delta_rule_fwd_h gained grouped value heads, same signature",
                "PA601", "fla.ops.common.chunk_delta_h.chunk_gated_delta_rule_fwd_h",
                "B, T, H, K, V = (*k.shape, u.shape[-1])", "B, T, Hg, K, V = (*k.shape, u.shape[-1])",
                no_signature_change=True),
    TrueFinding("vllm-0.33.0", "the KDA intra function returns (A, Aqk) where fla returns (Aqk, Akk)", "PA601",
                "fla.ops.kda.chunk_intra.chunk_kda_fwd_intra", "return (Aqk, Akk)", "return (A, Aqk)"),
]

NOISE_RULES = {
    "PA207": "annotations compared as types (Optional/|, Tuple/tuple, quotes, implicit Optional)",
    "PA206": "defaults that name a module constant compared by value",
    "PA205": "defaults that name a module constant compared by value",
    "PA103": "kinds resolved through base classes outside the port",
    "PA403": "a comment saying what a value stands for is no stub",
    "PA201": "parameter renames declared once",
    "PA202": "parameter renames declared once",
    "PA203": "parameter renames declared once",
}


def run(cmd: list[str], env: Optional[dict] = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160", **(env or {})})


# -- the ports -------------------------------------------------------------------------------

def fetch(port: RealPort, work: Path) -> Path:
    """The unpacked wheel (``*.py`` only), fetched once."""
    if port.requirement is None:
        import importlib.util

        spec = importlib.util.find_spec("transformers")      # locates, imports nothing
        return Path(list(spec.submodule_search_locations)[0]).parent
    dest = work / port.name.split("@")[0]
    if (dest / ".unpacked").is_file():
        return dest
    work.mkdir(parents=True, exist_ok=True)
    name, _, version = port.requirement.partition("==")
    wheels = sorted(work.glob(f"{name}-{version}-*.whl"))
    if not wheels:
        print(f"fetching {port.requirement} ...", file=sys.stderr)
        proc = run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d",
                    str(work), port.requirement])
        if proc.returncode != 0:
            raise SystemExit(f"pip download {port.requirement} failed: {proc.stderr.strip()[-400:]}")
        wheels = sorted(work.glob(f"{name}-{version}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf:
        for info in zf.infolist():
            p = Path(info.filename)
            if p.suffix == ".py" and not p.is_absolute() and ".." not in p.parts:
                target = dest / p
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(info))
    (dest / ".unpacked").write_text(wheels[0].name + "\n")
    return dest


def check(manifest: Path, port_dir: Path, fla_git: str, portaudit_root: Path = ROOT,
          rev: Optional[str] = None, legacy: bool = False) -> dict:
    cmd = [sys.executable, "-m", "portaudit", "check", "-m", str(manifest), "--port-path", str(port_dir),
           "-f", "json", "--no-progress"]
    if not legacy:
        cmd += ["--upstream-git", fla_git] + (["--upstream-rev", rev] if rev else [])
    # `python -m` puts the working directory first on sys.path: run from the tree whose portaudit is meant
    proc = run(cmd, env={"PYTHONPATH": str(portaudit_root)}, cwd=portaudit_root)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    return json.loads(proc.stdout)["manifests"][0]


# -- portaudit before issue 10 ----------------------------------------------------------------

def before_tree(rev: str, where: Path) -> Path:
    """portaudit as it was at ``rev`` (git archive of this repository)."""
    dest = where / f"portaudit-{rev}"
    if not (dest / "portaudit").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "portaudit"],
                              capture_output=True, check=True).stdout
        import io

        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            for m in tf:
                if m.isfile() and not Path(m.name).is_absolute() and ".." not in Path(m.name).parts:
                    out = dest / m.name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tf.extractfile(m).read())
    return dest


def legacy_manifest(manifest: Path, upstream_root: Path, where: Path) -> Path:
    """The manifest in the form portaudit knew before issue 10 (see the module docstring)."""
    data = yaml.safe_load(manifest.read_text())
    up = data["upstream"]
    for k in ("git", "rev", "archive"):
        up.pop(k, None)
    if "distributions" not in up:
        up["path"] = str(upstream_root)
        up.setdefault("version", "legacy")
    for k in ("fidelity", "renames"):
        data["port"].pop(k, None)
    data.pop("citations", None)
    for stage in data["stages"]:
        stage.pop("fidelity", None)
        stage.pop("citations", None)
        for i, e in enumerate(stage["symbols"]):
            if isinstance(e, dict):
                e.pop("fidelity", None)
                e.pop("renames", None)
                if isinstance(e.get("port"), list):
                    e["port"] = e["port"][0]
    data["waivers"] = (data.get("waivers") or []) + [
        {"symbol": "*", "code": "PA30*", "reason": "the copy carries no Source lines (citations are checked "
                                                     "from the sidecar, or off, in the new run)"}]
    out = where / f"legacy-{len(list(where.glob('legacy-*')))}-{manifest.name}"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def upstream_root_of(manifest: Path, fla_git: str, rev: Optional[str] = None) -> Path:
    sys.path.insert(0, str(ROOT))
    from portaudit.static.manifest import load_manifest
    from portaudit.static.session import Session

    session = Session(upstream_git=Path(fla_git), upstream_rev=rev)
    return session.upstream_root(session.retarget(load_manifest(manifest)))


# -- figures ----------------------------------------------------------------------------------

def open_keys(result: dict) -> dict[str, dict]:
    """Open findings by key, the citation family left out: the run before issue 10 waives it (a
    copy has no Source lines), and a run against another revision than the sidecar records would
    count every record."""
    return {f["key"]: f for f in result["findings"] if f["status"] == "open" and not f["code"].startswith("PA3")}


def base_key(key: str) -> str:
    """A new key without the port location part (several locations are one key before)."""
    code, _, rest = key.partition(":")
    sym, sep, more = rest.partition(":")
    return f"{code}:{sym.split('@')[0]}{sep}{more}"


def compare(old: dict, new: dict) -> dict:
    o, n = open_keys(old), open_keys(new)
    n_base = {base_key(k) for k in n}
    gone = {k: f for k, f in o.items() if k not in n_base}
    added = {k: f for k, f in n.items() if base_key(k) not in o}
    by_rule = collections.Counter(NOISE_RULES.get(f["code"], f"other ({f['code']})") for f in gone.values())
    entries = [s["symbol"] for s in new["symbols"]]
    passed_before = {s["symbol"] for s in old["symbols"] if s["status"] in ("ok", "waived")}
    changed = {next((e for e in entries if f["symbol"] == e or f["symbol"].startswith(e + ".")), f["symbol"])
               for f in n.values() if f["code"] == "PA601"}
    return {
        "before": {"symbols": old["summary"]["symbols"], "passed": old["summary"]["passed"],
                   "open": len(o), "by_code": dict(sorted(collections.Counter(f["code"] for f in o.values()).items()))},
        "after": {"symbols": new["summary"]["symbols"], "passed": new["summary"]["passed"],
                  "open": len(n), "by_code": dict(sorted(collections.Counter(f["code"] for f in n.values()).items()))},
        "gone": {"count": len(gone), "share_of_before": round(len(gone) / len(o), 3) if o else 0.0,
                 "by_rule": dict(by_rule), "findings": [f"{k}  ({gone[k]['message']})" for k in sorted(gone)]},
        "new": {"count": len(added), "by_code": dict(sorted(collections.Counter(f["code"] for f in added.values()).items()))},
        "passed_before": len(passed_before),
        "passed_before_with_changed_body": sorted(passed_before & changed),
    }


def true_findings(results: dict, work: Path, fla_git: str) -> list[dict]:
    out = []
    for t in TRUE_FINDINGS:
        port = next(p for p in PORTS if p.name == t.port)
        r = results[t.port] if t.rev is None else check(ROOT / port.manifest, fetch(port, work), fla_git, rev=t.rev)
        hits = [f for f in r["findings"] if f["code"] == t.code and f["symbol"] == t.symbol]
        diff = hits[0]["diff"] if hits else ""
        lines = diff.splitlines()[2:]
        ok = bool(hits) and any(ln.startswith("+") and t.added in ln for ln in lines) and \
            (not t.removed or any(ln.startswith("-") and t.removed in ln for ln in lines))
        if t.no_signature_change:
            ok = ok and not any(f["code"].startswith("PA2") and f["symbol"] == t.symbol for f in r["findings"])
        out.append({"port": t.port, "what": t.what, "found": ok, "symbol": t.symbol,
                    "against": t.rev or "the manifest's rev", "diff": diff})
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/realports"))
    ap.add_argument("--fla-git", default=FLA_GIT)
    ap.add_argument("--before", default=BEFORE, help="the portaudit revision to compare with")
    ap.add_argument("--port", action="append", help="only these ports (by name)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    ports = [p for p in PORTS if not args.port or p.name in args.port]
    tmp = Path(tempfile.mkdtemp(prefix="realports-"))
    old_root = before_tree(args.before, args.work)
    figures, results = {}, {}
    for port in ports:
        manifest = ROOT / port.manifest
        port_dir = fetch(port, args.work)
        new = check(manifest, port_dir, args.fla_git, rev=port.rev)
        results[port.name] = new
        legacy = legacy_manifest(manifest, upstream_root_of(manifest, args.fla_git, port.rev), tmp)
        old = check(legacy, port_dir, args.fla_git, portaudit_root=old_root, legacy=True)
        figures[port.name] = compare(old, new)

    print(f"{'port':<19}{'symbols':>8}{'before: open':>14}{'passed':>8}{'after: open':>13}{'passed':>8}"
          f"{'gone':>6}{'gone %':>8}{'new':>6}")
    for name, f in figures.items():
        print(f"{name:<19}{f['after']['symbols']:>8}{f['before']['open']:>14}{f['before']['passed']:>8}"
              f"{f['after']['open']:>13}{f['after']['passed']:>8}{f['gone']['count']:>6}"
              f"{100 * f['gone']['share_of_before']:>7.0f}%{f['new']['count']:>6}")
    for name, f in figures.items():
        print(f"\n{name}: before {f['before']['by_code']}\n{'':{len(name)}}  after  {f['after']['by_code']}")
        for rule, n in sorted(f["gone"]["by_rule"].items(), key=lambda x: -x[1]):
            print(f"  gone {n:>4}  {rule}")
        print(f"  new  {f['new']['count']:>4}  {f['new']['by_code']}")
        print(f"  of the {f['passed_before']} symbols the old check passed, "
              f"{len(f['passed_before_with_changed_body'])} have bodies that differ from the upstream's")
        if args.verbose:
            for k in f["gone"]["findings"]:
                print(f"    - {k}")
    if any(p.name in {t.port for t in TRUE_FINDINGS} for p in ports):
        print("\nTrue findings issue 10 names:")
        figures["true_findings"] = true_findings(results, args.work, args.fla_git)
        for t in figures["true_findings"]:
            print(f"  [{'found' if t['found'] else 'MISSING'}] {t['port']}: {t['what']} ({t['symbol']}, "
                  f"against {t['against']})")
            if args.verbose and t["diff"]:
                print("\n".join("      " + ln for ln in t["diff"].splitlines()))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    missing = [t for t in figures.get("true_findings", []) if not t["found"]]
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
