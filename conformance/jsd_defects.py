"""Planted wrong ``jsd_loss`` implementations: the graph features must reject every one (tests/test_jsd_conformance.py).

:func:`jsd_transliteration` is the released code's arithmetic (joshr17/HCL, graph/losses.py and gan_losses.py
'JSD_hard') transliterated into differentiable PyTorch per node, plus the corrected convention of docs/spec.md
section 14 written directly; the suite accepts it. Each defect is it with one mistake:

=========================  ==================================================================================
name                       mistake
=========================  ==================================================================================
released_sign_flipped      convention="released" with the weight e^{+2 beta q/c}: the paper's sign, not the code's
masked_slots_dropped       convention="released" with the masked slots left out of the sums and of the row mean
detached_weights           the weights detached (``.detach()``): values right, gradients wrong
tau_fixed_in_corrected     convention="corrected" with tau_plus fixed at 0.5 (the released code's stuck default)
=========================  ==================================================================================

PyTorch is imported when a function is called, never at import time.
"""

from __future__ import annotations

import math

from hardneg.validation import check_jsd_batch_values, check_jsd_call

__all__ = ["jsd_transliteration", "released_sign_flipped", "masked_slots_dropped", "tau_fixed_in_corrected",
           "detached_weights", "DEFECTS"]


def _impl(local, graph, batch, beta, tau_plus, convention, reduction, *, sign=-1.0, keep_masked=True,
          fixed_tau=None, detach=False):
    import torch

    class F:  # the released code's F.softplus, made exact (torch's returns x above 20: an error up to 2e-9)
        softplus = staticmethod(lambda x: torch.logaddexp(x, torch.zeros_like(x)))

    dn = lambda x: str(x.dtype).replace("torch.", "")  # noqa: E731
    problem = check_jsd_call(local_shape=tuple(local.shape), graph_shape=tuple(graph.shape),
                             batch_shape=tuple(batch.shape), local_dtype=dn(local), graph_dtype=dn(graph),
                             batch_dtype=dn(batch), beta=beta, tau_plus=tau_plus, convention=convention,
                             reduction=reduction)
    check_jsd_batch_values(int(batch.min()), int(batch.max()), problem.graphs)
    out_dtype = local.dtype
    cdt = torch.float32 if out_dtype in (torch.float16, torch.bfloat16) else out_dtype
    l_enc, g_enc = local.to(cdt), graph.to(cdt)
    num_graphs, num_nodes = g_enc.shape[0], l_enc.shape[0]
    pos_mask = torch.zeros((num_nodes, num_graphs), dtype=cdt)
    neg_mask = torch.ones((num_nodes, num_graphs), dtype=cdt)
    for nodeidx, graphidx in enumerate(batch.tolist()):
        pos_mask[nodeidx][graphidx] = 1.0
        neg_mask[nodeidx][graphidx] = 0.0
    res = torch.mm(l_enc, g_enc.t())
    ok = torch.isfinite(l_enc).all() & torch.isfinite(g_enc).all()
    res = res + torch.where(ok, 0.0, math.nan).to(cdt)
    log_2 = math.log(2.0)
    tau = float(tau_plus) if fixed_tau is None else fixed_tau
    M = num_graphs - 1
    if convention == "released":
        p_samples, q_samples = res * pos_mask, res * neg_mask
        keep_p = torch.ones_like(pos_mask) if keep_masked else pos_mask
        keep_q = torch.ones_like(neg_mask) if keep_masked else neg_mask
        Ep = log_2 - F.softplus(-p_samples) - (tau / (1 - tau)) * (F.softplus(-p_samples) + p_samples)
        if beta == 0:
            Eq = (F.softplus(-q_samples) + q_samples - log_2) / (1 - tau)
        else:
            Eq = F.softplus(-q_samples) + q_samples
            reweight = sign * 2 * q_samples / torch.where(q_samples.max() >= q_samples.min().abs(), q_samples.max(),
                                                          q_samples.min().abs())
            reweight = (beta * reweight).exp() * keep_q
            reweight = reweight / (reweight.sum(dim=1) / keep_q.sum(dim=1)).view(-1, 1)
            reweight = reweight.detach() if detach else reweight
            Eq = reweight * Eq / (1 - tau) - log_2
        terms = (Eq * keep_q).sum(dim=1) / M - (Ep * keep_p).sum(dim=1)
    else:
        a = (res * pos_mask).sum(dim=1)
        neg = neg_mask > 0
        q = torch.where(neg, res, torch.zeros_like(res))
        c = torch.where(q.max() >= q.min().abs(), q.max(), q.min().abs())
        if beta == 0:
            logits = torch.zeros_like(res)
        else:
            on = c > 0
            logits = torch.where(on, 2.0 * beta * q / torch.where(on, c, torch.ones_like(c)), torch.zeros_like(q))
        w = torch.softmax(torch.where(neg, logits, torch.full_like(logits, -math.inf)), dim=1) * M
        w = w.detach() if detach else w
        mean_w = (w * torch.where(neg, F.softplus(q), torch.zeros_like(q))).sum(dim=1) / M
        est = (mean_w - tau * F.softplus(a)) / (1 - tau)
        terms = torch.clamp(est, min=0.0) + F.softplus(-a) - 2 * log_2
    out = terms.mean() if reduction == "mean" else (terms.sum() if reduction == "sum" else terms)
    return out.to(out_dtype)


def jsd_transliteration(local, graph, batch, *, beta=1.0, tau_plus=0.5, convention="released", reduction="mean"):
    """The spec's graph objective in plain differentiable PyTorch (the released code's arithmetic, per node)."""
    return _impl(local, graph, batch, beta, tau_plus, convention, reduction)


def released_sign_flipped(local, graph, batch, *, beta=1.0, tau_plus=0.5, convention="released", reduction="mean"):
    """Defect: the released convention with weights e^{+2 beta q / c}."""
    return _impl(local, graph, batch, beta, tau_plus, convention, reduction, sign=1.0)


def masked_slots_dropped(local, graph, batch, *, beta=1.0, tau_plus=0.5, convention="released", reduction="mean"):
    """Defect: the released convention with the masked slots excluded from every sum and from the row mean."""
    return _impl(local, graph, batch, beta, tau_plus, convention, reduction, keep_masked=False)


def tau_fixed_in_corrected(local, graph, batch, *, beta=1.0, tau_plus=0.5, convention="released",
                           reduction="mean"):
    """Defect: the corrected convention with tau_plus fixed at 0.5 whatever is passed."""
    return _impl(local, graph, batch, beta, tau_plus, convention, reduction,
                 fixed_tau=0.5 if convention == "corrected" else None)


def detached_weights(local, graph, batch, *, beta=1.0, tau_plus=0.5, convention="released", reduction="mean"):
    """Defect: the importance weights detached in both conventions (values right, gradients wrong for beta > 0)."""
    return _impl(local, graph, batch, beta, tau_plus, convention, reduction, detach=True)


DEFECTS = {f.__name__: f for f in (released_sign_flipped, masked_slots_dropped, tau_fixed_in_corrected,
                                   detached_weights)}
