"""Which tensors are grids of the image: the rule the exporter and the torch target search share.

A vision transformer's tokens ``[N, T, D]`` are P prefix tokens (class, distillation, register)
then an h × w grid of patches, row-major, with h = H/s, w = W/s for the patch stride s of the
image [H, W]. The grid is the one with the fewest prefix tokens (at most ``MAX_PREFIX``) among
the strides that divide the image.
"""
from __future__ import annotations

MAX_PREFIX = 16
STRIDES = (1, 2, 4, 7, 8, 14, 16, 28, 32, 56, 64)


def token_grid(tokens: int, image_hw: tuple[int, int]) -> tuple[int, tuple[int, int]] | None:
    """(prefix, (h, w)) for ``tokens`` = prefix + h·w patches of an image ``image_hw``, or None
    when no patch stride fits."""
    H, W = image_hw
    best = None
    for s in STRIDES:
        if H % s or W % s:
            continue
        prefix = tokens - (H // s) * (W // s)
        if 0 <= prefix <= MAX_PREFIX and (best is None or prefix < best[0]):
            best = (prefix, (H // s, W // s))
    return best
