"""Drift sampling: which answered requests get a LEAFNET_DRIFT log line, and what the line holds.

A line costs the worker a fraction of a millisecond (docs/serving.md has the measurement), so lines are
capped per second with a token bucket: a loaded server pays a fixed, small share of a core, a quiet one
logs every request. scripts/drift_report.py reads the lines back from TorchServe's model log.
"""

from __future__ import annotations

import json
import time

from .image_stats import DRIFT_LOG_PREFIX, STATS_VERSION


class DriftSampler:
    """A token bucket refilled at `max_per_s` (0: no cap), holding at most one second's worth (at least one)."""

    def __init__(self, enabled: bool, max_per_s: float) -> None:
        self.enabled, self.max_per_s = enabled, max_per_s
        self.capacity = max(max_per_s, 1.0)
        self.tokens, self.refilled = self.capacity, time.monotonic()

    def take(self) -> bool:
        """Whether this request is to be logged; spends a token when it is."""
        if not self.enabled:
            return False
        if self.max_per_s <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.refilled) * self.max_per_s)
        self.refilled = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def drift_line(model: str, version: str, stats: dict, answer: dict) -> str:
    """`LEAFNET_DRIFT {json}`: the image's statistics and the answer's top-1, as the report parses them."""
    top = answer["predictions"][0]
    record = {
        "t": round(time.time(), 3),
        "model": model,
        "version": version,
        "stats_version": STATS_VERSION,
        "size": stats["size"],
        "features": {name: round(value, 5) for name, value in stats["features"].items()},
        "top1": top["index"],
        "p": top["probability"],
        "unknown": answer.get("unknown"),
    }
    return f"{DRIFT_LOG_PREFIX} {json.dumps(record, separators=(',', ':'))}"
