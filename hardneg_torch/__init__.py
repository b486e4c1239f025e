"""hardneg_torch: the hardneg specification in PyTorch — exact, memory linear in the batch.

:func:`hcl_loss` has the reference's signature (plus ``memory_budget``, ``gather``, ``group``);
:class:`HCLLoss` is the same as an ``nn.Module``. docs/backends/torch.md is the guide.
"""

from .loss import hcl_loss
from .module import HCLLoss

__all__ = ["hcl_loss", "HCLLoss"]
