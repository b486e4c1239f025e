#!/usr/bin/env node
// A port of hcl_loss (spec 1.1) in plain JavaScript for Node, spoken to over the JSON-lines protocol of
// docs/conformance.md. No dependency: only JSON and Math.
//
//     hardneg verify --command "node examples/ports/node_port.js" --errors type
//
// Values and gradients are computed in float64 (closed-form gradients, spec section 8); float32 results are
// rounded with Math.fround; float16 and bfloat16 requests are answered "unsupported", and so is jsd_loss. Bad
// inputs raise the spec's exception *type* (its messages are not reproduced: verify it with --errors type).
// HARDNEG_PORT_DEFECT=no_normalization plants a mistake (rows used unnormalised although normalize=true) that
// `hardneg verify` must reject.
"use strict";

const readline = require("readline");

const DEFECT = process.env.HARDNEG_PORT_DEFECT || "";
const NORM_EPS = 1e-12;
const FLOATS = ["float16", "bfloat16", "float32", "float64"];
const INTS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"];
const SPECIAL = { nan: NaN, inf: Infinity, "-inf": -Infinity };

// ------------------------------------------------------------------------------------------------ JSON helpers
const reviver = (k, v) =>
  v !== null && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length === 1 && "$float" in v
    ? SPECIAL[v.$float] : v;
// JSON.stringify would write NaN and Infinity as null: the protocol spells them {"$float": ...}
const replacer = (k, v) =>
  typeof v === "number" && !Number.isFinite(v) ? { $float: Number.isNaN(v) ? "nan" : v > 0 ? "inf" : "-inf" } : v;

class SpecError extends Error {
  constructor(type, message) { super(message); this.type = type; }
}
const typeError = (m) => new SpecError("TypeError", m);
const valueError = (m) => new SpecError("ValueError", m);

// ------------------------------------------------------------------------------------------------ validation
function validate(shapes, dtypes, kw) {
  const real = (x) => typeof x === "number";
  const bool = (name, v) => { if (typeof v !== "boolean") throw typeError(`${name} must be a bool; got ${v}`); };
  const t = kw.temperature, b = kw.beta, tp = kw.tau_plus;
  if (!real(t)) throw typeError(`temperature must be a real number; got ${t}`);
  if (!(Number.isFinite(t) && t > 0 && Number.isFinite(1 / t))) throw valueError(`temperature must be finite and > 0; got ${t}`);
  if (!real(b)) throw typeError(`beta must be a real number; got ${b}`);
  if (Number.isNaN(b) || b < 0) throw valueError(`beta must be >= 0; got ${b}`);
  if (!real(tp)) throw typeError(`tau_plus must be a real number; got ${tp}`);
  if (!(tp >= 0 && tp < 1)) throw valueError(`tau_plus must satisfy 0 <= tau_plus < 1; got ${tp}`);
  if (!["hard", "easy"].includes(kw.estimator)) throw valueError(`bad estimator ${kw.estimator}`);
  if (!["mean", "sum", "none"].includes(kw.reduction)) throw valueError(`bad reduction ${kw.reduction}`);
  bool("clamp", kw.clamp);
  bool("normalize", kw.normalize);
  const s1 = shapes.z1, s2 = shapes.z2;
  if (s1.length !== 2 || s2.length !== 2) throw valueError("z1 and z2 must be 2-D of shape (B, d)");
  if (s1[0] !== s2[0] || s1[1] !== s2[1]) throw valueError("z1 and z2 must have the same shape");
  const [B, d] = s1;
  if (B < 1) throw valueError("z1 and z2 need at least one row");
  if (d < 1) throw valueError("the feature dimension d must be >= 1");
  if (!FLOATS.includes(dtypes.z1) || !FLOATS.includes(dtypes.z2)) throw typeError("z1 and z2 must be floating");
  if (dtypes.z1 !== dtypes.z2) throw typeError("z1 and z2 must have the same dtype");
  let bank = "none", K = null;
  if (shapes.negatives) {
    const ns = shapes.negatives;
    let ok = false;
    if (ns.length === 2) { bank = "shared"; K = ns[0]; ok = ns[1] === d; }
    else if (ns.length === 3) { bank = "per_anchor"; K = ns[1]; ok = ns[0] === B && ns[2] === d; }
    if (!ok) throw valueError("negatives must have shape (K, d) or (B, K, d)");
    if (K < 1) throw valueError("negatives must hold at least one row");
    if (!FLOATS.includes(dtypes.negatives)) throw typeError("negatives must be floating");
    if (dtypes.negatives !== dtypes.z1) throw typeError("negatives must have the dtype of z1 and z2");
  }
  const layout = kw.layout, sym = kw.symmetric;
  if (layout !== null && !["in_batch", "bank", "cross"].includes(layout)) throw valueError(`bad layout ${layout}`);
  bool("symmetric", sym);
  if (layout === "in_batch" && bank !== "none") throw valueError("layout='in_batch' takes no negatives bank");
  if (layout === "bank" && bank === "none") throw valueError("layout='bank' needs a negatives bank");
  const resolved = layout !== null ? layout : bank === "none" ? "in_batch" : "bank";
  if (!sym && resolved !== "cross") throw valueError("symmetric=False is only meaningful with layout='cross'");
  if (bank === "none" && B === 1) throw valueError("one pair (B = 1) and no negatives");
  if (shapes.labels) {
    const ls = shapes.labels;
    if (ls.length !== 1 || ls[0] !== B) throw valueError("labels must have shape (B,)");
    if (!INTS.includes(dtypes.labels)) throw typeError("labels must have an integer dtype");
  }
  if (shapes.negative_labels) {
    if (bank === "none") throw valueError("negative_labels is only meaningful with a negatives bank");
    if (!shapes.labels) throw valueError("negative_labels requires labels as well");
    const want = bank === "shared" ? [K] : [B, K], got = shapes.negative_labels;
    if (got.length !== want.length || got.some((v, i) => v !== want[i])) throw valueError("bad negative_labels shape");
    if (!INTS.includes(dtypes.negative_labels)) throw typeError("negative_labels must have an integer dtype");
  } else if (shapes.labels && bank !== "none") {
    throw valueError("labels with a negatives bank require negative_labels");
  }
  return { layout: resolved, bank, B, d, K };
}

