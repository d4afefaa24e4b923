"""The image bytes of one request, as TorchServe hands it over, or a refusal with its HTTP status."""

from __future__ import annotations

import base64
import binascii

from .image_io import RejectedImage

FORM_BODY = (
    "body arrived as a form (application/x-www-form-urlencoded, curl's default for --data-binary), which "
    "mangles binary data: add -H 'Content-Type: application/octet-stream' or use curl -T leaf.png"
)
# any other refusal kind is a 400. too_slow: an image that outlasts prepare_timeout_s is too costly, like an
# over-cap one (413), not a server fault: sending it again would fail again.
# busy: a large image that must take its turn (admission.py), 429 with Retry-After.
STATUS = {"too_large": 413, "too_slow": 413, "form_body": 415, "unknown": 422, "busy": 429, "internal": 500}


def status_of(kind: str) -> int:
    """The HTTP status of a refusal kind (RejectedImage.kind)."""
    return STATUS.get(kind, 400)


def request_bytes(item: dict, content_type: str = "") -> bytes:
    """The image bytes of one request: raw body, a multipart field, or JSON with base64."""
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        raise RejectedImage(FORM_BODY, "form_body")
    payload = item.get("data") if item.get("data") is not None else item.get("body")
    if payload is None:  # multipart with another field name: take the first file-like part
        payload = next((v for v in item.values() if isinstance(v, bytes | bytearray)), None)
    if isinstance(payload, dict):  # TorchServe parses application/json bodies
        payload = payload.get("image", payload.get("data", payload.get("b64")))
        if not isinstance(payload, str):
            raise RejectedImage('JSON body needs an "image" field holding base64 image data', "bad_json")
        payload = _b64(payload)
    elif isinstance(payload, str):
        payload = _b64(payload)  # a text body (text/plain) can only carry base64
    elif payload is not None and not isinstance(payload, bytes | bytearray):
        reason = f"unsupported body ({type(payload).__name__}): send image bytes or JSON with base64"
        raise RejectedImage(reason, "bad_json")
    if not payload:
        raise RejectedImage("empty body: send image bytes (curl -T leaf.png)", "empty")
    return bytes(payload)


def _b64(text: str) -> bytes:
    if text.startswith("data:"):  # a data URL: data:image/png;base64,....
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)  # wrapped lines are fine
    except (binascii.Error, ValueError):
        raise RejectedImage("image field is not valid base64", "bad_base64") from None


def content_type_of(context, position: int) -> str:
    """The Content-Type header of request `position` of a TorchServe batch ("" when absent)."""
    headers = context.get_all_request_header(position) or {}
    return next((str(v) for k, v in headers.items() if str(k).lower() == "content-type"), "")
