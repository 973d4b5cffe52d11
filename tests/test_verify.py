"""The verify-and-retry loop: the pipeline encodes each cloaked photo as it will be written,
re-detects and re-classifies it, re-attacks the faces that file does not fool, writes exactly
the verified bytes, and the judge does not run the detector a second time on those bytes."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from facepriv.attacks import pgd
from facepriv.core import geometry
from facepriv.core.settings import CloakSettings
from facepriv.pipeline.cloaker import Cloaker

from helpers import random_checkpoint

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample"


def test_pgd_resumes_from_x_init_inside_the_ball():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.rand(3, 3, 8, 8)
    y = net(x).argmax(1)
    far = (x + 0.5).clamp(0, 1)  # outside the eps ball: must be projected back
    adv, used = pgd(net, x, y, eps=4, steps=0, x_init=far)
    assert (adv - x).abs().max().item() * 255 <= 4 + 1e-4
    assert torch.allclose(adv, torch.min(torch.max(far, x - 4 / 255), x + 4 / 255).clamp(0, 1))
    first, _ = pgd(net, x, y, eps=4, steps=3, early_stop=False)
    resumed, used = pgd(net, x, y, eps=4, steps=2, early_stop=False, x_init=first)
    assert (resumed - x).abs().max().item() * 255 <= 4 + 1e-4
    assert not torch.equal(resumed, first) and (used == 2).all()


def _photos(tmp_path) -> Path:
    src = tmp_path / "src"
    for name in ("Colin_Powell", "Tony_Blair"):
        (src / name).mkdir(parents=True)
        for f in sorted((SAMPLE / "test" / name).iterdir())[:2]:
            shutil.copy(f, src / name / f.name)
    return src


def _count_whole_photo_detections(c: Cloaker) -> list[int]:
    """Record the batch size of every whole-photo MTCNN call the cloaker's detector makes."""
    calls: list[int] = []
    detect = c.detector.detect
    c.detector.detect = lambda images: calls.append(len(images)) or detect(images)
    return calls


def test_verify_writes_the_verified_bytes_and_judges_without_a_second_detection(tmp_path):
    src = _photos(tmp_path)
    classes = sorted(p.name for p in (SAMPLE / "train").iterdir())
    ckpt = random_checkpoint(str(tmp_path / "m.pt"), classes)
    s = CloakSettings(model=ckpt, attack="pgd", eps=4, steps=2, views=1, verify_rounds=2)  # fooled = changed
    c = Cloaker(str(src), str(tmp_path / "dst"), s, "run")
    calls = _count_whole_photo_detections(c)
    attacked: list[int] = []
    strategy = c.strategy

    def spy(chunk):
        attacked.append(len(chunk))
        adv, used = strategy(chunk)
        if len(attacked) == 1:  # the first attack changes nothing, so the file fools no face
            adv = geometry.pack([it.pixels for it in chunk]).to(adv.device)
        return adv, used

    c.strategy = spy
    keys = sorted(str(p.relative_to(src)) for p in src.rglob("*.jpg"))
    rows = c.process(keys)
    assert [r["status"] for r in rows] == ["ok"] * 4
    # one detection of the originals, then one per verification round; none by the judge
    assert calls[0] == 4 and len(calls) == len(attacked) + 1 and len(calls) <= 1 + 3
    # retries only re-attack faces, never more than there are
    n = sum(r["n_faces"] for r in rows)
    assert attacked[0] == n and all(k <= n for k in attacked[1:])
    faces = [f for r in rows for f in r["faces"]]
    assert all(f["steps"] <= 2 * (1 + 2) for f in faces)
    # after the first, empty attack the would-be file fools (almost) no face: those it does not
    # fool were re-attacked from their current cloak
    assert len(attacked) > 1 and 0 < attacked[1] <= n


def test_verify_rounds_zero_and_fgsm_keep_a_single_attack(tmp_path):
    src = _photos(tmp_path)
    classes = sorted(p.name for p in (SAMPLE / "train").iterdir())
    ckpt = random_checkpoint(str(tmp_path / "m.pt"), classes)
    for attack, rounds in (("pgd", 0), ("fgsm", 3)):
        s = CloakSettings(model=ckpt, attack=attack, eps=4, steps=2, views=1, labels="folder", verify_rounds=rounds)
        c = Cloaker(str(src), str(tmp_path / f"dst-{attack}"), s, "run")
        attacked: list[int] = []
        strategy = c.strategy
        c.strategy = lambda chunk, strategy=strategy: attacked.append(len(chunk)) or strategy(chunk)
        rows = c.process(sorted(str(p.relative_to(src)) for p in src.rglob("*.jpg")))
        assert attacked == [sum(r["n_faces"] for r in rows)] and all(r["status"] == "ok" for r in rows)


