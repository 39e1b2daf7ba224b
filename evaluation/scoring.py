"""Turn one source's gathered logits into every metric of the variants scored on it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from evaluation import metrics as M
from evaluation.suite import EvalSource
from evaluation.variants import Variant

Scores = dict[str, float]


def classification_scores(logits: Tensor, target: Tensor, probs: Tensor, confidence: Tensor) -> Scores:
    """Top-1/5 (%), NLL, ECE, RMS calibration error, Brier and n for single-label images."""
    k = min(5, logits.shape[1])
    correct = M.topk_correct(logits, target, ks=(1, k))
    return {
        "top1": M.accuracy(correct[1]),
        "top5": M.accuracy(correct[k]),
        "nll": M.nll(probs, target),
        "ece": M.expected_calibration_error(confidence, correct[1]),
        "rms_calib": M.rms_calibration_error(confidence, correct[1]),
        "brier": M.brier_score(probs, target),
        "n": float(len(target)),
    }


def real_scores(logits: Tensor, real_labels: Tensor) -> Scores:
    """ReaL top-1/5 (%) over images with at least one label, and n (images scored)."""
    k = min(5, logits.shape[1])
    correct, scored = M.real_topk_correct(logits, real_labels, ks=(1, k))
    return {
        "top1": M.accuracy(correct[1], scored),
        "top5": M.accuracy(correct[k], scored),
        "n": float(scored.sum()),
    }


def score_variant(
    variant: Variant,
    logits: Tensor,
    target: Tensor,
    index: Tensor,
    extras: dict[str, Tensor],
    probs_fn: Callable[[Tensor], Tensor],
) -> Scores:
    """Metrics of one variant. logits [N,K], target [N], index [N] (rows of ``extras``)."""
    if variant.labels == "real":
        return real_scores(logits, extras["real_labels"][index])
    probs = probs_fn(logits)
    return classification_scores(logits, target, probs, probs.amax(dim=1))


def score_source(source: EvalSource, logits: Tensor, target: Tensor, index: Tensor, head) -> Scores:
    """``{"val/<variant>/<metric>": value}`` for every variant read from ``source``."""
    results: Scores = {}
    with torch.no_grad():
        for variant in source.variants:
            scores = score_variant(variant, logits, target, index, source.extras, head.probs)
            results.update({f"val/{variant.name}/{name}": value for name, value in scores.items()})
    return results
