"""Surrogate weights shape the cloak: the embed-pgd settings hash names each surrogate's weights
sha256 (a different model installed under the same name re-cloaks in an incremental run), and
the workers build the surrogates from the bytes the driver read, not from their own
$FACEPRIV_HOME. Tiny TF.js embedders built here, installed as `facepriv models install` does."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facepriv.core.align import ARCFACE_112
from facepriv.core.settings import CloakSettings
from facepriv.errors import FacePrivError
from facepriv.io import manifest
from facepriv.io.archive import Archive
from facepriv.models import store
from facepriv.models.tfjs import import_tfjs, save_imported
from facepriv.pipeline.faces import Detection
from facepriv.runs import incremental as inc

from test_tfjs import Graph, _conv_attr

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample" / "test"


def _install(home: Path, name: str, seed: int) -> str:
    """A tiny TF.js embedder (conv, relu, conv; random weights from `seed`) imported and saved as
    home/models/NAME.pt; returns its weights sha256."""
    rng = np.random.default_rng(seed)
    g = Graph(8, 8, 3)
    g.op("c1", "Conv2D", ["input", g.const("w1", rng.normal(0, 0.5, (3, 3, 3, 8)).astype(np.float32))],
         **_conv_attr(2, "SAME"))
    g.op("r1", "Relu", ["c1"])
    g.op("out", "Conv2D", ["r1", g.const("w2", rng.normal(0, 0.5, (3, 3, 8, 4)).astype(np.float32))],
         **_conv_attr(2, "SAME"))
    folder = home / "tfjs" / f"{name}-{seed}"
    folder.mkdir(parents=True)
    jp, _ = g.write(folder, name, shards=1)
    net = import_tfjs(jp, output="out", input_size=8, mean=127.5, std=128.0)
    (home / "models").mkdir(parents=True, exist_ok=True)
    save_imported(net, str(home / "models" / f"{name}.pt"))
    return store.weights_sha256(net)


def _settings() -> CloakSettings:
    return CloakSettings(attack="embed-pgd", surrogate="tiny", eps=8, steps=2, judge=False, device="cpu")


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    face = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((6, 6, 1))).astype(np.uint8)  # smooth-ish 48x48
    photo = np.full((96, 96, 3), 128, np.uint8)
    photo[24:72, 24:72] = face
    Image.fromarray(photo).save(src / "p.png")
    return src


def _one_face(cloaker) -> None:
    """The photo's face where _src put it (a synthetic face MTCNN would not find)."""
    box = np.array([[24, 24, 72, 72]], np.float32)
    lm = (ARCFACE_112 * (48 / 112.0) + 24).astype(np.float32)[None]
    cloaker.detector.detect = lambda images: [Detection(box, np.ones(1, np.float32), lm) for _ in images]


def _incremental_run(src: Path, dst: Path, settings: CloakSettings) -> dict:
    """One incremental run as `run_cloak` makes it, without Ray: fold the earlier runs, cloak in a
    ShardWorker (its skip check included), write the run's manifest, fold it in."""
    from facepriv.distributed.runner import new_run_id
    from facepriv.distributed.worker import ShardWorker

    dst_a = Archive(str(dst), {})
    run_id = new_run_id()
    inc.compact(dst_a)
    worker = ShardWorker(str(src), str(dst), settings, run_id)
    _one_face(worker.cloaker)
    rows = worker.process(["p.png"])
    dst_a.write_bytes(f"{manifest.run_dir(run_id)}/manifest/part-00000.parquet", manifest.table_bytes(rows))
    inc.compact(dst_a, [run_id])
    return rows[0]


def test_only_embed_pgd_hashes_the_surrogate_weights():
    embed = CloakSettings(attack="embed-pgd", surrogate="mobilefacenet")
    assert embed.hash(None, ["a" * 64]) != embed.hash(None, ["b" * 64])
    assert embed.output_fields(None, ["a" * 64])["surrogate_sha256"] == ["a" * 64]
    fgsm = CloakSettings(attack="fgsm")
    assert fgsm.hash(None, ["a" * 64]) == fgsm.hash(None, []) == fgsm.hash(None)
    assert "surrogate_sha256" not in fgsm.output_fields(None, ["a" * 64])


