import io
import os

import numpy as np
import pytest
from PIL import Image

from facepriv.report import robustness as rb

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "lfw", "Colin_Powell", "Colin_Powell_0001.jpg")


def photo():
    return np.asarray(Image.open(FIXTURE).convert("RGB"))


def noisy(h=64, w=96, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


def test_table_contract():
    assert set(rb.TRANSFORMS) == {"jpeg95", "jpeg85", "jpeg75", "down0.5"}
    rgb = photo()
    for name, t in rb.TRANSFORMS.items():
        out = t(rgb)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, name
        if name in rb.RESIZING:
            assert out.shape[:2] == (rgb.shape[0] // 2, rgb.shape[1] // 2)
        else:
            assert out.shape == rgb.shape
        assert not np.shares_memory(out, rgb)
    np.testing.assert_array_equal(rgb, photo())


def test_jpeg_quality_orders_the_damage():
    rgb = noisy()
    p = {q: psnr(rgb, rb.jpeg(rgb, q)) for q in (95, 85, 75)}
    assert p[95] > p[85] > p[75] > 20
    assert np.abs(rb.jpeg(rgb, 95).astype(int) - rgb).max() > 0  # really lossy


def test_jpeg_bytes_and_inputs():
    rgb = noisy()
    data = rb.jpeg_bytes(rgb, 85)
    assert data[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and im.size == (96, 64)
    # bytes in (any format Pillow reads) gives the same as the decoded array in
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    np.testing.assert_array_equal(rb.jpeg(buf.getvalue(), 85), rb.jpeg(rgb, 85))
    # deterministic
    assert rb.jpeg_bytes(rgb, 75) == rb.jpeg_bytes(rgb, 75)
    # 4:2:0 by default: chroma is subsampled, so 4:4:4 keeps more colour detail
    assert psnr(rgb, rb.jpeg(rgb, 95, subsampling="4:4:4")) > psnr(rgb, rb.jpeg(rgb, 95))
    with pytest.raises(ValueError):
        rb.jpeg(rgb, 0)
    with pytest.raises(ValueError):
        rb.jpeg(rgb, 90, subsampling="4:1:1")
    with pytest.raises(ValueError):
        rb.jpeg(rgb.astype(np.float32), 90)


def test_downscale_is_antialiased():
    # a one-pixel checkerboard must average to grey, not alias to black or white
    h, w = 40, 60
    checker = ((np.indices((h, w)).sum(0) % 2) * 255).astype(np.uint8)
    rgb = np.repeat(checker[..., None], 3, axis=2)
    out = rb.downscale(rgb, 0.5)
    assert out.shape == (20, 30, 3)
    inner = out[2:-2, 2:-2].astype(float)
    assert abs(inner.mean() - 127.5) < 3 and inner.std() < 3
    # odd sizes round, factor 1 copies, bad factors refuse
    assert rb.downscale(noisy(33, 51), 0.5).shape == (16, 26, 3)  # Python round(): 16.5 -> 16, 25.5 -> 26
    same = rb.downscale(rgb, 1.0)
    np.testing.assert_array_equal(same, rgb)
    assert not np.shares_memory(same, rgb)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError):
            rb.downscale(rgb, bad)


def test_scale_helpers():
    boxes = np.array([[10, 20, 30, 60], [0, 0, 100, 50]], np.float32)
    np.testing.assert_allclose(rb.scale_boxes(boxes, 0.5), [[5, 10, 15, 30], [0, 0, 50, 25]])
    np.testing.assert_allclose(rb.scale_boxes(boxes[0], 0.5, 0.25), [[5, 5, 15, 15]])
    np.testing.assert_allclose(rb.scale_points(np.array([[[2.0, 4.0]]]), 0.5), [[[1.0, 2.0]]])
    assert rb.scale_of((100, 200, 3), (50, 100, 3)) == (0.5, 0.5)
    faces = [{"box": boxes[0], "landmarks": np.array([[12, 30]] * 5, np.float32), "prob": 0.99}]
    scaled = rb.scale_faces(faces, 0.5)
    assert scaled[0]["prob"] == 0.99 and faces[0]["box"][0] == 10  # input not modified
    np.testing.assert_allclose(scaled[0]["box"], [5, 10, 15, 30])
    np.testing.assert_allclose(scaled[0]["landmarks"][0], [6, 15])


def test_apply_moves_faces_and_get_transform():
    rgb = photo()
    faces = [{"box": np.array([80, 70, 170, 190], np.float32), "landmarks": np.full((5, 2), 120, np.float32)}]
    out, moved = rb.apply("down0.5", rgb, faces)
    assert out.shape[:2] == (125, 125)
    np.testing.assert_allclose(moved[0]["box"], [40, 35, 85, 95])
    out, same = rb.apply("jpeg85", rgb, faces)
    assert out.shape == rgb.shape and same[0]["box"] is faces[0]["box"]
    assert rb.apply("jpeg95", rgb)[1] is None
    assert rb.get_transform("jpeg60")(noisy()).shape == (64, 96, 3)
    assert rb.get_transform("down0.25")(noisy()).shape == (16, 24, 3)
    with pytest.raises(ValueError, match="unknown transform"):
        rb.get_transform("blur3")
