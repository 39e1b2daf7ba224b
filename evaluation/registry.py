"""Unit and direction of every metric name that appears in logged keys.

Keys look like ``val/<variant>/<metric>``; anything that qualifies a metric (a corruption, a
severity, an OOD score) goes into the path before it, e.g. ``val/imagenet_c/fog/ce`` or
``val/imagenet_o/energy/auroc``, so the metric name is always the last path segment. Loggers,
checkpoint selection and reports read this table instead of guessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["METRICS", "MetricSpec", "is_better", "metric_spec"]

Mode = Literal["max", "min"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric name.

    Attributes:
        name: the last segment of a logged key.
        unit: '%' (0..100), 'fraction' (0..1), 'nats', 'score' (unbounded above), 'count', or 'ranks'.
        mode: 'max' when higher is better, 'min' when lower is better, None when neither (a count,
            a chosen threshold). Same spelling as Lightning's ``ModelCheckpoint(mode=...)``.
        description: one line for tables and plot labels.
    """

    name: str
    unit: str
    mode: Mode | None
    description: str


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("loss", "score", "min", "training objective of the head (CE or BCE)"),
        MetricSpec("top1", "%", "max", "top-1 accuracy"),
        MetricSpec("top5", "%", "max", "top-5 accuracy"),
        MetricSpec("err", "%", "min", "top-1 error"),
        MetricSpec("real_top1", "%", "max", "ReaL top-1 accuracy (labelled images only)"),
        MetricSpec("real_top5", "%", "max", "ReaL top-5 accuracy (labelled images only)"),
        MetricSpec("set_precision", "fraction", "max", "precision of the thresholded label set"),
        MetricSpec("set_recall", "fraction", "max", "recall of the thresholded label set"),
        MetricSpec("set_f1", "fraction", "max", "F1 of the thresholded label set"),
        MetricSpec("threshold", "fraction", None, "probability threshold of the label set"),
        MetricSpec("map", "fraction", "max", "mean average precision over classes"),
        MetricSpec("nll", "nats", "min", "negative log-likelihood of the true class"),
        MetricSpec("ece", "fraction", "min", "expected calibration error, 15 bins"),
        MetricSpec("rms_calib", "fraction", "min", "RMS calibration error, bins of 100"),
        MetricSpec("brier", "score", "min", "Brier score summed over classes"),
        MetricSpec("aurra", "%", "max", "area under the response rate / accuracy curve"),
        MetricSpec("auroc", "fraction", "max", "AUROC, anomalies positive"),
        MetricSpec("aupr", "fraction", "max", "average precision, anomalies positive"),
        MetricSpec("fpr95", "fraction", "min", "false-positive rate at 95% recall of anomalies"),
        MetricSpec("ce", "%", "min", "corruption error of one corruption"),
        MetricSpec("rel_ce", "%", "min", "relative corruption error of one corruption"),
        MetricSpec("mce", "%", "min", "mean corruption error"),
        MetricSpec("rel_mce", "%", "min", "relative mean corruption error"),
        MetricSpec("fp", "fraction", "min", "flip probability"),
        MetricSpec("t5d", "ranks", "min", "top-5 distance"),
        MetricSpec("n", "count", None, "number of scored images"),
        MetricSpec("n_in", "count", None, "number of in-distribution images (OOD detection)"),
        MetricSpec("clean_top1", "%", "max", "top-1 on val images of the same class subset (ImageNet-200)"),
        MetricSpec("clean_top5", "%", "max", "top-5 on val images of the same class subset"),
        MetricSpec("gap", "%", "min", "clean_top1 minus the variant's top-1"),
    )
}


def metric_spec(key: str) -> MetricSpec:
    """The spec of a metric name or of a full key such as ``val/imagenet_a/top1`` (its last segment)."""
    name = key.rsplit("/", 1)[-1]
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r} (from key {key!r}); add it to evaluation.registry.METRICS")
    return METRICS[name]


def is_better(key: str, a: float, b: float) -> bool:
    """Whether value ``a`` is strictly better than ``b`` for the metric of ``key``.

    NaN is worse than any number. Raises for metrics without a direction (such as ``n``).
    """
    spec = metric_spec(key)
    if spec.mode is None:
        raise ValueError(f"metric {spec.name!r} has no better direction; choose a metric with a mode")
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if spec.mode == "max" else a < b
