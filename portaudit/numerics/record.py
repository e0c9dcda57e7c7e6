"""Record golden fixtures by running an implementation (real fla on a GPU) on the declared cases.

Run as ``python -m portaudit.numerics.record --out DIR`` on the GPU machine (it needs only torch
and the fla wheels there) or through ``portaudit golden record``. Each case is written as soon as
it is done; a failing case is recorded with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tarfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from portaudit.numerics.case_registry import DEFAULT_REGISTRY, load_case_registry
from portaudit.numerics.fixtures import FixtureWriter
from portaudit.numerics.golden_cases import GoldenCase, find_cases
from portaudit.numerics.impl import Implementation
from portaudit.numerics.registry import get_implementation


def limit_triton_autotune(keep: int = 2) -> bool:
    """Keep only the ``keep`` autotune configs with the fewest pipeline stages (GPU.md: the full
    search makes the first backward take minutes; one config can overflow shared memory).
    Must run before fla is imported. Returns False when triton is absent."""
    try:
        import triton
    except ImportError:
        return False
    original = triton.autotune
    if getattr(original, "_portaudit_limited", False):
        return True

    def autotune(configs, *args, **kwargs):
        configs = sorted(configs, key=lambda c: getattr(c, "num_stages", 0) or 0)[:keep]
        return original(configs, *args, **kwargs)

    autotune._portaudit_limited = True  # type: ignore[attr-defined]
    triton.autotune = autotune
    return True


def _version(dist: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return None


def environment_meta(device: torch.device, seed_note: str) -> Dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "fla-core": _version("fla-core"),
        "flash-linear-attention": _version("flash-linear-attention"),
        "cuda": torch.version.cuda,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "tf32_note": "fla's Triton dots use TF32 for fp32 inputs",
    }
    return {"environment": env, "seed": seed_note,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def _archive(src: Path, archive: Path) -> None:
    tmp = archive.with_name(archive.name + ".part")
    with tarfile.open(tmp, "w") as tf:
        tf.add(src, arcname=src.name)
    tmp.replace(archive)


def record(
    impl: Implementation,
    out: Path,
    device: torch.device,
    cases: List[GoldenCase],
    upstream: Optional[List[str]] = None,
    archive: Optional[Path] = None,
    log: Callable[[str], None] = print,
    use_safetensors: bool = False,
) -> FixtureWriter:
    meta = environment_meta(device, "inputs drawn on CPU from torch.Generator seeded with zlib.crc32(case name)")
    meta["implementation"] = impl.describe()
    meta["upstream"] = list(upstream or [])
    writer = FixtureWriter(out, meta, use_safetensors=use_safetensors)
    for i, case in enumerate(cases, 1):
        t0 = time.time()
        try:
            inputs = case.make(case, case.generator(), impl)
            outputs = case.run(case, impl, inputs, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            rec = writer.add(case.name, case.api, case.kind, case.params, inputs, outputs, time.time() - t0,
                             case.note)
            log(f"[{i}/{len(cases)}] {case.name}: ok ({rec.seconds:.1f}s, {len(outputs)} outputs)")
        except Exception as exc:  # a case that fails upstream is recorded with its error
            msg = f"{type(exc).__name__}: {exc}"
            writer.add_error(case.name, case.api, case.kind, case.params, msg, time.time() - t0, case.note)
            log(f"[{i}/{len(cases)}] {case.name}: ERROR {msg}")
            log(traceback.format_exc(limit=6))
        if archive is not None:
            _archive(Path(out), Path(archive))
    return writer


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--impl", default="fla", help="fla (default), myfla or ref")
    ap.add_argument("--device", default=None, help="cuda when available, else cpu")
    ap.add_argument("--cases", default=None, help="substring filter on case names")
    ap.add_argument("--registry", default=DEFAULT_REGISTRY, help="case registry (built-in name or module path)")
    ap.add_argument("--upstream", default="fla-core==0.4.0,flash-linear-attention==0.4.0")
    ap.add_argument("--upstream-path", default=None, help="upstream tree for --impl ref")
    ap.add_argument("--archive", default=None, type=Path, help="rewrite this .tar of --out after each case")
    ap.add_argument("--safetensors", action="store_true", help="write .safetensors instead of .pt")
    args = ap.parse_args(argv)
    if args.impl == "fla":
        limit_triton_autotune()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    registry = load_case_registry(args.registry)
    impl = get_implementation(args.impl, registry, upstream_root=args.upstream_path)
    cases = find_cases(registry.golden_cases(), args.cases)
    print(f"recording {len(cases)} cases with {impl.describe()} on {device}", flush=True)
    writer = record(impl, args.out, device, cases, args.upstream.split(","), args.archive,
                    log=lambda m: print(m, flush=True), use_safetensors=args.safetensors)
    bad = [n for n, r in writer.cases.items() if r.status != "ok"]
    print(f"done: {len(writer.cases) - len(bad)} ok, {len(bad)} errors {bad}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
