"""leafnet: from raw images to a trained, exported, served and benchmarked image classifier."""

__version__ = "0.1.0"
