"""Upload the hostile corpus (+ real photos) to an S3 endpoint, and verify a cloak run over it.

Used by scripts/s3_smoke.sh (and so by .ci/run) against a `moto_server` on loopback:

    python scripts/s3_corpus.py upload s3://bucket/in [PHOTO ...]     # creates the bucket
    python scripts/s3_corpus.py verify s3://bucket/in s3://bucket/out RUN_OUTPUT_FILE

The endpoint comes from $AWS_ENDPOINT_URL, credentials from the AWS variables. `verify`
checks: one manifest row per object, every corpus file with its expected status and reason,
every real photo cloaked (an output object exists), no traceback and no secret key in the run's
output or in any object under DST/_facepriv; it prints the rows and exits 1 on any failure.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import boto3  # noqa: E402
import hostile  # noqa: E402

from facepriv.io import manifest  # noqa: E402
from facepriv.io.archive import Archive, storage_options  # noqa: E402


def split(url: str) -> tuple[str, str]:
    bucket, _, prefix = url[len("s3://"):].partition("/")
    return bucket, prefix.rstrip("/") + "/"


def client():
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def corpus(photos: list[str]) -> dict[str, tuple[bytes, hostile.Expect]]:
    items = {**hostile.files(), **hostile.s3_objects()}
    for p in photos:
        items[f"real/{Path(p).parent.name}/{Path(p).name}"] = (Path(p).read_bytes(), hostile.Expect(hostile.GOOD))
    return items


def upload(url: str, photos: list[str]) -> int:
    bucket, prefix = split(url)
    c = client()
    c.create_bucket(Bucket=bucket)  # no region: us-east-1 must not be passed as a constraint
    items = corpus(photos)
    for key, (data, _) in items.items():
        c.put_object(Bucket=bucket, Key=prefix + key, Body=data)
    print(f"uploaded {len(items)} objects to {url} ({len(photos)} real photos)")
    return 0


def verify(src: str, dst: str, run_output: str, photos: list[str]) -> int:
    text = Path(run_output).read_text(errors="replace")
    summary = json.loads(text[text.index("{\n"): text.index("\n}") + 2])
    expect = {k: ex for k, (_, ex) in corpus(photos).items()}
    a = Archive(dst, storage_options(dst))
    rows = manifest.read_manifest(a.fs, f"{a.root}/_facepriv/runs/{summary['run_id']}/manifest").to_pylist()
    bucket, prefix = split(dst)
    c = client()
    keys = set()
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys |= {o["Key"][len(prefix):] for o in page.get("Contents", [])}
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    problems = []
    if "Traceback" in text:
        problems.append("a traceback in the run output")
    if secret and secret in text:
        problems.append("the secret key in the run output")
    for k in keys:
        if k.startswith("_facepriv/") and secret and secret.encode() in c.get_object(Bucket=bucket, Key=prefix + k)["Body"].read():
            problems.append(f"the secret key in {k}")
    seen = [r["source_key"] for r in rows]
    if sorted(seen) != sorted(expect):
        problems.append(f"rows != objects: missing {sorted(set(expect) - set(seen))}, "
                        f"extra {sorted(set(seen) - set(expect))}, {len(seen)} rows for {len(expect)} objects")
    print(f"{'status':8s} {'faces':>5s}  {'key':44s} reason")
    for r in sorted(rows, key=lambda r: (r["status"] != "error", r["source_key"])):
        ex = expect.get(r["source_key"])
        print(f"{r['status']:8s} {r['n_faces']:5d}  {r['source_key'][:44]:44s} {r['reason'] or ''}")
        if ex is None:
            continue
        if r["status"] not in ex.statuses:
            problems.append(f"{r['source_key']}: status {r['status']}, expected {ex.statuses}")
        elif r["status"] == "error":
            if not r["reason"] or (ex.reason and ex.reason.lower() not in r["reason"].lower()):
                problems.append(f"{r['source_key']}: reason {r['reason']!r} lacks {ex.reason!r}")
            if r["source_key"] in keys:
                problems.append(f"{r['source_key']}: refused but written")
        elif r["source_key"] not in keys:
            problems.append(f"{r['source_key']}: {r['status']} but no output object")
    real = [r for r in rows if r["source_key"].startswith("real/")]
    print(f"rows {len(rows)} for {len(expect)} objects; errors {sum(r['status'] == 'error' for r in rows)}; "
          f"real photos {len(real)}: {sum(r['status'] == 'ok' for r in real)} ok, "
          f"{sum(r['source_key'] in keys for r in real)} written to {dst}, "
          f"faces {sum(r['n_faces'] for r in real)}")
    for p in problems:
        print("PROBLEM:", p)
    print("verify:", "FAILED" if problems else "passed")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "upload":
        return upload(argv[1], argv[2:])
    if len(argv) >= 4 and argv[0] == "verify":
        return verify(argv[1], argv[2], argv[3], argv[4:])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
