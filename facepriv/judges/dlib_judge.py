"""dlib's ResNet face recogniser as an independent judge (never a crafting model).

Detection is shared (the face rectangle is MTCNN's box), but dlib aligns and embeds by
itself: its own 5-point shape predictor on that rectangle, `get_face_chips` (150x150,
padding 0.25) and `dlib_face_recognition_resnet_model_v1`, 128-d, euclidean, threshold 0.6.
Model files come from the `face-recognition-models` package (see DEVELOPERS.md).

The descriptors are computed by `facepriv.judges.dlib_net.DlibResNet`: dlib's network and weights,
read from the same .dat file and run by torch (the same numbers to 1e-6, ~15x faster than
dlib-bin's CPU build). With `num_jitters > 1` dlib's own `compute_face_descriptor` does it (its
jittering is dlib's).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

import numpy as np

from facepriv.errors import UsageError
from facepriv.judges.base import Face, check_image

SHAPE_PREDICTOR = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
INSTALL_HINT = "install them with `pip install 'facepriv[dlib]'` (dlib-bin, face-recognition-models)"


def models_dir() -> str:
    """Folder holding dlib's .dat files, from `face-recognition-models`, without importing it
    (its __init__ needs pkg_resources). $FACEPRIV_DLIB_MODELS overrides."""
    env = os.environ.get("FACEPRIV_DLIB_MODELS")
    if env:
        return env
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the dlib judge needs the face-recognition-models package; {INSTALL_HINT}")
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


class DlibJudge:
    """`embed(rgb uint8 (H,W,3), faces) -> (n, 128) float32`."""

    name = "dlib"
    metric = "euclidean"
    # dlib's published 0.6. `python benchmarks/calibrate_judge.py dlib ../shared/data/lfw50` (central
    # faces of the 750 photos; all 5250 same-identity pairs vs 5250 sampled different ones, seed 0):
    # best accuracy at 0.611 (0.9885, FAR 0.0091, FRR 0.0139); at 0.6: 0.9868, FAR 0.0057, FRR 0.0208;
    # rank-1 identification (gallery: first 10 per identity, probes: last 5) 0.996. Kept at 0.6.
    threshold = 0.6
    chip_size = 150
    padding = 0.25

    def __init__(self, model_dir: str | None = None, num_jitters: int = 0):
        try:
            import dlib
        except ImportError:
            raise UsageError(f"the dlib judge needs dlib; {INSTALL_HINT}") from None
        d = model_dir or models_dir()
        paths = [os.path.join(d, SHAPE_PREDICTOR), os.path.join(d, RECOGNITION_MODEL)]
        for p in paths:
            if not os.path.isfile(p):
                raise UsageError(f"dlib model file {p!r} not found; {INSTALL_HINT}")
        self._dlib = dlib
        self.shape_predictor = dlib.shape_predictor(paths[0])
        self.num_jitters = int(num_jitters)
        if self.num_jitters > 1:
            self.recogniser = dlib.face_recognition_model_v1(paths[1])
        else:
            from facepriv.judges.dlib_net import DlibResNet

            self.net = DlibResNet(paths[1])

    def __repr__(self) -> str:
        return f"DlibJudge(metric={self.metric!r}, threshold={self.threshold})"

    def rectangle(self, box, shape) -> "object":
        """MTCNN box (x0, y0, x1, y1) -> dlib.rectangle clipped to the image."""
        h, w = shape[:2]
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box, np.float64)[:4])
        x0, y0 = max(0, int(round(x0))), max(0, int(round(y0)))
        x1, y1 = min(w - 1, int(round(x1))), min(h - 1, int(round(y1)))
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"empty face box {tuple(np.asarray(box)[:4])} in a {w}x{h} image")
        return self._dlib.rectangle(x0, y0, x1, y1)

    def shapes(self, image: np.ndarray, faces: Sequence[Face]):
        """dlib's own 5 landmarks for each face, as a `full_object_detections`."""
        img = check_image(image)
        dets = self._dlib.full_object_detections()
        for f in faces:
            dets.append(self.shape_predictor(img, self.rectangle(f["box"], img.shape)))
        return dets

    def chips(self, image: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]:
        """The aligned 150x150 RGB chips dlib embeds (useful for report panels)."""
        img = check_image(image)
        if not faces:
            return []
        return list(self._dlib.get_face_chips(img, self.shapes(img, faces), size=self.chip_size, padding=self.padding))

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        chips = self.chips(image, faces)
        if not chips:
            return np.zeros((0, 128), np.float32)
        if self.num_jitters > 1:
            vecs = self.recogniser.compute_face_descriptor(chips, self.num_jitters)
            return np.array([np.asarray(v) for v in vecs], dtype=np.float32).reshape(len(chips), 128)
        return self.net(np.stack(chips)).numpy().astype(np.float32, copy=False)
