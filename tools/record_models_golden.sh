#!/usr/bin/env bash
# Record the model golden fixtures from real fla 0.4.0 on a CUDA machine (tools/record_models_golden.py).
# Expects the two fla wheels in .whl/ (pip download --no-deps -d .whl fla-core==0.4.0
# flash-linear-attention==0.4.0). Writes DIR (default tests/fixtures/models_golden) and, when $OUT
# is set, $OUT/models_golden.tar (rewritten after every case) and $OUT/record_models.log.
set -o pipefail
export PYTHONUNBUFFERED=1
DIR=${1:-tests/fixtures/models_golden}
shift || true
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fla .whl/*.whl || exit 3
export PYTHONPATH=/tmp/fla:$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L || true
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
ARCHIVE=()
LOG=/dev/null
if [ -n "${OUT:-}" ]; then ARCHIVE=(--archive "$OUT/models_golden.tar"); LOG="$OUT/record_models.log"; fi
timeout "${RECORD_TIMEOUT:-560}" python3 tools/record_models_golden.py --out "$DIR" "${ARCHIVE[@]}" "$@" 2>&1 | tee "$LOG"
