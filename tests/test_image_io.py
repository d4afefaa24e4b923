import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from leafnet.serving.image_io import Deadline, RejectedImage, decode_image, decode_upload, encode_png, fit_square
from leafnet.serving.requests import status_of


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _reason(data: bytes, **kwargs) -> str:
    with pytest.raises(RejectedImage) as error:
        decode_image(data, **kwargs)
    return str(error.value)


def test_rejects_empty_text_truncated_tiny_and_huge_inputs():
    png = _encode(Image.new("RGB", (64, 64), (10, 200, 30)), "PNG")
    jpeg = _encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    assert _reason(b"") == "empty file"
    assert _reason(b"just some text, named .jpg").startswith("not an image")
    assert _reason(png[: len(png) // 2]).startswith("corrupt or truncated")
    assert _reason(jpeg[: len(jpeg) // 2]).startswith("corrupt or truncated")
    assert _reason(_encode(Image.new("L", (8, 40)), "PNG")).startswith("too small")
    bomb = _encode(Image.new("1", (8000, 8000)), "PNG")  # 64 MP that compresses to a few kB
    assert len(bomb) < 100_000
    assert _reason(bomb, max_pixels=1_000_000).startswith("too large")


def test_alpha_is_composited_over_the_background():
    rgba = Image.new("RGBA", (32, 32), (255, 255, 255, 0))
    rgba.paste((255, 255, 255, 255), (8, 8, 24, 24))
    image = decode_image(_encode(rgba, "PNG"), background=(0, 0, 0))
    pixels = np.asarray(image)
    assert image.mode == "RGB"
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[16, 16].tolist() == [255, 255, 255]
    la = decode_image(_encode(rgba.convert("LA"), "PNG"), background=(7, 7, 7))
    assert np.asarray(la)[0, 0].tolist() == [7, 7, 7]


def test_palette_sixteen_bit_cmyk_and_bilevel_become_rgb():
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert np.asarray(decode_image(_encode(palette, "PNG")))[0, 0].tolist() == [200, 100, 50]

    deep = Image.fromarray(np.full((32, 32), 65535, dtype=np.uint16))
    assert np.asarray(decode_image(_encode(deep, "PNG")))[0, 0].tolist() == [255, 255, 255]
    mid = Image.fromarray(np.full((32, 32), 257 * 100, dtype=np.uint16))
    assert np.asarray(decode_image(_encode(mid, "PNG")))[0, 0].tolist() == [100, 100, 100]

    cmyk = Image.new("CMYK", (32, 32), (0, 0, 0, 0))
    assert np.asarray(decode_image(_encode(cmyk, "JPEG")))[0, 0].min() > 250
    assert decode_image(_encode(Image.new("1", (32, 32), 1), "PNG")).mode == "RGB"


def test_exif_orientation_is_applied_and_first_gif_frame_used():
    wide = Image.new("RGB", (60, 30), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    assert decode_image(_encode(wide, "JPEG", exif=exif)).size == (30, 60)

    frames = [Image.new("L", (32, 32), 255), Image.new("L", (32, 32), 0)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(decode_image(gif.getvalue())).min() == 255


@pytest.mark.parametrize("mode", ["pad", "shorter", "stretch"])
def test_fit_square_gives_the_requested_size(mode):
    image = Image.new("RGB", (90, 30), (255, 255, 255))
    out = fit_square(image, 24, mode, (0, 0, 0))
    assert out.size == (24, 24)
    pixels = np.asarray(out)
    if mode == "pad":  # letterbox keeps the 3:1 shape: top and bottom rows are background
        assert pixels[0].max() == 0 and pixels[12].min() == 255
    else:
        assert pixels.min() == 255


def test_png_encoding_is_byte_stable():
    image = Image.effect_noise((40, 40), 30).convert("RGB")
    assert encode_png(image) == encode_png(image.copy())


# Bounded cost per request: serving fits while decoding (docs/serving.md, Bounded cost per request).


def _noise(width: int, height: int, mode: str = "RGBA", seed: int = 0) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.random.default_rng(seed).integers(0, 65536, (height, width), dtype=np.uint16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "LA", "P", "I;16"])
@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_serving_fits_bit_for_bit_like_prepare_without_a_full_size_copy(mode, orientation):
    """decode_upload(fit=...) builds the letterbox square reduced and band by band; it must equal
    fit_square of the full-size image, for shapes that reduce (1203 px over a 32 px fit) and that do not."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    transparency = {"transparency": 3} if mode == "P" else {}
    background = (10, 200, 30)
    for width, height, fit in [(1203, 901, (32, "pad")), (450, 1999, (32, "pad")), (130, 97, (64, "pad")),
                               (1203, 901, (40, "shorter")), (2000, 333, (24, "stretch"))]:  # fmt: skip
        data = _encode(_noise(width, height, mode), "PNG", exif=exif, **transparency)
        expected = fit_square(decode_image(data, background=background), *fit, background)
        served, upload_size = decode_upload(data, background=background, fit=fit)
        assert np.array_equal(np.asarray(served), np.asarray(expected)), (width, height, fit)
        assert upload_size == ((height, width) if orientation in (6, 8) else (width, height))


def test_a_large_jpeg_decodes_at_the_smallest_dct_scale_the_fit_allows(monkeypatch):
    """Phone photos are JPEG: libjpeg decodes them at 1/8 scale when the fit needs no more, and the result
    stays at least what PIL's own resize would have reduced the full-size image to."""
    drafted = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        drafted.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    photo = _noise(2400, 1800, "RGB").resize((4800, 3600), Image.Resampling.BILINEAR)  # smooth, like a photo
    data = _encode(photo, "JPEG", quality=92)
    served, upload_size = decode_upload(data, fit=(32, "pad"))
    assert upload_size == (4800, 3600) and served.size == (32, 32)
    assert drafted == [(600, 450)]  # 1/8: the fit's resize box-reduces 4800 by int(4800 / 32 / 3) = 50 anyway
    assert max(drafted[0]) >= 3 * 32  # REDUCING_GAP x the fit size: what the resize still needs
    full = fit_square(decode_image(data), 32, "pad", (0, 0, 0))
    difference = np.abs(np.asarray(served, np.int16) - np.asarray(full, np.int16))
    assert difference.mean() < 1.0 and difference.max() <= 8  # DCT scaling against box-reducing the full image

    drafted.clear()
    small = _encode(_noise(160, 120, "RGB"), "JPEG")  # the fit needs every pixel: full size, prepare's pixels
    assert np.array_equal(
        np.asarray(decode_upload(small, fit=(64, "pad"))[0]),
        np.asarray(fit_square(decode_image(small), 64, "pad", (0, 0, 0))),
    )
    assert drafted == []


def test_sixteen_bit_grey_is_scaled_in_integers_to_its_eight_bit_picture():
    """A 16-bit gradient becomes the 8-bit picture it scales (within 1), with no float copy of the pixels:
    numpy allocations stay under a byte a pixel (the float64 path took 8 a pixel, several times)."""
    ramp = np.tile(np.arange(2048, dtype=np.uint32) * 65535 // 2047, (1024, 1)).astype(np.uint16)
    eight = np.rint(ramp / 257.0).astype(np.uint8)
    deep = _encode(Image.fromarray(ramp), "PNG")
    tracemalloc.start()
    try:
        decoded = decode_image(deep)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < ramp.size, peak  # under a byte a pixel: the band being scaled
    decoded = np.asarray(decoded)
    assert np.abs(decoded[..., 0].astype(int) - eight).max() <= 1 and (decoded[..., 0] == decoded[..., 2]).all()
    fitted = decode_upload(deep, fit=(32, "pad"))[0]
    reference = decode_upload(_encode(Image.fromarray(eight), "PNG"), fit=(32, "pad"))[0]
    assert np.abs(np.asarray(fitted, int) - np.asarray(reference, int)).max() <= 1


def test_the_pixel_cap_refuses_before_decoding_and_names_size_and_cap():
    """The header's size is checked before any pixel is decoded: a body that breaks right after its header
    is refused for its size, not as corrupt."""
    header_only = _encode(_noise(120, 80, "RGB"), "PNG")[:60]  # IHDR and the start of the pixel data
    with pytest.raises(RejectedImage) as refused:
        decode_upload(header_only, max_pixels=5_000, fit=(32, "pad"))
    assert (str(refused.value), refused.value.kind) == ("too large: 120x80 exceeds max_pixels=5000", "too_large")
    assert decode_upload(_encode(_noise(70, 70, "RGB"), "PNG"), max_pixels=5_000, fit=(32, "pad"))[0].size == (32, 32)
    assert status_of("too_large") == 413


def test_an_image_still_being_prepared_after_its_time_limit_is_refused():
    data = _encode(_noise(300, 200), "PNG")
    with pytest.raises(RejectedImage) as refused:
        decode_upload(data, fit=(32, "pad"), deadline=Deadline(1e-9))
    assert refused.value.kind == "too_slow" and status_of("too_slow") == 413
    assert str(refused.value).startswith("too slow: ") and "over prepare_timeout_s=1e-09" in str(refused.value)
    assert decode_upload(data, fit=(32, "pad"), deadline=Deadline(60.0))[0].size == (32, 32)
