"""The most expensive images the served preprocessing accepts, and what each costs a worker.

`worst_case_images`: one image per costly format at the pixel cap (a square of `max_pixels`), as much
entropy as still fits the server's body limit (decoding time grows with it), so each is the dearest
request of its format the handler answers. `measure_costs`: each image decoded and fitted by a
Preprocessor in a fresh Python process, since the peak RSS (VmHWM) is a process's lifetime peak: peak RSS
above the process's idle RSS (the upload's bytes included), wall and CPU seconds. numpy and PIL only, no TorchServe.
"""

from __future__ import annotations

import io
import json
import math
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from leafnet.errors import LeafnetError

BODY_LIMIT = 10 * 1024 * 1024  # max_request_size of every TorchServe profile: larger bodies never reach a worker
BODY_SHARE = 0.8  # of the limit filled with noise: what a probe strip predicts, with room for its error
PROBE_ROWS = 64
# Noise in the low 6 bits of every channel: near-incompressible for the lossless formats, and within the
# 2 bytes a pixel PIL's progressive JPEG encoder buffers at quality 95 (8 bits overflow it).
NOISE_BITS = 6

# Runs in the fresh process: argv = sys.path entry ("" for none), package of the preprocessing, options JSON,
# image file. Prints one JSON line.
_CHILD = """
import importlib, io, json, sys, time
if sys.argv[1]:
    sys.path.insert(0, sys.argv[1])
preprocess = importlib.import_module(sys.argv[2] + ".preprocess")
image_io = importlib.import_module(sys.argv[2] + ".image_io")
from PIL import Image
options = json.loads(sys.argv[3])
preprocessor = preprocess.Preprocessor(options["spec"], options["max_pixels"], options["timeout_s"])
warm = io.BytesIO()
Image.new("RGB", (64, 48)).save(warm, format="PNG")
preprocessor.tensor(preprocessor.fitted(warm.getvalue())[0])  # imports, plugins and first allocations
def status(key):  # kB; VmHWM: the peak RSS of this process image (ru_maxrss would carry the parent's over exec)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
idle = status("VmRSS")
with open(sys.argv[4], "rb") as file:
    data = file.read()
wall, cpu = time.perf_counter(), time.process_time()
try:
    preprocessor.tensor(preprocessor.fitted(data)[0])
    outcome = "accepted"
except image_io.RejectedImage as error:
    outcome = "refused: " + str(error)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"outcome": outcome, "peak_mb_above_idle": round((status("VmHWM") - idle) / 1024, 1),
                  "wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}))
"""


def worst_case_images(max_pixels: int, body_limit: int = BODY_LIMIT) -> dict[str, bytes]:
    """Format name -> the costliest image of that format at `max_pixels` (a square) under `body_limit`."""
    side = math.isqrt(max_pixels)
    images = {}
    for name, encode in ENCODERS.items():
        per_row = len(encode(_pattern(side, PROBE_ROWS, PROBE_ROWS))) / PROBE_ROWS  # a row of noise, encoded
        noisy = min(side, int(BODY_SHARE * body_limit / per_row))
        while (data := _encoded(encode, _pattern(side, side, noisy))) is None or len(data) > body_limit:
            if not noisy:
                raise LeafnetError(f"cannot write a {side}x{side} {name} image under {body_limit} bytes")
            noisy //= 2  # over the limit, or more noise than the encoder takes (libwebp's lossy header)
        images[name] = data
    return images


def _encoded(encode: Callable[[np.ndarray], bytes], rgba: np.ndarray) -> bytes | None:
    try:
        return encode(rgba)
    except (OSError, ValueError):  # libwebp's lossy encoder: "encoding error 6", its first partition overflows
        return None


