#!/usr/bin/env bash
# portaudit's tests on the oldest and the newest Python it supports (its distribution declares
# 3.10 to 3.13; the development environment and the rest of CI run 3.11). What differs between
# Pythons is in the standard library portaudit reads code with: `ast.unparse`'s text (the canonical
# bodies whose fingerprints key a gate's baseline), `tokenize`, `pathlib`'s link-loop errors; on
# 2026-11-27 Python 3.13 failed 7 of these tests and 3.10 one, none of them seen on 3.11.
#
# For each Python found (3.10, and the newest of 3.13 and later; pyenv's versions or python3.X on
# PATH): an environment with portaudit's dependencies and the test tools only (no torch: test
# modules that need torch or myfla skip, see tests/conftest.py), reused while its stamp matches, then
# `pytest tests/portaudit` on this checkout. A Python not found is reported and skipped.
#
# Usage: tools/check_python_versions.sh
# Environment: PA_PYTHONS  the interpreters to use instead (space-separated paths)
#              PA_VENVS    where the environments live (default ~/.cache/portaudit-pythons)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
REQUIREMENTS=("typer>=0.12" "rich>=13" "libcst>=1.1" "pyyaml>=6" "typing_extensions>=4.5" "packaging>=22"
              "pytest>=8" "hypothesis>=6")
VENVS=${PA_VENVS:-$HOME/.cache/portaudit-pythons}

say() { echo "pythons: $*"; }

find_python() {      # find_python MINOR...: the first interpreter of one of these 3.MINOR versions
    local minor candidate
    for minor in "$@"; do
        for candidate in "python3.$minor" $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3."$minor".*/bin/python3 2>/dev/null | sort -V -r); do
            if "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != (3, $minor))" 2>/dev/null; then
                command -v "$candidate" 2>/dev/null || echo "$candidate"
                return
            fi
        done
    done
}

if [ -n "${PA_PYTHONS:-}" ]; then
    read -r -a pythons <<< "$PA_PYTHONS"
else
    pythons=()
    oldest=$(find_python 10)
    newest=$(find_python 16 15 14 13)
    if [ -n "$oldest" ]; then pythons+=("$oldest"); else say "no Python 3.10 found: skipped"; fi
    if [ -n "$newest" ]; then pythons+=("$newest"); else say "no Python 3.13 or later found: skipped"; fi
fi

failed=0
for py in "${pythons[@]}"; do
    version=$("$py" -c 'import platform; print(platform.python_version())')
    venv="$VENVS/py$version"
    stamp="$version ${REQUIREMENTS[*]}"
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
        say "Python $version: building $venv"
        rm -rf "$venv"
        "$py" -m venv "$venv"
        if ! "$venv/bin/python" -m pip install -q "${REQUIREMENTS[@]}" > "$venv/pip.log" 2>&1; then
            cat "$venv/pip.log"
            say "Python $version: FAILED to install the test environment"
            failed=1
            continue
        fi
        echo "$stamp" > "$venv/.stamp"
    fi
    start=$(date +%s)
    if "$venv/bin/python" -m pytest -q -p no:cacheprovider -p no:xdist tests/portaudit > "$venv/last-run.log" 2>&1; then
        say "Python $version: $(tail -n 1 "$venv/last-run.log") ($(( $(date +%s) - start )) s)"
    else
        cat "$venv/last-run.log"
        say "Python $version: FAILED ($(( $(date +%s) - start )) s)"
        failed=1
    fi
done
exit "$failed"
