"""Attacks: pure, batched torch functions in pixel space. Inputs x are in [0, 1]; eps and
step sizes are given in 0-255 units, as users think of them. One attack per module.
"""

from facepriv.attacks.deepfool import DeepFoolResult, deepfool
from facepriv.attacks.fgsm import fgsm
from facepriv.attacks.pgd import pgd
from facepriv.attacks.uap import (
    ShardResult,
    fooling_rate,
    merge_updates,
    pass_seed,
    project,
    uap_pass_shard,
    universal_perturbation,
)

ATTACKS = ("fgsm", "pgd")  # per-image attacks; the universal perturbation is applied as "uap"

__all__ = ["fgsm", "pgd", "deepfool", "DeepFoolResult", "universal_perturbation", "uap_pass_shard",
           "ShardResult", "merge_updates", "project", "fooling_rate", "pass_seed", "ATTACKS"]
