import io

import numpy as np
import pytest
from PIL import Image

from leafnet.serving.image_io import RejectedImage, decode_image, encode_png, fit_square


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