// ------------------------------------------------------------------------------------------------ the math
const dot = (x, y) => { let s = 0; for (let k = 0; k < x.length; k++) s += x[k] * y[k]; return s; };
const softplus = (y) => (y > 0 ? y + Math.log1p(Math.exp(-y)) : Math.log1p(Math.exp(y)));
const log1mexp = (x) => (x > -Math.LN2 ? Math.log(-Math.expm1(x)) : Math.log1p(-Math.exp(x)));

// u = z / max(||z||, 1e-12), the norm computed without overflow; back(g) is its vector-Jacobian product
function normalize(z) {
  let scale = 0;
  for (const v of z) scale = Math.max(scale, Math.abs(v));
  let ss = 0;
  if (scale > 0) for (const v of z) ss += (v / scale) ** 2;
  const n = scale * Math.sqrt(ss), den = Math.max(n, NORM_EPS);
  const u = z.map((v) => v / den);
  const back = (g) => {
    if (n < NORM_EPS) return g.map((v) => v / NORM_EPS);
    const r = dot(g, u);
    return g.map((v, k) => (v - u[k] * r) / den);
  };
  return { u, back };
}

// one anchor: logits s of its negatives, positive logit a -> loss, dloss/da, dloss/ds, dloss/d(log floor)
function anchor(s, a, t, beta, tau, estimator, clamp) {
  if (estimator === "easy") { beta = 0; tau = 0; clamp = false; }
  const M = s.length;
  if (M === 0) return { loss: 0, da: 0, ds: [], dlf: 0 };
  const logM = Math.log(M);
  const m = Math.max(...s);
  let lr, w;
  if (beta === Infinity) {
    const top = s.map((v) => (v === m ? 1 : 0)), k = top.reduce((x, y) => x + y, 0);
    w = top.map((v) => v / k);
    lr = logM + m;
  } else {
    const e1 = s.map((v) => Math.exp((1 + beta) * (v - m))), e0 = s.map((v) => Math.exp(beta * (v - m)));
    const S1 = e1.reduce((x, y) => x + y, 0), S0 = e0.reduce((x, y) => x + y, 0);
    lr = logM + m + Math.log(S1) - Math.log(S0);
    w = e1.map((v, j) => ((1 + beta) * v) / S1 - (beta * e0[j]) / S0);
  }
  const l1t = Math.log1p(-tau);
  const x = tau > 0 ? Math.log(tau) + logM + a - lr : -Infinity;
  const pos = x < 0;
  const gu = pos ? lr + log1mexp(Math.min(x, 0)) - l1t : -Infinity;  // log of the unclamped Ng
  let loss, rho, dlf, da;
  if (clamp) {
    const lf = logM - 1 / t, floor = gu < lf;
    loss = softplus((floor ? lf : gu) - a);
    rho = floor ? 0 : Math.exp(lr - l1t - a - loss);
    dlf = floor ? Math.exp(lf - a - loss) : 0;
    da = -dlf - rho;
  } else {
    const lnp = tau > 0 ? Math.log(tau) + logM + a + log1mexp(-Math.max(x, 0)) : -Infinity;
    const y = lnp - l1t - a;
    loss = pos ? softplus(gu - a) : y < 0 ? log1mexp(Math.min(y, 0)) : NaN;  // D <= 0: undefined
    rho = Math.exp(lr - l1t - a - loss);
    da = -rho;
    dlf = 0;
  }
  return { loss, da, ds: w.map((v) => rho * v), dlf };
}

