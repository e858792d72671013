"""Image loading (odd modes, bad files, decompression bombs), preprocessing, geometry, overlays."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from test_runtime_toygraph import photos

from onnxcam.runtime import ImageError, PreprocessSpec, heatmap_to_original, load_image, overlay, preprocess
from onnxcam.runtime.colormap import colorize, jet_lut, turbo_lut
from onnxcam.runtime.images import MAX_PIXELS, preprocess_image

IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def photo(name: str = "chelsea") -> Image.Image:
    """A real photo from skimage.data (a synthetic one of the same size without scikit-image)."""
    return photos()[("chelsea", "coffee", "astronaut").index(name)]


# -- odd modes -------------------------------------------------------------------------------------
def test_grey_and_bilevel_become_rgb(tmp_path):
    grey = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, "L")
    grey.save(tmp_path / "g.png")
    rgb = load_image(tmp_path / "g.png")
    assert rgb.mode == "RGB" and rgb.size == (4, 3)
    np.testing.assert_array_equal(np.asarray(rgb)[..., 1], np.asarray(grey))
    assert np.asarray(load_image(Image.new("1", (5, 2), 1))).min() == 255


def test_palette_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    a = np.asarray(load_image(tmp_path / "p.png"))
    assert tuple(a[0, 0]) == (255, 0, 0) and tuple(a[0, 1]) == (0, 0, 255)
    pal.info["transparency"] = 0  # palette index 0 (red) is transparent → white
    pal.save(tmp_path / "pt.png", transparency=0)
    a = np.asarray(load_image(tmp_path / "pt.png"))
    assert tuple(a[0, 0]) == (255, 255, 255) and tuple(a[0, 1]) == (0, 0, 255)


def test_rgba_and_la_are_composited_on_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)   # opaque
    rgba[0, 1] = (200, 0, 0, 0)      # fully transparent
    rgba[0, 2] = (0, 0, 0, 128)      # half-transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = np.asarray(load_image(tmp_path / "a.png")).astype(int)
    assert tuple(a[0, 0]) == (10, 20, 30) and tuple(a[0, 1]) == (255, 255, 255)
    assert np.abs(a[0, 2] - 127).max() <= 1
    la = Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), "LA")
    assert np.asarray(load_image(la))[0, :, 0].tolist() == [255, 50]


def test_cmyk_becomes_rgb(tmp_path):
    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(tmp_path / "c.tif")
    a = np.asarray(load_image(tmp_path / "c.tif"))
    assert a.shape == (2, 3, 3) and tuple(a[0, 0]) == (255, 0, 0)


def test_16_bit_grey_is_scaled_to_8_bit(tmp_path):
    a16 = np.array([[0, 65535, 128 * 257, 1000]], np.uint16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    a = np.asarray(load_image(tmp_path / "g16.png"))
    assert a[0, :, 0].tolist() == [0, 255, 128, 4]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    assert np.asarray(load_image(f))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)   # left half red
    a[:, 20:] = (0, 0, 255)   # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(a).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    img = load_image(tmp_path / "r.jpg")
    assert img.size == (20, 40)  # width and height swapped
    top, bottom = np.asarray(img)[:10].mean((0, 1)), np.asarray(img)[30:].mean((0, 1))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # red went to the top


# -- bad files -------------------------------------------------------------------------------------
def _bad(path, message):
    with pytest.raises(ImageError, match=message) as info:
        load_image(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    return text


def test_bad_files_give_one_clear_line(tmp_path):
    photo().save(tmp_path / "ok.png")
    photo().save(tmp_path / "ok.jpg")
    data_png, data_jpg = (tmp_path / "ok.png").read_bytes(), (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a picture\n")
    (tmp_path / "random.png").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "trunc.png").write_bytes(data_png[: len(data_png) // 2])
    (tmp_path / "trunc.jpg").write_bytes(data_jpg[: len(data_jpg) // 3])
    (tmp_path / "header_only.png").write_bytes(data_png[:60])
    _bad(tmp_path / "empty.jpg", "empty file")
    _bad(tmp_path / "notes.txt", "not an image file")
    _bad(tmp_path / "random.png", "not an image file")
    _bad(tmp_path / "trunc.png", "corrupt or truncated")
    _bad(tmp_path / "trunc.jpg", "corrupt or truncated")
    _bad(tmp_path / "header_only.png", "corrupt or truncated")
    _bad(tmp_path / "missing.png", "no such file")
    _bad(tmp_path, "is a directory")
    assert load_image(tmp_path / "ok.png").size == (451, 300)


def _png_claiming(path, width: int, height: int) -> None:
    """A valid 1×1 PNG whose IHDR is rewritten to claim width×height (a few hundred bytes)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of header
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("width, height", [(10_000, 10_000), (20_000, 10_000), (100_000, 100_000)])
def test_decompression_bomb_is_refused(tmp_path, width, height):
    _png_claiming(tmp_path / "bomb.png", width, height)
    assert (tmp_path / "bomb.png").stat().st_size < 200
    text = _bad(tmp_path / "bomb.png", "decompression-bomb guard")
    assert "too many pixels" in text or f"{width}x{height}" in text