def test_a_different_model_installed_under_the_same_name_recloaks(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("FACEPRIV_HOME", str(home))
    first = _install(home, "tiny", seed=0)
    src, dst = _src(tmp_path), tmp_path / "dst"
    s = _settings()

    r1 = _incremental_run(src, dst, s)
    assert r1["status"] == "ok" and r1["n_faces"] == 1, r1["reason"]
    out1 = (dst / "p.png").read_bytes()
    r2 = _incremental_run(src, dst, s)
    assert r2["status"] == "skipped"  # same photo, same settings, same weights
    second = _install(home, "tiny", seed=1)  # re-installed: other weights, same name
    assert second != first
    r3 = _incremental_run(src, dst, s)
    assert r3["status"] == "ok" and r3["n_faces"] == 1, r3["reason"]
    assert r3["settings_hash"] != r1["settings_hash"]
    assert (dst / "p.png").read_bytes() != out1  # cloaked again, on the new weights
    assert json.loads(r1["settings_json"])["surrogate_sha256"] == [first]
    assert json.loads(r3["settings_json"])["surrogate_sha256"] == [second]
    r4 = _incremental_run(src, dst, s)
    assert r4["status"] == "skipped"


def test_the_worker_builds_the_surrogate_from_the_driver_bytes(tmp_path, monkeypatch):
    from facepriv.pipeline.cloaker import Cloaker
    from facepriv.strategies import read_surrogates

    home = tmp_path / "driver-home"
    monkeypatch.setenv("FACEPRIV_HOME", str(home))
    sha = _install(home, "tiny", seed=0)
    src, dst = _src(tmp_path), tmp_path / "dst"
    s = _settings()
    shipped = read_surrogates(s)  # the driver reads each surrogate once
    assert [(w.spec, w.sha256) for w in shipped] == [("tiny", sha)]
    other = _install(tmp_path / "other-home", "tiny", seed=1)

    # the worker: an empty $FACEPRIV_HOME of its own, and no surrogate may be looked up on disk
    monkeypatch.setenv("FACEPRIV_HOME", str(tmp_path / "worker-home"))

    def no_disk(spec):
        raise AssertionError(f"the worker looked for surrogate {spec!r} on its own disk")

    monkeypatch.setattr(store, "resolve", no_disk)
    cloaker = Cloaker(str(src), str(dst), s, "run", surrogates=shipped)
    _one_face(cloaker)
    (row,) = cloaker.process(["p.png"])
    assert row["status"] == "ok" and row["n_faces"] == 1, row["reason"]
    change = np.abs(np.asarray(Image.open(dst / "p.png"), int) - np.asarray(Image.open(src / "p.png"), int))
    assert 0 < change.max() <= 8  # cloaked, within eps
    assert json.loads(row["settings_json"])["surrogate_sha256"] == [sha]

    # bytes that do not hold the weights the driver hashed are refused
    wrong = dataclasses.replace(shipped[0], data=(tmp_path / "other-home" / "models" / "tiny.pt").read_bytes())
    assert other != sha
    with pytest.raises(FacePrivError, match="hash to"):
        Cloaker(str(src), str(dst), s, "run", surrogates=[wrong])


@pytest.mark.slow
def test_ray_workers_without_the_surrogate_installed_cloak_and_rerun_on_new_weights(tmp_path, monkeypatch):
    """Ray's workers see an empty $FACEPRIV_HOME (a node where nothing is installed): the run
    cloaks with the driver's surrogate; the rerun skips; a re-installed model re-cloaks."""
    import ray

    from facepriv.distributed.runner import run_cloak

    home, node_home = tmp_path / "driver-home", tmp_path / "node-home"
    node_home.mkdir()
    monkeypatch.setenv("FACEPRIV_HOME", str(home))
    first = _install(home, "tiny", seed=0)
    src, dst = tmp_path / "src", tmp_path / "dst"
    photo = sorted((SAMPLE / "Colin_Powell").glob("*.jpg"))[0]
    (src / "p").mkdir(parents=True)
    shutil.copy(photo, src / "p" / photo.name)
    key = f"p/{photo.name}"

    def rows(summary):
        a = Archive(str(dst), {})
        return manifest.read_manifest(a.fs, f"{a.root}/_facepriv/runs/{summary['run_id']}/manifest").to_pylist()

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"FACEPRIV_HOME": str(node_home)}})
    try:
        assert ray.get(ray.remote(lambda: os.environ["FACEPRIV_HOME"]).remote()) == str(node_home)
        s = _settings()
        kw = dict(workers=1, batch_size=2, progress=False, log=lambda m: None)
        (r1,) = rows(run_cloak(str(src), str(dst), s, **kw))
        assert r1["source_key"] == key and r1["status"] == "ok" and r1["n_faces"] >= 1, r1["reason"]
        assert json.loads(r1["settings_json"])["surrogate_sha256"] == [first]
        assert run_cloak(str(src), str(dst), s, **kw)["skipped"] == 1
        second = _install(home, "tiny", seed=1)
        again = run_cloak(str(src), str(dst), s, **kw)
        (r3,) = rows(again)
        assert again["skipped"] == 0 and r3["status"] == "ok", r3["reason"]
        assert json.loads(r3["settings_json"])["surrogate_sha256"] == [second]
    finally:
        ray.shutdown()
