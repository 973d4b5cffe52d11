#!/usr/bin/env bash
# Train the paper's CNN on the bundled sample identities, then cloak the held-out photos
# on a local Ray instance, and say where the results are.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-demo-out}"
mkdir -p "$out"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
facepriv train "$here/sample/train" --arch paper-cnn --out "$out/model.pt"
facepriv cloak "$here/sample/test" "$out/cloaked" --model "$out/model.pt" --attack pgd --eps 4 --steps 10 \
    --labels folder
echo
echo "model:          $out/model.pt"
echo "cloaked photos: $out/cloaked/"
echo "manifests:      $out/cloaked/_facepriv/runs/*/manifest/*.parquet"
echo "summary:        $(ls -d "$out"/cloaked/_facepriv/runs/*/ | tail -1)summary.json"
