#!/usr/bin/env bash
# myfla's runtime floor, checked (issue 13): myfla must work as a folder copied into a project with
# Python 3.8, torch 1.13 and nothing else but einops.
#
#   1. vermin: Python 3.8 syntax and standard library over myfla/ (fails on any violation);
#   2. a separate environment with torch 1.13.1 (and numpy<2, einops, pytest; no portaudit, no
#      transformers), on Python 3.8 when this machine has one, else on the Python that runs this:
#      `python -m myfla.selftest` and myfla's own tests (tests/myfla) run there on a staged copy of
#      myfla/ and tests/ (so neither portaudit nor the checkout's other files can be imported); tests
#      that need portaudit (fla's reference code) skip with that reason, see tests/conftest.py;
#   3. the import graph (nothing in myfla imports portaudit, typer, rich, libcst, yaml; transformers
#      and packaging only conditionally) is tests/myfla/test_runtime_floor.py, run in both
#      environments.
#
# Usage: tools/check_runtime_floor.sh [--prepare-only | --print-venv | --skip-vermin]
#   --prepare-only  build (or reuse) the torch-1.13 environment and stop
#   --print-venv    print the environment's folder and stop
#   --skip-vermin   steps 2 and 3 only (CI: its test suite runs the same vermin check,
#                   tests/myfla/test_runtime_floor.py, so this runs in the background beside it)
# Environment: FLOOR_PYTHON  interpreter of the floor environment (default: a Python 3.8 if found,
#                            else python3)
#              FLOOR_VENV    where the environment lives (default ~/.cache/myfla-floor/<python>-torch1.13.1);
#                            it is reused while its stamp matches
#              DEV_PYTHON    a Python with vermin (default .venv/bin/python, else python3)
# The torch 1.13.1 wheel on PyPI is a CUDA 11.7 build: with its NVIDIA libraries it takes about 1.8 GB
# to download and 3.2 GB on disk, and runs on the CPU (it loads cuBLAS/cuDNN at import time, so they
# cannot be left out).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

TORCH_FLOOR=1.13.1
FLOOR_REQUIREMENTS=("torch==$TORCH_FLOOR" "numpy<2" "einops>=0.6" "pytest>=7")
mode=${1:-all}
case "$mode" in
    all|--prepare-only|--print-venv|--skip-vermin) ;;
    *) echo "usage: $0 [--prepare-only | --print-venv | --skip-vermin]" >&2; exit 2 ;;
esac

say() { echo "floor: $*"; }

is_python38() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 8))' 2>/dev/null; }

find_floor_python() {
    if [ -n "${FLOOR_PYTHON:-}" ]; then echo "$FLOOR_PYTHON"; return; fi
    local candidate
    for candidate in python3.8 $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.8*/bin/python3.8 2>/dev/null | sort -V -r); do
        if is_python38 "$candidate"; then echo "$candidate"; return; fi
    done
    echo python3
}

PY=$(find_floor_python)
PY_VERSION=$("$PY" -c 'import platform; print(platform.python_version())')
VENV=${FLOOR_VENV:-$HOME/.cache/myfla-floor/py$PY_VERSION-torch$TORCH_FLOOR}
STAMP="$VENV/.floor-stamp"
WANT_STAMP="$PY_VERSION ${FLOOR_REQUIREMENTS[*]}"

if [ "$mode" = --print-venv ]; then echo "$VENV"; exit 0; fi

prepare() {
    mkdir -p "$(dirname "$VENV")"
    exec 9>"$VENV.lock"
    flock 9
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT_STAMP" ] \
        && "$VENV/bin/python" -c "import torch, pytest" 2>/dev/null; then
        say "reusing $VENV (Python $PY_VERSION, torch $("$VENV/bin/python" -W ignore -c 'import torch; print(torch.__version__)'))"
        return
    fi
    say "building $VENV: Python $PY_VERSION ($PY), ${FLOOR_REQUIREMENTS[*]}"
    local start=$SECONDS
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "${FLOOR_REQUIREMENTS[@]}"
    echo "$WANT_STAMP" > "$STAMP"
    say "environment ready in $((SECONDS - start)) s, $(du -sh "$VENV" | cut -f1) on disk"
}

prepare
if [ "$mode" = --prepare-only ]; then exit 0; fi

# 1. Python 3.8 syntax and standard library
if [ "$mode" != --skip-vermin ]; then
DEV_PYTHON=${DEV_PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
case "$DEV_PYTHON" in /*) ;; */*) DEV_PYTHON="$REPO/$DEV_PYTHON" ;; esac   # the script changes directory
if ! "$DEV_PYTHON" -c "import vermin" 2>/dev/null; then
    echo "floor: $DEV_PYTHON has no vermin; install the test extra (pip install -e '.[test]') or set DEV_PYTHON" >&2
    exit 2
fi
say "vermin -t=3.8- --eval-annotations --violations myfla"
"$DEV_PYTHON" -c "import sys; from vermin import main; sys.argv[0] = 'vermin'; sys.exit(main())" \
    -t=3.8- --eval-annotations --violations --no-tips --no-parse-comments myfla
fi

# 2. myfla's self-test and own tests under torch 1.13, on a staged copy
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/myfla-floor.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/tests"
cp -r myfla pyproject.toml "$STAGE/"
cp tests/*.py "$STAGE/tests/"
cp -r tests/myfla "$STAGE/tests/"
cp -r tests/fixtures "$STAGE/tests/"   # recorded fla behaviour some myfla tests compare with (bad_input, ...)
mkdir -p "$STAGE/tools"
cp tools/*.py "$STAGE/tools/"          # scripts some tests run on myfla (e.g. probe_bad_input.py)
find "$STAGE" -name __pycache__ -prune -exec rm -rf {} +
cd "$STAGE"
say "python -m myfla.selftest (Python $PY_VERSION, torch $TORCH_FLOOR, staged copy in $STAGE)"
"$VENV/bin/python" -W ignore::UserWarning -m myfla.selftest
say "pytest tests/myfla (Python $PY_VERSION, torch $TORCH_FLOOR, no portaudit)"
start=$SECONDS
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/myfla
say "myfla's tests under torch $TORCH_FLOOR finished in $((SECONDS - start)) s"
cd "$REPO"
