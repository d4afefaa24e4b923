"""leafnet: from raw images to a trained, exported, served and benchmarked image classifier.

The stages are functions (leafnet/api.py): `leafnet.generate`, `leafnet.prepare`, `leafnet.train`,
`leafnet.evaluate`, `leafnet.export`; offline predictions come from `leafnet.Predictor`. They load on
first use, so `import leafnet` (and `leafnet --help`) stays free of torch.
"""

__version__ = "0.1.0"

__all__ = ["Predictor", "__version__", "evaluate", "export", "generate", "prepare", "train"]


def __getattr__(name: str):
    import importlib

    if name in ("generate", "prepare", "evaluate"):
        return getattr(importlib.import_module("leafnet.api"), name)
    if name in ("train", "export"):  # callable modules: importing them binds them here
        return importlib.import_module(f"leafnet.{name}")
    if name == "Predictor":
        return importlib.import_module("leafnet.predict").Predictor
    raise AttributeError(f"module 'leafnet' has no attribute {name!r}")