function hcl(x, kw, p, cot, wantGrad) {
  const { B } = p, t = kw.temperature;
  // every row of z1, z2 and the bank, normalised: anchors and candidates index into this list
  const rows = [], owner = [];
  const add = (name, list) => list.forEach((r, i) => { rows.push(r); owner.push([name, i]); });
  add("z1", x.z1);
  add("z2", x.z2);
  const K = p.K;
  if (x.negatives) add("negatives", p.bank === "shared" ? x.negatives : x.negatives.flat());
  const norm = kw.normalize && DEFECT !== "no_normalization";
  const N = rows.map((r) => (norm ? normalize(r) : { u: r, back: (g) => g }));
  const lab = x.labels, nlab = x.negative_labels;
  const bankRows = (i) => {  // [row index, label] of anchor i's bank
    const out = [];
    for (let k = 0; k < K; k++) {
      const r = 2 * B + (p.bank === "shared" ? k : i * K + k);
      const l = nlab ? (p.bank === "shared" ? nlab[k] : nlab[i][k]) : null;
      out.push([r, l]);
    }
    return out;
  };
  const anchors = [];  // {i: anchor row, p: positive row, c: candidate rows}
  if (p.layout === "in_batch") {
    for (let i = 0; i < 2 * B; i++) {
      const partner = (i + B) % (2 * B), c = [];
      for (let j = 0; j < 2 * B; j++)
        if (j !== i && j !== partner && !(lab && lab[j % B] === lab[i % B])) c.push(j);
      anchors.push({ i, p: partner, c });
    }
  } else if (p.layout === "bank") {
    for (let i = 0; i < B; i++)
      anchors.push({ i, p: B + i, c: bankRows(i).filter(([, l]) => !(lab && l === lab[i])).map(([r]) => r) });
  } else {
    for (let i = 0; i < B; i++) {
      const c = [];
      for (let j = 0; j < B; j++) if (j !== i && !(lab && lab[j] === lab[i])) c.push(B + j);
      if (x.negatives) for (const [r, l] of bankRows(i)) if (!(lab && l === lab[i])) c.push(r);
      anchors.push({ i, p: B + i, c });
    }
    if (kw.symmetric)
      for (let i = 0; i < B; i++) {
        const c = [];
        for (let j = 0; j < B; j++) if (j !== i && !(lab && lab[j] === lab[i])) c.push(j);
        anchors.push({ i: B + i, p: i, c });
      }
  }
  const res = anchors.map((an) => {
    const u = N[an.i].u, s = an.c.map((j) => dot(u, N[j].u) / t), a = dot(u, N[an.p].u) / t;
    return { s, a, ...anchor(s, a, t, kw.beta, kw.tau_plus, kw.estimator, kw.clamp) };
  });
  const loss = res.map((r) => r.loss), A = loss.length;
  const total = loss.reduce((x, y) => x + y, 0);
  const value = kw.reduction === "mean" ? total / A : kw.reduction === "sum" ? total : loss;
  if (!wantGrad) return { value };
  const c = kw.reduction === "none" ? cot : new Array(A).fill(kw.reduction === "mean" ? cot / A : cot);
  const gu = rows.map((r) => new Array(r.length).fill(0));
  let dt = 0;
  anchors.forEach((an, n) => {
    const r = res[n], cn = c[n];
    const ui = N[an.i].u, up = N[an.p].u;
    const ga = r.da * cn;
    dt += (-(ga * r.a) + r.dlf * cn / t) / t;
    for (let k = 0; k < ui.length; k++) { gu[an.i][k] += (ga * up[k]) / t; gu[an.p][k] += (ga * ui[k]) / t; }
    an.c.forEach((j, q) => {
      const g = r.ds[q] * cn, uj = N[j].u;
      dt -= (g * r.s[q]) / t;
      for (let k = 0; k < ui.length; k++) { gu[an.i][k] += (g * uj[k]) / t; gu[j][k] += (g * ui[k]) / t; }
    });
  });
  const gz = gu.map((g, r) => N[r].back(g));
  const grads = { z1: gz.slice(0, B), z2: gz.slice(B, 2 * B), negatives: null, temperature: dt };
  if (x.negatives) {
    const gb = gz.slice(2 * B);
    grads.negatives = p.bank === "shared" ? gb : Array.from({ length: B }, (_, i) => gb.slice(i * K, (i + 1) * K));
  }
  if (loss.some(Number.isNaN)) {  // an undefined anchor (clamp=false, D <= 0): every gradient is undefined
    for (const k of Object.keys(grads)) grads[k] = nanLike(grads[k]);
  }
  return { value, grads };
}

