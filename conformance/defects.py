"""Planted wrong implementations: the suite must reject every one (tests/test_conformance_defects.py).

Each is the straightforward differentiable PyTorch transliteration of the spec (:func:`transliteration`, which
the suite accepts) with one classic mistake, most of them seen in the paper's pseudo-code or in public ports:

=======================  ==========================================================================================
name                     mistake
=======================  ==========================================================================================
pseudocode_mean_neg      importance weights normalised by mean(neg) instead of mean(imp) (appendix pseudo-code)
beta_multiplies          imp = beta * neg instead of neg ** beta (pseudo-code typo; right only at beta = 1)
detached_weights         the importance weights detached: values right, gradients wrong
clamp_without_M          floor e^{-1/t} instead of M e^{-1/t}
partner_in_negatives     the positive partner left among the anchor's negatives
beta_on_cosine           imp = exp(beta * cos) instead of exp(beta * cos / t)
one_direction            only z1's rows are anchors (half the symmetric loss)
raw_exp                  raw exp arithmetic of the released code: overflows in float32 at small t
no_normalization         rows used unnormalised even when normalize=True
positive_in_own_negs     cross layout: the positive z2[i] kept among anchor z1[i]'s negatives (spec 1.1)
reverse_uses_bank        cross layout: the reverse direction's anchors also score the bank (spec 1.1)
dt_without_floor         d loss / d t through the logits only: the clamp floor M e^{-1/t} treated as a constant
=======================  ==========================================================================================

The transliteration takes every keyword of spec 1.1 (``layout``, ``symmetric``) and a 0-d tensor temperature,
differentiated by autograd like the inputs.

PyTorch is imported when a function is called, never at import time.
"""

from __future__ import annotations

import math

from hardneg.validation import UNKNOWN, check_call, check_temperature_tensor

__all__ = ["transliteration", "DEFECTS"] + [
    "pseudocode_mean_neg", "beta_multiplies", "detached_weights", "clamp_without_M", "partner_in_negatives",
    "beta_on_cosine", "one_direction", "raw_exp", "no_normalization", "positive_in_own_negs", "reverse_uses_bank",
    "dt_without_floor",
]


def _dn(x):
    return None if x is None else str(x.dtype).replace("torch.", "")


def _log1mexp(x):
    """log(1 - e^x) for x < 0, with gradients safe where the other branch of a where() is taken."""
    import torch

    hi = torch.where(x > -math.log(2.0), x, torch.full_like(x, -1.0))
    lo = torch.where(x > -math.log(2.0), torch.full_like(x, -1.0), x)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(hi)), torch.log1p(-torch.exp(lo)))


