"""Large images take turns, so small ones never wait for them.

TorchServe keeps one queue per model and hands each worker a whole batch, answered only when every image
in it is done. An image near the pixel cap takes a worker a few hundred milliseconds to decode (PNG and
WebP have no reduced-size decoding); a batch of them, several seconds. A client sending such images in a
loop would then hold every worker, and every ordinary request would wait behind them.

So a large image (more decoded pixels than `large_image_pixels`, a JPEG counted at the DCT scale it will
decode at) is decoded only:
- in a batch that holds no smaller image: it never delays one;
- while no other large image is being decoded by any worker of this model (an flock on a file in the
  model's directory, which the workers share): one worker at most is ever busy with them.
Otherwise it is answered 429 with Retry-After: its client sends it again a moment later. Under no load
neither rule ever refuses anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from .image_io import jpeg_draft_scale

DEFAULT_LARGE_IMAGE_PIXELS = 4_000_000
RETRY_AFTER_S = 1
LOCK_NAME = ".leafnet-large-image.lock"


def decoded_pixels(data: bytes, fit: tuple[int, str] | None) -> int | None:
    """How many pixels decoding `data` will produce, from its header alone; None when the header cannot
    be read (the decoder then says why)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            scale = jpeg_draft_scale(image.size, fit) if image.format == "JPEG" else 1
    except Exception:  # any header the decoder will refuse with its own reason
        return None
    return -(-width // scale) * -(-height // scale)


class LargeImageGate:
    def __init__(self, lock_dir: str | Path, large_pixels: int = DEFAULT_LARGE_IMAGE_PIXELS) -> None:
        self.lock_path = Path(lock_dir) / LOCK_NAME
        self.large_pixels = large_pixels

    def is_large(self, pixels: int | None) -> bool:
        return pixels is not None and pixels > self.large_pixels

    @contextlib.contextmanager
    def turn(self) -> Iterator[bool]:
        """True while this process holds the instance's one turn for a large image, False if another has it."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
