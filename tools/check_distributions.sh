#!/usr/bin/env bash
# The two distributions, built and used the way a user gets them (issue 13):
#
#   1. build both wheels from this checkout (pip wheel --no-deps distributions/myfla distributions/portaudit);
#   2. a fresh virtual environment without torch: the portaudit wheel with its dependencies and the
#      myfla wheel without its own (it only provides the files to audit and the audit data), then
#      from another directory: `portaudit --version` matches the wheel, `codes`, `check` and `gate`
#      on the manifests myfla ships (myfla:), and `invariants` exits 2 naming the extra to install;
#   3. the myfla wheel's content under the torch-1.13 floor environment (tools/check_runtime_floor.sh):
#      unpacked and put first on PYTHONPATH, `python -m myfla.selftest` passes and the wheel's `fla`
#      shim (python -m myfla.alias --shim-dir) serves `import fla` from myfla.
# Between 1 and 2 the wheels' content is compared with the checkout: every .py of myfla/ and
# portaudit/, every manifest (manifests/*.yaml), baseline and golden fixture in the myfla wheel.
#
# Usage: tools/check_distributions.sh
#   DIST_PYTHON  a Python >= 3.10 with venv (default python3): the environment that builds the wheels
#                and audits from them is made from it
# Needs the package registry (build requirements, portaudit's dependencies, fla 0.4.0 unless cached).
# Nothing is written into the checkout: the wheels are built from a copy of the sources they take
# (so CI runs this in the background beside the test suite).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
DIST_PYTHON=${DIST_PYTHON:-python3}

