"""``HCLLoss``: :func:`hardneg_torch.hcl_loss` as an ``nn.Module`` holding the hyper-parameters."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from hardneg.loss_settings import HCLLossSettings

from .loss import hcl_loss

__all__ = ["HCLLoss"]


class HCLLoss(HCLLossSettings, nn.Module):
    r"""Hard-negative contrastive loss (Robinson et al., ICLR 2021) as a module, optionally learning t.

    Holds the hyper-parameters of :func:`hardneg_torch.hcl_loss` (validated at construction with the
    shared messages). The attributes may be changed between steps, e.g. ``loss_fn.beta = new_beta`` for the
    released code's beta annealing; they are validated again on every call. By default the module has no
    parameters or buffers; with ``learn_temperature=True`` it holds one parameter, ``logit_scale``.

    **Learnable temperature** (as CLIP learns its logit scale): ``learn_temperature=True`` stores
    ``logit_scale = log(1 / temperature)`` as a 0-d ``nn.Parameter`` (in torch's default dtype, like the
    weights of ``nn.Linear``; ``.double()`` etc. convert it)
    and uses ``t = exp(-logit_scale)`` — or ``max(exp(-logit_scale), min_temperature)`` with a minimum — on every
    call, with its exact gradient (d loss / d t in closed form, spec section 8). Put the module's parameters in
    the optimiser (``optimizer = Adam([*model.parameters(), *loss_fn.parameters()])``); under
    DistributedDataParallel keep the module replicated (e.g. a submodule of the wrapped model, so that its
    gradient is averaged like the model's). Learning in log space keeps t > 0 and makes steps relative.

    Parameters
    ----------
    temperature : float, default 0.5
        t > 0; with ``learn_temperature=True``, the initial temperature.
    beta : float, default 1.0
        Hardness, >= 0; ``math.inf`` allowed (worst-case negatives); 0 is the debiased loss.
    tau_plus : float, default 0.1
        Class prior for debiasing, 0 <= tau_plus < 1.
    estimator : {"hard", "easy"}, default "hard"
        "easy" is NT-Xent / InfoNCE (beta, tau_plus and clamp are ignored).
    clamp : bool, default True
        Floor Ng at M e^{-1/t} (the released code's "constrain"; hard estimator only).
    normalize : bool, default True
        Normalise the rows of the inputs (u = z / max(||z||, 1e-12)); False uses them as given.
    reduction : {"mean", "sum", "none"}, default "mean"
        How the anchors' losses are reduced ("none": one loss per anchor).
    layout : {None, "in_batch", "bank", "cross"}, default None
        Which samples are anchors and candidates (see :func:`hardneg_torch.hcl_loss`); None is spec 1.0
        (in-batch without a bank, bank with one).
    symmetric : bool, default True
        Cross layout only: also use z2's rows as anchors against z1's rows (CLIP's two directions).
    memory_budget : int, optional
        Bytes of transient working memory for the blocked computation (default 32 MiB on CPU; on CUDA
        min(2 GiB, total device memory / 16), see :mod:`hardneg.budget`).
    gather : bool, default False
        Gather the batch from every rank of ``group`` (see :func:`hardneg_torch.hcl_loss`).
    group : torch.distributed.ProcessGroup, optional
        Process group for ``gather`` (default: the default group).
    learn_temperature : bool, default False
        Learn the temperature: hold ``logit_scale = log(1/temperature)`` as a parameter (see above).
    min_temperature : float, optional
        With ``learn_temperature``, the smallest temperature used: the logit scale is clamped at
        ``log(1/min_temperature)`` in the forward pass (no gradient reaches ``logit_scale`` while the clamp
        holds, as with ``torch.clamp``). CLIP caps its logit scale at 100, i.e. ``min_temperature=0.01``.
        None: no minimum.

    Attributes
    ----------
    logit_scale : torch.nn.Parameter or None
        ``log(1/t)``, 0-d, when ``learn_temperature=True``; otherwise None.

    Examples
    --------
    >>> loss_fn = HCLLoss(temperature=0.5, beta=1.0, tau_plus=0.1)
    >>> z1, z2 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
    >>> loss = loss_fn(z1, z2)
    >>> loss.backward()

    A CLIP-style objective with hard negatives and a learned temperature:

    >>> clip_fn = HCLLoss(temperature=0.07, layout="cross", learn_temperature=True, min_temperature=0.01)
    >>> clip_fn(z1, z2).backward()
    >>> clip_fn.logit_scale.grad is not None
    True
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
        layout: Optional[str] = None,
        symmetric: bool = True,
        memory_budget: Optional[int] = None,
        gather: bool = False,
        group=None,
        learn_temperature: bool = False,
        min_temperature: Optional[float] = None,
    ) -> None:
        super().__init__()
        self._hold_settings(temperature=temperature, beta=beta, tau_plus=tau_plus, estimator=estimator, clamp=clamp,
                            normalize=normalize, reduction=reduction, layout=layout, symmetric=symmetric,
                            memory_budget=memory_budget, gather=gather, learn_temperature=learn_temperature,
                            min_temperature=min_temperature)
        self.group = group
        if learn_temperature:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / float(temperature))))
        else:
            self.register_parameter("logit_scale", None)

    def effective_temperature(self):
        """The temperature the next call uses: ``exp(-logit_scale)`` (clamped at ``min_temperature``) as a 0-d
        tensor when learning it, else the ``temperature`` attribute."""
        if self.logit_scale is None:
            return self.temperature
        scale = self.logit_scale
        if self.min_temperature is not None:
            scale = scale.clamp(max=math.log(1.0 / self.min_temperature))
        return torch.exp(-scale)

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
            Samples sharing the anchor's label are removed from its negatives.
        negative_labels : torch.Tensor of int, shape (K,) or (B, K), optional
            Labels of the bank rows; required with ``labels`` when a bank is given.

        Returns
        -------
        torch.Tensor
            Scalar, or (n_anchors,) for ``reduction="none"``, in z1's dtype.
        """
        kwargs = self.call_kwargs()
        kwargs["temperature"] = self.effective_temperature()
        return hcl_loss(z1, z2, negatives=negatives, labels=labels, negative_labels=negative_labels,
                        group=self.group, **kwargs)

    def extra_repr(self) -> str:
        return self.settings_repr()
