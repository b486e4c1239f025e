#!/usr/bin/env python3
"""A port of hcl_loss (spec 1.1) in plain NumPy, spoken to over the JSON-lines protocol of docs/conformance.md.

It does not import hardneg: it is what a port author writes from the spec and the protocol alone.

    hardneg verify --command "python examples/ports/numpy_port.py"

Values and gradients are computed in float64 (closed-form gradients: spec section 8) and rounded once to the
request's dtype; every error of spec section 10 is raised with the spec's type and message. ``jsd_loss`` is
answered "unsupported". ``HARDNEG_PORT_DEFECT=positive_in_negatives`` plants a mistake (each anchor's positive
partner left among its negatives) that ``hardneg verify`` must reject.
"""

import json
import math
import os
import sys

import numpy as np

DEFECT = os.environ.get("HARDNEG_PORT_DEFECT", "")
NORM_EPS = 1e-12
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# ---------------------------------------------------------------------------------------------- JSON helpers

def hook(d):
    return SPECIAL[d["$float"]] if len(d) == 1 and "$float" in d else d


def enc(x):
    if isinstance(x, np.ndarray):
        return enc(x.tolist())
    if isinstance(x, list):
        return [enc(v) for v in x]
    x = float(x)
    if math.isnan(x):
        return {"$float": "nan"}
    if math.isinf(x):
        return {"$float": "inf" if x > 0 else "-inf"}
    return x


def round_to(x, dtype):
    """float64 values rounded to dtype (nearest, ties to even), as float64."""
    x = np.asarray(x, dtype=np.float64)
    if dtype in ("float32", "float16"):
        with np.errstate(over="ignore"):
            return x.astype(dtype).astype(np.float64)
    if dtype == "bfloat16":
        f = x.astype(np.float32)
        bits = f.view(np.uint32).astype(np.uint64)
        r = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
        return np.where(np.isnan(f), np.nan, r.astype(np.float64))
    return x


# ---------------------------------------------------------------------------------------------- validation (spec 10)

def shp(s):
    return "(" + ", ".join(str(int(v)) for v in s) + ("," if len(s) == 1 else "") + ")"


