r"""The two random views of each image: a random crop (zoom), a random shift and additive Gaussian noise.

Implemented once, in NumPy, from a seeded ``numpy.random.Generator``, so every backend and every method
trains on bit-identical views.

For each image, independently:

1. **Crop** a square window whose side is a fraction ``s ~ U(CROP_SIDE)`` of the image side, at a uniformly
   random position inside the image, and resize it back to 8x8 (a zoom by 1/s).
2. **Shift** the result by ``(dy, dx) ~ U(-SHIFT, SHIFT)`` pixels on each axis (sub-pixel; zeros enter from
   the border, the digits' background).
3. **Noise**: add ``N(0, NOISE_STD^2)`` independently to every pixel (pixel values are in [0, 1]).

Steps 1-2 are one axis-aligned affine resampling with bilinear interpolation and zero padding. Output pixel
``i`` (pixel centres at 0..7, image centre 3.5) reads the input at

.. math::

    \mathrm{src}_i = c + s\,(i - 3.5) - \delta,\qquad c \sim U(3.5 - 4(1-s),\; 3.5 + 4(1-s)),

per axis (``c`` the crop centre, ``delta`` the shift), and the bilinear weight of input pixel ``p`` is
``max(0, 1 - |src_i - p|)``. Rows and columns are separable, so a view is ``Wr @ X @ Wc^T`` with two
(8 x 8) weight matrices per image.

Random numbers are drawn in a fixed order (per view: s, c_y, c_x, d_y, d_x, then the noise), so a seed
fully determines the views.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["CROP_SIDE", "SHIFT", "NOISE_STD", "augment", "two_views"]

#: Range of the crop window's side, as a fraction of the image side (1.0 = no crop).
CROP_SIDE: Tuple[float, float] = (0.6, 1.0)
#: Maximum shift in pixels along each axis.
SHIFT: float = 1.0
#: Standard deviation of the additive Gaussian pixel noise (pixels are in [0, 1]).
NOISE_STD: float = 0.1


def _bilinear_weights(src: np.ndarray, size: int) -> np.ndarray:
    """Interpolation matrices: (N, size) source coordinates -> (N, size_out, size_in) weights."""
    p = np.arange(size, dtype=np.float64)
    return np.maximum(0.0, 1.0 - np.abs(src[:, :, None] - p[None, None, :]))


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random view of each image.

    Parameters
    ----------
    images : float array, shape (N, H, W)
        Pixel values in [0, 1] (the digits are 8x8).
    rng : numpy.random.Generator
        Source of all randomness; advanced by this call.

    Returns
    -------
    float32 array, shape (N, H, W)
    """
    x = np.asarray(images, dtype=np.float64)
    n, h, w = x.shape
    lo, hi = CROP_SIDE
    s = rng.uniform(lo, hi, size=n)
    half_room = 0.5 * (1.0 - s)  # the crop centre may move by (1 - s) * size / 2 either way
    cy = (h - 1) / 2 + rng.uniform(-1.0, 1.0, size=n) * half_room * h
    cx = (w - 1) / 2 + rng.uniform(-1.0, 1.0, size=n) * half_room * w
    dy = rng.uniform(-SHIFT, SHIFT, size=n)
    dx = rng.uniform(-SHIFT, SHIFT, size=n)
    iy = np.arange(h, dtype=np.float64) - (h - 1) / 2
    ix = np.arange(w, dtype=np.float64) - (w - 1) / 2
    wr = _bilinear_weights(cy[:, None] + s[:, None] * iy[None, :] - dy[:, None], h)
    wc = _bilinear_weights(cx[:, None] + s[:, None] * ix[None, :] - dx[:, None], w)
    out = np.einsum("nip,npq,njq->nij", wr, x, wc, optimize=True)
    out += rng.normal(0.0, NOISE_STD, size=out.shape)
    return out.astype(np.float32)


def two_views(images: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Two independent random views of each image (the positive pairs): ``(augment(x), augment(x))``."""
    return augment(images, rng), augment(images, rng)
