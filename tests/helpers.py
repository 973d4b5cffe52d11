"""Small helpers shared by the test modules."""

from __future__ import annotations

import contextlib
import os

import numpy as np

from facepriv.core import geometry


def random_checkpoint(path: str, classes: list[str], seed: int = 0) -> str:
    """Save a random-weight paper-cnn checkpoint (for tests that need a model, not a trained one)."""
    import torch

    from facepriv.models.checkpoint import save_checkpoint
    from facepriv.models.registry import build_model

    torch.manual_seed(seed)
    save_checkpoint(path, build_model("paper-cnn", len(classes)), "paper-cnn", classes)
    return path


def backdoor_toy(size: int = 8, n: int = 60):
    """A tiny classifier with a planted universal direction: 3 clean classes plus a 4th class
    trained on faces shifted by u, so a perturbation like u fools most faces. Returns
    (net, held-out clean faces (n, 3, size, size) in [0, 1], their labels, u)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(0)
    means = torch.rand(3, 3, size, size, generator=g) - 0.5
    u = 0.05 * torch.sign(torch.randn(3, size, size, generator=g))

    def sample(m):
        yy = torch.arange(m) % 3
        return (0.5 + 0.3 * means[yy] + 0.1 * torch.randn(m, 3, size, size, generator=g)).clamp(0, 1), yy

    xc, yc = sample(2 * n)
    xs, _ = sample(n)
    xtr = torch.cat([xc[:n], (xs + u).clamp(0, 1)])
    ytr = torch.cat([yc[:n], torch.full((n,), 3)])
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * size * size, 4))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(net(xtr), ytr).backward()
        opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, xc[n:], yc[n:], u


@contextlib.contextmanager
def moto_s3(credentials: dict[str, str]):
    """A moto S3 server on 127.0.0.1 (random port) with dummy `credentials` in the environment;
    yields (endpoint, boto3 client). AWS_ENDPOINT_URL(_S3) are cleared while it runs, and every
    variable it touched is restored afterwards."""
    import boto3
    from moto.server import ThreadedMotoServer

    names = [*credentials, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(credentials)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        yield endpoint, boto3.client("s3", endpoint_url=endpoint)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- fakes for the report tests ----------------------------------------------------------------
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "lfw")


class HighFreqJudge:
    """A fake judge: mean colour of the face box (x10) and its horizontal high-frequency energy.
    A fine checkerboard 'cloak' moves the embedding far away; a 0.5 downscale removes it."""

    name = "fake"
    metric = "euclidean"
    threshold = 0.6

    def embed(self, image, faces):
        out = []
        for f in faces:
            x0, y0, x1, y1 = (int(round(float(v))) for v in np.asarray(f["box"])[:4])
            c = image[max(y0, 0):y1, max(x0, 0):x1].astype(np.float64)
            hf = np.abs(np.diff(c.mean(2), axis=1)).mean()
            out.append(np.r_[c.reshape(-1, 3).mean(0) / 255 * 10, hf / 20])
        return np.array(out, np.float32).reshape(len(faces), 4)


class NoiseSurrogate:
    """A fake surrogate: says Colin_Powell unless the face is full of pixel-level noise."""

    classes = ["Colin_Powell", "Gerhard_Schroeder"]

    def classify(self, rgb, boxes):
        out = []
        for b in boxes:
            x0, y0, x1, y1 = (int(round(float(v))) for v in b[:4])
            g = rgb[max(y0, 0):y1, max(x0, 0):x1].astype(np.float64).mean(2)
            out.append("Gerhard_Schroeder" if np.abs(np.diff(g, axis=1)).mean() > 20 else "Colin_Powell")
        return out


def checkerboard(rgb, box, amp=30):
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = geometry.face_region(box, w, h)
    out = rgb.astype(np.int32)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    out[y0:y1, x0:x1] += ((((yy + xx) % 2) * 2 - 1) * amp)[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def evaluator(mode="evasion", transforms=("jpeg95", "down0.5"), src=None):
    from facepriv.judges import Gallery
    from facepriv.report.evaluate import Evaluator

    j = HighFreqJudge()
    g = Gallery.from_folder(src, j)
    ev = Evaluator([j], {"fake": g}, mode, list(transforms), "folder", progress=False)
    ev._surrogates["fake.pt"] = NoiseSurrogate()
    return ev
