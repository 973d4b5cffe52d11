#!/usr/bin/env bash
# S3 smoke run: a moto_server on 127.0.0.1, the hostile corpus (+ any PHOTO given) in a bucket,
# `facepriv cloak s3://.../in s3://.../out`, then scripts/s3_corpus.py verify. The server is
# stopped by a trap whatever happens.
#
#   scripts/s3_smoke.sh [--model CKPT] [PHOTO ...]      (default model: a random paper-cnn)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=""
if [[ "${1:-}" == "--model" ]]; then MODEL="$2"; shift 2; fi
WORK=$(mktemp -d)
PORT=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO=$!
trap 'kill "$MOTO" 2>/dev/null || true; wait "$MOTO" 2>/dev/null || true; rm -rf "$WORK"' EXIT
export AWS_ACCESS_KEY_ID=AKIAFACEPRIVSMOKE AWS_SECRET_ACCESS_KEY="smoke-secret-$RANDOM$RANDOM" AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" RAY_AUTH_MODE=disabled
for _ in $(seq 50); do python -c "import urllib.request; urllib.request.urlopen('$AWS_ENDPOINT_URL')" 2>/dev/null && break; sleep 0.2; done
if [[ -z "$MODEL" ]]; then
  MODEL="$WORK/rand.pt"
  python -c "
import torch; from facepriv.models.checkpoint import save_checkpoint; from facepriv.models.registry import build_model
torch.manual_seed(0); save_checkpoint('$MODEL', build_model('paper-cnn', 2), 'paper-cnn', ['a', 'b'])"
fi
python scripts/s3_corpus.py upload s3://smoke/in "$@"
set +e
facepriv cloak s3://smoke/in s3://smoke/out --model "$MODEL" --attack fgsm --no-progress --retries 3 \
  >"$WORK/run.txt" 2>&1
RC=$?
set -e
cat "$WORK/run.txt"
echo "facepriv cloak exit code: $RC"
python scripts/s3_corpus.py verify s3://smoke/in s3://smoke/out "$WORK/run.txt" "$@"
exit "$RC"
