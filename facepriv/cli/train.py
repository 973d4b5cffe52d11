"""`facepriv train DATA_DIR --out model.pt`: the paper's surrogate classifier."""

from __future__ import annotations

import argparse

from facepriv.cli.options import add_io_options


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a surrogate face classifier on DATA_DIR/<identity>/<photos>",
                       description="Crop faces with MTCNN, hold out a seeded validation split, train a "
                                   "surrogate classifier and save one checkpoint (weights + metadata).")
    t.add_argument("data_dir", help="folder (or s3:// prefix) with one sub-folder of photos per identity")
    t.add_argument("--out", default="model.pt", help="checkpoint to write (default model.pt)")
    t.add_argument("--arch", default="paper-cnn", choices=["paper-cnn", "inception-resnet-v1"],
                   help="paper-cnn: the paper's Fig. 6 CNN; inception-resnet-v1: facenet-pytorch's network "
                        "with a classification head (default paper-cnn)")
    t.add_argument("--pretrained", default=None,
                   help="local state_dict for inception-resnet-v1 (e.g. facenet-pytorch vggface2 weights)")
    t.add_argument("--freeze-backbone", action="store_true", help="train only the classification head")
    t.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    t.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    t.add_argument("--val-fraction", type=float, default=0.2, help="held-out share per identity (default 0.2)")
    t.add_argument("--seed", type=int, default=0, help="seed for the split and training (default 0)")
    t.add_argument("--aug-shift", type=float, default=0.1,
                   help="augmentation: move each training crop's centre by up to this fraction of its side "
                        "(default 0.1; a model that tolerates the 1-3 px a re-detected box moves keeps cloaks "
                        "crafted on it fooling it in the written file)")
    t.add_argument("--aug-scale", type=float, default=0.15,
                   help="augmentation: scale each training crop by 1 +- this (default 0.15)")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_io_options(t)
    t.set_defaults(func=cmd_train)



def cmd_train(args: argparse.Namespace) -> int:
    from facepriv.pipeline.train import TrainSettings, train

    s = TrainSettings(arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      val_fraction=args.val_fraction, seed=args.seed, pretrained=args.pretrained,
                      freeze_backbone=args.freeze_backbone, device=args.device,
                      aug_shift=args.aug_shift, aug_scale=args.aug_scale)
    train(args.data_dir, args.out, s, s3_endpoint=args.s3_endpoint, progress=not args.no_progress,
          retries=args.retries)
    return 0