def test_judging_near_the_faces_equals_judging_the_whole_photo(tmp_path):
    import numpy as np
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    canvas = np.full((800, 1200, 3), 128, np.uint8)  # a large photo, two faces far apart
    for (x, y), f in zip([(40, 60), (860, 480)], sorted((SAMPLE / "test").glob("*/*_0011.jpg"))[:2]):
        canvas[y : y + 250, x : x + 250] = np.asarray(Image.open(f).convert("RGB"))
    Image.fromarray(canvas).save(src / "pair.jpg", quality=95)
    classes = sorted(p.name for p in (SAMPLE / "train").iterdir())
    ckpt = random_checkpoint(str(tmp_path / "m.pt"), classes)
    faces, whole_calls = {}, {}
    for mode in ("near", "full"):
        s = CloakSettings(model=ckpt, attack="fgsm", eps=8, views=1, redetect=mode)
        c = Cloaker(str(src), str(tmp_path / f"dst-{mode}"), s, "run")
        calls = _count_whole_photo_detections(c)
        (row,) = c.process(["pair.jpg"])
        assert row["status"] == "ok" and row["n_faces"] >= 2
        faces[mode] = [(f["redetected"], f["cloaked_pred"], f["fooled"], f["clean_pred"]) for f in row["faces"]]
        whole_calls[mode] = len(calls)
    assert faces["near"] == faces["full"]
    assert whole_calls == {"near": 1, "full": 2}  # near: only the originals went through the whole-photo detector
    assert (tmp_path / "dst-near" / "pair.jpg").read_bytes() == (tmp_path / "dst-full" / "pair.jpg").read_bytes()


def test_judge_decodes_and_detects_afresh_when_the_file_read_back_is_not_the_verified_bytes(tmp_path):
    import io

    from PIL import Image

    src = _photos(tmp_path)
    classes = sorted(p.name for p in (SAMPLE / "train").iterdir())
    ckpt = random_checkpoint(str(tmp_path / "m.pt"), classes)
    keys = sorted(str(p.relative_to(src)) for p in src.rglob("*.jpg"))
    psnr: dict[str, list[float]] = {}
    for tamper in ("none", "reencode", "garbage"):
        s = CloakSettings(model=ckpt, attack="fgsm", eps=8, views=1)
        c = Cloaker(str(src), str(tmp_path / f"dst-{tamper}"), s, "run")
        calls = _count_whole_photo_detections(c)
        read = c.dst.read_bytes

        def tampered(key, read=read, tamper=tamper):
            data = read(key)
            if tamper == "reencode":  # a storage layer that recompresses: decodable, other bytes
                buf = io.BytesIO()
                Image.open(io.BytesIO(data)).save(buf, "JPEG", quality=60)
                return buf.getvalue()
            return data[:100] if tamper == "garbage" else data

        c.dst.read_bytes = tampered
        rows = c.process(keys)
        # originals + verification, then the judge only for bytes it has not seen
        assert calls == {"none": [4, 4], "reencode": [4, 4, 4], "garbage": [4, 4]}[tamper]
        if tamper == "garbage":
            assert all(r["status"] == "error" and "does not decode" in r["reason"] for r in rows)
        else:
            assert all(r["status"] == "ok" and r["faces"] for r in rows)
            psnr[tamper] = [r["psnr"] for r in rows]
    # judged on the pixels read back (recompressed at q60: it smooths the cloak away, so PSNR
    # even rises), not on the verified q95 ones
    assert all(a != b for a, b in zip(psnr["reencode"], psnr["none"])), psnr


def test_step_plan_spends_the_same_budget_in_checked_calls():
    from facepriv.core.settings import step_plan

    def plan(resumable=True, **kw):
        return step_plan(CloakSettings(attack="pgd", **kw), resumable)

    # budget steps x (verify_rounds + 1) = 40: 20 calls of 2 steps, the first plus 19 re-checks
    assert plan(steps=10, verify_rounds=3) == (2, 19)
    assert plan(steps=10, verify_rounds=3, check_every=0) == (10, 3)  # one check per --steps
    assert plan(steps=10, verify_rounds=3, check_every=3) == (3, 12)  # 39 <= 40 steps
    assert plan(steps=1, verify_rounds=3, check_every=5) == (1, 3)
    # no verification asked, or an attack that cannot resume: all steps in one call, no retry
    assert plan(steps=10, verify_rounds=0) == (10, 0)
    assert plan(False, steps=10, verify_rounds=3) == (10, 0)


def test_check_every_verifies_between_calls_within_the_budget(tmp_path):
    src = _photos(tmp_path)
    classes = sorted(p.name for p in (SAMPLE / "train").iterdir())
    ckpt = random_checkpoint(str(tmp_path / "m.pt"), classes)
    s = CloakSettings(model=ckpt, attack="pgd", eps=4, steps=2, views=1, labels="folder", verify_rounds=1,
                      check_every=1, kappa=50.0)  # kappa: no face stops early in memory
    c = Cloaker(str(src), str(tmp_path / "dst"), s, "run")
    assert c.strategy.s.steps == 1 and c.rounds == 3
    attacked: list[int] = []
    strategy = c.strategy
    c.strategy = lambda chunk: attacked.append(len(chunk)) or strategy(chunk)
    rows = c.process(sorted(str(p.relative_to(src)) for p in src.rglob("*.jpg")))
    faces = [f for r in rows for f in r["faces"]]
    assert 1 <= len(attacked) <= 4 and all(f["steps"] <= 4 for f in faces)
    # every call is one step: a face attacked in k calls took k steps
    assert sum(f["steps"] for f in faces) == sum(attacked)
