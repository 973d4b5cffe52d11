"""User mistakes caught before any work starts: before Ray starts, before DST is created.

`preflight(src, settings)` raises `UsageError` (the CLI prints one line and exits 2) for a SRC
that does not exist or lists no photos (unless `allow_empty`), a missing or unreadable
`--model`, a surrogate that is not installed, an unreadable universal perturbation, and option
combinations no attack can run with. It reads only the first listing entry of SRC, the model
files' existence (and, for a classifier `--model`, the checkpoint itself: one small file).
"""

from __future__ import annotations

from facepriv.errors import FacePrivError, UsageError
from facepriv.io.archive import Archive

CLASSIFIER_ATTACKS = ("fgsm", "pgd")


def preflight(src: Archive, settings, allow_empty: bool = False) -> None:
    check_source(src, allow_empty)
    check_attack(settings)


def check_source(src: Archive, allow_empty: bool = False) -> None:
    shown = src.url
    try:
        exists = src.fs.isdir(src.root) or (not src.is_local and src.fs.exists(src.root))
    except Exception as e:  # noqa: BLE001 - a storage error is the user's to fix (credentials, endpoint)
        raise UsageError(f"SRC {shown} cannot be read ({type(e).__name__}: {e}); check the path, "
                         "--s3-endpoint and the AWS credentials") from None
    if not exists:
        raise UsageError(f"SRC {shown} does not exist (a local folder or s3://bucket/prefix of photos)")
    if not allow_empty and next(iter(src.list_images()), None) is None:
        raise UsageError(f"SRC {shown} holds no photos (.jpg, .png, .webp, ... in it or its sub-folders); "
                         "pass --allow-empty to run anyway")


def check_attack(settings) -> None:
    attack = settings.attack
    if attack in CLASSIFIER_ATTACKS and not settings.model:
        raise UsageError(f"--attack {attack} needs --model, a classifier checkpoint from `facepriv train` "
                         "(or use --preset protect: label-free, on pretrained surrogates, no model)")
    if settings.target is not None and attack not in CLASSIFIER_ATTACKS:
        raise UsageError(f"--target applies to --attack fgsm / pgd (a classifier's class), not {attack}")
    if settings.model:
        _check_model(settings.model, need_classifier=attack in CLASSIFIER_ATTACKS)
    if attack == "embed-pgd":
        _check_surrogates(settings.surrogate)
    if attack == "uap":
        _check_perturbation((settings.extra or {}).get("uap"))
        if getattr(settings, "top_up", 0):
            _check_surrogates(settings.surrogate)


def _check_model(path: str, need_classifier: bool) -> None:
    import fsspec

    try:
        fs, p = fsspec.core.url_to_fs(path)
        found = fs.isfile(p)
    except Exception:  # noqa: BLE001
        found = False
    if not found:
        raise UsageError(f"--model {path}: no such file (train one with `facepriv train DATA_DIR --out model.pt`)")
    if need_classifier:
        from facepriv.models.checkpoint import load_checkpoint

        try:
            loaded = load_checkpoint(path, "cpu")
        except FacePrivError as e:
            raise UsageError(f"--model {path}: {e}") from None
        kind = getattr(loaded.model, "kind", "classifier")
        if kind != "classifier":
            raise UsageError(f"--model {path} is a {kind!r} model; fgsm / pgd need a classifier from `facepriv "
                             "train` (for face-embedding surrogates use --attack embed-pgd --surrogate)")


def _check_surrogates(surrogate: str | None) -> None:
    from facepriv.models.store import parse_specs, resolve

    specs = parse_specs(surrogate)
    if not specs:
        raise UsageError("--attack embed-pgd needs --surrogate NAMES (installed names, .pt or TF.js .json paths; "
                         "see `facepriv models install`), or use --preset protect")
    for spec in specs:
        try:
            resolve(spec)
        except FacePrivError as e:
            raise UsageError(str(e)) from None


def _check_perturbation(path: str | None) -> None:
    if not path:
        raise UsageError("--attack uap needs --perturbation PATH (a perturbation from `facepriv uap fit`)")
    from facepriv.io.perturbation import describe

    describe(path)
