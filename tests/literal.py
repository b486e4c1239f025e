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
    F=F64,
):
    """Per-anchor losses as a list, in the spec's order. Inputs: nested sequences of numbers (or mpf)."""
    t = F.num(temperature)
    tau = F.num(tau_plus)
    B = len(z1)
    u1 = [_normalize([F.num(x) for x in r], F, normalize) for r in z1]
    u2 = [_normalize([F.num(x) for x in r], F, normalize) for r in z2]
    anchors = []  # (pos_logit, [negative logits])
    if negatives is None:
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
