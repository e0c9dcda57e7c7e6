"""A tiny two-release upstream (package ``pkg``), a port citing release 1.0 and a manifest, in tmp.

Release 1.0 -> 2.0 holds one example of every change kind drift reports (see EXPECTED).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

V1 = {
    "pkg/__init__.py": '__version__ = "1.0"\n',
    "pkg/layer.py": '''
        from pkg.a import keep, tweak, mover, old_name, gone, sig_fn, opt_fn
        from pkg.old import lost


        class Layer:
            def __init__(self, hidden, heads=4):
                self.hidden = hidden

            def forward(self, x):
                return keep(x) + tweak(x) + mover(x) + old_name(x) + gone(x) + sig_fn(x, 1) + opt_fn(x, 1) + lost(x)

            def extra(self):
                return 0
        ''',
    "pkg/a.py": '''
        SCALE = 3


        def keep(x):
            """Keep."""
            return x + SCALE


        def tweak(x):
            return x * 2


        def mover(x):
            y = x * 3
            return y - 1


        def old_name(x):
            total = 0
            for i in range(10):
                total = total + i * x
            return total


        def gone(x):
            return -x


        def sig_fn(a, b, c=1, d=2, e=3, f=None, g=5, h=6):
            return a + c


        def opt_fn(a, b):
            return a - b
        ''',
    "pkg/old.py": '''
        def lost(x):
            z = x ** 2
            return z + 7
        ''',
}

V2 = {
    "pkg/__init__.py": '__version__ = "2.0"\n',
    "pkg/layer.py": '''
        from pkg.a import keep, tweak, mover, new_name, sig_fn, opt_fn
        from pkg.new.place import lost
        from pkg.extra import helper_new


        class Layer:
            def __init__(self, hidden, heads=4, safe=False, bound=None):
                self.hidden = hidden

            def forward(self, x):
                return keep(x) + tweak(x) + mover(x) + new_name(x) + sig_fn(x, 1, 2, e=1) + opt_fn(x) + lost(x) + helper_new(x)
        ''',
    "pkg/a.py": '''
        # Release 2.0: every definition below sits on other lines than in 1.0.

        from pkg.b import mover  # the old import path keeps working

        SCALE = 3


        def keep(x):
            """Keep."""
            # a new comment does not change the code
            return x + SCALE


        def tweak(x):
            return x * 2 + 1


        def new_name(x):
            total = 0
            for i in range(10):
                total = total + i * x
            return total


        def sig_fn(a, bb, x_new, c=1, d=4, g=None, *, e, k=None):
            return a + c


        def opt_fn(a, b=0):
            return a - b
        ''',
    "pkg/b.py": '''
        def mover(x):
            y = x * 3
            return y - 1
        ''',
    "pkg/new/__init__.py": "",
    "pkg/new/place.py": '''
        def lost(x):
            z = x ** 2
            return z + 7
        ''',
    "pkg/extra.py": '''
        def helper_new(x):
            return x
        ''',
}

MANIFEST = '''
name: toy
upstream:
  package: pkg
  path: v1
  version: "1.0"
port:
  package: port
  path: portroot
stages:
  - id: "1"
    title: core
    symbols:
      - pkg.a.SCALE
      - pkg.a.keep
      - pkg.a.tweak
      - pkg.a.mover
      - pkg.a.old_name
      - pkg.a.gone
      - pkg.a.sig_fn
      - pkg.a.opt_fn
      - pkg.old.lost
  - id: "2"
    title: layer
    symbols:
      - pkg.layer.Layer
waivers:
  - {symbol: pkg.a.mover, code: PA301, reason: "toy waiver that must follow the move"}
deviations: []
'''

EXPECTED = {
    "pkg.a.SCALE": ("unchanged", "pkg.a.SCALE"),
    "pkg.a.keep": ("unchanged", "pkg.a.keep"),
    "pkg.a.tweak": ("body changed", "pkg.a.tweak"),
    "pkg.a.mover": ("moved", "pkg.b.mover"),
    "pkg.a.old_name": ("renamed", "pkg.a.new_name"),
    "pkg.a.gone": ("removed", None),
    "pkg.a.sig_fn": ("body changed", "pkg.a.sig_fn"),   # the definition's text includes its signature
    "pkg.a.opt_fn": ("body changed", "pkg.a.opt_fn"),
    "pkg.old.lost": ("moved", "pkg.new.place.lost"),
    "pkg.layer.Layer": ("body changed", "pkg.layer.Layer"),
}


def write(root: Path, files: dict) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def span(root: Path, rel: str, name: str) -> tuple[int, int]:
    """1-based line range of a top-level def (to write citations; independent of portaudit)."""
    lines = (root / rel).read_text().splitlines()
    start = next(i for i, ln in enumerate(lines, 1)
                 if ln.startswith((f"def {name}(", f"class {name}", f"{name} =")))
    end = start
    for i in range(start + 1, len(lines) + 1):
        if lines[i - 1].strip() and not lines[i - 1].startswith((" ", "\t")):
            break
        if lines[i - 1].strip():
            end = i
    return start, end


def build(tmp: Path) -> dict:
    """Write both releases, the port (citing 1.0) and the manifest; return their paths."""
    v1 = write(tmp / "v1", V1)
    v2 = write(tmp / "v2", V2)
    cites = {}
    for name in ("keep", "tweak", "gone", "mover"):
        s, e = span(v1, "pkg/a.py", name)
        cites[name] = f"Source: pkg/a.py:L{s}-L{e} (pkg 1.0)"
    s, e = span(v1, "pkg/a.py", "SCALE")
    port = write(tmp / "portroot", {
        "port/__init__.py": "",
        "port/a.py": f'''
            # {f"Source: pkg/a.py:L{s}-L{e} (pkg 1.0)"}
            SCALE = 3


            def keep(x):
                """Keep.

                {cites["keep"]}
                """
                return x + SCALE


            def tweak(x):
                """Tweak.

                {cites["tweak"]}
                """
                return x * 2


            def gone(x):
                """Gone.

                {cites["gone"]}
                """
                return -x
            ''',
    })
    manifest = tmp / "toy.yaml"
    manifest.write_text(MANIFEST.lstrip("\n"))
    return {"v1": v1, "v2": v2, "port": port, "manifest": manifest, "cites": cites}
