"""S3 archives end to end against a real S3 API server on loopback (moto's ThreadedMotoServer).

Credentials are dummy values in the standard AWS variables; the endpoint is given with
--s3-endpoint (no AWS_ENDPOINT_URL in the environment, so the flag is what routes requests).
Buckets are created without a region constraint (us-east-1 must not be passed), and
`invalidate()` is called after writes made outside an Archive (s3fs caches listings).
"""

from __future__ import annotations

import json
import re
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile  # noqa: E402
from helpers import moto_s3  # noqa: E402

from facepriv.io import manifest
from facepriv.io.archive import Archive, storage_options

pytest.importorskip("moto.server", reason="moto[server] is in the [test] extra")

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT / "tests" / "fixtures" / "lfw"
CLASSES = sorted(p.name for p in LFW.iterdir())
SECRET = "fp-secret-" + secrets.token_hex(8)
AWS_ENV = {"AWS_ACCESS_KEY_ID": "AKIAFACEPRIVTEST", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (random port); yields (endpoint, boto3 client)."""
    with moto_s3(AWS_ENV) as (endpoint, client):
        yield endpoint, client


def make_bucket(client, name: str, objects: dict[str, bytes]) -> None:
    client.create_bucket(Bucket=name)  # no CreateBucketConfiguration: us-east-1 must not be passed
    for key, data in objects.items():
        client.put_object(Bucket=name, Key=key, Body=data)


def all_keys(client, bucket: str) -> list[str]:
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def archive(url: str, endpoint: str) -> Archive:
    a = Archive(url, storage_options(url, endpoint))
    a.invalidate()
    return a


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    from helpers import random_checkpoint

    return random_checkpoint(str(tmp_path_factory.mktemp("model") / "rand.pt"), CLASSES)


def corpus_objects() -> tuple[dict[str, bytes], dict[str, hostile.Expect]]:
    objs, expect = {}, {}
    for key, (data, ex) in {**hostile.files(), **hostile.s3_objects()}.items():
        objs[key], expect[key] = data, ex
    for f in sorted(LFW.rglob("*.jpg")):
        key = f"faces/{f.parent.name}/{f.name}"
        objs[key], expect[key] = f.read_bytes(), hostile.Expect(("ok",))
    return objs, expect


# -- listing, refusals, errors ------------------------------------------------------------------
def test_listing_yields_every_object_key_verbatim(s3):
    endpoint, client = s3
    make_bucket(client, "listing", {k: b"x" for k in [
        "in/x.jpg", "in/a/../b.jpg", "in/./c.jpg", "in/d//e.jpg", "in/ü n/名前.jpg", "in/.hidden.jpg",
        "in/.git/y.jpg", "in/_facepriv/runs/r/summary.json", "in/folder/", "in/notes.txt", "in-other/z.jpg",
        "in/noext",
    ]})
    keys = list(archive("s3://listing/in", endpoint).list_images())
    assert sorted(keys) == sorted(["x.jpg", "a/../b.jpg", "./c.jpg", "d//e.jpg", "ü n/名前.jpg", "noext"])


def test_dst_equal_to_or_inside_src_refused_on_s3(s3, model, capsys):
    from facepriv import cli

    endpoint, client = s3
    make_bucket(client, "nested", {"in/a.jpg": hostile.FACE.read_bytes()})
    before = all_keys(client, "nested")
    for dst in ("s3://nested/in/out", "s3://nested/in", "s3://nested/in/", "s3://nested"):
        rc = cli.main(["cloak", "s3://nested/in", dst, "--model", model, "--s3-endpoint", endpoint,
                       "--no-progress"])
        assert rc == 2, dst
        assert "SRC" in capsys.readouterr().err
    assert all_keys(client, "nested") == before, "nothing may be written"


def test_permanent_and_transient_errors_on_s3(s3, model):
    """A vanished object is that object's error row; a flaky GET is retried and succeeds."""
    from botocore.exceptions import ClientError

    from facepriv.core.settings import CloakSettings

    from facepriv.pipeline.cloaker import Cloaker

    endpoint, client = s3
    face = hostile.FACE.read_bytes()
    make_bucket(client, "flaky", {"in/a.jpg": face, "in/b.jpg": face, "in/gone.jpg": face})
    c = Cloaker("s3://flaky/in", "s3://flaky/out", CloakSettings(model=model), "r1", s3_endpoint=endpoint,
                retries=3)
    keys = list(c.src.list_images())
    client.delete_object(Bucket="flaky", Key="in/gone.jpg")  # vanishes between listing and reading
    real, calls = c.src.fs.cat_file, {"n": 0}

    def flaky_cat(path, *a, **k):
        calls["n"] += 1
        if path.endswith("b.jpg") and calls["n"] < 4:
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow down"}}, "GetObject")
        return real(path, *a, **k)

    c.src.fs.cat_file = flaky_cat
    try:
        rows = {r["source_key"]: r for r in c.process(keys)}
    finally:
        del c.src.fs.cat_file  # the fs instance is cached by fsspec: restore its method
    assert sorted(rows) == ["a.jpg", "b.jpg", "gone.jpg"]
    assert rows["gone.jpg"]["status"] == "error" and "vanished" in rows["gone.jpg"]["reason"]
    assert rows["a.jpg"]["status"] == "ok" and rows["b.jpg"]["status"] == "ok"
    assert "out/b.jpg" in all_keys(client, "flaky") and "out/gone.jpg" not in all_keys(client, "flaky")


def test_train_from_s3(s3, tmp_path):
    from facepriv import cli
    from facepriv.models.checkpoint import load_checkpoint

    endpoint, client = s3
    make_bucket(client, "train", {f"lfw/{f.parent.name}/{f.name}": f.read_bytes() for f in LFW.rglob("*.jpg")})
    out = tmp_path / "m.pt"
    rc = cli.main(["train", "s3://train/lfw", "--out", str(out), "--epochs", "1", "--val-fraction", "0",
                   "--s3-endpoint", endpoint, "--retries", "2", "--no-progress", "--device", "cpu"])
    assert rc == 0
    assert load_checkpoint(str(out)).classes == CLASSES


# -- the whole thing through the CLI and Ray ------------------------------------------------------
@pytest.mark.slow
def test_cli_cloak_s3_corpus_end_to_end(s3, model, tmp_path):
    endpoint, client = s3
    objs, expect = corpus_objects()
    make_bucket(client, "archive", {f"in/{k}": v for k, v in objs.items()})
    env = {**os.environ, **AWS_ENV, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "facepriv.cli", "cloak", "s3://archive/in", "s3://archive/out", "--model", model,
           "--attack", "fgsm", "--labels", "folder", "--workers", "1", "--batch-size", "8", "--no-progress",
           "--s3-endpoint", endpoint, "--retries", "3"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    # a normal run's stderr is facepriv's own: no error-level, deprecation or traceback lines from Ray
    noisy = [ln for ln in p.stderr.splitlines() if re.search(r"\bERROR\b| E \d+ \d+\]|Deprecat|Traceback|WARNING", ln)]
    assert noisy == [], noisy
    assert SECRET not in out
    summary = json.loads(p.stdout[p.stdout.index("{"): p.stdout.rindex("}") + 1])
    assert summary["inputs"] == len(expect)

    keys = all_keys(client, "archive")
    assert all(k.startswith(("in/", "out/")) for k in keys), "nothing outside DST is written"
    assert [k for k in keys if k.startswith("in/")] == sorted(f"in/{k}" for k in objs), "SRC untouched"
    run = f"out/_facepriv/runs/{summary['run_id']}"
    meta = [k for k in keys if k.startswith(run)]
    assert f"{run}/summary.json" in meta
    port = endpoint.rsplit(":", 1)[1]
    for k in meta:
        body = client.get_object(Bucket="archive", Key=k)["Body"].read()
        assert SECRET.encode() not in body and f"127.0.0.1:{port}".encode() not in body, k

    a = archive("s3://archive/out", endpoint)
    rows = manifest.read_manifest(a.fs, f"{a.root}/_facepriv/runs/{summary['run_id']}/manifest").to_pylist()
    assert sorted(r["source_key"] for r in rows) == sorted(expect), "one row per object"
    for r in rows:
        ex = expect[r["source_key"]]
        assert r["status"] in ex.statuses, (r["source_key"], r["status"], r["reason"])
        written = f"out/{r['source_key']}" in keys
        if r["status"] == "error":
            assert ex.reason.lower() in r["reason"].lower() and not written, (r["source_key"], r["reason"])
        else:
            assert written, r["source_key"]
    # the `..` key was refused, not normalised onto keys/b.jpg
    assert "out/keys/b.jpg" not in keys
    faces = [r for r in rows if r["source_key"].startswith("faces/")]
    assert all(r["n_faces"] >= 1 and r["faces"][0]["label"] in CLASSES for r in faces)


def test_the_lease_on_s3_is_renewed_in_the_background(s3):
    import time

    from facepriv.runs.lock import LOCK_KEY, DstBusy, DstLock

    endpoint, client = s3
    make_bucket(client, "leased", {})
    holder = DstLock(archive("s3://leased", endpoint), "run-1", stale_after=1.0, heartbeat=0.1)
    holder.acquire()
    time.sleep(4.0)  # the holder does nothing for four leases
    with pytest.raises(DstBusy, match="run-1"):
        DstLock(archive("s3://leased", endpoint), "run-2", stale_after=1.0, heartbeat=0.1).acquire()
    holder.release()
    time.sleep(0.5)  # the renewal stopped with the release: no lease comes back
    assert LOCK_KEY not in all_keys(client, "leased")
