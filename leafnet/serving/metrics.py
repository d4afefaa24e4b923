"""The handler's metrics: what it reports to TorchServe, which leafnet/profiles/torchserve/metrics.yaml
declares for the Prometheus endpoint (a test keeps the two equal)."""

from __future__ import annotations

from ts.metrics.metric_cache_errors import MetricsCacheKeyError
from ts.metrics.metric_type_enum import MetricTypes

# name: (type, unit, extra dimension)
METRICS = {
    "leafnet_inference_seconds": (MetricTypes.HISTOGRAM, "Seconds", None),  # model forward, per batch
    "leafnet_batch_size": (MetricTypes.HISTOGRAM, "Count", None),  # images per forward
    "leafnet_top1_probability": (MetricTypes.HISTOGRAM, "Probability", None),  # per answered request
    "leafnet_rejected_total": (MetricTypes.COUNTER, "Count", "Reason"),  # refused requests by kind
    "leafnet_unknown_total": (MetricTypes.COUNTER, "Count", None),  # answers judged out-of-distribution
}


def dimensions(extra: str | None) -> list[str]:
    """A handler metric's dimension names: the model, the level, and its own extra one if any."""
    return ["ModelName", "Level", *([extra] if extra else [])]


def declaration() -> dict:
    """The handler's metrics as metrics.yaml's `model_metrics` section declares them."""
    section: dict[str, list] = {}
    for name, (kind, unit, extra) in METRICS.items():
        section.setdefault(kind.value, []).append({"name": name, "unit": unit, "dimensions": dimensions(extra)})
    return section


class HandlerMetrics:
    """The metric objects from the server's cache (declared in its metrics_config, else added here: the
    Prometheus endpoint then drops them unless model_metrics_auto_detect is on, but nothing else changes)."""

    def __init__(self, cache, model_name: str) -> None:
        self.model_name, self.metrics = model_name, {}
        for name, (kind, unit, extra) in METRICS.items():
            try:
                self.metrics[name] = cache.get_metric(name, kind)
            except MetricsCacheKeyError:
                self.metrics[name] = cache.add_metric_to_cache(name, unit, dimensions(extra), kind)

    def record(self, name: str, value: float, *extra_dimension: str) -> None:
        self.metrics[name].add_or_update(value, [self.model_name, "Model", *extra_dimension])