const nanLike = (v) => (v === null ? null : Array.isArray(v) ? v.map(nanLike) : NaN);
const round = (v, f) => (v === null ? null : Array.isArray(v) ? v.map((e) => round(e, f)) : f(v));

function answer(req) {
  if (req.fn !== "hcl_loss") return { unsupported: `${req.fn} is not implemented by this port` };
  const dt = req.dtypes.z1;
  if (dt === "float16" || dt === "bfloat16") return { unsupported: "this port computes float64 and float32 only" };
  let p;
  try {
    p = validate(req.shapes, req.dtypes, req.kwargs);
  } catch (e) {
    if (e instanceof SpecError) return { error: { type: e.type, message: e.message } };
    throw e;
  }
  const x = req.inputs, kw = req.kwargs;
  const f = dt === "float32" ? Math.fround : (v) => v;
  const finite = ["z1", "z2", "negatives"].every((k) => !x[k] || x[k].flat(2).every(Number.isFinite));
  let out;
  if (!finite) {  // spec section 6: a non-finite input element makes every output NaN
    const nA = p.layout === "bank" || (p.layout === "cross" && !kw.symmetric) ? p.B : 2 * p.B;
    out = { value: kw.reduction === "none" ? new Array(nA).fill(NaN) : NaN,
            grads: { z1: nanLike(x.z1), z2: nanLike(x.z2), negatives: nanLike(x.negatives || null), temperature: NaN } };
  } else {
    out = hcl(x, kw, p, req.cotangent, req.grad);
  }
  const resp = { value: round(out.value, f) };
  if (req.grad) {
    resp.grads = { z1: round(out.grads.z1, f), z2: round(out.grads.z2, f), negatives: round(out.grads.negatives, f) };
    if (req.grad_temperature) resp.grads.temperature = f(out.grads.temperature);
  }
  return resp;
}

const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on("line", (line) => {
  if (!line.trim()) return;
  const req = JSON.parse(line, reviver);
  process.stdout.write(JSON.stringify({ id: req.id, ...answer(req) }, replacer) + "\n");
});
