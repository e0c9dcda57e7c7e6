"""Mutation fuzzing of everything portaudit reads: manifests, ratchet baselines, golden fixture
indexes and tensor files, its parse cache, the wheels pip hands it, port source files, implementation
files and command lines.

The hand-written corpus (tests/portaudit/corpus/) holds the bad inputs somebody thought of; this
finds the ones nobody did. Each case mutates one seed input (bytes, or the parsed YAML / JSON tree),
runs the real command line (`portaudit.cli.run`, what the `portaudit` entry point calls) in a forked
child of a warm parent, and checks what portaudit promises for any input (README "Security",
docs/codes.md):

- the exit code is a documented one (0 clean, 1 findings, 2 usage / input error, 3 upstream error),
  never an escaped exception, a signal, a hang or an "internal error";
- no traceback on either stream;
- nothing is run: payloads that would run code if anything evaluated them (YAML python tags, pickle
  GLOBAL opcodes, ``__import__`` strings) create a canary file only if executed, and it must not exist;
- nothing half-written: a command that fails leaves its report file absent and the port tree as it
  was;
- the gate notices a changed contract (target ``gate-contract``): a bundled manifest edited anywhere
  but its annotations (titles, reasons, deviations, entry points) must not pass against its baseline.

Every finding is written to ``--out`` (JSON lines) with its reproducer file under ``--crashes``,
deduplicated by outcome and the innermost frame of the error. The upstream is never fetched: the
child's pip has no index (a manifest that names another release gets exit 3, "cannot fetch").

    python tools/fuzz_inputs.py --seconds 600 --seed 1             # every target in turn
    python tools/fuzz_inputs.py --target manifest --cases 500 --seed 7
    python tools/fuzz_inputs.py --seconds 600 --seed 1 --case 42   # run case 42 of that campaign again

Needs the upstream trees in the cache (run ``portaudit check`` once). Not part of the test command: a
fixed-seed slice of it runs in tests/portaudit/hostile/test_fuzz_inputs.py.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import importlib
import io
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")   # a forked child must not inherit a busy OpenMP pool
os.environ.setdefault("MKL_NUM_THREADS", "1")

CANARY = "PORTAUDIT_FUZZ_CANARY"
EXIT_ESCAPED = 97      # the child's code for an exception that escaped portaudit.cli.run
DOCUMENTED_EXITS = {0, 1, 2, 3}


# ---------------------------------------------------------------- mutations

INTERESTING_BYTES = [b"\x00", b"\xff", b"\xfe", b"\n", b"\r", b"\r\n", b":", b"-", b"{", b"}", b"[", b"]",
                     b"&", b"*", b"!", b'"', b"'", b"\t", b"#", b"%", b"|", b">", b"\\", b"\xef\xbb\xbf",
                     b"\xed\xa0\x80", b"\xc3", b"\xe2\x80\xae", b"\x0b", b"\x0c", b"\x1b[31m", b" " * 40]


def mutate_bytes(rng: random.Random, data: bytes, donors: List[bytes]) -> bytes:
    """One to four byte-level edits: flips, interesting bytes, deletions, duplications, splices from
    another seed, truncation."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        n = len(out)
        op = rng.randrange(8)
        at = rng.randrange(n + 1) if n else 0
        if op == 0 and n:
            out[min(at, n - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[at:at] = rng.choice(INTERESTING_BYTES)
        elif op == 2 and n:
            end = min(n, at + rng.choice((1, 2, 8, 64, 512)))
            del out[at:end]
        elif op == 3 and n:
            end = min(n, at + rng.choice((1, 8, 64, 512)))
            out[at:at] = out[at:end] * rng.choice((2, 3, 50))
        elif op == 4 and donors:
            donor = rng.choice(donors)
            if donor:
                s = rng.randrange(len(donor))
                out[at:at] = donor[s:s + rng.choice((16, 128, 1024))]
        elif op == 5:
            del out[at:]
        elif op == 6 and n:
            # swap two lines
            lines = bytes(out).split(b"\n")
            if len(lines) > 2:
                i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
                out = bytearray(b"\n".join(lines))
        else:
            out[at:at] = str(rng.choice((-1, 0, 2 ** 31, 2 ** 63, 10 ** 400, 1e308))).encode()
    return bytes(out)


def _canary_path(scratch: Path) -> str:
    return str(scratch / CANARY)


def hostile_values(rng: random.Random, scratch: Path) -> list:
    """Values a careless or hostile file may hold where a string, number, list or mapping belongs."""
    canary = _canary_path(scratch)
    deep: object = "x"
    for _ in range(rng.choice((50, 400, 3000))):
        deep = [deep]
    return [
        None, True, False, 0, -1, 2 ** 63, 10 ** 40, 1.5, float("inf"), "", " ", "\x00", "a\nb", "\u202eevil",
        "x" * rng.choice((300, 70000)), [], {}, [None], {"": None}, {1: 2}, deep,
        "../" * 8 + "etc/passwd", "/etc/passwd", "/dev/zero", "~root", "C:\\Windows", "--help", "-rf",
        "--index-url=http://127.0.0.1:9/", "fla-core==0.4.0 --pre", "fla-core==0.4.0; os_name=='posix'",
        "fla-core==9.9.9", "git+file:///nonexistent", f"__import__('os').system('touch {canary}')",
        "$(touch " + canary + ")", "`touch " + canary + "`", "*", "**/*", "[", "fla.*", "Source: x.py:L1-L2 (fla 0.4.0)",
        "PA999", "pa101", "é" * 10, "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
        "1" * 5000, "L0-L0", "{{}}", "%s%s%s", "\\N{BELL}",
        # symbol- and module-shaped values: where a dotted name belongs, the near misses
        "fla.", ".fla", "fla..ops", "fla.ops.kda.chunk.chunk_kda.<locals>.f", "fla.ops.kda.chunk.chunk_kda.__globals__",
        "fla.ops.kda.chunk.chunk_kda.__call__", "fla.ops.kda.chunk.*", "fla.ops.kda", "fla.ops.kda.chunk", "fla",
        "myfla.ops.kda.chunk.chunk_kda", "fla.ops.kda.chunk.chunk_kda.chunk_kda", "fla.layers.kda.KimiDeltaAttention.forward",
        "os.system", "builtins.eval", "fla.\u0430ps", "fla/ops/kda", "fla.ops.kda.chunk:chunk_kda",
    ]


def _paths(tree, limit: int = 40):
    """Every (path, value) of a parsed YAML / JSON tree, containers included, down to ``limit`` levels
    (a hostile value may itself be thousands of levels deep)."""
    stack = [((), tree)]
    while stack:
        prefix, node = stack.pop()
        yield prefix, node
        if len(prefix) >= limit:
            continue
        if isinstance(node, dict):
            stack.extend((prefix + (k,), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((prefix + (i,), v) for i, v in enumerate(node))


def _set(tree, path, value):
    if not path:
        return value
    node = tree
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return tree


def mutate_tree(rng: random.Random, tree, scratch: Path):
    """One to three structural edits of a parsed document: a value replaced by a hostile one, a key
    dropped, renamed or duplicated into a sibling, a list item repeated or removed, two values swapped."""
    try:
        tree = copy.deepcopy(tree)
    except RecursionError:
        return tree
    for _ in range(rng.randint(1, 3)):
        try:
            tree = _edit_tree(rng, tree, scratch)
        except RecursionError:   # an edit that copies a value thousands of levels deep: skip it
            continue
    return tree


def _edit_tree(rng: random.Random, tree, scratch: Path):
    """One edit of :func:`mutate_tree`."""
    nodes = list(_paths(tree))
    path, value = rng.choice(nodes)
    op = rng.randrange(6)
    if op <= 1:
        tree = _set(tree, path, rng.choice(hostile_values(rng, scratch)))
    elif op == 2 and path:
        parent = tree
        for p in path[:-1]:
            parent = parent[p]
        if isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, list):
            del parent[path[-1]]
    elif op == 3 and isinstance(value, dict) and value:
        k = rng.choice(list(value))
        value[rng.choice((str(k) + "s", str(k).upper(), str(k)[:-1] or "_", 0, "stages", "port", "upstream"))] = \
            value.pop(k)
    elif op == 4 and isinstance(value, list) and value:
        i = rng.randrange(len(value))
        if rng.random() < 0.5:
            value.insert(i, copy.deepcopy(value[i]))
        else:
            del value[i]
    else:
        other_path, other = rng.choice(nodes)
        if path and other_path and path[:len(other_path)] != other_path and other_path[:len(path)] != path:
            tree = _set(tree, path, copy.deepcopy(other))
    return tree


def yaml_payloads(scratch: Path) -> List[str]:
    """YAML texts that run code or explode if a loader is not the safe one."""
    c = _canary_path(scratch)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    return [
        f"!!python/object/apply:os.system ['touch {c}']\n",
        f"schema: 1\nstages: !!python/object/apply:subprocess.call [[touch, {c}]]\n",
        "port: !!python/object/new:type ['X', [], {'__init__': !!python/name:os.system }]\n",
        "upstream: !!python/name:os.system\n",
        bomb,
        "a: " + "[" * 5000 + "]" * 5000 + "\n",
        "a: !!binary AAAA\nb: !!timestamp 2001-12-14\nc: !!set {x, y}\nd: !!omap [x: 1]\n",
        "%YAML 1.1\n%TAG ! tag:evil,2024:\n--- !foo\na: 1\n",
        "a: 1\n---\nb: 2\n",
        "? [a, b]\n: c\n",
        "<<: *undefined\n",
    ]


def pickle_payload(scratch: Path) -> bytes:
    """A pickle whose loading would call os.system (a weights-only loader must refuse it)."""
    import pickle
    cmd = f"touch {_canary_path(scratch)}".encode()
    return (b"\x80\x02cos\nsystem\nq\x00X" + len(cmd).to_bytes(4, "little") + cmd +
            b"q\x01\x85q\x02Rq\x03." if pickle.HIGHEST_PROTOCOL >= 2 else b"")


# ---------------------------------------------------------------- targets

@dataclass
class Case:
    """One prepared run: the command line, the file that was mutated, and what must stay untouched."""
    args: List[str]
    mutated: Path
    report: Optional[Path] = None            # must not exist after a failing run
    frozen: Optional[Path] = None            # a tree that must be unchanged after a failing run
    env: Dict[str, str] = field(default_factory=dict)
    cleanup: Optional[Callable[[], None]] = None   # puts back what the case changed in the scratch cache
    on_pass: Optional[str] = None            # a problem if the command exits 0 (a gate that must fail)


@dataclass
class Target:
    name: str
    seeds: List[Path]
    prepare: Callable[[random.Random, Path, Path, "Fuzzer"], Case]


def _mutated_text(rng, seed: Path, scratch: Path, donors, kind: str) -> bytes:
    """Mutate ``seed`` as a tree (``kind`` yaml / json) or as bytes, or use a payload."""
    import yaml
    raw = seed.read_bytes()
    roll = rng.random()
    if kind == "yaml" and roll < 0.08:
        return rng.choice(yaml_payloads(scratch)).encode()
    if roll < 0.55:
        try:
            tree = yaml.safe_load(raw) if kind == "yaml" else json.loads(raw)
        except Exception:
            tree = None
        if tree is not None:
            tree = mutate_tree(rng, tree, scratch)
            try:
                text = (yaml.safe_dump(tree, sort_keys=False, allow_unicode=rng.random() < 0.5) if kind == "yaml"
                        else json.dumps(tree, ensure_ascii=rng.random() < 0.5))
                return text.encode("utf-8", "surrogatepass")
            except (ValueError, RecursionError, TypeError, yaml.YAMLError):
                pass
    return mutate_bytes(rng, raw, donors)


class Fuzzer:
    """What the targets share: the scratch cache, the seeds' bytes to splice from, the cache entries
    the audits read."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.donors: Dict[str, List[bytes]] = {}
        self.read_entries: List[Path] = []     # parse-cache entries the warm-up audits read

    def donors_of(self, target: Target) -> List[bytes]:
        if target.name not in self.donors:
            self.donors[target.name] = [p.read_bytes()[:65536] for p in target.seeds if p.is_file()]
        return self.donors[target.name]


def _seed_files(*globs: str) -> List[Path]:
    found = []
    for g in globs:
        found.extend(sorted(ROOT.glob(g)))
    return [p for p in found if p.is_file()]


def prepare_manifest(rng, seed, scratch, fz) -> Case:
    text = _mutated_text(rng, seed, scratch, fz.donors["manifest"], "yaml")
    m = scratch / "m.yaml"
    m.write_bytes(text)
    report = scratch / "report.json"
    args = ["check", "-m", str(m), "--no-progress", "-f", rng.choice(["json", "text", "sarif", "junit"]),
            "-o", str(report), "--cache-dir", str(fz.cache)]
    if rng.random() < 0.3:
        args = ["gate", "-m", str(m), "--no-progress", "--cache-dir", str(fz.cache), "--baseline",
                str(scratch / "baseline"), "--update-baseline", "-o", str(report)]
    return Case(args, m, report=report)


def prepare_baseline(rng, seed, scratch, fz) -> Case:
    base = scratch / "baseline"
    base.mkdir()
    target = base / seed.name if seed.parent.name == "baseline" else base / "kda.json"
    target.write_bytes(_mutated_text(rng, seed, scratch, fz.donors["baseline"], "json"))
    manifest = ROOT / "manifests" / (target.stem + ".yaml")
    if not manifest.is_file():
        manifest = ROOT / "manifests" / "kda.yaml"
    return Case(["gate", "-m", str(manifest), "--no-progress", "--cache-dir", str(fz.cache), "--baseline", str(base)],
                target)


def prepare_index_cache(rng, seed, scratch, fz) -> Case:
    """Mutate one entry of the scratch parse cache (put back after the run)."""
    entry = rng.choice(fz.read_entries)    # one the audit below reads (most of the cache is other trees')
    original = entry.read_bytes()
    entry.write_bytes(_mutated_text(rng, entry, scratch, [], "json"))
    manifests = [str(ROOT / "manifests" / f"{n}.yaml") for n in ("kda", "gated_deltanet", "modules", "models", "rwkv7")]
    return Case(["check", *[a for m in manifests for a in ("-m", m)], "--no-progress", "--cache-dir", str(fz.cache)],
                entry,
                cleanup=lambda: entry.write_bytes(original))


def prepare_wheel(rng, seed, scratch, fz) -> Case:
    """A damaged or hostile wheel where pip finds fla-core 0.4.0, with the unpacked tree gone from the
    scratch cache so that portaudit unpacks it (the tree is put back after the run)."""
    tree = next((fz.cache / "trees").glob("fla-core-0.4.0+*"))
    aside = scratch / "tree-aside"
    shutil.move(str(tree), str(aside))
    links = scratch / "wheels"
    links.mkdir()
    for other in seed.parent.glob("*-0.4.0-*.whl"):    # the tree's other distribution, intact
        shutil.copy2(other, links / other.name)
    wheel = links / seed.name
    wheel.write_bytes(_mutated_wheel(rng, seed, scratch))
    return Case(["check", "-m", str(ROOT / "manifests" / "kda.yaml"), "--no-progress", "--cache-dir", str(fz.cache)],
                wheel, env={"PIP_FIND_LINKS": str(links)}, cleanup=lambda: _put_back(aside, tree))


def _put_back(aside: Path, tree: Path) -> None:
    """The original unpacked tree back in place of whatever the case unpacked."""
    if tree.exists():
        shutil.rmtree(tree)
    shutil.move(str(aside), str(tree))


def _mutated_wheel(rng, seed: Path, scratch: Path) -> bytes:
    """Bytes of a wheel: damaged bytes, or a well-formed zip with hostile members (paths out of the
    folder, absolute paths, a declared size that lies, thousands of members, a link)."""
    import zipfile
    roll = rng.random()
    if roll < 0.5:
        return mutate_bytes(rng, seed.read_bytes(), [])
    buf = io.BytesIO()
    with zipfile.ZipFile(seed) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")        # a duplicate member name is one of the hostile cases
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        kind = rng.randrange(5)
        if kind == 0:
            dst.writestr("../../" + CANARY, "escaped")
        elif kind == 1:
            dst.writestr("/tmp/" + CANARY, "absolute")
        elif kind == 2:
            for n in range(rng.choice((2000, 60000))):
                dst.writestr(f"fla/junk/{n}.py", "")
        elif kind == 3:
            link = zipfile.ZipInfo("fla/ops/kda/escape.py")
            link.external_attr = (0o120777 << 16)       # a symbolic link member pointing out of the tree
            dst.writestr(link, "/etc/passwd")
        else:
            dst.writestr("fla/ops/kda/chunk.py", b"\x00" * rng.choice((10, 10 ** 6)) + bytes(range(256)))
    return buf.getvalue()


def prepare_golden_index(rng, seed, scratch, fz) -> Case:
    fixtures = scratch / "fixtures"
    fixtures.mkdir()
    src = seed.parent
    doc = json.loads((src / "index.json").read_text()) if (src / "index.json").is_file() else None
    small = "gdn/fused_recurrent/base"
    if doc is not None and small in doc.get("cases", {}):
        f = doc["cases"][small].get("file")
        doc["cases"] = {small: doc["cases"][small]}
        if f and (src / f).is_file():
            shutil.copy2(src / f, fixtures / f)
        seed_bytes = json.dumps(doc).encode()
    else:
        seed_bytes = seed.read_bytes()
    tmp_seed = scratch / "seed.json"
    tmp_seed.write_bytes(seed_bytes)
    (fixtures / "index.json").write_bytes(_mutated_text(rng, tmp_seed, scratch, fz.donors["golden-index"], "json"))
    return Case(["golden", "check", "--fixtures", str(fixtures), "--impl", "myfla", "--cases", small, "-f", "json",
                 "-o", str(scratch / "report.json")], fixtures / "index.json", report=scratch / "report.json")


def prepare_golden_tensors(rng, seed, scratch, fz) -> Case:
    fixtures = scratch / "fixtures"
    fixtures.mkdir()
    doc = json.loads((seed.parent / "index.json").read_text())
    small = "gdn/fused_recurrent/base"
    rec = doc["cases"][small]
    doc["cases"] = {small: rec}
    (fixtures / "index.json").write_text(json.dumps(doc))
    tensors = fixtures / rec["file"]
    if rng.random() < 0.1:
        tensors.write_bytes(pickle_payload(scratch))
    else:
        tensors.write_bytes(mutate_bytes(rng, (seed.parent / rec["file"]).read_bytes(), []))
    return Case(["golden", "check", "--fixtures", str(fixtures), "--impl", "myfla", "--cases", small, "-f", "json",
                 "-o", str(scratch / "report.json")], tensors, report=scratch / "report.json")


def prepare_source(rng, seed, scratch, fz) -> Case:
    """A scratch copy of myfla with one module mutated; check it, or rewrite its citations."""
    port = scratch / "port"
    shutil.copytree(ROOT / "myfla", port / "myfla", ignore=shutil.ignore_patterns("__pycache__"))
    rel = seed.relative_to(ROOT)
    victim = port / rel
    raw = seed.read_bytes()
    roll = rng.random()
    if roll < 0.25:
        # a citation with hostile numbers, paths or versions
        cite = rng.choice([
            "Source: fla/ops/kda/chunk.py:L99999999999999999999-L1 (fla 0.4.0)", "Source: ../../../etc/passwd:L1-L2 (fla 0.4.0)",
            "Source: fla/ops/kda/chunk.py:L\u0661-L\u0662 (fla 0.4.0)", "Source: fla/ops/kda/chunk.py:L0-L0 (fla 0.4.0)",
            "Source: /etc/passwd:L1-L2 (fla 0.4.0)", "Source: fla/ops/kda/chunk.py:L5-L3 (fla 0.4.0)",
            "Source: fla/ops/kda/chunk.py:L1-L2 (fla " + "9" * 5000 + ")", "Source: fla/ops/kda/\x00chunk.py:L1-L2 (fla 0.4.0)",
            "Source: fla/ops/kda/chunk.py:L1-L2 (fla 0.4.0)" * 50, "Source:", "Source: :L-L ()",
        ])
        lines = raw.split(b"\n")
        at = rng.randrange(len(lines) + 1)
        indent = rng.choice(("", "    ", "        # "))
        lines.insert(at, (indent + cite).encode("utf-8", "surrogatepass"))
        raw = b"\n".join(lines)
    else:
        raw = mutate_bytes(rng, raw, fz.donors["source"])
    victim.write_bytes(raw)
    manifest = ROOT / "manifests" / rng.choice(["kda.yaml", "gated_deltanet.yaml", "modules.yaml", "rwkv7.yaml"])
    if rng.random() < 0.5:
        args = ["fix-citations", "-m", str(manifest), "--port-path", str(port), "--no-progress", "--cache-dir",
                str(fz.cache), "--write"]
        return Case(args, victim, frozen=port)
    report = scratch / "report.json"
    return Case(["check", "-m", str(manifest), "--port-path", str(port), "--no-progress", "--cache-dir", str(fz.cache),
                 "-f", "json", "-o", str(report)], victim, report=report)


def prepare_impl_spec(rng, seed, scratch, fz) -> Case:
    """An implementation file (what `invariants` / `golden check` read to call a port that is not a
    mirror of the upstream); the quick chunk invariants of its op run on what it describes."""
    spec = scratch / "impl.yaml"
    spec.write_bytes(_mutated_text(rng, seed, scratch, fz.donors["impl-spec"], "yaml"))
    report = scratch / "report.json"
    op = "chunk_kda" if "kimi" in seed.name else "chunk_gated_delta_rule"
    return Case(["invariants", "-m", str(spec), "--op", op, "--quick", "-f", "json", "-o",
                 str(report)], spec, report=report)


# Parts of a manifest that annotate the contract without changing what is checked: editing them may
# pass the gate. Paths as (key, index, key, ...), ``*`` for any index or key.
# ``name`` is here because a renamed manifest has no baseline and is gated strictly (100%, nothing
# accepted): a new ratchet, without the old one's record of the contract (docs/security.md).
ANNOTATIONS = [("description",), ("stages", "*", "title"), ("stages", "*", "id"), ("waivers", "*", "reason"),
               ("deviations",), ("entry_points",), ("numerics",), ("stages", "*", "symbols", "*", "kind"),
               ("name",)]


def _leaves(tree, limit: int = 60):
    """(path, text) of every leaf of a parsed document (:func:`_paths`); a container ``limit`` levels
    down is one leaf."""
    for path, node in _paths(tree, limit):
        if not (isinstance(node, (dict, list)) and node):
            yield path, repr(node)
        elif len(path) >= limit:
            yield path, f"<{type(node).__name__} deeper than {limit} levels>"


def _key_path(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _is_annotation(path: tuple) -> bool:
    return any(len(path) >= len(a) and all(x == "*" or x == p for x, p in zip(a, path)) for a in ANNOTATIONS)


def prepare_gate_contract(rng, seed, scratch, fz) -> Case:
    """An edited copy of a bundled manifest, gated against its committed baseline: if anything but an
    annotation changed and the gate still passes, the contract changed without the gate noticing (how
    deleted entries and copies turned translations were found)."""
    import yaml
    original = yaml.safe_load(seed.read_bytes())
    tree = mutate_tree(rng, original, scratch)
    before, after = dict(_leaves(original)), dict(_leaves(tree)) if isinstance(tree, dict) else {}
    changed = sorted({p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}, key=str)
    manifest = scratch / seed.name
    try:
        manifest.write_text(yaml.safe_dump(tree, sort_keys=False, allow_unicode=True))
    except (ValueError, RecursionError, TypeError, UnicodeEncodeError, yaml.YAMLError):
        manifest.write_bytes(seed.read_bytes())
        changed = []
    contract = [p for p in changed if not _is_annotation(p)]
    args = ["gate", "-m", str(manifest), "--baseline", str(ROOT / "manifests" / "baseline"), "--port-path", str(ROOT),
            "--no-progress", "--cache-dir", str(fz.cache)]
    on_pass = f"the gate passed a changed contract: {_key_path(contract[0])}" if contract else None
    return Case(args, manifest, on_pass=on_pass)


OPTION_WORDS = ["check", "gate", "scaffold", "fix-citations", "codes", "provenance", "drift", "invariants", "golden",
                "record", "-m", "--manifest", "--upstream-path", "--port-path", "--cache-dir", "-f", "--format", "-o",
                "--output", "-v", "--fail-under", "--baseline", "--update-baseline", "--force", "--no-index-cache",
                "--no-progress", "--upstream-git", "--upstream-rev", "--bodies", "--write", "--check", "--op", "--impl",
                "--device", "--cases", "--fixtures", "--to", "-e", "-u", "--help", "--version", "--markdown", "--",
                "myfla:kda", "myfla:", "manifests", "manifests/kda.yaml", "all", "chunk_kda", "nan", "-1", "1e400",
                "101", "text", "json", "sarif", "/dev/null", "/dev/zero", "/proc/self/mem", ".", "..", "\x00", "é",
                "fla-core==0.4.0", "=", "--format=json", "-ojson", "-mm"]


def prepare_cli(rng, seed, scratch, fz) -> Case:
    args = [rng.choice(OPTION_WORDS) for _ in range(rng.randint(1, 7))]
    args = [a.replace("\x00", "") if rng.random() < 0.5 else a for a in args]
    if "--cache-dir" not in args:
        args += ["--cache-dir", str(fz.cache)] if rng.random() < 0.9 and args and args[0] in (
            "check", "gate", "fix-citations", "provenance", "drift", "scaffold") else []
    return Case(args, scratch / "args.json")


def targets() -> Dict[str, Target]:
    from portaudit.static.upstream import default_cache_dir
    return {t.name: t for t in [
        Target("manifest", _seed_files("manifests/*.yaml", "examples/manifests/*.yaml",
                                       "tests/portaudit/corpus/manifests/*.yaml"), prepare_manifest),
        Target("baseline", _seed_files("manifests/baseline/*.json", "tests/portaudit/corpus/baselines/*.json"),
               prepare_baseline),
        Target("index-cache", [ROOT / "manifests" / "kda.yaml"], prepare_index_cache),
        Target("wheel", sorted(Path(default_cache_dir()).glob("wheels/*-0.4.0-*.whl")), prepare_wheel),
        Target("golden-index", _seed_files("tests/fixtures/golden/index.json", "tests/portaudit/corpus/golden/*.json"),
               prepare_golden_index),
        Target("golden-tensors", _seed_files("tests/fixtures/golden/index.json"), prepare_golden_tensors),
        Target("source", _seed_files("myfla/ops/kda/*.py", "myfla/ops/gated_delta_rule/*.py", "myfla/modules/*.py",
                                     "myfla/layers/*.py"), prepare_source),
        Target("impl-spec", _seed_files("examples/impl/*.yaml"), prepare_impl_spec),
        Target("gate-contract", _seed_files("manifests/*.yaml"), prepare_gate_contract),
        Target("cli", [ROOT / "README.md"], prepare_cli),
    ]}


# ---------------------------------------------------------------- running one case

def _child(args: List[str], out_path: Path, err_path: Path, env: Dict[str, str], cwd: Path,
           coverage_dir: Optional[Path] = None) -> None:
    """In the forked child: run the command line with its streams on files (and its line coverage of
    portaudit into ``coverage_dir``); never return."""
    code = EXIT_ESCAPED
    cov = None
    try:
        import faulthandler
        faulthandler.disable()   # a crash is the parent's to report, not a dump on an inherited stream
        os.chdir(cwd)
        os.environ.update(env)
        out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), encoding="utf-8", line_buffering=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), encoding="utf-8", line_buffering=True)
        from portaudit.cli import common
        common.console.file = sys.stdout
        common.err_console.file = sys.stderr
        if coverage_dir is not None:
            import coverage
            cov = coverage.Coverage(data_file=str(coverage_dir / ".coverage"), data_suffix=str(os.getpid()),
                                    source_pkgs=["portaudit"])
            cov.start()
        from portaudit.cli import run
        code = run(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_ESCAPED
    except BaseException:
        traceback.print_exc()
        code = EXIT_ESCAPED
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        if cov is not None:
            with contextlib.suppress(Exception):
                cov.stop()
                cov.save()
        os._exit(code if isinstance(code, int) and 0 <= code < 256 else EXIT_ESCAPED)


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode("utf-8", "surrogateescape"))
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


@dataclass
class Outcome:
    problem: Optional[str]     # None: portaudit kept its promises
    rc: Optional[int]
    seconds: float
    stderr: str
    stdout: str


def run_case(case: Case, scratch: Path, timeout: float, coverage_dir: Optional[Path] = None) -> Outcome:
    frozen = _tree_digest(case.frozen) if case.frozen else None
    out_path, err_path = scratch / ".stdout", scratch / ".stderr"
    # no index for pip: a manifest naming another release cannot reach the network
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(scratch / "no-wheels"), "PIP_CONFIG_FILE": os.devnull,
           "GIT_TERMINAL_PROMPT": "0", "COLUMNS": "160", **case.env}
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        _child(case.args, out_path, err_path, env, scratch, coverage_dir)
    deadline = start + timeout
    status = None
    while time.perf_counter() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        status = None
    seconds = time.perf_counter() - start
    stdout = out_path.read_text(errors="replace") if out_path.exists() else ""
    stderr = err_path.read_text(errors="replace") if err_path.exists() else ""
    if status is None:
        return Outcome(f"hang (over {timeout:.0f} s)", None, seconds, stderr, stdout)
    if os.WIFSIGNALED(status):
        return Outcome(f"killed by signal {os.WTERMSIG(status)}", None, seconds, stderr, stdout)
    rc = os.WEXITSTATUS(status)
    problem = None
    if any((d / CANARY).exists() for d in _canary_dirs(scratch)):
        problem = "CODE RAN: the canary file was created"
    elif rc == EXIT_ESCAPED:
        problem = "exception escaped portaudit.cli.run"
    elif rc not in DOCUMENTED_EXITS:
        problem = f"undocumented exit code {rc}"
    elif "internal error" in stderr:
        problem = "internal error"
    elif "Traceback (most recent call last)" in stderr + stdout:
        problem = "traceback printed"
    elif rc >= 2 and case.report is not None and case.report.exists():
        problem = f"report written by a run that failed (exit {rc})"
    elif rc >= 2 and frozen is not None and _tree_digest(case.frozen) != frozen:
        problem = f"port tree changed by a run that failed (exit {rc})"
    elif rc == 0 and case.on_pass:
        problem = case.on_pass
    return Outcome(problem, rc, seconds, stderr, stdout)


def _canary_dirs(scratch: Path) -> List[Path]:
    """Where a payload that ran, or a member that escaped its folder, would leave the canary."""
    return [scratch, *list(scratch.parents)[:3], Path(os.path.expanduser("~")), Path(tempfile.gettempdir())]


def signature(target: str, outcome: Outcome) -> str:
    """What makes two findings the same: the target, the kind of problem and where the error arose."""
    where = ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', outcome.stderr)
    if frames:
        f, line, fn = frames[-1]
        where = f"{Path(f).name}:{fn}"
    else:
        m = re.search(r"internal error: (\w+)", outcome.stderr)
        where = m.group(1) if m else ""
    kind = outcome.problem.split(" (")[0] if outcome.problem else ""
    kind = re.sub(r"\[\d+\]", "[*]", kind)          # one finding per kind of manifest path, not per index
    return f"{target}|{kind}|{where}"


# ---------------------------------------------------------------- driver

def scratch_cache(work: Path) -> Path:
    """A private copy of the parse cache and upstream trees: cases may mutate it."""
    from portaudit.static.upstream import default_cache_dir
    src = default_cache_dir()
    dst = work / "cache"
    if not (src / "trees").is_dir():
        raise SystemExit(f"no upstream trees in {src}: run `portaudit check` once first")
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("*.lock"))
    return dst


def warm_up(cache: Path) -> List[Path]:
    """Import everything a case may reach once in the parent, so each forked child starts warm; the
    parse-cache entries the audits of the bundled manifests read."""
    from portaudit.cli import run
    from portaudit.static.index.tree import TreeIndex

    read: List[Path] = []
    cache_file = TreeIndex.cache_file

    def recording(self, *args):
        path = cache_file(self, *args)
        if path is not None and path.is_file():
            read.append(path)
        return path

    TreeIndex.cache_file = recording
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for name in ("kda", "gated_deltanet", "modules", "models", "rwkv7"):
                run(["check", "-m", str(ROOT / "manifests" / f"{name}.yaml"), "--no-progress", "--cache-dir", str(cache)])
    finally:
        TreeIndex.cache_file = cache_file
    # torch for the golden targets, and what the implementation files of examples/impl/ import
    for module in ("portaudit.numerics.fixtures", "transformers.models.qwen3_next.modeling_qwen3_next",
                   "transformers.models.kimi_linear.modeling_kimi_linear"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    return sorted(set(read))


def main(argv: Optional[List[str]] = None) -> int:
    all_targets = targets()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", action="append", choices=sorted(all_targets), help="repeatable; default: all")
    ap.add_argument("--seconds", type=float, default=0, help="time budget over all targets (0: use --cases)")
    ap.add_argument("--cases", type=int, default=50, help="cases per target when --seconds is 0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60, help="seconds one case may take")
    ap.add_argument("--out", type=Path, default=Path("fuzz_findings.jsonl"))
    ap.add_argument("--crashes", type=Path, default=Path("fuzz_crashes"))
    ap.add_argument("--case", type=int, default=0,
                    help="run only case N of the campaign the other options describe (the same draws), print its "
                         "command line and output, and keep its scratch folder")
    ap.add_argument("--coverage", type=Path, default=None,
                    help="record each case's line coverage of portaudit (the coverage package) as data files in "
                         "this folder; `coverage combine` and `coverage report` there")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    names = args.target or list(all_targets)
    for n in names:
        if not all_targets[n].seeds:
            print(f"target {n}: no seed files here, skipped", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="portaudit-fuzz-"))
    cache = scratch_cache(work)
    fz = Fuzzer(cache)
    fz.read_entries = warm_up(cache)
    rng = random.Random(args.seed)
    seen: Dict[str, int] = {}
    counts = {n: {"cases": 0, "problems": 0, "rc": {}} for n in names}
    args.crashes.mkdir(parents=True, exist_ok=True)
    if args.coverage is not None:
        args.coverage = args.coverage.resolve()
        args.coverage.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    i = harness_errors = 0
    try:
        while True:
            if args.seconds:
                if time.perf_counter() - started > args.seconds:
                    break
                name = names[i % len(names)]
            else:
                if i >= args.cases * len(names):
                    break
                name = names[i // args.cases]
            i += 1
            target = all_targets[name]
            if not target.seeds:
                continue
            fz.donors_of(target)
            seed = rng.choice(target.seeds)
            case_rng = random.Random(rng.getrandbits(64))
            if args.case and i != args.case:
                if i > args.case:
                    break
                continue
            scratch = work / f"case-{i}"
            scratch.mkdir()
            try:
                case = target.prepare(case_rng, seed, scratch, fz)
            except Exception as exc:   # the fuzzer's own defect: say so, keep the campaign going
                harness_errors += 1
                print(f"[{name} #{i}] fuzzer error while preparing the case: {type(exc).__name__}: "
                      f"{str(exc)[:200]}", file=sys.stderr, flush=True)
                shutil.rmtree(scratch, ignore_errors=True)
                continue
            outcome = run_case(case, scratch, args.timeout, args.coverage)
            if args.case:
                kept = Path(tempfile.mkdtemp(prefix=f"portaudit-fuzz-case-{i}-"))
                shutil.copytree(scratch, kept, dirs_exist_ok=True)
                print(json.dumps({"target": name, "args": case.args, "mutated": str(case.mutated), "rc": outcome.rc,
                                  "problem": outcome.problem, "scratch": str(kept)}, indent=1))
                print(outcome.stdout[-3000:], outcome.stderr[-3000:], sep="\n")
            if case.cleanup is not None:
                case.cleanup()
            c = counts[name]
            c["cases"] += 1
            c["rc"][str(outcome.rc)] = c["rc"].get(str(outcome.rc), 0) + 1
            if outcome.problem:
                c["problems"] += 1
                sig = signature(name, outcome)
                seen[sig] = seen.get(sig, 0) + 1
                if seen[sig] == 1:
                    keep = args.crashes / f"{name}-{i:05d}{case.mutated.suffix or '.bin'}"
                    if case.mutated.is_file():
                        shutil.copy2(case.mutated, keep)
                    else:
                        keep.write_text(json.dumps(case.args))
                    record = {"target": name, "case": i, "seed": args.seed, "signature": sig, "problem": outcome.problem,
                              "rc": outcome.rc, "args": case.args, "file": str(keep), "seconds": round(outcome.seconds, 2),
                              "stderr": outcome.stderr[-3000:], "stdout": outcome.stdout[-1000:]}
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(record) + "\n")
                    if not args.quiet:
                        print(f"[{name} #{i}] {outcome.problem}: {sig}\n    {outcome.stderr.strip()[-400:]}", flush=True)
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - started
    print(json.dumps({"seed": args.seed, "seconds": round(total, 1), "targets": counts,
                      "distinct_problems": len(seen), "fuzzer_errors": harness_errors}, indent=1))
    return 1 if seen or harness_errors else 0


if __name__ == "__main__":
    sys.exit(main())
