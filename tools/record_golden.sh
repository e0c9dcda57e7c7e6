#!/usr/bin/env bash
# Record golden fixtures from real fla 0.4.0 on a CUDA machine (see docs/golden.md, GPU.md).
# Expects the two fla wheels in .whl/ (pip download --no-deps -d .whl fla-core==0.4.0
# flash-linear-attention==0.4.0) and writes DIR (default /tmp/golden) plus, when $OUT is set,
# $OUT/golden.tar (rewritten after every case) and $OUT/record.log.
set -o pipefail
export PYTHONUNBUFFERED=1
DIR=${1:-/tmp/golden}
shift || true
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fla .whl/*.whl || exit 3
export PYTHONPATH=/tmp/fla:$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
ARCHIVE=()
LOG=/dev/null
if [ -n "${OUT:-}" ]; then ARCHIVE=(--archive "$OUT/golden.tar"); LOG="$OUT/record.log"; fi
timeout "${RECORD_TIMEOUT:-560}" python3 -m portaudit.numerics.record --impl fla --out "$DIR" "${ARCHIVE[@]}" "$@" 2>&1 | tee "$LOG"