def real(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_bool(name, v):
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be a bool (True or False); got {v!r} of type {type(v).__name__}")


def validate(shapes, dtypes, kw):
    t, b, tp = kw["temperature"], kw["beta"], kw["tau_plus"]
    if not real(t):
        raise TypeError(f"temperature must be a real number; got {t!r} of type {type(t).__name__}")
    if not (math.isfinite(t) and t > 0.0 and math.isfinite(1.0 / t)):
        raise ValueError(f"temperature must be finite and > 0 (with 1/temperature finite); got {t!r}")
    if not real(b):
        raise TypeError(f"beta must be a real number; got {b!r} of type {type(b).__name__}")
    if math.isnan(b) or b < 0.0:
        raise ValueError(f"beta must be >= 0 (math.inf allowed, NaN not); got {b!r}")
    if not real(tp):
        raise TypeError(f"tau_plus must be a real number; got {tp!r} of type {type(tp).__name__}")
    if not (0.0 <= tp < 1.0):
        raise ValueError(f"tau_plus must satisfy 0 <= tau_plus < 1; got {tp!r}")
    if kw["estimator"] not in ("hard", "easy"):
        raise ValueError(f"estimator must be one of 'hard', 'easy'; got {kw['estimator']!r}")
    if kw["reduction"] not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be one of 'mean', 'sum', 'none'; got {kw['reduction']!r}")
    check_bool("clamp", kw["clamp"])
    check_bool("normalize", kw["normalize"])
    s1, s2 = shapes["z1"], shapes["z2"]
    for name, s in (("z1", s1), ("z2", s2)):
        if len(s) != 2:
            raise ValueError(f"{name} must be 2-D of shape (B, d); got shape {shp(s)}")
    if s1 != s2:
        raise ValueError(f"z1 and z2 must have the same shape (B, d); got {shp(s1)} and {shp(s2)}")
    B, d = s1
    if B < 1:
        raise ValueError(f"z1 and z2 need at least one row (B >= 1); got shape {shp(s1)}")
    if d < 1:
        raise ValueError(f"the feature dimension d must be >= 1; got shape {shp(s1)}")
    for name in ("z1", "z2"):
        if dtypes[name] not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32 or float64); "
                            f"got {dtypes[name]}")
    if dtypes["z1"] != dtypes["z2"]:
        raise TypeError(f"z1 and z2 must have the same dtype; got {dtypes['z1']} and {dtypes['z2']}")
    bank, K = "none", None
    if "negatives" in shapes:
        ns = shapes["negatives"]
        if len(ns) == 2:
            bank, K, ok = "shared", ns[0], ns[1] == d
        elif len(ns) == 3:
            bank, K, ok = "per_anchor", ns[1], ns[0] == B and ns[2] == d
        else:
            ok = False
        if not ok:
            raise ValueError("negatives must have shape (K, d) (one bank shared by all anchors) or (B, K, d) (one "
                             f"bank per anchor) with d = {d} and B = {B}; got shape {shp(ns)}")
        if K < 1:
            raise ValueError(f"negatives must hold at least one row (K >= 1); got shape {shp(ns)}")
        nd = dtypes["negatives"]
        if nd not in FLOAT_DTYPES:
            raise TypeError(f"negatives must have a floating dtype (float16, bfloat16, float32 or float64); got {nd}")
        if nd != dtypes["z1"]:
            raise TypeError(f"negatives must have the dtype of z1 and z2 ({dtypes['z1']}); got {nd}")
    layout, sym = kw["layout"], kw["symmetric"]
    if layout is not None and layout not in ("in_batch", "bank", "cross"):
        raise ValueError(f"layout must be one of None, 'in_batch', 'bank', 'cross'; got {layout!r}")
    check_bool("symmetric", sym)
    if layout == "in_batch" and bank != "none":
        raise ValueError("layout='in_batch' takes no negatives bank (the negatives are the other in-batch samples); "
                         f"got negatives of shape {shp(shapes['negatives'])}; use layout='bank' or 'cross', or "
                         "layout=None")
    if layout == "bank" and bank == "none":
        raise ValueError("layout='bank' needs a negatives bank of shape (K, d) or (B, K, d); got negatives=None")
    resolved = layout if layout is not None else ("in_batch" if bank == "none" else "bank")
    if not sym and resolved != "cross":
        raise ValueError(f"symmetric=False is only meaningful with layout='cross'; got layout={layout!r} (the "
                         "in-batch layout is symmetric by construction, the bank layout has z1's anchors only)")
    if bank == "none" and B == 1:
        raise ValueError("one pair (B = 1) and no negatives: every anchor would have no negative; "
                         "pass B >= 2 pairs or a negatives bank")
    if "labels" in shapes:
        ls = shapes["labels"]
        if len(ls) != 1 or ls[0] != B:
            raise ValueError(f"labels must have shape (B,) = ({B},); got shape {shp(ls)}")
        if dtypes["labels"] not in INT_DTYPES:
            raise TypeError(f"labels must have an integer dtype; got {dtypes['labels']}")
    if "negative_labels" in shapes:
        if bank == "none":
            raise ValueError("negative_labels is only meaningful with a negatives bank; got negatives=None")
        if "labels" not in shapes:
            raise ValueError("negative_labels requires labels (the anchors' labels) as well")
        want = [K] if bank == "shared" else [B, K]
        if shapes["negative_labels"] != want:
            raise ValueError(f"negative_labels must have shape {shp(want)} to match negatives; got shape "
                             f"{shp(shapes['negative_labels'])}")
        if dtypes["negative_labels"] not in INT_DTYPES:
            raise TypeError(f"negative_labels must have an integer dtype; got {dtypes['negative_labels']}")
    elif "labels" in shapes and bank != "none":
        if resolved == "cross":
            raise ValueError("labels with a negatives bank require negative_labels (the bank rows' labels)")
        raise ValueError("labels with a negatives bank require negative_labels (the bank rows' labels); in-batch "
                         "samples are not negatives when a bank is given")
    return resolved, bank


# ---------------------------------------------------------------------------------------------- the math

def normalize(z):
    """u = z / max(||z||, 1e-12), the norm computed without overflow; and its backward."""
    scale = np.max(np.abs(z), axis=-1, keepdims=True)
    n = scale * np.sqrt(np.sum((z / np.where(scale > 0, scale, 1.0)) ** 2, axis=-1, keepdims=True))
    den = np.maximum(n, NORM_EPS)
    u = z / den

    def back(g):
        return np.where(n >= NORM_EPS, (g - u * np.sum(g * u, axis=-1, keepdims=True)) / den, g / NORM_EPS)
    return u, back


