"""An independent, literal transliteration of the released HCL arithmetic, for testing the reference.

Written from the formula (docs/spec.md §3-4 and ../shared/CONTEXT.md), not from hardneg.reference: raw
exponentials, explicit loops over anchors, no log-space tricks. Parametrised by a math namespace so the
same text runs in float64 NumPy (where it does not overflow) and in mpmath at 50 digits.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np


class F64:
    exp = staticmethod(math.exp)
    log = staticmethod(math.log)
    sqrt = staticmethod(math.sqrt)

    @staticmethod
    def num(x):
        return float(x)


class MP:
    exp = staticmethod(mpmath.exp)
    log = staticmethod(mpmath.log)
    sqrt = staticmethod(mpmath.sqrt)

    @staticmethod
    def num(x):
        return mpmath.mpf(float(x)) if not isinstance(x, mpmath.mpf) else x


def _normalize(row, F, normalize):
    if not normalize:
        return list(row)
    n = F.sqrt(sum(x * x for x in row))
    den = n if n >= 1e-12 else F.num(1e-12)
    return [x / den for x in row]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _anchor_logits(
    z1,
    z2,
    *,
    temperature=0.5,
    normalize=True,
    negatives=None,
    labels=None,
    negative_labels=None,
    layout=None,
    symmetric=True,
    F=F64,
):
    """[(positive logit, [negative logits])] of every anchor, in the spec's order."""
    t = F.num(temperature)
    B = len(z1)
    u1 = [_normalize([F.num(x) for x in r], F, normalize) for r in z1]
    u2 = [_normalize([F.num(x) for x in r], F, normalize) for r in z2]
    anchors = []  # (pos_logit, [negative logits])
    if layout == "cross":
        # Spec 1.1 §3: anchor z1[i]; candidates z2's rows, then the bank rows (shared or anchor i's own);
        # positive z2[i]; same-label candidates other than the positive removed. Reverse: anchor z2[i],
        # candidates z1's rows only.
        per_anchor = negatives is not None and np.ndim(negatives) == 3
        lab = None if labels is None else [int(x) for x in labels]
        for i in range(B):
            negs = [_dot(u1[i], u2[j]) / t for j in range(B) if j != i and (lab is None or lab[j] != lab[i])]
            if negatives is not None:
                bank = negatives[i] if per_anchor else negatives
                nl = None if labels is None else (negative_labels[i] if per_anchor else negative_labels)
                for k, r in enumerate(bank):
                    if nl is None or int(nl[k]) != lab[i]:
                        negs.append(_dot(u1[i], _normalize([F.num(x) for x in r], F, normalize)) / t)
            anchors.append((_dot(u1[i], u2[i]) / t, negs))
        if symmetric:
            for i in range(B):
                negs = [_dot(u2[i], u1[j]) / t for j in range(B) if j != i and (lab is None or lab[j] != lab[i])]
                anchors.append((_dot(u2[i], u1[i]) / t, negs))
    elif negatives is None:
        U = u1 + u2
        lab = None if labels is None else [int(x) for x in labels] * 2
        for i in range(2 * B):
            p = (i + B) % (2 * B)
            negs = [
                _dot(U[i], U[j]) / t
                for j in range(2 * B)
                if j != i and j != p and (lab is None or lab[j] != lab[i])
            ]
            anchors.append((_dot(U[i], U[p]) / t, negs))
    else:
        per_anchor = np.ndim(negatives) == 3
        for i in range(B):
            bank = negatives[i] if per_anchor else negatives
            V = [_normalize([F.num(x) for x in r], F, normalize) for r in bank]
            if labels is not None:
                nl = negative_labels[i] if per_anchor else negative_labels
                keep = [int(nl[k]) != int(labels[i]) for k in range(len(V))]
            else:
                keep = [True] * len(V)
            negs = [_dot(u1[i], v) / t for v, k in zip(V, keep) if k]
            anchors.append((_dot(u1[i], u2[i]) / t, negs))
    return anchors


def _unclamped(a, negs, beta, tau, F):
    """(pos, Ng before the clamp) of one anchor, raw exponentials."""
    M = len(negs)
    pos = F.exp(a)
    if math.isinf(beta):
        R = M * F.exp(max(negs))
    else:
        b = F.num(beta)
        imp = [F.exp(b * s) for s in negs]
        R = sum(w * F.exp(s) for w, s in zip(imp, negs)) / (sum(imp) / M)
    return pos, (-tau * M * pos + R) / (1 - tau)


def literal_floor_ratios(z1, z2, *, temperature=0.5, beta=1.0, tau_plus=0.1, F=F64, estimator="hard", clamp=True,
                         reduction=None, **kw):
    """Ng_unclamped / (M e^{-1/t}) - 1 of each anchor with negatives: < 0 on the floor, ~0 at the clamp's kink."""
    t, tau = F.num(temperature), F.num(tau_plus)
    out = []
    for a, negs in _anchor_logits(z1, z2, temperature=temperature, F=F, **kw):
        if negs:
            _, ng = _unclamped(a, negs, beta, tau, F)
            out.append(ng / (len(negs) * F.exp(-1 / t)) - 1)
    return out


def literal_losses(
    z1,
    z2,
    *,
    temperature=0.5,
    beta=1.0,
    tau_plus=0.1,
    estimator="hard",
    clamp=True,
    normalize=True,
    negatives=None,
    labels=None,
    negative_labels=None,
    layout=None,
    symmetric=True,
    F=F64,
):
    """Per-anchor losses as a list, in the spec's order. Inputs: nested sequences of numbers (or mpf)."""
    t = F.num(temperature)
    tau = F.num(tau_plus)
    anchors = _anchor_logits(
        z1, z2, temperature=temperature, normalize=normalize, negatives=negatives, labels=labels,
        negative_labels=negative_labels, layout=layout, symmetric=symmetric, F=F,
    )
    out = []
    for a, negs in anchors:
        M = len(negs)
        pos = F.exp(a)
        if M == 0:
            out.append(F.num(0.0) * a)  # spec §6: no negatives -> loss 0
            continue
        neg = [F.exp(s) for s in negs]
        if estimator == "easy":
            Ng = sum(neg)
        else:
            if math.isinf(beta):
                R = M * F.exp(max(negs))
            else:
                b = F.num(beta)
                imp = [F.exp(b * s) for s in negs]
                R = sum(w * e for w, e in zip(imp, neg)) / (sum(imp) / M)
            Ng = (-tau * M * pos + R) / (1 - tau)
            if clamp:
                floor = M * F.exp(-1 / t)
                Ng = Ng if Ng >= floor else floor
        out.append(-F.log(pos / (pos + Ng)))
    return out


def literal_loss(z1, z2, *, reduction="mean", **kw):
    losses = literal_losses(z1, z2, **kw)
    if reduction == "none":
        return losses
    total = sum(losses)
    return total / len(losses) if reduction == "mean" else total
