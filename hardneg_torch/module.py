"""``HCLLoss``: :func:`hardneg_torch.hcl_loss` as an ``nn.Module`` holding the hyper-parameters."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from hardneg.validation import check_hyperparameters

from .checks import check_memory_budget
from .loss import hcl_loss

__all__ = ["HCLLoss"]


class HCLLoss(nn.Module):
    r"""Hard-negative contrastive loss (Robinson et al., ICLR 2021) as a module.

    Holds the hyper-parameters of :func:`hardneg_torch.hcl_loss` (validated at construction with the
    shared messages) and has no parameters or buffers. The attributes may be changed between steps, e.g.
    ``loss_fn.beta = new_beta`` for the released code's beta annealing; they are validated again on every call.

    Parameters
    ----------
    temperature : float, default 0.5
    beta : float, default 1.0
    tau_plus : float, default 0.1
    estimator : {"hard", "easy"}, default "hard"
    clamp : bool, default True
    normalize : bool, default True
    reduction : {"mean", "sum", "none"}, default "mean"
    memory_budget : int, optional
        Bytes of transient working memory (default 32 MiB).
    gather : bool, default False
        Gather the batch from every rank of ``group`` (see :func:`hardneg_torch.hcl_loss`).
    group : torch.distributed.ProcessGroup, optional

    Examples
    --------
    >>> loss_fn = HCLLoss(temperature=0.5, beta=1.0, tau_plus=0.1)
    >>> z1, z2 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
    >>> loss = loss_fn(z1, z2)
    >>> loss.backward()
    """

    def __init__(
        self,
        temperature: float = 0.5,
        beta: float = 1.0,
        tau_plus: float = 0.1,
        estimator: str = "hard",
        clamp: bool = True,
        normalize: bool = True,
        reduction: str = "mean",
        memory_budget: Optional[int] = None,
        gather: bool = False,
        group=None,
    ) -> None:
        super().__init__()
        check_hyperparameters(temperature=temperature, beta=beta, tau_plus=tau_plus, estimator=estimator,
                              clamp=clamp, normalize=normalize, reduction=reduction)
        check_memory_budget(memory_budget)
        self.temperature = temperature
        self.beta = beta
        self.tau_plus = tau_plus
        self.estimator = estimator
        self.clamp = clamp
        self.normalize = normalize
        self.reduction = reduction
        self.memory_budget = memory_budget
        self.gather = gather
        self.group = group

    def forward(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        negatives: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        negative_labels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The loss of a batch.

        Parameters
        ----------
        z1, z2 : torch.Tensor, shape (B, d)
            The two views' embeddings (row k of each is a positive pair).
        negatives : torch.Tensor, shape (K, d) or (B, K, d), optional
            An explicit bank of negatives.
        labels : torch.Tensor of int, shape (B,), optional
        negative_labels : torch.Tensor of int, shape (K,) or (B, K), optional

        Returns
        -------
        torch.Tensor
            Scalar, or (n_anchors,) for ``reduction="none"``, in z1's dtype.
        """
        return hcl_loss(
            z1,
            z2,
            temperature=self.temperature,
            beta=self.beta,
            tau_plus=self.tau_plus,
            estimator=self.estimator,
            clamp=self.clamp,
            normalize=self.normalize,
            negatives=negatives,
            labels=labels,
            negative_labels=negative_labels,
            reduction=self.reduction,
            memory_budget=self.memory_budget,
            gather=self.gather,
            group=self.group,
        )

    def extra_repr(self) -> str:
        keys = ("temperature", "beta", "tau_plus", "estimator", "clamp", "normalize", "reduction")
        s = ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)
        if self.memory_budget is not None:
            s += f", memory_budget={self.memory_budget}"
        if self.gather:
            s += ", gather=True"
        return s
