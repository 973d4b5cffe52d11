"""Archive scale on Ray: cluster.yaml, incremental runs, worker faults, GPU scheduling, jobs.

The slow tests start real Ray (an in-process local instance, a `ray.cluster_utils.Cluster`,
and a `ray start --head --block` head for `ray job submit`) and stop exactly what they start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pytest

from facepriv.runs import incremental as inc
from facepriv.io import manifest
from facepriv.io.archive import Archive
from facepriv.distributed.listing import key_blocks

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample" / "test"
CLASSES = ["Colin_Powell", "Kofi_Annan", "Laura_Bush"]


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """A random paper-cnn checkpoint (scheduling and bookkeeping do not need a trained one)."""
    from helpers import random_checkpoint

    return random_checkpoint(str(tmp_path_factory.mktemp("model") / "rand.pt"), CLASSES)


def photos(dst: Path, n: int, skip: int = 0) -> list[str]:
    """Copy n sample photos (identity folders kept) into dst; returns their keys."""
    files = sorted(p for p in SAMPLE.rglob("*.jpg") if p.parent.name in CLASSES)[skip : skip + n]
    assert len(files) == n, "examples/sample/test has too few photos"
    keys = []
    for f in files:
        key = f"{f.parent.name}/{f.name}"
        (dst / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst / key)
        keys.append(key)
    return keys


def run_rows(dst: Path, run_id: str) -> list[dict]:
    a = Archive(str(dst), {})
    return manifest.read_manifest(a.fs, f"{a.root}/_facepriv/runs/{run_id}/manifest").to_pylist()


def decodes(path: Path) -> bool:
    from facepriv.io import imageio

    try:
        imageio.decode(path.read_bytes())
        return True
    except Exception:  # noqa: BLE001
        return False


def row(key, status="ok", sha="a", settings="s", run="r1", t=0):
    import datetime as dt

    return manifest.empty_row(source_key=key, output_key=key, status=status, content_sha256=sha,
                              settings_hash=settings, run_id=run,
                              finished_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=t))


# -- fast tests -----------------------------------------------------------------------------
def test_cluster_yaml_validates_against_the_schema_in_the_ray_wheel():
    import jsonschema
    import ray
    import yaml

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(cfg, schema)
    assert cfg["provider"]["type"] == "aws"
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [t for n, t in cfg["available_node_types"].items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu)
    assert any("facepriv" in c and "pip install" in c for c in cfg["setup_commands"])
    assert any("--dashboard-port=8265" in c for c in cfg["head_start_ray_commands"])
    bad = dict(cfg, provider={"region": "us-east-1"})  # the schema does reject a broken config
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_key_blocks_are_lazy_and_bounded():
    consumed = []

    def keys():
        for i in range(10):
            consumed.append(i)
            yield f"k{i}"

    it = key_blocks(keys(), 4)
    first = next(it)
    assert first["key"].to_pylist() == ["k0", "k1", "k2", "k3"] and len(consumed) == 4
    assert [t.num_rows for t in it] == [4, 2]


def test_should_skip_needs_same_content_settings_and_output():
    prior = {"status": "ok", "content_sha256": "a", "settings_hash": "s"}
    assert inc.should_skip(prior, "a", "s", True)
    assert not inc.should_skip(prior, "b", "s", True)  # photo changed
    assert not inc.should_skip(prior, "a", "t", True)  # settings or model changed
    assert not inc.should_skip(prior, "a", "s", False)  # output deleted
    assert not inc.should_skip(dict(prior, status="error"), "a", "s", True)  # errors are retried
    assert not inc.should_skip(None, "a", "s", True)


def test_latest_per_key_prefers_newest_processing_row():
    t = manifest.to_table([row("x", t=0, sha="old"), row("x", t=5, sha="new", run="r2"),
                           row("x", status="skipped", t=9, run="r3"), row("y", status="skipped", t=1),
                           row("z", status="error", t=1), row("z", t=2, run="r2")])
    got = {r["source_key"]: r for r in inc.latest_per_key(t).to_pylist()}
    assert sorted(got) == ["x", "y", "z"]
    assert got["x"]["content_sha256"] == "new" and got["x"]["run_id"] == "r2"
    assert got["y"]["status"] == "skipped" and got["z"]["status"] == "ok"


def test_compact_folds_runs_idempotently_and_index_finds_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(inc, "ROW_GROUP", 3)  # several row groups, so the bisection is exercised
    dst = Archive(str(tmp_path), {})
    keys = [f"p/{i:03d}.jpg" for i in range(10)]
    dst.write_bytes("_facepriv/runs/r1/manifest/part-00000.parquet",
                    manifest.table_bytes([row(k, sha=f"h{k}") for k in keys]))
    assert inc.compact(dst)["folded_runs"] == ["r1"]
    dst.write_bytes("_facepriv/runs/r2/manifest/part-00000.parquet",
                    manifest.table_bytes([row(keys[3], sha="changed", run="r2", t=7)]))
    assert inc.compact(dst)["folded_runs"] == ["r2"]
    assert inc.compact(dst)["folded_runs"] == []  # nothing new
    inc.compact(dst, ["r1", "r2"])  # re-folding is harmless
    view = inc.read_view(dst).to_pylist()
    assert sorted(r["source_key"] for r in view) == keys
    idx = inc.PriorIndex(dst)
    assert len(idx._mins) == 4
    assert idx.get(keys[3])["content_sha256"] == "changed"
    assert all(idx.get(k)["content_sha256"] == f"h{k}" for k in keys if k != keys[3])
    assert idx.get("a.jpg") is None and idx.get("p/0035.jpg") is None and idx.get("zz") is None


def test_compact_in_bounded_chunks_equals_folding_everything_at_once(tmp_path, monkeypatch):
    # many runs and parts, spilled every few rows and merged as streams: the same view as
    # latest_per_key over all rows in memory (ties, skipped rows, errors and re-runs included)
    import random

    monkeypatch.setattr(inc, "ROW_GROUP", 4)
    rnd = random.Random(0)
    dst = Archive(str(tmp_path), {})
    statuses = ["ok", "ok", "ok", "no_face", "error", "skipped"]
    everything = []
    for r in range(5):
        for part in range(3):
            rows = [row(f"k/{rnd.randrange(30):02d}.jpg", status=rnd.choice(statuses), t=rnd.randrange(4),
                        sha=f"{r}-{part}-{i}", run=f"r{r}") for i in range(rnd.randrange(1, 8))]
            dedup = {x["source_key"]: x for x in rows}  # one row per key within a run
            everything += list(dedup.values())
            dst.write_bytes(f"_facepriv/runs/r{r}/manifest/part-{part:05d}.parquet",
                            manifest.table_bytes(list(dedup.values())))
        if r == 2:  # fold half way, so the old view is one of the merged streams
            inc.compact(dst, chunk_rows=5)
    rep = inc.compact(dst, chunk_rows=5)
    assert rep["folded_runs"] == ["r3", "r4"]
    want = inc.latest_per_key(manifest.to_table(everything)).to_pylist()
    got = inc.read_view(dst).to_pylist()
    assert [r["source_key"] for r in got] == sorted(r["source_key"] for r in got)
    assert {r["source_key"]: (r["run_id"], r["content_sha256"]) for r in got} == \
        {r["source_key"]: (r["run_id"], r["content_sha256"]) for r in want}
    assert rep["rows"] == len(want)


# -- slow tests: real Ray -------------------------------------------------------------------
@pytest.fixture
def local_ray():
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_worker_killed_mid_run_every_photo_once_then_incremental_rerun(local_ray, model, tmp_path):
    from facepriv.core.settings import CloakSettings
    from facepriv.distributed.runner import run_cloak

    src, dst = tmp_path / "src", tmp_path / "dst"
    keys = photos(src, 12)
    killed: list[int] = []

    def kill_after_first_batch(rows):
        if not killed:  # SIGKILL the actor process that produced the first rows; more batches pending
            pid = int(rows[0]["worker"].split(":")[1].split("@")[0])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    s = CloakSettings(model=model, attack="fgsm", labels="folder")
    summary = run_cloak(str(src), str(dst), s, workers=1, batch_size=2, progress=False, log=lambda m: None,
                        on_rows=kill_after_first_batch)
    assert killed
    rows = run_rows(dst, summary["run_id"])
    assert summary["inputs"] == len(rows) == 12 and summary["errors"] == 0
    assert sorted(r["source_key"] for r in rows) == sorted(keys)  # every input exactly once
    pids = {int(r["worker"].split(":")[1].split("@")[0]) for r in rows}
    assert len(pids) >= 2 and killed[0] in pids  # a restarted actor finished the run
    assert all(decodes(dst / k) for k in keys)
    assert not list(dst.rglob("*.part"))  # no half-written file left visible
    view = inc.read_view(Archive(str(dst), {})).to_pylist()
    assert sorted(r["source_key"] for r in view) == sorted(keys)

    # rerun with 2 new photos: the 12 are skipped (not re-written), only the 2 are cloaked
    mtimes = {k: (dst / k).stat().st_mtime_ns for k in keys}
    new = photos(src, 2, skip=12)
    again = run_cloak(str(src), str(dst), s, workers=1, batch_size=4, progress=False, log=lambda m: None)
    assert again["inputs"] == 14 and again["skipped"] == 12
    rows = run_rows(dst, again["run_id"])
    assert sorted(r["source_key"] for r in rows if r["status"] != "skipped") == sorted(new)
    assert all((dst / k).stat().st_mtime_ns == mtimes[k] for k in keys)
    view = inc.read_view(Archive(str(dst), {})).to_pylist()
    assert sorted(r["source_key"] for r in view) == sorted(keys + new)
    assert all(r["status"] != "skipped" for r in view)


@pytest.mark.slow
def test_gpu_node_gets_the_workers_and_cloaker_falls_back_to_cpu(model, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from facepriv.core.settings import CloakSettings
    from facepriv.distributed.runner import run_cloak

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)  # a fake GPU: CPU torch, no CUDA here
        cluster.wait_for_nodes()
        src, dst = tmp_path / "src", tmp_path / "dst"
        keys = photos(src, 4)
        s = CloakSettings(model=model, attack="fgsm", labels="folder", judge=False)
        summary = run_cloak(str(src), str(dst), s, address=cluster.address, batch_size=2, progress=False,
                            log=lambda m: None)
        assert summary["gpus_per_worker"] == 1.0 and summary["workers"] == 1  # default: 1 GPU/worker
        rows = run_rows(dst, summary["run_id"])
        assert sorted(r["source_key"] for r in rows) == sorted(keys)
        assert {r["status"] for r in rows} <= {"ok", "no_face"}  # cloaked on CPU despite the GPU grant
        assert {r["worker"].split("@")[1] for r in rows} == {gpu_node.node_id}
    finally:
        ray.shutdown()
        cluster.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_driver_killed_then_resumed(model, tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    bindir = Path(sys.executable).parent
    port, dash = _free_port(), _free_port()
    tmp = tempfile.mkdtemp(prefix="fpray")  # short: Ray's socket paths must stay < 108 chars
    head = subprocess.Popen(
        [str(bindir / "ray"), "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true", f"--temp-dir={tmp}",
         # the job agent's own port (default 52365) is taken when another Ray instance runs here
         f"--dashboard-agent-listen-port={_free_port()}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    src, dst = tmp_path / "src", tmp_path / "dst"
    keys = photos(src, 12)
    job = [sys.executable, str(ROOT / "jobs" / "cloak_archive.py"), str(src), str(dst), "--model", model,
           "--labels", "folder", "--no-judge", "--batch-size", "2", "--workers", "1", "--log-every", "2"]
    ray_cli = [str(bindir / "ray"), "job"]

    try:
        for _ in range(120):  # wait for the dashboard's job API
            try:
                import urllib.request

                urllib.request.urlopen(f"{url}/api/version", timeout=1)
                break
            except Exception:  # noqa: BLE001
                time.sleep(0.5)
        # 1. a job whose driver is SIGKILLed once its first manifest part is written. The job API
        # answers before the head's job agent is up (on a loaded machine, for tens of seconds):
        # Ray then refuses with "No available agent to submit job, please try again later"
        for _ in range(60):
            sub = subprocess.run(ray_cli + ["submit", "--address", url, "--submission-id", "killed", "--no-wait",
                                            "--"] + job, env=env, capture_output=True, text=True, timeout=60)
            if sub.returncode == 0 or "No available agent" not in sub.stdout + sub.stderr:
                break
            time.sleep(2)
        assert sub.returncode == 0, sub.stdout[-2000:] + sub.stderr[-2000:]
        runs = dst / "_facepriv" / "runs"
        for _ in range(600):
            if list(runs.glob("*/manifest/*.parquet")):
                break
            time.sleep(0.1)
        import psutil

        drivers = [q for q in psutil.process_iter(["cmdline"])
                   if "cloak_archive.py" in " ".join(q.info["cmdline"] or []) and str(dst) in q.info["cmdline"]]
        assert len(drivers) == 1
        drivers[0].kill()  # SIGKILL the job's driver process: no chance to clean up
        drivers[0].wait(10)
        (killed_run,) = list(runs.iterdir())
        assert not (killed_run / "summary.json").exists(), "the job finished before it could be interrupted"
        done_before = [r["source_key"] for r in run_rows(dst, killed_run.name)]
        assert 0 < len(done_before) < 12

        # 2. the same job again resumes: what the killed run finished is skipped, the rest cloaked
        p = subprocess.run(ray_cli + ["submit", "--address", url, "--"] + job, env=env, capture_output=True,
                           text=True, timeout=240)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        assert "succeeded" in (p.stdout + p.stderr).lower()
        assert "progress: " in p.stdout  # the steady progress lines reach `ray job logs`
        (summary,) = [json.loads(f.read_text()) for f in runs.glob("*/summary.json")]
        assert summary["inputs"] == 12 and summary["errors"] == 0
        assert summary["skipped"] == len(done_before)
        rows = run_rows(dst, summary["run_id"])
        assert sorted(r["source_key"] for r in rows) == sorted(keys)  # each exactly once
        assert sorted(r["source_key"] for r in rows if r["status"] == "skipped") == sorted(done_before)
        assert all(decodes(dst / k) for k in keys)
        view = inc.read_view(Archive(str(dst), {})).to_pylist()
        assert sorted(r["source_key"] for r in view) == sorted(keys)
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops the head it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
