#!/usr/bin/env bash
# Acceptance for archive-scale runs (issue "Archive scale on Ray"), on a local head:
#   1. `ray job submit` cloaks 60 lfw50 photos; one Ray worker (the cloaking actor) is
#      SIGKILLed while the job runs; the job must still SUCCEED with 60 rows / 60 keys /
#      60 decodable outputs;
#   2. the same job again: skipped == 60;  3. 3 photos added: exactly 3 processed.
# usage: benchmarks/ray_acceptance.sh [LFW50_DIR] [MODEL]   (stops only the head it starts)
set -euo pipefail
cd "$(dirname "$0")/.."
lfw="${1:-../shared/data/lfw50}"; model="${2:-/tmp/lfw/model.pt}"
export RAY_AUTH_MODE=disabled OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0
unset RAY_ADDRESS
work="$(mktemp -d /tmp/fpacc.XXXX)"; src="$work/src"; dst="$work/dst"
# the job ships a snapshot of the committed code (HEAD), not a working tree others may be editing
mkdir -p "$work/code"; git archive HEAD | tar -x -C "$work/code"
free() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free); dash=$(free); url="http://127.0.0.1:$dash"
setsid ray start --head --block --port="$port" --dashboard-port="$dash" --dashboard-agent-listen-port="$(free)" --num-cpus=2 --num-gpus=0 \
    --temp-dir="$work/ray" --disable-usage-stats >"$work/head.log" 2>&1 &
head=$!
# its own session: SIGTERM to the group stops exactly the head this script started
trap 'kill -TERM -- -$head 2>/dev/null; wait $head 2>/dev/null || true' EXIT
# 60 photos: 4 identities x 15, plus 3 held back for step 3
mapfile -t ids < <(ls "$lfw" | head -5)
for id in "${ids[@]:0:4}"; do mkdir -p "$src/$id"; cp "$lfw/$id"/*.jpg "$src/$id/"; done
mkdir -p "$work/extra/${ids[4]}"; cp $(ls -d "$lfw/${ids[4]}"/*.jpg | head -3) "$work/extra/${ids[4]}/"
until curl -sf "$url/api/version" >/dev/null; do sleep 1; done
job() { ray job submit --address "$url" --working-dir "$work/code" -- python jobs/cloak_archive.py "$src" "$dst" \
          --model "$model" --attack fgsm --eps 8 --labels folder --batch-size 4 --log-every 5; }
latest() { python - "$dst" <<'PY'
import json, sys, pathlib
from facepriv import manifest; from facepriv.io.archive import Archive; from facepriv import imageio
dst = pathlib.Path(sys.argv[1]); runs = sorted((dst / "_facepriv/runs").iterdir())
s = json.loads((runs[-1] / "summary.json").read_text())
a = Archive(str(dst), {}); rows = manifest.read_manifest(a.fs, str(runs[-1] / "manifest")).to_pylist()
ok = sum(1 for r in rows if imageio.decode((dst / r["output_key"]).read_bytes()) is not None)
print("summary:", {k: s[k] for k in ("inputs", "ok", "no_face", "errors", "skipped", "fooling_rate", "seconds")})
print(f"manifest rows {len(rows)}, distinct source keys {len({r['source_key'] for r in rows})}, "
      f"decodable outputs {ok}, processed (not skipped) {sum(r['status'] != 'skipped' for r in rows)}, "
      f"workers {sorted({r['worker'].split('@')[0] for r in rows if r['status'] != 'skipped'})}")
PY
}
echo "== 1. 60 photos, one worker killed mid-run"
( # killer: wait until the cloaking actor exists and has made progress, then SIGKILL it
  for _ in $(seq 240); do
    pid=$(ray list actors --address "$url" --filter state=ALIVE --format json 2>/dev/null |
          python -c 'import json,sys; a=[x for x in json.load(sys.stdin) if "ShardWorker" in x["class_name"]]; print(a[0]["pid"] if a else "")' 2>/dev/null || true)
    if [ -n "$pid" ] && [ "$(find "$dst/_facepriv/runs" -name '*.parquet' 2>/dev/null | wc -l)" -ge 2 ]; then
      echo "killer: SIGKILL ShardWorker actor pid $pid"; kill -9 "$pid"; break; fi
    sleep 1
  done ) &
killer=$!
job; wait $killer || true; latest
stamp() { find "$src" -type f -printf '%P\n' | sed "s|^|$dst/|" | xargs stat -c '%n %Y.%y' | md5sum; }
before=$(stamp)
echo "== 2. rerun unchanged"; job | grep -E "succeeded|failed" ; latest
[ "$(stamp)" = "$before" ] && echo "outputs untouched by the rerun (same mtimes)" || echo "OUTPUTS WERE REWRITTEN"
echo "== 3. add 3 photos"; cp -r "$work/extra/." "$src/"; job | grep -E "succeeded|failed"; latest
echo "work dir: $work"
