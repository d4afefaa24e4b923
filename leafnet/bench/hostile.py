"""Hostile requests against a running server (proxy + TorchServe), each recorded with its status, the time
it took, whether the server still answers a good image afterwards, and the server's peak memory.

    python scripts/hostile_check.py url=http://127.0.0.1:8080 pid=<supervisor pid> image=leaf.png

Every case is bounded in size, count and time and goes to the given URL only (loopback in the tests).
What each case stands for, and why the proxy or the handler refuses it: docs/security.md.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from leafnet.bench.worst_case import TreeMemory
from leafnet.errors import LeafnetError
from leafnet.fsutil import atomic_write_bytes, write_json

logger = logging.getLogger(__name__)
MB = 1024 * 1024


@dataclass
class HostileConfig:
    url: str = "http://127.0.0.1:8080"  # the proxy's address (leafnet serve start)
    image: str = ""  # a good image: sent after each case to check the server still answers
    pid: int = 0  # the supervisor's pid (leafnet serve writes it): peak memory of its process tree; 0 = none
    token: str = ""  # the bearer token, for a profile that wants one (GCE): adds the missing/wrong token cases
    side: int = 6300  # width and height of the large PNG cases (the 6300 x 6300)
    slow_body_s: float = 12.0  # how long the slow-body case trickles before giving up (past the proxy's timeout)
    timeout_s: float = 60.0  # per request
    out: str = "runs/hostile"  # report.json and report.md


@dataclass
class Outcome:
    case: str
    what: str
    status: int | None  # HTTP status; None when the server closed the connection without one
    expected: str  # "4xx", an exact code, or "cut" (a 4xx or no answer at all: the proxy stopped reading)
    seconds: float
    peak_mb: float | None  # the server's peak memory (PSS) during the case, above its memory just before it
    alive: bool  # a good image still gets a 200 afterwards
    detail: str = ""

    @property
    def ok(self) -> bool:
        refused = self.status is not None and 400 <= self.status < 500
        if self.expected == "cut":
            return self.alive and (refused or self.status is None)
        return self.alive and (refused if self.expected == "4xx" else str(self.status) == self.expected)


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)


def send(url: str, body: bytes | None, headers: dict[str, str], method: str, timeout: float) -> tuple[int | None, str]:
    """One raw HTTP/1.1 request on its own connection: (status, first 300 bytes of the answer's body).
    A socket rather than urllib so that odd requests (a lying Content-Length, huge headers) go out as built."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = [f"{method} {path or '/'} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None and "Transfer-Encoding" not in headers and "Content-Length" not in headers:
        head.append(f"Content-Length: {len(body)}")
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout) as sock:
        # The server may answer (and close) before reading all of it: its answer is read below either way.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
        return read_answer(sock)


def read_answer(sock: socket.socket) -> tuple[int | None, str]:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    if not data.startswith(b"HTTP/"):
        return None, ""
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest[:300].decode("utf-8", "replace")


