"""Three-way drift of a real vendored copy: vLLM 0.10.2's copy of fla, from the fla it was taken
from to fla 0.4.0 (issue 11). Network (the wheel, once) and fla's git history; not in the default
test command.

    python -m tools.realdrift                       # both bases, text summary + checks of the claims
    python -m tools.realdrift --markdown DIR        # also write each checklist as markdown

Two bases are compared: fla's v0.2.2 release (what vLLM 0.10.2 said it followed) and 356d59d7e498
(what ``portaudit provenance`` found the copy closest to; the manifest's ``rev``). The claim tested
is issue 11's: "fla 0.4.0's removal of ``preprocess_qkw`` was already done in vLLM 0.10.2".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from tools.realports import FLA_GIT, PORTS, ROOT, fetch, run

MANIFEST = ROOT / "examples" / "manifests" / "vllm-0.10.2.yaml"
BASES = ("v0.2.2", "356d59d7e498")
TO = "v0.4.0"


def drift(base: str, port_dir: Path, fla_git: str, fmt: str) -> tuple[int, str, str]:
    proc = run([sys.executable, "-m", "portaudit", "drift", "-m", str(MANIFEST), "--upstream-git", fla_git,
                "--from", base, "--to", TO, "--port-path", str(port_dir), "--no-progress", "-f", fmt])
    return proc.returncode, proc.stdout, proc.stderr


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/realports"))
    ap.add_argument("--fla-git", default=FLA_GIT)
    ap.add_argument("--markdown", type=Path, help="write the checklists here")
    args = ap.parse_args(argv)
    port = next(p for p in PORTS if p.name == "vllm-0.10.2")
    port_dir = fetch(port, args.work)
    for base in BASES:
        rc, out, err = drift(base, port_dir, args.fla_git, "json")
        if rc not in (0, 1):
            print(err.strip(), file=sys.stderr)
            return rc
        data = json.loads(out)
        (m,) = data["manifests"]
        print(f"== vLLM 0.10.2's copy: {data['from']} -> {data['to']} (exit {rc})")
        print("port states: " + ", ".join(f"{v} {k}" for k, v in m["port_counts"].items()))
        sections: dict[str, int] = {}
        for it in data["checklist"]:
            sections[it["section"]] = sections.get(it["section"], 0) + 1
        print("checklist: " + ", ".join(f"{v} {k}" for k, v in sections.items()))
        rows = [s for s in m["symbols"] + m["removed_helpers"] if "preprocess_qkw" in s["symbol"]]
        if rows:
            for s in rows:
                print(f"preprocess_qkw: upstream {s['status']}, port: {s['port']['state']} ({s['port']['note']})")
        else:
            print("preprocess_qkw: not in this base's closure (the base already lacks it)")
        for it in data["checklist"][:3]:
            print(f"  first items: [{it['section']}] {it['symbol']}: {it['action'][:150]}")
        if args.markdown:
            args.markdown.mkdir(parents=True, exist_ok=True)
            _, md, _ = drift(base, port_dir, args.fla_git, "markdown")
            (args.markdown / f"vllm-0.10.2-{base}-{TO}.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
