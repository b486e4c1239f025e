r"""The two random views of each 1-D signal: crop-and-resize with a shift, amplitude scaling, noise.

Implemented once, in NumPy, from a seeded ``numpy.random.Generator`` (the same views for every method).
For each signal :math:`x \in \mathbb{R}^L` (L = 40), independently:

1. **Crop and resize**: a window whose length is a fraction ``s ~ U(CROP_LENGTH)`` of the signal, centred
   at a uniformly random position inside it, is stretched back to L samples, and the result is moved by
   ``delta ~ U(-SHIFT, SHIFT)`` samples. One linear resampling does both: output sample ``i`` reads

   .. math::

       \mathrm{src}_i = c + s\,(i - \tfrac{L-1}{2}) - \delta,\qquad
       c \sim U\big(\tfrac{L-1}{2} - \tfrac{(1-s)L}{2},\ \tfrac{L-1}{2} + \tfrac{(1-s)L}{2}\big),

   with linear interpolation between neighbouring samples, and positions outside [0, L-1] read the nearest
   end sample (MNIST-1D's background is correlated noise, not zero, so zero padding would add a step).
2. **Amplitude**: multiply by ``a ~ U(AMPLITUDE)``.
3. **Noise**: add ``N(0, NOISE_STD^2)`` to every sample (the signals have standard deviation 1).

Random numbers are drawn in a fixed order per call (s, c, delta, a, then the noise, each for all signals),
so a seed fully determines the views. These settings were fixed before any method was compared
(docs/reproduce.md).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["CROP_LENGTH", "SHIFT", "AMPLITUDE", "NOISE_STD", "resample_weights", "augment", "two_views"]

#: Range of the crop window's length, as a fraction of the signal length (1.0 = no crop).
CROP_LENGTH: Tuple[float, float] = (0.7, 1.0)
#: Maximum shift in samples.
SHIFT: float = 3.0
#: Range of the amplitude factor.
AMPLITUDE: Tuple[float, float] = (0.8, 1.2)
#: Standard deviation of the additive Gaussian noise (the data have standard deviation 1).
NOISE_STD: float = 0.1


def resample_weights(src: np.ndarray, length: int) -> np.ndarray:
    """Linear-interpolation matrices with edge clamping.

    Parameters
    ----------
    src : float array, shape (N, L_out)
        Source position of every output sample.
    length : int
        Input length L_in.

    Returns
    -------
    float64 array, shape (N, L_out, L_in): ``out[n] = W[n] @ x[n]``; each row sums to 1.
    """
    pos = np.clip(np.asarray(src, dtype=np.float64), 0.0, length - 1.0)
    p = np.arange(length, dtype=np.float64)
    return np.maximum(0.0, 1.0 - np.abs(pos[:, :, None] - p[None, None, :]))


def augment(signals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random view of each signal.

    Parameters
    ----------
    signals : float array, shape (N, L)
    rng : numpy.random.Generator
        Source of all randomness; advanced by this call.

    Returns
    -------
    float32 array, shape (N, L)
    """
    x = np.asarray(signals, dtype=np.float64)
    n, length = x.shape
    lo, hi = CROP_LENGTH
    s = rng.uniform(lo, hi, size=n)
    mid = (length - 1) / 2
    c = mid + rng.uniform(-1.0, 1.0, size=n) * 0.5 * (1.0 - s) * length
    delta = rng.uniform(-SHIFT, SHIFT, size=n)
    amp = rng.uniform(AMPLITUDE[0], AMPLITUDE[1], size=n)
    i = np.arange(length, dtype=np.float64) - mid
    w = resample_weights(c[:, None] + s[:, None] * i[None, :] - delta[:, None], length)
    out = np.einsum("nip,np->ni", w, x) * amp[:, None]
    out += rng.normal(0.0, NOISE_STD, size=out.shape)
    return out.astype(np.float32)


def two_views(signals: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Two independent random views of each signal (the positive pairs)."""
    return augment(signals, rng), augment(signals, rng)
