"""An upstream v1 -> v2 and a vendored copy taken from v1 with some of v2 applied (tmp dirs).

The copy lives in a host project (``host``) under ``host/vendor/ops`` with its own module names
(``pkg.a`` -> ``host.vendor.ops.alpha``); the host also holds a large unrelated tree that drift
must never parse. EXPECTED_PORT gives each manifest symbol's three-way state.
"""

from __future__ import annotations

from pathlib import Path

from .trees import write

HELPERS_V1 = '''
def gone_helper(x):
    y = x * 11
    return y + 13
'''

V1 = {
    "pkg/__init__.py": '__version__ = "1.0"\n',
    "pkg/a.py": '''
        from pkg.h import gone_helper


        def f_same(x):
            return x + 1


        def f_todo(x):
            y = x * 2
            return y + 1


        def f_already(x):
            y = x * 3
            return y + 1


        def f_local(x):
            y = x * 4
            return y + 1


        def f_conflict(x):
            y = x * 5
            z = y - 2
            return z + 1


        def f_merge(x):
            y = x * 6
            a = y + 1
            b = a + 2
            c = b + 3
            return c


        def f_removed_done(x):
            return x - 1


        def f_removed_todo(x):
            return x - 2


        def mover(x):
            y = x * 7
            return y - 7


        def entry(x):
            return (f_same(x) + f_todo(x) + f_already(x) + f_local(x) + f_conflict(x) + f_merge(x)
                    + f_removed_done(x) + f_removed_todo(x) + mover(x) + gone_helper(x))
        ''',
    "pkg/h.py": HELPERS_V1,
}

V2 = {
    "pkg/__init__.py": '__version__ = "2.0"\n',
    "pkg/a.py": '''
        # release 2.0 moves every line
        from pkg.b import mover


        def f_same(x):
            return x + 1


        def f_todo(x):
            y = x * 2
            return y + 100


        def f_already(x):
            y = x * 3
            return y + 200


        def f_local(x):
            y = x * 4
            return y + 1


        def f_conflict(x):
            y = x * 5
            z = y - 3
            return z + 1


        def f_merge(x):
            y = x * 60
            a = y + 1
            b = a + 2
            c = b + 3
            return c


        def new_helper(x):
            return x * 99


        def entry(x):
            return f_same(x) + f_todo(x) + f_already(x) + f_local(x) + f_conflict(x) + f_merge(x) + mover(x) \\
                + new_helper(x)
        ''',
    "pkg/b.py": '''
        def mover(x):
            y = x * 7
            return y - 7
        ''',
}

# the copy: taken from v1, f_already and the removal of f_removed_done/gone_helper taken from v2,
# f_local and f_merge edited locally, f_conflict edited on the line v2 changed
PORT = {
    "host/__init__.py": "",
    "host/vendor/__init__.py": "",
    "host/vendor/ops/__init__.py": "",
    "host/vendor/ops/alpha.py": '''
        # vendored from pkg 1.0 (pkg/a.py)
        from host.vendor.ops.beta import mover


        def f_same(x):
            return x + 1


        def f_todo(x):
            y = x * 2
            return y + 1


        def f_already(x):
            # taken from pkg main before 2.0
            y = x * 3
            return y + 200


        def f_local(x):
            y = x * 4
            return y + 1 + 0


        def f_conflict(x):
            y = x * 5
            z = y - 4
            return z + 1


        def f_merge(x):
            y = x * 6
            a = y + 1
            b = a + 2
            c = b + 3
            return c * 1


        def f_removed_todo(x):
            return x - 2


        def entry(x):
            return (f_same(x) + f_todo(x) + f_already(x) + f_local(x) + f_conflict(x) + f_merge(x)
                    + f_removed_todo(x) + mover(x))
        ''',
    "host/vendor/ops/beta.py": '''
        def mover(x):
            y = x * 7
            return y - 7
        ''',
}

MANIFEST = '''
# A vendored copy of pkg 1.0 inside the host project.
name: vendored
upstream:
  package: pkg
  path: v1          # the release the copy was taken from
  version: "1.0"
port:
  package: host.vendor.ops
  path: hostroot
  fidelity: copy
  modules:
    pkg.a: host.vendor.ops.alpha   # the copy's own module names
citations: {style: "off", reason: "a copy carries no citations"}
entry_points: [pkg.a.entry]
stages:
  - id: "1"
    title: ops
    symbols:
      - pkg.a.f_same        # identical in both releases
      - pkg.a.f_todo
      - pkg.a.f_already
      - pkg.a.f_local
      - pkg.a.f_conflict
      - pkg.a.f_merge
      - pkg.a.f_removed_done
      - pkg.a.f_removed_todo
      - {symbol: pkg.a.mover, port: host.vendor.ops.beta.mover}
      - pkg.a.entry
waivers: []
deviations: []
'''

EXPECTED_PORT = {
    "pkg.a.f_same": "unchanged",
    "pkg.a.f_todo": "to do",
    "pkg.a.f_already": "already has it",
    "pkg.a.f_local": "local change",
    "pkg.a.f_conflict": "conflict",
    "pkg.a.f_merge": "to do",            # upstream and port edited different lines: merges cleanly
    "pkg.a.f_removed_done": "already has it",
    "pkg.a.f_removed_todo": "to do",
    "pkg.a.mover": "unchanged",          # moved upstream; the copy keeps its own place
    "pkg.a.entry": "conflict",
}

UNRELATED_FILES = 300


def build(tmp: Path) -> dict:
    v1 = write(tmp / "v1", V1)
    v2 = write(tmp / "v2", V2)
    host = write(tmp / "hostroot", PORT)
    for i in range(UNRELATED_FILES):      # the rest of the host project: never parsed by drift
        write(host, {f"host/other/m{i // 50}/__init__.py": "",
                     f"host/other/m{i // 50}/f{i}.py": f"def f{i}(x):\n    return x + {i}\n"})
    manifest = tmp / "vendored.yaml"
    manifest.write_text(MANIFEST.lstrip("\n"))
    return {"v1": v1, "v2": v2, "host": host, "manifest": manifest}
