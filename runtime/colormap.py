"""Colormaps as 256-entry numpy look-up tables (no matplotlib) and heatmap overlays."""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from onnxcam.runtime.resize import resize_bilinear

# Turbo (Anton Mikhailov, Google 2019, Apache-2.0): the published 256-entry table, rounded to
# 8 bits and stored as hex RGB triplets (identical to matplotlib's "turbo" at t = i/255).
_TURBO_HEX = (
    "30123b32154333184a341b51351e5836215f37246638276d392a733a2d793b2f803c32863d358b3e38913f3b"
    "973f3e9c4040a24143a74146ac4249b1424bb5434eba4451bf4454c34456c74559cb455ccf455ed34661d646"
    "64da4666dd4669e0466be3476ee64771e94773eb4776ee4778f0477bf2467df44680f64682f84685fa4687fb"
    "458afc458cfd448ffe4391fe4294ff4196ff4099ff3e9bfe3d9efe3ba0fd3aa3fc38a5fb37a8fa35abf833ad"
    "f731aff52fb2f42eb4f22cb7f02ab9ee28bceb27bee925c0e723c3e422c5e220c7df1fc9dd1ecbda1ccdd81b"
    "d0d51ad2d21ad4d019d5cd18d7ca18d9c818dbc518ddc218dec018e0bd19e2bb19e3b91ae4b61ce6b41de7b2"
    "1fe9af20eaac22ebaa25eca727eea42aefa12cf09e2ff19b32f29835f39438f4913cf58e3ff68a43f78746f8"
    "844af8804ef97d52fa7a55fa7659fb735dfc6f61fc6c65fd6969fd666dfe6271fe5f75fe5c79fe597dff5680"
    "ff5384ff5188ff4e8bff4b8fff4992ff4796fe4499fe429cfe409ffd3fa1fd3da4fc3ca7fc3aa9fb39acfb38"
    "affa37b1f936b4f836b7f735b9f635bcf534bef434c1f334c3f134c6f034c8ef34cbed34cdec34d0ea34d2e9"
    "35d4e735d7e535d9e436dbe236dde037dfdf37e1dd37e3db38e5d938e7d739e9d539ebd339ecd13aeecf3aef"
    "cd3af1cb3af2c93af4c73af5c53af6c33af7c13af8be39f9bc39faba39fbb838fbb637fcb336fcb136fdae35"
    "fdac34fea933fea732fea431fea130fe9e2ffe9b2dfe992cfe962bfe932afe9029fd8d27fd8a26fc8725fc84"
    "23fb8122fb7e21fa7b1ff9781ef9751df8721cf76f1af66c19f56918f46617f36315f26014f15d13f05b12ef"
    "5811ed5510ec530feb500eea4e0de84b0ce7490ce5470be4450ae2430ae14109df3f08dd3d08dc3b07da3907"
    "d83706d63506d43305d23105d02f05ce2d04cc2b04ca2a04c82803c52603c32503c12302be2102bc2002b91e"
    "02b71d02b41b01b21a01af1801ac1701a91601a71401a41301a112019e10019b0f01980e01950d01920b018e"
    "0a018b09028808028507028106027e05027a0403"
)

# Jet as matplotlib defines it: per channel, piecewise-linear through (t, value) knots.
_JET_KNOTS = (
    ((0.0, 0.35, 0.66, 0.89, 1.0), (0.0, 0.0, 1.0, 1.0, 0.5)),
    ((0.0, 0.125, 0.375, 0.64, 0.91, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)),
    ((0.0, 0.11, 0.34, 0.65, 1.0), (0.5, 1.0, 1.0, 0.0, 0.0)),
)


def turbo_lut() -> np.ndarray:
    """Turbo as uint8 [256, 3] (entry i is the colour of t = i/255)."""
    return np.frombuffer(bytes.fromhex(_TURBO_HEX), dtype=np.uint8).reshape(256, 3).copy()


def jet_lut() -> np.ndarray:
    """Jet as uint8 [256, 3]: channel c at t = i/255 is np.interp(t, knots_c, values_c)."""
    t = np.linspace(0.0, 1.0, 256)
    rgb = np.stack([np.interp(t, xs, ys) for xs, ys in _JET_KNOTS], axis=1)
    return np.rint(rgb * 255).astype(np.uint8)


COLORMAPS = {"turbo": turbo_lut, "jet": jet_lut}
_CHUNK_PIXELS = 1 << 20


def colorize(heatmap: np.ndarray, colormap: str = "turbo") -> np.ndarray:
    """Heatmap [H, W] in [0, 1] → uint8 RGB [H, W, 3] via LUT[round(255·clip(h, 0, 1))]."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose from {sorted(COLORMAPS)}")
    idx = np.rint(np.clip(np.nan_to_num(np.asarray(heatmap, np.float32)), 0, 1) * 255).astype(np.intp)
    return _lut(colormap)[idx]


@functools.lru_cache(maxsize=None)
def _lut(colormap: str) -> np.ndarray:
    lut = COLORMAPS[colormap]()
    lut.flags.writeable = False
    return lut


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.5,
            colormap: str = "turbo") -> Image.Image:
    """Blend a coloured heatmap onto ``image``: out = (1 − α)·image + α·colormap(heatmap).

    ``heatmap`` [h, w] in [0, 1] is resized bilinearly to the image size when it differs.
    Returns an RGB PIL image of the image's size.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = np.asarray(image.convert("RGB"), dtype=np.uint8)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be [H, W], got shape {heatmap.shape}")
    if heatmap.shape != base.shape[:2]:
        heatmap = resize_bilinear(heatmap[None], base.shape[:2])[0]
    out = np.empty_like(base)
    rows = max(1, _CHUNK_PIXELS // max(1, base.shape[1]))  # float32 work in bounded blocks of rows
    for top in range(0, base.shape[0], rows):
        block = slice(top, top + rows)
        colored = colorize(heatmap[block], colormap).astype(np.float32)
        mixed = (1.0 - alpha) * base[block].astype(np.float32) + alpha * colored
        out[block] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")
