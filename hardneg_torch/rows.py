"""Per-anchor terms of the objective from an anchor row's streaming statistics (docs/spec.md, sections 5 and 8).

Each function here works on vectors with one entry per anchor (a row block), in the compute dtype.
The (anchors x candidates) work happens in :mod:`hardneg_torch.blocks`; this module turns a row's
maximum m, the shifted sums S1, S0, its count M and its positive logit a into the loss and the
scalars the gradient needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

__all__ = ["Hyper", "log1mexp", "resolvable_beta", "row_terms"]


@dataclass(frozen=True)
class Hyper:
    """The hyper-parameters the kernels use, with ``estimator="easy"`` already mapped to hard with
    ``beta = tau_plus = 0`` and ``clamp = False`` (spec section 4)."""

    temperature: float
    beta: float
    tau_plus: float
    clamp: bool

    @staticmethod
    def from_call(temperature, beta, tau_plus, estimator, clamp) -> "Hyper":
        if estimator == "easy":
            return Hyper(float(temperature), 0.0, 0.0, False)
        return Hyper(float(temperature), float(beta), float(tau_plus), bool(clamp))


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x <= 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _softplus(x: torch.Tensor) -> torch.Tensor:
    # logaddexp(0, x) keeps every digit for large x, unlike F.softplus's linear threshold.
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))


def resolvable_beta(beta: float, dtype: torch.dtype) -> float:
    """``beta``, or 0 where it is below ``dtype``'s smallest normal number: there it would round to 0 and turn a
    masked ``-inf`` logit into ``-inf * 0 = NaN``, while every finite ``beta * (s - m)`` is below the dtype's
    resolution, so ``e^{beta (s - m)} = 1``: the beta = 0 case."""
    return 0.0 if 0.0 < beta < torch.finfo(dtype).tiny else beta


def row_terms(
    m: torch.Tensor,
    s1: Optional[torch.Tensor],
    s0: Optional[torch.Tensor],
    count: torch.Tensor,
    a: torch.Tensor,
    hp: Hyper,
    t=None,
    want_floor: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    r"""Loss, dloss/da, rho and (optionally) dloss/dlf of each anchor row.

    Parameters
    ----------
    m : (b,) tensor
        Maximum of the anchor's negative logits :math:`s_{ij}` (already 0 for rows without negatives).
    s1, s0 : (b,) tensors or None
        :math:`S_1 = \sum_j e^{(1+\beta)(s_{ij}-m)}` and :math:`S_0 = \sum_j e^{\beta(s_{ij}-m)}`;
        unused (None) for beta = inf.
    count : (b,) tensor
        :math:`M_i`, the number of negatives (any real or integer dtype).
    a : (b,) tensor
        Positive logits :math:`a_i`.
    hp : Hyper
    t : float or 0-d tensor, optional
        The temperature (default ``hp.temperature``); a tensor when the temperature is differentiable.
    want_floor : bool
        Also return :math:`\partial\ell_i/\partial lf_i`, the derivative with respect to the log clamp floor
        :math:`lf_i = \log M_i - 1/t` (nonzero only where the floor binds), for d loss / d t.

    Returns
    -------
    loss : (b,) :math:`\ell_i` (0 where :math:`M_i = 0`, NaN where undefined).
    da : (b,) :math:`\partial\ell_i/\partial a_i`.
    rho : (b,) :math:`\rho_i`, so that :math:`\partial\ell_i/\partial s_{ij} = \rho_i w_{ij}`
        (0 on the clamp's floor and where :math:`M_i = 0`).
    dlf : (b,) :math:`\partial\ell_i/\partial lf_i` if ``want_floor``, else None.
    """
    if t is None:
        t = hp.temperature
    dt = a.dtype
    has = count > 0
    one = torch.ones((), dtype=dt, device=a.device)
    log_m = torch.log(torch.where(has, count.to(dt), one))
    if math.isinf(hp.beta):
        lr = log_m + m
    else:
        lr = log_m + m + torch.log(torch.where(has, s1, one)) - torch.log(torch.where(has, s0.to(dt), one))
    tau = hp.tau_plus
    log1m_tau = math.log1p(-tau)
    if tau > 0.0:
        x = (math.log(tau) + log_m) + a - lr  # log(tau+ M e^a / R)
    else:
        x = torch.full_like(a, -math.inf)
    ng_pos = x < 0.0
    neg_inf = torch.full((), -math.inf, dtype=dt, device=a.device)
    gu = torch.where(ng_pos, lr + log1mexp(torch.clamp_max(x, 0.0)) - log1m_tau, neg_inf)  # log Ng^u
    if hp.clamp:
        lf = log_m - 1.0 / t  # log of the floor M e^{-1/t}
        floor = gu < lf  # the tie takes the unclamped branch, as torch.clamp's gradient does
        loss = _softplus(torch.where(floor, lf, gu) - a)
        log_d = a + loss
        rho = torch.where(floor, 0.0, torch.exp(lr - log1m_tau - log_d))
        d_floor = torch.exp(lf - log_d)
        da = torch.where(floor, -d_floor, -rho)
        dlf = torch.where(floor & has, d_floor, 0.0) if want_floor else None
    else:
        if tau > 0.0:
            log_np = (math.log(tau) + log_m) + a + log1mexp(-torch.clamp_min(x, 0.0))
        else:
            log_np = torch.full_like(a, -math.inf)
        y = log_np - log1m_tau - a
        nan = torch.full((), math.nan, dtype=dt, device=a.device)
        loss_neg = torch.where(y < 0.0, log1mexp(torch.clamp_max(y, 0.0)), nan)  # D <= 0: undefined
        loss = torch.where(ng_pos, _softplus(gu - a), loss_neg)
        rho = torch.exp(lr - log1m_tau - (a + loss))
        da = -rho
        dlf = torch.zeros_like(a) if want_floor else None
    zero = torch.zeros((), dtype=dt, device=a.device)
    return torch.where(has, loss, zero), torch.where(has, da, zero), torch.where(has, rho, zero), dlf