def png_bytes(array: np.ndarray) -> bytes:
    """A PNG of `array`: uint16 2-D is 16-bit grey, uint8 HxWx4 is RGBA."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=9)
    return buffer.getvalue()


def slow_body(url: str, seconds: float, headers: dict[str, str]) -> tuple[int | None, str]:
    """Announce 1 MB, then send a byte every half second: a connection held open with no end in sight."""
    parts = urllib.parse.urlsplit(url)
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Length: 1048576"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((parts.hostname, parts.port), timeout=seconds + 5) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                sock.sendall(b"\0")
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            return None, "closed by the server while the body was still coming"
        sock.settimeout(2)
        status, body = read_answer(sock)
        return status, body or f"still open after {seconds:.0f} s"


def cases(config: HostileConfig) -> list[tuple[str, str, str, Callable[[], tuple[int | None, str]]]]:
    """(name, what it is, expected status, how to send it), the large bodies built only when sent."""
    predict = f"{config.url}/predictions/leafnet"
    auth = {"Authorization": f"Bearer {config.token}"} if config.token else {}
    octet = {"Content-Type": "application/octet-stream", **auth}
    timeout = config.timeout_s

    def post(body: Callable[[], bytes], headers: dict[str, str], url: str = predict, method: str = "POST"):
        return lambda: send(url, body(), headers, method, timeout)

    def form() -> bytes:
        return b"&".join(b"f%d=1" % i for i in range(10 * MB // 9))[: 10 * MB - 1024]

    def multipart_parts() -> bytes:
        part = b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n1\r\n'
        return b"".join(part % i for i in range(180_000))[: 10 * MB - 1024] + b"--b--\r\n"

    side = config.side

    def good_image() -> bytes:
        return Path(config.image).read_bytes() if config.image else b"x"

    grey16 = lambda: png_bytes(np.full((side, side), 30000, np.uint16))  # noqa: E731
    rgba = lambda: png_bytes(np.full((side, side, 4), 200, np.uint8))  # noqa: E731
    multipart = {"Content-Type": "multipart/form-data; boundary=b", **auth}
    ebcdic = {**multipart, "Content-Type": "multipart/form-data; boundary=b; charset=IBM037"}
    listed = [
        ("form_10mb", "10 MB form body, 1.1 million fields", "415",
         post(form, {"Content-Type": "application/x-www-form-urlencoded", **auth})),
        ("png16_large", f"{side}x{side} 16-bit grey PNG", "4xx", post(grey16, octet)),
        ("rgba_large", f"{side}x{side} RGBA PNG", "4xx", post(rgba, octet)),
        ("multipart_many_parts", "10 MB multipart body of 180,000 parts", "400", post(multipart_parts, multipart)),
        ("multipart_chunked", "multipart without a Content-Length", "411",
         post(lambda: b"5\r\n--b--\r\n0\r\n\r\n", {**multipart, "Transfer-Encoding": "chunked"})),
        ("body_too_large", "11 MB body", "413", post(lambda: b"\0" * (11 * MB), octet)),
        ("header_too_large", "32 KB header", "431",
         post(lambda: b"x", {**octet, "X-Padding": "a" * 32 * 1024})),
        # Caddy stops reading at read_body and drops the request (its log says 499) but writes no answer:
        # "cut". What matters is that TorchServe never sees it (the proxy buffers whole bodies).
        ("slow_body", f"1 MB announced, a byte every 0.5 s for {config.slow_body_s:.0f} s", "cut",
         lambda: slow_body(predict, config.slow_body_s, octet)),
        ("unknown_path", "GET /index.html", "404", post(lambda: b"", auth, f"{config.url}/index.html", "GET")),
        ("management_models", "GET /models through the proxy", "404",
         post(lambda: b"", auth, f"{config.url}/models", "GET")),
        ("workflow_register", "POST /workflows?url=... through the proxy", "404",
         post(lambda: b"", auth, f"{config.url}/workflows?url=http://example.invalid/w.war")),
        ("api_description", "OPTIONS / (TorchServe's API description)", "404",
         post(lambda: b"", auth, f"{config.url}/", "OPTIONS")),
        ("metrics", "GET /metrics through the proxy", "404", post(lambda: b"", auth, f"{config.url}/metrics", "GET")),
        ("other_model", "POST /predictions/other", "404", post(lambda: b"x", octet, f"{config.url}/predictions/other")),
        ("wrong_method", "GET /predictions/leafnet", "405", post(lambda: b"", auth, predict, "GET")),
        ("not_an_image", "1 MB of zeros as an image", "4xx", post(lambda: b"\0" * MB, octet)),
        # Paths Caddy's own matchers would clean, lower-case or decode, but TorchServe routes as sent.
        ("dot_segments", "GET /predictions/leafnet/../../ping with an image", "404",
         post(good_image, octet, f"{config.url}/predictions/leafnet/../../ping", "GET")),
        ("dot_segments_in", "POST /ping/../predictions/leafnet", "404",
         post(good_image, octet, f"{config.url}/ping/../predictions/leafnet")),
        ("encoded_dots", "POST /explanations/leafnet/%2e%2e/%2e%2e/predictions/leafnet", "404",
         post(good_image, octet, f"{config.url}/explanations/leafnet/%2e%2e/%2e%2e/predictions/leafnet")),
        ("upper_case", "POST /PREDICTIONS/LEAFNET", "404",
         post(good_image, octet, f"{config.url}/PREDICTIONS/LEAFNET")),
        ("query_string", "POST /predictions/leafnet?x=1", "404", post(good_image, octet, f"{predict}?x=1")),
        ("multipart_charset", "multipart with charset=IBM037 (part headers the count cannot read)", "415",
         post(lambda: b"--b\r\n\r\n--b--\r\n", ebcdic)),
    ]  # fmt: skip
    if config.token:
        no_auth = {"Content-Type": "application/octet-stream"}
        wrong = {**no_auth, "Authorization": "Bearer " + "x" * len(config.token)}
        listed += [
            ("token_missing", "a good image without a token", "401", post(good_image, no_auth)),
            ("token_wrong", "a good image with a wrong token", "401", post(good_image, wrong)),
            ("token_skipped_by_dots", "no token, /predictions/leafnet/../../ping", "4xx",
             post(good_image, no_auth, f"{config.url}/predictions/leafnet/../../ping", "GET")),
        ]  # fmt: skip
    return listed


def still_serves(config: HostileConfig) -> bool:
    """A good image gets a 200: the frontend and a worker are alive."""
    if not config.image:
        status, _ = send(f"{config.url}/ping", None, {}, "GET", config.timeout_s)
        return status == 200
    headers = {"Content-Type": "application/octet-stream"}
    if config.token:
        headers["Authorization"] = f"Bearer {config.token}"
    body = Path(config.image).read_bytes()
    status, _ = send(f"{config.url}/predictions/leafnet", body, headers, "POST", config.timeout_s)
    return status == 200


def run_hostile(config: HostileConfig, log: Callable[[str], None] = logger.info) -> Report:
    if not still_serves(config):
        raise LeafnetError(f"{config.url} does not serve a good image before any hostile request: start it first")
    report = Report()
    for name, what, expected, send_case in cases(config):
        # The server's memory (PSS of the supervisor's tree) from just before the case to its peak during it.
        watch = TreeMemory(config.pid) if config.pid else contextlib.nullcontext()
        start = time.perf_counter()
        with watch:
            status, detail = send_case()
        seconds = time.perf_counter() - start
        peak = watch.peak_mb - watch.idle_mb if config.pid else None
        outcome = Outcome(name, what, status, expected, seconds, peak,
                          still_serves(config), detail.strip()[:160])  # fmt: skip
        report.outcomes.append(outcome)
        memory = f"  +{outcome.peak_mb:.0f} MB" if outcome.peak_mb is not None else ""
        mark = "ok " if outcome.ok else "BAD"
        log(f"{mark} {name:22s} {status!s:>4} (expected {expected})  {seconds:5.2f} s{memory}  alive={outcome.alive}")
    return report


def render_markdown(config: HostileConfig, report: Report) -> str:
    rows = [
        "| case | request | status | expected | s | peak MB above idle | still serves |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for o in report.outcomes:
        peak = f"{o.peak_mb:.0f}" if o.peak_mb is not None else "n/a"
        rows.append(f"| {o.case} | {o.what} | {o.status or 'none'} | {o.expected} | {o.seconds:.2f} | {peak} | "
                    f"{'yes' if o.alive else 'NO'} |")  # fmt: skip
    verdict = "every hostile request refused, server alive" if report.ok else "FAILED: see the rows above"
    return f"# Hostile requests against {config.url}\n\n" + "\n".join(rows) + f"\n\n{verdict}\n"


def write_report(config: HostileConfig, report: Report) -> Path:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"config": asdict(config), "ok": report.ok,
               "outcomes": [asdict(o) | {"ok": o.ok} for o in report.outcomes]}  # fmt: skip
    write_json(out / "report.json", payload)
    atomic_write_bytes(out / "report.md", render_markdown(config, report).encode())
    return out
