"""hardneg_jax: the hard-negative contrastive loss (spec 1.1) in JAX — jit/grad/vmap-native, blockwise, custom VJP.

``hcl_loss`` has the signature of :func:`hardneg.hcl_loss` plus the JAX extras ``memory_budget`` and
``axis_name``. The anchors are walked in row blocks with ``lax.scan``, so memory is linear in the batch; the
gradient is the spec's closed form (``jax.custom_vjp``). See docs/backends/jax.md.
"""

from .blocks import DEFAULT_MEMORY_BUDGET
from .jsd import jsd_loss
from .loss import hcl_loss

__all__ = ["hcl_loss", "DEFAULT_MEMORY_BUDGET", "jsd_loss"]
