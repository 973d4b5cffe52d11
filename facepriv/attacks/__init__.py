"""Attacks: pure, batched torch functions in pixel space. Inputs x are in [0, 1]; eps and
step sizes are given in 0-255 units, as users think of them. One attack per module.
"""

from .fgsm import fgsm
from .pgd import pgd

ATTACKS = ("fgsm", "pgd")

__all__ = ["fgsm", "pgd", "ATTACKS"]