def test_huge_pil_image_and_custom_limit():
    with pytest.raises(ImageError, match="10000x9000 = 90.0 megapixels"):
        load_image(Image.new("1", (10_000, 9_000)))
    assert 89e6 < MAX_PIXELS < 90e6
    with pytest.raises(ImageError, match="above the limit of 0.0"):
        load_image(Image.new("RGB", (200, 100)), max_pixels=10_000)


# -- preprocessing and geometry --------------------------------------------------------------------
def test_preprocess_equals_torchvision_resize_crop_normalize():
    tv = pytest.importorskip("torchvision.transforms")
    img = photo()
    spec = PreprocessSpec(size=(224, 224), resize=256, **IMAGENET)
    x, geo = preprocess_image(img, spec)
    ref = tv.Compose([tv.Resize(256), tv.CenterCrop(224), tv.ToTensor(), tv.Normalize(**IMAGENET)])(img).numpy()
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x, ref, atol=1e-5)
    assert geo.original_size == (300, 451) and geo.resized_size == (256, 384)
    assert geo.crop_offset == (16, 80) and geo.input_size == (224, 224)


def test_preprocess_pads_when_the_crop_is_larger_than_the_resized_image():
    tv = pytest.importorskip("torchvision.transforms")
    img = photo("coffee")  # 400×600
    spec = PreprocessSpec(size=(150, 157), resize=101)
    x, geo = preprocess_image(img, spec)
    ref = tv.Compose([tv.Resize(101), tv.CenterCrop((150, 157)), tv.ToTensor()])(img).numpy()
    np.testing.assert_allclose(x, ref, atol=1e-6)
    assert geo.resized_size == (101, 151) and geo.crop_offset == (-24, -3)


def test_layout_color_scale_and_direct_resize():
    img = photo()
    spec = PreprocessSpec(layout="NHWC", color="BGR", size=(32, 48), resize=None, scale=2.0,
                          mean=[1.0, 2.0, 3.0], std=[2.0, 4.0, 8.0])
    x, geo = preprocess_image(img, spec)
    pix = np.asarray(img.resize((48, 32), Image.BILINEAR), np.float32)[..., ::-1]
    np.testing.assert_allclose(x, (pix * 2.0 - [1, 2, 3]) / [2, 4, 8], rtol=1e-6)
    assert x.shape == (32, 48, 3) and geo.resized_size == (32, 48) and geo.crop_offset == (0, 0)
    spec_json = PreprocessSpec.from_json('{"layout": "NHWC", "color": "BGR", "size": [32, 48], "resize": null, '
                                         '"scale": 2.0, "mean": [1, 2, 3], "std": [2, 4, 8]}')
    assert spec_json == spec
    with pytest.raises(ValueError, match="bad onnxcam.preprocess"):
        PreprocessSpec.from_json('{"layout": "NCWH", "size": [1, 2]}')


