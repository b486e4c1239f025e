r"""A CLIP-style dual encoder with hard negatives and a learned temperature, in JAX + optax.

Dependencies: jax, optax, numpy  (``pip install -e ".[jax]" optax``). Nothing is downloaded: the data are
synthetic.

Run: ``python examples/clip_jax_optax.py`` — about 10 s on 2 CPU cores (measured: 7.7 s wall, load 2.1; 20 s at load 8).

What it does
------------
1. Makes paired data with a shared cause: a latent vector c ~ N(0, I₈) per pair is seen through two different
   random nonlinear "sensors", an "image" x = tanh(c A) + noise (48-d) and a "text" y = tanh(c B) + noise (32-d),
   where A and B are fixed random matrices. Only the pairing says which image goes with which text.
2. Trains two MLP encoders (image: 48 -> 128 -> 32, text: 32 -> 128 -> 32) with
   ``hardneg_jax.hcl_loss(img, txt, layout="cross", symmetric=True, temperature=t)``: each image is an anchor
   against every text of the batch and each text against every image (CLIP's two directions), with the
   hard-negative reweighting (β = 1). τ⁺ = 0: every latent is distinct, so no "negative" shares the anchor's
   content and there is nothing to debias.
3. Learns the temperature as CLIP does: the trainable parameter is ``log_scale = log(1/t)`` (initialised at
   t = 0.07), t = exp(-log_scale) is passed to the loss as a *traced* scalar, and ``jax.grad`` differentiates
   the loss with respect to it (spec 1.1; hardneg's closed-form d loss / d t). As in CLIP, t is kept >= 0.01
   (the logit scale capped at 100).
4. Scores retrieval on 500 held-out pairs: for each held-out image, is its own text the most similar of the
   500 (and the reverse)? Chance is 1/500.

What it shows
-------------
Held-out top-1 retrieval accuracy before training (random encoders) and after, and the learned temperature.
The last line is ``RESULT {...}`` (JSON), read by tests/test_examples.py.

Threshold: 0.5. Chance is 1/500 = 0.002. Measured with this script and seeds 0, 1, 2 (data and weights; seed
0 is the one it uses): the random encoders retrieve 0.000, 0.001, 0.003 — chance level — and the trained ones
0.893, 0.866, 0.888, with the temperature learned down from 0.07 to about 0.017. 0.5 is far above anything an
encoder that did not learn the pairing reaches, and leaves a wide margin below the trained runs for other BLAS
builds and JAX versions.
"""

from __future__ import annotations

import itertools
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hardneg_jax

LATENT, IMG_DIM, TXT_DIM, EMBED = 8, 48, 32, 32
N_TRAIN, N_TEST = 8192, 500
BATCH, STEPS = 256, 1500
NOISE = 0.3
INIT_T, MIN_T = 0.07, 0.01     # CLIP's initial temperature and its cap on the logit scale (100)
BETA, TAU_PLUS = 1.0, 0.0
THRESHOLD = 0.5
CHANCE = 1.0 / N_TEST


def make_pairs(rng: np.random.Generator, n: int, a: np.ndarray, b: np.ndarray):
    """n pairs sharing a latent: images (n, IMG_DIM) and texts (n, TXT_DIM), float32."""
    c = rng.standard_normal((n, LATENT))
    x = np.tanh(c @ a) + NOISE * rng.standard_normal((n, IMG_DIM))
    y = np.tanh(c @ b) + NOISE * rng.standard_normal((n, TXT_DIM))
    return x.astype(np.float32), y.astype(np.float32)


def init_mlp(key, sizes):
    """[(W, b), ...] with PyTorch's default scale U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        key, kw, kb = jax.random.split(key, 3)
        bound = 1.0 / math.sqrt(fan_in)
        params.append((jax.random.uniform(kw, (fan_in, fan_out), minval=-bound, maxval=bound),
                       jax.random.uniform(kb, (fan_out,), minval=-bound, maxval=bound)))
    return params


def mlp(params, x):
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def temperature(params):
    """t = exp(-log_scale), kept >= MIN_T as CLIP caps its logit scale (no gradient while capped)."""
    return jnp.exp(-jnp.minimum(params["log_scale"], math.log(1.0 / MIN_T)))


def loss_fn(params, x, y):
    img, txt = mlp(params["image"], x), mlp(params["text"], y)
    # A traced temperature: the loss is differentiable in it (spec 1.1); beta and tau_plus could be traced too.
    return hardneg_jax.hcl_loss(img, txt, layout="cross", symmetric=True, temperature=temperature(params),
                                beta=BETA, tau_plus=TAU_PLUS)


optimizer = optax.adam(1e-3)


@jax.jit
def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@jax.jit
def retrieval_accuracy(params, x, y):
    """Top-1 held-out retrieval, image -> text and text -> image averaged: is the partner the nearest (cosine)?"""
    img = mlp(params["image"], x)
    txt = mlp(params["text"], y)
    img = img / jnp.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / jnp.linalg.norm(txt, axis=1, keepdims=True)
    sim = img @ txt.T
    target = jnp.arange(x.shape[0])
    return 0.5 * (jnp.mean(jnp.argmax(sim, axis=1) == target) + jnp.mean(jnp.argmax(sim, axis=0) == target))


def main() -> None:
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((LATENT, IMG_DIM)) / math.sqrt(LATENT)
    b = rng.standard_normal((LATENT, TXT_DIM)) / math.sqrt(LATENT)
    x_train, y_train = make_pairs(rng, N_TRAIN, a, b)
    x_test, y_test = make_pairs(rng, N_TEST, a, b)

    k_img, k_txt = jax.random.split(jax.random.key(0))
    params = {"image": init_mlp(k_img, [IMG_DIM, 128, EMBED]), "text": init_mlp(k_txt, [TXT_DIM, 128, EMBED]),
              "log_scale": jnp.asarray(math.log(1.0 / INIT_T), jnp.float32)}
    opt_state = optimizer.init(params)
    before = float(retrieval_accuracy(params, x_test, y_test))

    for step in range(1, STEPS + 1):
        idx = rng.choice(N_TRAIN, BATCH, replace=False)
        params, opt_state, loss = train_step(params, opt_state, x_train[idx], y_train[idx])
        if step == 1 or step % 250 == 0:
            print(f"step {step:5d}  loss {float(loss):.4f}  temperature {float(temperature(params)):.4f}")

    after = float(retrieval_accuracy(params, x_test, y_test))
    print(f"held-out top-1 retrieval among {N_TEST} pairs: random encoders {before:.3f}, trained {after:.3f} "
          f"(chance {CHANCE:.3f}); learned temperature {float(temperature(params)):.4f}; "
          f"{time.perf_counter() - start:.1f} s")
    print("RESULT " + json.dumps({"metric": "retrieval_top1_accuracy", "value": after, "chance": CHANCE,
                                  "threshold": THRESHOLD}))


if __name__ == "__main__":
    main()
