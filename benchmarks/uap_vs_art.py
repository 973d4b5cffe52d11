"""Universal perturbation: facepriv (facepriv.attacks.uap, single process) against ART's
`UniversalPerturbation` (attacker "deepfool"), same faces, model, xi, delta, norm, passes.

    python benchmarks/uap_vs_art.py --crops v.crops.parquet --model model.pt --xi 10 --delta 0.2

Needs `pip install -e .[bench]` (adversarial-robustness-toolbox). The crops come from a crops
dataset (`facepriv uap fit` writes OUT's stem + .crops.parquet; or pass --data DIR to extract
one). Both run one after the other in this process with the same torch thread count; both
fooling rates are measured the same way afterwards (facepriv.attacks.uap.fooling_rate of each
v on the same faces, prediction changed vs the clean prediction), next to ART's own figure.
DeepFool settings are matched: overshoot 0.02 (ART `epsilon`), 50 iterations, 10 candidate
classes (ART `nb_grads`), one face at a time (ART's loop; facepriv --face-batch 1).
Not a test: timings vary with the machine; only the ratio measured in one run means anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from facepriv.pipeline import crops as crops_mod  # noqa: E402
from facepriv.attacks.uap import clean_predictions, fooling_rate, universal_perturbation  # noqa: E402
from facepriv.models.checkpoint import load_checkpoint  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="classifier checkpoint from `facepriv train`")
    p.add_argument("--crops", required=True, help="crops dataset (Parquet); created from --data when missing")
    p.add_argument("--data", default=None, help="DATA_DIR/<identity>/<photos> to extract --crops from")
    p.add_argument("--xi", type=float, default=10.0, help="||v||_p bound, 0-255 units (default 10)")
    p.add_argument("--delta", type=float, default=0.2, help="stop at fooling rate 1 - delta (default 0.2)")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--max-passes", type=int, default=5, help="passes for both (ART max_iter) (default 5)")
    p.add_argument("--limit", type=int, default=0, help="use the first N faces (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads for both (default 1)")
    args = p.parse_args(argv)

    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.model, "cpu")
    model = loaded.model
    size = int(model.input_size)
    c = crops_mod.load_or_extract(args.data, args.crops, size) if args.data else crops_mod.load(args.crops)
    faces = c.floats()
    if args.limit:
        faces = faces[: args.limit]
    n = len(faces)
    clean = clean_predictions(model, faces)
    print(f"{n} faces {size}x{size}, {len(loaded.classes)} classes, xi {args.xi:g} ({args.norm}), "
          f"delta {args.delta:g}, max passes {args.max_passes}, {args.threads} torch thread(s)")

    t = time.perf_counter()
    v_fp, hist = universal_perturbation(model, faces, xi=args.xi, norm=args.norm, delta=args.delta,
                                        max_passes=args.max_passes, overshoot=0.02, max_iter_df=50,
                                        num_candidates=10, seed=args.seed, batch_size=1, clean_pred=clean)
    t_fp = time.perf_counter() - t
    fr_fp = fooling_rate(model, faces, v_fp, clean)

    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, size, size),
                            nb_classes=len(loaded.classes), clip_values=(0.0, 1.0), device_type="cpu")
    import random

    random.seed(args.seed)
    np.random.seed(args.seed)
    art = UniversalPerturbation(clf, attacker="deepfool",
                                attacker_params={"epsilon": 0.02, "max_iter": 50, "nb_grads": 10, "verbose": False},
                                delta=args.delta, max_iter=args.max_passes, eps=args.xi / 255.0,
                                norm=np.inf if args.norm == "linf" else 2, batch_size=32, verbose=False)
    x = faces.numpy().astype(np.float32)
    t = time.perf_counter()
    art.generate(x)
    t_art = time.perf_counter() - t
    v_art = torch.from_numpy(np.asarray(art.noise, np.float32)[0])
    fr_art = fooling_rate(model, faces, v_art, clean)

    rates = ", ".join(f"{h['fooling_rate']:.3f}" for h in hist)
    print(f"facepriv: fooling rate {fr_fp:.3f} after {len(hist)} pass(es) "
          f"({rates}), {t_fp:.1f}s")
    print(f"ART     : fooling rate {fr_art:.3f} (ART reports {art.fooling_rate:.3f}, converged "
          f"{art.converged}), {t_art:.1f}s")
    print(f"fooling rate facepriv - ART: {fr_fp - fr_art:+.3f}; wall time ART / facepriv: {t_art / t_fp:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