def _normalize(z):
    """u = z / max(||z||, 1e-12) without overflow, also in the backward pass.

    The row is scaled by max|z| (a constant for autograd: u does not depend on it), so that neither ||z||^2 nor
    the z / ||z||^2 of the norm's derivative overflows or underflows.
    """
    import torch

    scale = z.detach().abs().amax(dim=-1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    y = z / scale
    ss = (y * y).sum(dim=-1, keepdim=True)
    ny = torch.sqrt(torch.where(ss > 0, ss, torch.ones_like(ss)))  # sqrt'(0) = inf would poison the other branch
    big = (ss > 0) & (scale * ny >= 1e-12)
    return torch.where(big, y / ny, z / 1e-12)


def _impl(z1, z2, *, temperature, beta, tau_plus, estimator, clamp, normalize, negatives, labels, negative_labels,
          reduction, layout=None, symmetric=True, defect=None):
    import torch

    t_tensor = isinstance(temperature, torch.Tensor)
    if t_tensor:
        check_temperature_tensor(tuple(temperature.shape), _dn(temperature))
    problem = check_call(
        z1_shape=tuple(z1.shape), z2_shape=tuple(z2.shape), z1_dtype=_dn(z1), z2_dtype=_dn(z2),
        temperature=UNKNOWN if t_tensor else temperature, beta=beta, tau_plus=tau_plus, estimator=estimator,
        clamp=clamp, normalize=normalize, reduction=reduction, layout=layout, symmetric=symmetric,
        negatives_shape=None if negatives is None else tuple(negatives.shape), negatives_dtype=_dn(negatives),
        labels_shape=None if labels is None else tuple(labels.shape), labels_dtype=_dn(labels),
        negative_labels_shape=None if negative_labels is None else tuple(negative_labels.shape),
        negative_labels_dtype=_dn(negative_labels),
    )
    out_dtype = z1.dtype
    cdt = torch.float64 if out_dtype == torch.float64 else torch.float32
    ins = [x for x in (z1, z2, negatives) if x is not None]
    finite = all(bool(torch.isfinite(x).all()) for x in ins)
    t = temperature.to(cdt) if t_tensor else float(temperature)
    tv = float(temperature.detach()) if t_tensor else 1.0
    t_ok = math.isfinite(tv) and tv > 0 and math.isfinite(1 / tv)
    b, tau = float(beta), float(tau_plus)
    if estimator == "easy":
        b, tau, clamp = 0.0, 0.0, False
    nrm = _normalize if (normalize and defect != "no_normalization") else (lambda z: z)
    B = z1.shape[0]
    x1, x2 = z1.to(cdt), z2.to(cdt)
    if problem.layout == "cross":
        u1, u2 = nrm(x1), nrm(x2)
        C = u1 @ u2.T / t
        a1 = torch.diagonal(C)
        maskc = torch.ones((B, B), dtype=torch.bool)
        if defect != "positive_in_own_negs":
            maskc &= ~torch.eye(B, dtype=torch.bool)
        if labels is not None:
            maskc &= labels[:, None] != labels[None, :]
        rows, masks, a = [C], [maskc], [a1]
        V = Sb = mb = None
        if negatives is not None:
            V = nrm(negatives.to(cdt))
            Sb = u1 @ V.T / t if V.dim() == 2 else torch.einsum("bd,bkd->bk", u1, V) / t
            mb = torch.ones(Sb.shape, dtype=torch.bool)
            if labels is not None:
                nl = negative_labels if V.dim() == 3 else negative_labels[None, :]
                mb &= labels[:, None] != nl
            rows, masks = [torch.cat([C, Sb], 1)], [torch.cat([maskc, mb], 1)]
        if symmetric:
            r2, m2 = C.T, maskc.T
            if defect == "reverse_uses_bank" and V is not None:
                Sb2 = u2 @ V.T / t if V.dim() == 2 else torch.einsum("bd,bkd->bk", u2, V) / t
                r2, m2 = torch.cat([r2, Sb2], 1), torch.cat([m2, mb], 1)
            rows.append(r2)
            masks.append(m2)
            a.append(a1)
        width = max(r.shape[1] for r in rows)
        S = torch.cat([torch.cat([r, r.new_zeros((B, width - r.shape[1]))], 1) for r in rows])
        mask = torch.cat([torch.cat([m, m.new_zeros((B, width - m.shape[1]))], 1) for m in masks])
        a = torch.cat(a)
    elif negatives is None:
        U = nrm(torch.cat([x1, x2]))
        n = 2 * B
        S = U @ U.T / t
        idx = torch.arange(n)
        partner = (idx + B) % n
        a = S[idx, partner]
        mask = ~torch.eye(n, dtype=torch.bool)
        if defect != "partner_in_negatives":
            mask[idx, partner] = False
        if labels is not None:
            lab = torch.cat([labels, labels])
            mask &= lab[:, None] != lab[None, :]
        if defect == "one_direction":
            S, a, mask = S[:B], a[:B], mask[:B]
    else:
        u1, u2, V = nrm(x1), nrm(x2), nrm(negatives.to(cdt))
        a = (u1 * u2).sum(1) / t
        S = u1 @ V.T / t if V.dim() == 2 else torch.einsum("bd,bkd->bk", u1, V) / t
        mask = torch.ones(S.shape, dtype=torch.bool)
        if labels is not None:
            nl = negative_labels if V.dim() == 3 else negative_labels[None, :]
            mask &= labels[:, None] != nl
    M = mask.sum(1)
    has = M > 0
    logM = torch.log(torch.where(has, M, 1).to(cdt))
    ninf = torch.tensor(-math.inf, dtype=cdt)

    if defect == "raw_exp":
        # the released code's arithmetic, in the compute dtype
        E = torch.where(mask, torch.exp(S), 0)
        imp = torch.where(mask, torch.exp(b * S), 0)
        Mc = M.to(cdt)
        R = Mc * (imp * E).sum(1) / imp.sum(1)
        pos = torch.exp(a)
        Ng = (R - tau * Mc * pos) / (1 - tau)
        if clamp:
            Ng = torch.maximum(Ng, Mc * torch.exp(-1 / torch.as_tensor(t, dtype=cdt)))
        loss = -torch.log(pos / (pos + Ng))
    else:
        def lse(v):
            return torch.logsumexp(torch.where(mask, v, ninf), dim=1)

        if math.isinf(b):
            lr = logM + torch.where(mask, S, ninf).amax(1)
        elif defect == "pseudocode_mean_neg":
            lr = lse((1 + b) * S) - (lse(S) - logM)
        elif defect == "beta_multiplies":
            lr = logM + lse(2 * S) - lse(S)
        elif defect == "detached_weights":
            logw = (b * S - lse(b * S)[:, None]).detach()
            lr = logM + lse(S + logw)
        elif defect == "beta_on_cosine":
            lr = logM + lse(S + b * t * S) - lse(b * t * S)
        else:
            lr = logM + lse((1 + b) * S) - lse(b * S)
        lr = torch.where(has, lr, torch.zeros_like(lr))
        log1m_tau = math.log1p(-tau)
        if tau > 0:
            x = math.log(tau) + logM + a - lr
        else:
            x = torch.full_like(a, -math.inf)
        neg = x < 0
        xs = torch.where(neg, x, torch.full_like(x, -1.0))
        gu = torch.where(neg, lr + _log1mexp(xs) - log1m_tau, ninf)
        # the loss is softplus(gamma - a) (spec section 5): a small loss keeps its digits
        if clamp:
            inv_t = 1.0 / (t.detach() if (t_tensor and defect == "dt_without_floor") else t)
            lf = (logM if defect != "clamp_without_M" else torch.zeros_like(logM)) - inv_t
            g = torch.where(gu < lf, lf, gu)
            loss = torch.logaddexp(torch.zeros_like(a), g - a)
        else:
            # x == 0 exactly (Ng = 0): log1mexp(-x) has an infinite slope that autograd would multiply by a
            # zero; a 1e-30 nudge keeps the (finite) product, changing the value by ~1e-30 relative
            xp = torch.where(neg, torch.ones_like(x), torch.where(x == 0, x + 1e-30, x))
            y = (math.log(tau) if tau > 0 else -math.inf) + logM + _log1mexp(-xp) - log1m_tau
            ys = torch.where(y < 0, y, torch.full_like(y, -1.0))
            other = torch.where(y < 0, _log1mexp(ys), torch.full_like(y, math.nan))
            gs = torch.where(neg, gu, torch.zeros_like(gu))
            loss = torch.where(neg, torch.logaddexp(torch.zeros_like(a), gs - a), other)
    loss = torch.where(has, loss, torch.zeros_like(loss))
    if reduction == "mean":
        value = loss.mean()
    elif reduction == "sum":
        value = loss.sum()
    else:
        value = loss
    poison = sum(x.to(cdt).sum() for x in ins + ([temperature] if t_tensor else [])) * math.nan
    if not finite or not t_ok:
        # (and spec 1.1: a tensor temperature <= 0 or not finite makes every output NaN)
        # spec section 6: a non-finite input makes every element of the value and of every gradient NaN
        value = value + poison
    elif bool(torch.isnan(loss).any()):
        # an undefined anchor: every gradient element NaN, the value NaN where it is (no NaN added to a finite
        # "none" entry): where() passes a zero cotangent to the poison, and 0 * NaN poisons every gradient
        value = value + torch.where(torch.zeros((), dtype=torch.bool), poison, torch.zeros((), dtype=cdt))
    return value.to(out_dtype)


def _make(defect, doc):
    def fn(z1, z2, *, temperature=0.5, beta=1.0, tau_plus=0.1, estimator="hard", clamp=True, normalize=True,
           negatives=None, labels=None, negative_labels=None, reduction="mean", layout=None, symmetric=True):
        return _impl(z1, z2, temperature=temperature, beta=beta, tau_plus=tau_plus, estimator=estimator,
                     clamp=clamp, normalize=normalize, negatives=negatives, labels=labels,
                     negative_labels=negative_labels, reduction=reduction, layout=layout, symmetric=symmetric,
                     defect=defect)

    fn.__name__ = fn.__qualname__ = defect or "transliteration"
    fn.__doc__ = doc
    fn.__module__ = __name__
    return fn


transliteration = _make(None, "The spec transliterated into differentiable PyTorch (log-space, autograd). Correct.")
pseudocode_mean_neg = _make("pseudocode_mean_neg", "R normalised by mean(neg) instead of mean(imp).")
beta_multiplies = _make("beta_multiplies", "imp = beta * neg instead of neg ** beta.")
detached_weights = _make("detached_weights", "Importance weights detached from the graph.")
clamp_without_M = _make("clamp_without_M", "Floor e^{-1/t} without the factor M.")
partner_in_negatives = _make("partner_in_negatives", "The positive partner counted among the negatives.")
beta_on_cosine = _make("beta_on_cosine", "imp = exp(beta cos) instead of exp(beta cos / t).")
one_direction = _make("one_direction", "Only z1's rows are anchors.")
raw_exp = _make("raw_exp", "Raw exp arithmetic (overflows in float32 at small t).")
no_normalization = _make("no_normalization", "Rows not normalised although normalize=True.")
positive_in_own_negs = _make("positive_in_own_negs", "Cross layout: the positive kept among the anchor's negatives.")
reverse_uses_bank = _make("reverse_uses_bank", "Cross layout: the reverse direction also scores the bank.")
dt_without_floor = _make("dt_without_floor", "d loss / d t without the floor's term (floor treated as constant).")

#: name -> planted wrong implementation
DEFECTS = {
    f.__name__: f
    for f in (
        pseudocode_mean_neg, beta_multiplies, detached_weights, clamp_without_M, partner_in_negatives,
        beta_on_cosine, one_direction, raw_exp, no_normalization, positive_in_own_negs, reverse_uses_bank,
        dt_without_floor,
    )
}