def _pattern(width: int, height: int, noisy_rows: int) -> np.ndarray:
    """height x width RGBA: smooth gradients in every channel (alpha too, so compositing has work), the top
    `noisy_rows` rows with NOISE_BITS of seeded noise. Entropy is what costs decoders time (gradients alone compress
    to almost nothing), and the body limit caps it."""
    across = np.broadcast_to(np.arange(width, dtype=np.uint32) * 255 // max(1, width - 1), (height, width))
    down = np.broadcast_to(np.arange(height, dtype=np.uint32)[:, None] * 255 // max(1, height - 1), (height, width))
    rgba = np.stack([across, across[:, ::-1], down, (across + down) // 2], axis=-1).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 1 << NOISE_BITS, (min(noisy_rows, height), width, 4), np.uint8)
    rgba[:noisy_rows] ^= noise
    return rgba


def _sixteen_bit(grey: np.ndarray) -> np.ndarray:
    return grey.astype(np.uint16) * 257  # the 8-bit picture, scaled to the full 16-bit range


def _png_rgba_16bit(rgba: np.ndarray) -> bytes:
    """A 16-bit RGBA PNG, written by hand: PIL writes none (it reads them as 8-bit RGBA)."""
    height, width = rgba.shape[:2]
    rows = _sixteen_bit(rgba).astype(">u2").reshape(height, width * 4).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter byte 0 per row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")


def _encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    # fastest encoder settings: the noise rows, not the compression effort, set what decoding costs
    "png-grey-16bit": lambda rgba: _encode(Image.fromarray(_sixteen_bit(rgba[..., 0])), "PNG", compress_level=1),
    "png-rgba": lambda rgba: _encode(Image.fromarray(rgba, "RGBA"), "PNG", compress_level=1),
    "png-rgba-16bit": lambda rgba: _png_rgba_16bit(rgba),
    # 4:4:4 at full quality: the most coefficients for libjpeg to decode and, progressive, to hold
    "jpeg-progressive": lambda rgba: _encode(
        Image.fromarray(rgba[..., :3].copy()), "JPEG", progressive=True, quality=95, subsampling=0
    ),
    "webp-lossless": lambda rgba: _encode(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True, quality=0, method=0),
    "webp-lossy": lambda rgba: _encode(Image.fromarray(rgba[..., :3].copy()), "WEBP", quality=90, method=0),
    "tiff-rgba-deflate": lambda rgba: _encode(Image.fromarray(rgba, "RGBA"), "TIFF", compression="tiff_adobe_deflate"),
}


def measure_costs(
    images: dict[str, bytes],
    spec: dict,
    max_pixels: int | None = None,
    timeout_s: float | None = None,
    package: str = "leafnet.serving",
    path: str | Path | None = None,
) -> dict[str, dict]:
    """Name -> {outcome, peak_mb_above_idle, wall_s, cpu_s, bytes} of each image prepared by `package`'s
    Preprocessor (from `path`, e.g. an unpacked archive's leafnet_serving) in a fresh process."""
    options = json.dumps({"spec": spec, "max_pixels": max_pixels, "timeout_s": timeout_s})
    costs = {}
    with tempfile.TemporaryDirectory(prefix="leafnet-worst-") as folder:
        for name, data in images.items():
            image_file = Path(folder) / name
            image_file.write_bytes(data)
            command = [sys.executable, "-c", _CHILD, str(path or ""), package, options, str(image_file)]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"measuring {name} failed: {result.stderr.strip().splitlines()[-1:]}")
            costs[name] = {**json.loads(result.stdout.strip().splitlines()[-1]), "bytes": len(data)}
    return costs


class TreeMemory:
    """The memory of a process and all its descendants (a server: TorchServe's frontend, its workers, any
    proxy), sampled in a thread: the sum of their PSS, which counts shared pages once, unlike RSS. Linux."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        if not Path(f"/proc/{pid}").is_dir():
            raise LeafnetError(f"server_pid={pid}: no such process on this machine")
        self.pid, self.interval_s = pid, interval_s
        self.idle_mb = self.peak_mb = self.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        return sum(_pss_kb(pid) for pid in _tree(self.pid)) / 1024

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, self.sample())

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


def _tree(root: int) -> list[int]:
    """`root` and its descendants, from each process's parent in /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # the name in brackets may hold spaces
        except OSError:  # exited meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def _pss_kb(pid: int) -> int:
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:  # exited meanwhile, or another user's
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("Pss:")), 0)