def log1mexp(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > -math.log(2.0), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def anchors(S, mask, a, t, beta, tau, estimator, clamp):
    """Per-anchor loss and d loss / d (a, S, log floor) in log space (spec sections 4-5, 8)."""
    if estimator == "easy":
        beta, tau, clamp = 0.0, 0.0, False
    M = mask.sum(1)
    has = M > 0
    logM = np.log(np.where(has, M, 1).astype(np.float64))
    with np.errstate(all="ignore"):
        m = np.where(has, np.where(mask, S, -np.inf).max(axis=1), 0.0)
        dd = np.where(mask, S - m[:, None], -np.inf)
        if math.isinf(beta):
            top = mask & (dd == 0.0)
            w = top / np.maximum(top.sum(1, keepdims=True), 1)
            lr = logM + m
        else:
            e1 = np.where(mask, np.exp((1 + beta) * dd), 0.0)
            e0 = np.where(mask, np.exp(beta * dd), 0.0)
            s1, s0 = np.where(has, e1.sum(1), 1.0), np.where(has, e0.sum(1), 1.0)
            lr = logM + m + np.log(s1) - np.log(s0)
            w = (1 + beta) * e1 / s1[:, None] - beta * e0 / s0[:, None]
        l1t = math.log1p(-tau)
        x = math.log(tau) + logM + a - lr if tau > 0 else np.full(len(a), -np.inf)
        pos = x < 0
        gu = np.where(pos, lr + log1mexp(np.minimum(x, 0.0)) - l1t, -np.inf)
        if clamp:
            lf = logM - 1.0 / t
            floor = gu < lf
            g = np.where(floor, lf, gu)
            loss = np.logaddexp(0.0, g - a)
            rho = np.where(floor, 0.0, np.exp(lr - l1t - a - loss))
            dlf = np.where(floor, np.exp(lf - a - loss), 0.0)
            da = -dlf - rho
        else:
            lnp = np.log(tau) + logM + a + log1mexp(-np.maximum(x, 0.0)) if tau > 0 else np.full(len(a), -np.inf)
            y = lnp - l1t - a
            loss = np.where(pos, np.logaddexp(0.0, gu - a), np.where(y < 0, log1mexp(np.minimum(y, 0.0)), np.nan))
            rho = np.exp(lr - l1t - a - loss)
            da, dlf = -rho, np.zeros(len(a))
        loss, da, dlf = np.where(has, loss, 0.0), np.where(has, da, 0.0), np.where(has, dlf, 0.0)
        dS = np.where(has[:, None] & mask, rho[:, None] * w, 0.0)
        dS = np.where((has & np.isnan(rho))[:, None], np.nan, dS)
    return loss, da, dS, dlf


def hcl(x, kw, layout, bank, cot, want_grad):
    z1, z2, V = x["z1"], x["z2"], x.get("negatives")
    lab, nlab = x.get("labels"), x.get("negative_labels")
    t = float(kw["temperature"])
    B = z1.shape[0]
    nrm = normalize if kw["normalize"] else (lambda z: (z, lambda g: g))
    keep_pos = DEFECT == "positive_in_negatives"
    if layout == "in_batch":
        U, backU = nrm(np.concatenate([z1, z2]))
        S = U @ U.T / t
        idx = np.arange(2 * B)
        part = (idx + B) % (2 * B)
        mask = ~np.eye(2 * B, dtype=bool)
        if not keep_pos:
            mask[idx, part] = False
        if lab is not None:
            L = np.concatenate([lab, lab])
            mask &= L[:, None] != L[None, :]
        blocks = [(S, mask, S[idx, part])]
    else:
        u1, b1 = nrm(z1)
        u2, b2 = nrm(z2)
        Sb = mb = None
        if V is not None:
            Vn, bV = nrm(V)
            Sb = u1 @ Vn.T / t if bank == "shared" else np.einsum("bd,bkd->bk", u1, Vn) / t
            mb = np.ones(Sb.shape, dtype=bool)
            if lab is not None:
                mb &= lab[:, None] != (nlab if bank == "per_anchor" else nlab[None, :])
        if layout == "bank":
            blocks = [(Sb, mb, np.sum(u1 * u2, 1) / t)]
        else:
            C = u1 @ u2.T / t
            a = np.diagonal(C).copy()
            mc = np.ones((B, B), dtype=bool) if keep_pos else ~np.eye(B, dtype=bool)
            if lab is not None:
                mc &= lab[:, None] != lab[None, :]
            blocks = [(C, mc, a) if Sb is None else (np.concatenate([C, Sb], 1), np.concatenate([mc, mb], 1), a)]
            if kw["symmetric"]:
                blocks.append((C.T, mc.T, a))
    parts = [anchors(S, m, a, t, float(kw["beta"]), float(kw["tau_plus"]), kw["estimator"], kw["clamp"])
             for S, m, a in blocks]
    loss = np.concatenate([p[0] for p in parts])
    red = kw["reduction"]
    value = loss.mean() if red == "mean" else (loss.sum() if red == "sum" else loss)
    if not want_grad:
        return value, None
    A = len(loss)
    c = np.asarray(cot, dtype=np.float64).reshape(A) if red == "none" else np.full(
        A, float(cot) / A if red == "mean" else float(cot))
    scaled, dt, start = [], 0.0, 0
    with np.errstate(invalid="ignore"):
        for (S, m, a), (_, da, dS, dlf) in zip(blocks, parts):
            cb = c[start:start + S.shape[0]]
            start += S.shape[0]
            da, dS, dlf = da * cb, dS * cb[:, None], dlf * cb
            scaled.append((da, dS))
            dt += -(np.sum(dS[m] * S[m]) + np.sum(da * a)) / t + np.sum(dlf) / (t * t)
    gn = None
    if layout == "in_batch":
        (da, dS), = scaled
        G = dS.copy()
        G[idx, part] += da
        gz = backU((G + G.T) @ U / t)
        g1, g2 = gz[:B], gz[B:]
    else:
        da, dS = scaled[0]
        if layout == "bank":
            dSb, gu1, gu2 = dS, da[:, None] * u2 / t, da[:, None] * u1 / t
        else:
            dC = dS[:, :B] + np.diag(da)
            dSb = dS[:, B:] if V is not None else None
            if kw["symmetric"]:
                da2, dS2 = scaled[1]
                dC = dC + (dS2 + np.diag(da2)).T
            gu1, gu2 = dC @ u2 / t, dC.T @ u1 / t
        if V is not None:
            if bank == "shared":
                gu1, gV = gu1 + dSb @ Vn / t, dSb.T @ u1 / t
            else:
                gu1, gV = gu1 + np.einsum("bk,bkd->bd", dSb, Vn) / t, dSb[:, :, None] * u1[:, None, :] / t
            gn = bV(gV)
        g1, g2 = b1(gu1), b2(gu2)
    if np.isnan(loss).any():  # an undefined anchor (clamp=False, D <= 0): every gradient is undefined
        g1, g2, dt = np.full_like(g1, np.nan), np.full_like(g2, np.nan), np.nan
        gn = None if gn is None else np.full_like(gn, np.nan)
    return value, {"z1": g1, "z2": g2, "negatives": gn, "temperature": dt}


def answer(req):
    if req["fn"] != "hcl_loss":
        return {"unsupported": f"{req['fn']} is not implemented by this port"}
    kw, shapes, dtypes = req["kwargs"], req["shapes"], req["dtypes"]
    try:
        layout, bank = validate(shapes, dtypes, kw)
    except (TypeError, ValueError) as e:
        return {"error": {"type": type(e).__name__, "message": str(e)}}
    x = {k: np.asarray(v, dtype=np.float64 if k in ("z1", "z2", "negatives") else np.int64).reshape(shapes[k])
         for k, v in req["inputs"].items() if v is not None}
    dt = dtypes["z1"]
    n_anchors = (2 * x["z1"].shape[0] if layout == "in_batch" or (layout == "cross" and kw["symmetric"])
                 else x["z1"].shape[0])
    if not all(np.isfinite(x[k]).all() for k in ("z1", "z2", "negatives") if k in x):  # spec 6: NaN everywhere
        value = np.full(n_anchors, np.nan) if kw["reduction"] == "none" else np.nan
        grads = {k: np.full(x[k].shape, np.nan) if k in x else None for k in ("z1", "z2", "negatives")}
        grads["temperature"] = np.nan
    else:
        value, grads = hcl(x, kw, layout, bank, req["cotangent"], req["grad"])
    out = {"value": enc(round_to(value, dt))}
    if req["grad"]:
        g = {k: (None if grads[k] is None else enc(round_to(grads[k], dt))) for k in ("z1", "z2", "negatives")}
        if req.get("grad_temperature"):
            g["temperature"] = enc(round_to(grads["temperature"], dt))
        out["grads"] = g
    return out


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line, object_hook=hook)
        out = {"id": req["id"], **answer(req)}
        sys.stdout.write(json.dumps(out, allow_nan=False) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
