"""hardneg_torch: the hardneg specification in PyTorch — exact, memory linear in the batch.

:func:`hcl_loss` has the reference's signature (spec 1.1: the in-batch, bank and cross layouts, a temperature
that may be a differentiable 0-d tensor) plus ``memory_budget``, ``gather``, ``group``; :class:`HCLLoss` is the
same as an ``nn.Module``, optionally learning the temperature. docs/backends/torch.md is the guide.
"""

from .jsd import jsd_loss
from .loss import hcl_loss
from .module import HCLLoss

__all__ = ["hcl_loss", "HCLLoss", "jsd_loss"]