def test_batch_preprocess_reports_the_bad_file(tmp_path):
    photo().save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    x, geos = preprocess([tmp_path / "a.png", photo("astronaut")], PreprocessSpec(size=(64, 64), resize=72))
    assert x.shape == (2, 3, 64, 64) and geos[1].original_size == (512, 512)
    with pytest.raises(ImageError, match="b.png: empty file"):
        preprocess([tmp_path / "a.png", tmp_path / "b.png"], PreprocessSpec())


@pytest.mark.parametrize("resize, size", [(256, (224, 224)), (None, (224, 224)), (230, (200, 260)), (90, (120, 100))])
def test_heatmap_maps_back_onto_the_original_photo(resize, size):
    """Round trip: a map drawn on the photo, carried to model resolution by the very same
    preprocessing, comes back where it was; areas outside the crop come back as 0."""
    h0, w0 = 300, 451
    yy, xx = np.mgrid[0:h0, 0:w0]
    truth = (np.sin(yy / 40.0) * np.cos(xx / 55.0) + 1) / 2  # smooth, in [0, 1]
    spec = PreprocessSpec(size=size, resize=resize, scale=1 / 255)
    img = Image.fromarray(np.rint(np.repeat(truth[..., None], 3, 2) * 255).astype(np.uint8))
    x, geo = preprocess_image(img, spec)
    back = heatmap_to_original(x[0], geo)
    assert back.shape == (h0, w0) and back.dtype == np.float32
    (hr, wr), (top, left) = geo.resized_size, geo.crop_offset
    sy, sx = h0 / hr, w0 / wr
    inside = np.zeros((h0, w0), bool)
    inside[int(np.ceil(max(top, 0) * sy)) + 2:int((min(top + size[0], hr)) * sy) - 2,
           int(np.ceil(max(left, 0) * sx)) + 2:int((min(left + size[1], wr)) * sx) - 2] = True
    assert inside.mean() > 0.3
    assert np.abs(back[inside] - truth[inside]).max() < 0.03
    outside = np.ones((h0, w0), bool)
    outside[max(int((top - 1) * sy), 0):int((top + size[0] + 1) * sy) + 1,
            max(int((left - 1) * sx), 0):int((left + size[1] + 1) * sx) + 1] = False
    assert not outside.any() or np.abs(back[outside]).max() == 0
    with pytest.raises(ValueError, match="model input size"):
        heatmap_to_original(np.zeros((5, 5)), geo)


# -- overlays ----------------------------------------------------------------------------------------
def test_colormaps_equal_matplotlibs():
    mpl = pytest.importorskip("matplotlib")
    t = np.linspace(0, 1, 256)
    for name, lut in (("turbo", turbo_lut()), ("jet", jet_lut())):
        ref = mpl.colormaps[name](t)[:, :3] * 255
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
        assert np.abs(lut - ref).max() <= 0.5 + 1e-9


def test_overlay_blends_and_resizes():
    img = photo()
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (32, 1))
    out = overlay(img, ramp, alpha=0.5)
    assert out.size == img.size and out.mode == "RGB"
    big = np.asarray(img, np.float32)
    colored = colorize(heatmap_to_original_free_resize(ramp, img.size), "turbo").astype(np.float32)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.rint(0.5 * big + 0.5 * colored), atol=1)
    assert np.array_equal(np.asarray(overlay(img, ramp, alpha=0.0)), np.asarray(img))
    only = np.asarray(overlay(img, np.ones((300, 451), np.float32), alpha=1.0, colormap="jet"))
    assert (only == jet_lut()[255]).all()
    with pytest.raises(ValueError, match="unknown colormap"):
        overlay(img, ramp, colormap="viridis-ish")
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, ramp, alpha=1.5)


def heatmap_to_original_free_resize(heatmap, size_wh):
    from onnxcam.runtime.resize import resize_bilinear
    return resize_bilinear(heatmap[None], (size_wh[1], size_wh[0]))[0]