say() { echo "dists: $*"; }
fail() { echo "dists: FAIL: $*" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/myfla-dists.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# what distributions/*/ build from (two folders up): the packages, the audit data, the license
SRC="$WORK/src"
mkdir -p "$SRC/tests/fixtures"
cp -r distributions myfla portaudit manifests LICENSE "$SRC/"
cp -r tests/fixtures/golden tests/fixtures/golden_rwkv7 "$SRC/tests/fixtures/"
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +

start=$SECONDS
"$DIST_PYTHON" -m venv "$WORK/audit-venv"
VPY="$WORK/audit-venv/bin/python"
say "building the wheels into $WORK/wheelhouse"
"$VPY" -m pip wheel -q --no-deps "$SRC/distributions/myfla" "$SRC/distributions/portaudit" -w "$WORK/wheelhouse"
MYFLA_WHEEL=$(ls "$WORK"/wheelhouse/myfla-*.whl)
PORTAUDIT_WHEEL=$(ls "$WORK"/wheelhouse/portaudit-*.whl)
package_version() { sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$1/__init__.py"; }
MYFLA_VERSION=$(package_version myfla)
PORTAUDIT_VERSION=$(package_version portaudit)
[ "$(basename "$MYFLA_WHEEL")" = "myfla-$MYFLA_VERSION-py3-none-any.whl" ] \
    || fail "$(basename "$MYFLA_WHEEL") does not carry myfla.__version__ $MYFLA_VERSION"
[ "$(basename "$PORTAUDIT_WHEEL")" = "portaudit-$PORTAUDIT_VERSION-py3-none-any.whl" ] \
    || fail "$(basename "$PORTAUDIT_WHEEL") does not carry portaudit.__version__ $PORTAUDIT_VERSION"
say "built $(basename "$MYFLA_WHEEL") ($(du -h "$MYFLA_WHEEL" | cut -f1)) and $(basename "$PORTAUDIT_WHEEL") ($(du -h "$PORTAUDIT_WHEEL" | cut -f1)) in $((SECONDS - start)) s"

# Every source file of each package is in its wheel, and the myfla wheel carries every manifest,
# baseline and golden fixture of the checkout (new modules, manifests and fixtures of later merges
# are caught here rather than by a user).
"$VPY" - "$MYFLA_WHEEL" "$PORTAUDIT_WHEEL" <<'PYEOF' || fail "a wheel lacks files (listed above)"
import sys, zipfile
from pathlib import Path

def wanted(package, patterns=("*.py", "py.typed")):
    return {p.as_posix() for pat in patterns for p in Path(package).rglob(pat) if "__pycache__" not in p.parts}

myfla_whl, portaudit_whl = (set(zipfile.ZipFile(w).namelist()) for w in sys.argv[1:3])
audit = {f"myfla/audit/{p.name}" for p in Path("manifests").glob("*.yaml")}
audit |= {f"myfla/audit/baseline/{p.name}" for p in Path("manifests/baseline").glob("*.json")}
for fixture_set in ("golden", "golden_rwkv7"):
    audit |= {f"myfla/audit/{fixture_set}/{p.name}" for p in Path("tests/fixtures", fixture_set).iterdir()
              if p.name == "index.json" or p.suffix in (".pt", ".safetensors")}
missing = sorted((wanted("myfla") | {"myfla/NOTICE"} | audit) - myfla_whl)
missing += sorted(wanted("portaudit") - portaudit_whl)
for name in missing:
    print(f"dists: not in its wheel: {name}")
stray = sorted(n for n in myfla_whl | portaudit_whl if n.split("/")[0] not in ("myfla", "portaudit")
               and ".dist-info/" not in n)
for name in stray:
    print(f"dists: unexpected file in a wheel: {name}")
print(f"dists: wheel content complete: myfla {len(wanted('myfla'))} source files + {len(audit)} audit files, "
      f"portaudit {len(wanted('portaudit'))} source files")
sys.exit(1 if missing or stray else 0)
PYEOF

start=$SECONDS
"$VPY" -m pip install -q "$PORTAUDIT_WHEEL"
"$VPY" -m pip install -q --no-deps "$MYFLA_WHEEL"
say "torch-less environment (portaudit + myfla --no-deps) installed in $((SECONDS - start)) s, $(du -sh "$WORK/audit-venv" | cut -f1)"

cd "$WORK"    # away from the checkout: only the installed wheels can be found
PA="$WORK/audit-venv/bin/portaudit"
if "$WORK/audit-venv/bin/python" -c "import torch" 2>/dev/null; then fail "torch is installed in the audit environment"; fi
[ "$("$PA" --version)" = "portaudit $PORTAUDIT_VERSION" ] || fail "portaudit --version says '$("$PA" --version)'"
"$PA" codes > /dev/null
# gate runs check's whole audit of every manifest myfla ships, then compares with their baselines;
# check is run on one manifest reference only (the same audit, so CI pays for it once)
start=$SECONDS
say "portaudit check --manifest myfla:kda (a manifest the myfla wheel ships)"
"$PA" check --manifest myfla:kda --no-progress | tail -n 1
say "portaudit gate --manifest myfla: (every manifest it ships, against the baselines shipped beside them)"
"$PA" gate --manifest myfla: --no-progress | tail -n 1
say "check and gate from the installed wheels took $((SECONDS - start)) s"
set +e
msg=$("$PA" invariants --op chunk_kda --quick 2>&1)
rc=$?
set -e
[ "$rc" -eq 2 ] && grep -q "pip install 'portaudit\[numerics\]'" <<<"$msg" \
    || fail "portaudit invariants without torch: exit $rc, '$msg'"
say "without torch, portaudit invariants exits 2: $msg"

FLOOR_VENV=$("$REPO/tools/check_runtime_floor.sh" --print-venv)
if [ -x "$FLOOR_VENV/bin/python" ]; then
    mkdir "$WORK/unpacked"
    "$VPY" -m zipfile -e "$MYFLA_WHEEL" "$WORK/unpacked"
    where=$(PYTHONPATH="$WORK/unpacked" "$FLOOR_VENV/bin/python" -W ignore -c "import myfla; print(myfla.__file__)")
    [ "$where" = "$WORK/unpacked/myfla/__init__.py" ] || fail "imported myfla from $where"
    start=$SECONDS
    say "the myfla wheel's content under $("$FLOOR_VENV/bin/python" --version) and torch 1.13.1: python -m myfla.selftest"
    PYTHONPATH="$WORK/unpacked" "$FLOOR_VENV/bin/python" -W ignore::UserWarning -m myfla.selftest --quiet
    shim=$(PYTHONPATH="$WORK/unpacked" "$FLOOR_VENV/bin/python" -W ignore -m myfla.alias --shim-dir)
    [ "$shim" = "$WORK/unpacked/myfla/_fla_shim" ] || fail "python -m myfla.alias --shim-dir says '$shim'"
    PYTHONPATH="$shim:$WORK/unpacked" "$FLOOR_VENV/bin/python" -W ignore -c \
        "import fla, fla.ops.kda, myfla; assert fla is myfla and fla.ops.kda.__name__ == 'myfla.ops.kda'" \
        || fail "the wheel's fla shim does not serve myfla"
    say "the wheel's fla shim (python -m myfla.alias --shim-dir on PYTHONPATH) serves import fla from myfla ($((SECONDS - start)) s with the selftest)"
else
    say "no floor environment at $FLOOR_VENV (tools/check_runtime_floor.sh builds it): the wheel's selftest under torch 1.13 was not run"
fi
say "OK"
