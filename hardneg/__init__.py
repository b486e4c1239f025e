"""hardneg: contrastive learning with hard negative samples — the reference definition.

The NumPy reference of the HCL objective (Robinson, Chuang, Sra, Jegelka, ICLR 2021), which contains the
debiased contrastive loss (Chuang et al., NeurIPS 2020) and NT-Xent/InfoNCE as special cases.
docs/spec.md is the written contract; this package never imports a deep-learning framework.
Framework backends live in ``hardneg_torch``, ``hardneg_jax`` and ``hardneg_tf``.
"""

from .reference import Grads, hcl_loss, hcl_loss_and_grad
from .jsd import JsdGrads, jsd_loss, jsd_loss_and_grad
from .validation import UNKNOWN, Problem, check_call

#: Version of docs/spec.md that this reference implements.
SPEC_VERSION = "1.1"
__version__ = "0.4.0"

__all__ = [
    "SPEC_VERSION", "hcl_loss", "hcl_loss_and_grad", "Grads", "check_call", "Problem", "UNKNOWN",
    "jsd_loss", "jsd_loss_and_grad", "JsdGrads",
]
