"""User mistakes fail fast: one line on stderr, exit 2, nothing created under DST, before Ray
starts (these runs never reach Ray: a Ray start would print its own lines)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "lfw"


def _cloak(args, tmp_path, env=None):
    dst = tmp_path / "dst"
    e = {**os.environ, "FACEPRIV_HOME": str(tmp_path / "home"), "RAY_ADDRESS": "", **(env or {})}
    p = subprocess.run([sys.executable, "-m", "facepriv.cli", "cloak", *[str(a) for a in args[:1]], str(dst),
                        *[str(a) for a in args[1:]], "--no-progress"],
                       capture_output=True, text=True, timeout=120, env=e, cwd=tmp_path)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    return p.returncode, lines, dst


@pytest.fixture()
def src(tmp_path):
    d = tmp_path / "src"
    shutil.copytree(FIXTURES, d)
    return d


def _assert_fast_failure(rc, lines, dst, *words):
    assert rc == 2, lines
    assert len(lines) == 1 and lines[0].startswith("facepriv: error: "), lines
    assert all(w in lines[0] for w in words), lines[0]
    assert not dst.exists()


def test_a_missing_src(tmp_path):
    _assert_fast_failure(*_cloak([tmp_path / "no" / "such", "--attack", "fgsm", "--model", "m.pt"], tmp_path),
                         "does not exist")


def test_an_src_without_photos(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    rc, lines, dst = _cloak([tmp_path / "empty", "--preset", "protect", "--surrogate", "x.pt"], tmp_path)
    _assert_fast_failure(rc, lines, dst, "holds no photos", "--allow-empty")


def test_a_missing_or_omitted_model(src, tmp_path):
    _assert_fast_failure(*_cloak([src, "--attack", "fgsm"], tmp_path), "needs --model")
    _assert_fast_failure(*_cloak([src, "--attack", "pgd", "--model", tmp_path / "nope.pt"], tmp_path),
                         "nope.pt", "no such file")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    _assert_fast_failure(*_cloak([src, "--attack", "fgsm", "--model", tmp_path / "bad.pt"], tmp_path), "bad.pt")


def test_a_surrogate_that_is_not_installed(src, tmp_path):
    _assert_fast_failure(*_cloak([src, "--attack", "embed-pgd", "--surrogate", "mobilefacenet"], tmp_path),
                         "mobilefacenet", "not installed", "facepriv models install")
    _assert_fast_failure(*_cloak([src, "--preset", "protect"], tmp_path), "facepriv models install")
    _assert_fast_failure(*_cloak([src, "--attack", "embed-pgd"], tmp_path), "--surrogate")


def test_an_unreadable_perturbation(src, tmp_path):
    _assert_fast_failure(*_cloak([src, "--attack", "uap", "--uap", tmp_path / "v.npy"], tmp_path), "v.npy")
    (tmp_path / "w.npy").write_bytes(b"garbage")
    _assert_fast_failure(*_cloak([src, "--attack", "uap", "--uap", tmp_path / "w.npy"], tmp_path), "w.npy")
    np.save(tmp_path / "v.npy", np.zeros((3, 8, 8), np.float32))
    _assert_fast_failure(*_cloak([src, "--attack", "uap", "--uap", tmp_path / "v.npy", "--eps", "9"], tmp_path),
                         "--eps 9")


def test_bad_option_combinations(src, tmp_path):
    _assert_fast_failure(*_cloak([src, "--attack", "embed-pgd", "--surrogate", "x.pt", "--target", "Bob"], tmp_path),
                         "--target")
    _assert_fast_failure(*_cloak([src, "--preset", "protect", "--surrogate", "x.pt", "--min-face-quality", "101"],
                                 tmp_path), "--min-face-quality")


def test_counts_below_one(src, tmp_path):
    _assert_fast_failure(*_cloak([src, "--preset", "protect", "--surrogate", "x.pt", "--workers", "0"], tmp_path),
                         "--workers 0", "at least 1")
    _assert_fast_failure(*_cloak([src, "--preset", "protect", "--surrogate", "x.pt", "--face-batch", "-1"], tmp_path),
                         "--face-batch -1")
    _assert_fast_failure(*_cloak([src, "--preset", "protect", "--surrogate", "x.pt", "--quality-every", "0"], tmp_path),
                         "--quality-every 0")


def test_preflight_accepts_an_empty_src_when_allowed(tmp_path):
    from facepriv.core.settings import CloakSettings
    from facepriv.errors import UsageError
    from facepriv.io.archive import Archive, storage_options
    from facepriv.runs.preflight import check_source, preflight

    (tmp_path / "empty").mkdir()
    a = Archive(str(tmp_path / "empty"), storage_options(str(tmp_path / "empty")))
    with pytest.raises(UsageError, match="no photos"):
        check_source(a)
    check_source(a, allow_empty=True)
    with pytest.raises(UsageError, match="needs --model"):
        preflight(a, CloakSettings(attack="fgsm"), allow_empty=True)
