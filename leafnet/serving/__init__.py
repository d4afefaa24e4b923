"""Serving: everything between a request's bytes and its JSON answer, for TorchServe and offline use.

Every .mar carries this package (as `leafnet_serving`, beside the thin entry point leafnet_handler.py), so
it imports nothing of leafnet outside itself and nothing of timm: numpy, PIL, and torch or onnxruntime
for the model. Its modules import each other relatively, so the same files run as `leafnet.serving`
from the library and as `leafnet_serving` inside a worker.

- requests: the image bytes of a request (raw body, multipart, JSON with base64), or a refusal
- image_io: decode untrusted bytes to RGB (also prepare's decoder), fit to a square
- preprocess: the preprocessing spec applied to a decoded image (the numpy twin of the eval transform)
- runtime: TorchScript and ONNX models behind one `logits(batch)`, threads sized to the CPU quota
- answers: softmax and the top-k answer
- image_stats, drift: per-image statistics and the rate-capped drift log line
- metrics: the handler's Prometheus metrics
- handler: the TorchServe handler (preprocess -> inference -> postprocess, per-item refusals)
- harness: an unpacked archive's handler run in-process with TorchServe's own Context
"""
