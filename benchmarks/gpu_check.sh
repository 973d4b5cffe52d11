#!/usr/bin/env bash
# One device check of the product path, as one JSON (benchmarks/gpu_check.py says what it measures):
# the protect preset's throughput and per-face cost over the bare surrogate, PGD-10 throughput, MTCNN
# on the device, and the preset with the surrogate's forward in bf16 against fp32 (speed, protection).
#
#   bash benchmarks/gpu_check.sh                              # CUDA, 16 photos, gpu_check.json
#   bash benchmarks/gpu_check.sh --device cpu --n 4 --out /tmp/gpu_check.json
#
# Needs facepriv's dependencies (pip install -e .) and, for the preset sections, installed surrogates
# (facepriv models install; $FACEPRIV_HOME) or --surrogate. Ends within 8 minutes: no section starts
# after --budget-s (default 420 s) and the whole run is stopped at 470 s ($GPU_CHECK_TIMEOUT; the JSON,
# written after every section, keeps what finished).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
PY=python3
if [ -n "${VIRTUAL_ENV:-}" ]; then PY=python; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
exec timeout --signal=INT --kill-after=10 "${GPU_CHECK_TIMEOUT:-470}" "$PY" benchmarks/gpu_check.py "$@"
