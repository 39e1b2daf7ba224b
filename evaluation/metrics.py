"""Pure metric functions for ImageNet and its test variants.

Nothing here knows about models, files or loggers: every function takes tensors (CPU or CUDA) and
returns per-image tensors or Python floats. Sums and means are computed in float64.

Conventions
    logits:     [N, K] float scores.
    probs:      [N, K] float in [0, 1], the head's own probabilities. Softmax rows sum to 1, sigmoid
                rows need not; every function accepts both.
    target:     [N] int64 class indices in [0, K); -1 marks an image without a label.
    real_labels: [N, M] int64 ReaL label sets, padded with -1 (an all -1 row has no label).
    multi_hot:  [N, K] bool label sets.
    confidence: [N] float in [0, 1], the head's confidence (its maximum probability).
    correct:    [N] bool, whether the top-1 prediction is right.

Units: accuracies, errors, AURRA and ImageNet-C corruption errors are percentages (0..100, like timm);
calibration errors, areas under curves, rates and label-set scores are fractions in [0, 1].
``evaluation.registry`` records the unit and direction of every logged metric name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ALEXNET",
    "ALEXNET_CLEAN_ERROR",
    "ALEXNET_C_ERROR",
    "IMAGENET_C_CORRUPTIONS",
    "IMAGENET_C_EXTRA",
    "IMAGENET_C_FAMILIES",
    "CorruptionReference",
    "accuracy",
    "aupr",
    "auroc",
    "aurra",
    "brier_score",
    "ce_per_corruption",
    "choose_threshold",
    "expected_calibration_error",
    "family_means",
    "flip_probability",
    "fpr_at_tpr",
    "label_set_scores",
    "mce",
    "mean_average_precision",
    "nll",
    "ood_scores",
    "real_multi_hot",
    "real_topk_correct",
    "relative_ce_per_corruption",
    "rms_calibration_error",
    "top5_distance",
    "topk_correct",
    "topk_ranking",
]

# ----------------------------------------------------------------------------------------------
# input checks


def _check_scores(scores: Tensor, name: str) -> None:
    if scores.dim() != 2 or not scores.is_floating_point() or scores.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty float tensor [N, K], got {scores.dtype} {tuple(scores.shape)}"
        )


def _check_probs(probs: Tensor) -> None:
    _check_scores(probs, "probs")
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError("probs must lie in [0, 1]: pass the head's probabilities, not logits")


def _check_target(target: Tensor, scores: Tensor, allow_missing: bool) -> None:
    if target.dim() != 1 or target.dtype != torch.int64 or len(target) != len(scores):
        raise ValueError(
            f"target must be int64 [N] with N={len(scores)}, got {target.dtype} {tuple(target.shape)}"
        )
    low = -1 if allow_missing else 0
    if target.min() < low or target.max() >= scores.shape[1]:
        raise ValueError(f"target values must lie in [{low}, {scores.shape[1]}) (K = scores.shape[1])")


def _check_vector(values: Tensor, name: str, n: int | None = None) -> None:
    if values.dim() != 1 or len(values) == 0 or (n is not None and len(values) != n):
        expected = "non-empty [N]" if n is None else f"[{n}]"
        raise ValueError(f"{name} must be a {expected} tensor, got shape {tuple(values.shape)}")


def _check_confidence(confidence: Tensor, correct: Tensor) -> None:
    _check_vector(confidence, "confidence")
    _check_vector(correct, "correct", len(confidence))
    if confidence.min() < 0 or confidence.max() > 1:
        raise ValueError("confidence must lie in [0, 1]: pass the head's maximum probability, not a logit")


# ----------------------------------------------------------------------------------------------
# top-k accuracy and ReaL labels


def _topk_indices(logits: Tensor, ks: Sequence[int]) -> Tensor:
    """[N, max(ks)] class indices by decreasing score; ties as ``torch.topk`` breaks them (as timm)."""
    _check_scores(logits, "logits")
    if not ks or min(ks) < 1 or max(ks) > logits.shape[1]:
        raise ValueError(f"ks must be non-empty with every k in [1, {logits.shape[1]}], got {tuple(ks)}")
    return logits.topk(max(ks), dim=1, largest=True, sorted=True).indices


def topk_correct(logits: Tensor, target: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, Tensor]:
    """Whether the target is among the k highest scores, for each k.

    Args:
        logits: [N, K] logits or probabilities (only their order matters).
        target: [N] int64 in [0, K); -1 (no label) is never correct, leave such rows out with
            ``accuracy(correct, mask=target >= 0)``.
        ks: values of k, each in [1, K].

    Returns:
        {k: [N] bool}.
    """
    top = _topk_indices(logits, ks)
    _check_target(target, logits, allow_missing=True)
    hit = top == target[:, None]
    return {k: hit[:, :k].any(dim=1) for k in ks}


def real_topk_correct(
    logits: Tensor, real_labels: Tensor, ks: Sequence[int] = (1, 5)
) -> tuple[dict[int, Tensor], Tensor]:
    """ReaL top-k: a prediction is right when any of its k best classes is in the image's label set.

    Args:
        logits: [N, K] logits or probabilities.
        real_labels: [N, M] int64 label sets padded with -1 (M = 9 for ReaL).
        ks: values of k, each in [1, K].

    Returns:
        ({k: [N] bool}, scored [N] bool). Images without labels are not scored (``scored`` False,
        never correct); average with ``accuracy(correct[k], scored)``.
    """
    top = _topk_indices(logits, ks)
    _check_label_sets(real_labels, *logits.shape)
    hit = (top[:, :, None] == real_labels[:, None, :]).any(dim=2)
    scored = (real_labels >= 0).any(dim=1)
    return {k: hit[:, :k].any(dim=1) & scored for k in ks}, scored


def accuracy(correct: Tensor, mask: Tensor | None = None) -> float:
    """Percentage (0..100) of True entries of ``correct`` [N] bool among rows where ``mask`` [N] is True."""
    _check_vector(correct, "correct")
    if mask is not None:
        _check_vector(mask, "mask", len(correct))
        correct = correct[mask]
    if len(correct) == 0:
        raise ValueError("accuracy needs at least one scored image; the mask excludes every row")
    return 100.0 * correct.double().mean().item()


def _check_label_sets(real_labels: Tensor, n: int, num_classes: int) -> None:
    if real_labels.dim() != 2 or real_labels.dtype != torch.int64 or len(real_labels) != n:
        raise ValueError(
            f"real_labels must be int64 [N, M] padded with -1 and N={n}, "
            f"got {real_labels.dtype} {tuple(real_labels.shape)}"
        )
    if real_labels.numel() and (real_labels.min() < -1 or real_labels.max() >= num_classes):
        raise ValueError(f"real_labels values must lie in [-1, {num_classes}) (-1 = padding)")


def real_multi_hot(real_labels: Tensor, num_classes: int) -> Tensor:
    """[N, M] int64 label sets padded with -1 -> [N, num_classes] bool multi-hot rows."""
    _check_label_sets(real_labels, len(real_labels), num_classes)
    hot = torch.zeros(len(real_labels), num_classes + 1, dtype=torch.bool, device=real_labels.device)
    hot.scatter_(1, real_labels.where(real_labels >= 0, num_classes), True)
    return hot[:, :num_classes]


# ----------------------------------------------------------------------------------------------
# predicted label sets (multi-label scoring of ReaL)


def _check_multi_hot(probs: Tensor, multi_hot: Tensor) -> None:
    _check_probs(probs)
    if multi_hot.dtype != torch.bool or multi_hot.shape != probs.shape:
        raise ValueError(
            f"multi_hot must be bool with the shape of probs {tuple(probs.shape)}, "
            f"got {multi_hot.dtype} {tuple(multi_hot.shape)} (see real_multi_hot)"
        )
    if not multi_hot.any():
        raise ValueError("multi_hot has no positive label; label-set metrics need labelled images")


def _set_counts(
    probs: Tensor, multi_hot: Tensor, thresholds: Tensor, chunk: int = 4096
) -> tuple[Tensor, Tensor, Tensor]:
    """Per labelled image and threshold: predicted-set size, hits, and label-set size.

    Returns ([N', G], [N', G], [N', 1]) float64 over the N' images with at least one label.
    The predicted set at threshold t is {k : probs[k] >= t}.
    """
    keep = multi_hot.any(dim=1)
    probs, multi_hot = probs[keep], multi_hot[keep]
    n_bins = len(thresholds) + 1
    n_pred, n_hit = [], []
    for p, y in zip(probs.split(chunk), multi_hot.split(chunk), strict=True):
        # bucket b = number of thresholds <= p, so the class is predicted at thresholds[j] iff b > j
        bucket = torch.bucketize(p.double(), thresholds, right=True)
        for source, out in ((torch.ones_like(p, dtype=torch.float64), n_pred), (y.double(), n_hit)):
            hist = torch.zeros(len(p), n_bins, dtype=torch.float64, device=p.device)
            hist.scatter_add_(1, bucket, source)
            out.append(hist.flip(1).cumsum(1).flip(1)[:, 1:])
    return torch.cat(n_pred), torch.cat(n_hit), multi_hot.sum(dim=1, keepdim=True).double()


def _set_scores(probs: Tensor, multi_hot: Tensor, thresholds: Tensor) -> dict[str, Tensor]:
    n_pred, n_hit, n_true = _set_counts(probs, multi_hot, thresholds)
    precision = n_hit / n_pred.clamp_min(1)  # an empty predicted set has precision 0
    recall = n_hit / n_true
    f1 = 2 * n_hit / (n_pred + n_true)
    return {"set_precision": precision.mean(0), "set_recall": recall.mean(0), "set_f1": f1.mean(0)}


def label_set_scores(probs: Tensor, multi_hot: Tensor, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of the predicted label set {k : probs[k] >= threshold}.

    Per-image scores averaged over images that have at least one label (sklearn's
    ``average="samples"``); images without labels are left out, as ReaL does. An empty predicted set
    scores precision 0, recall 0, F1 0 (sklearn's ``zero_division=0``). F1 per image is
    2|P ∩ T| / (|P| + |T|).

    Args:
        probs: [N, K] head probabilities (softmax or sigmoid).
        multi_hot: [N, K] bool true label sets.
        threshold: probability threshold in [0, 1].

    Returns:
        {"set_precision", "set_recall", "set_f1"} (the registry's names): fractions in [0, 1].
    """
    _check_multi_hot(probs, multi_hot)
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    thresholds = torch.tensor([threshold], dtype=torch.float64, device=probs.device)
    return {name: value.item() for name, value in _set_scores(probs, multi_hot, thresholds).items()}


def choose_threshold(probs: Tensor, multi_hot: Tensor, thresholds: Tensor | None = None) -> float:
    """The threshold that maximises the mean per-image F1 of ``label_set_scores``.

    Meant for a held-out set (minival), never for the set it is then scored on.

    Args:
        probs: [N, K] head probabilities.
        multi_hot: [N, K] bool true label sets.
        thresholds: [G] candidates in [0, 1]; default 0.01, 0.02, ..., 0.99. Ties go to the first.

    Returns:
        The chosen threshold.
    """
    _check_multi_hot(probs, multi_hot)
    if thresholds is None:
        thresholds = torch.arange(1, 100, dtype=torch.float64) / 100
    thresholds = thresholds.to(device=probs.device, dtype=torch.float64)
    _check_vector(thresholds, "thresholds")
    if thresholds.min() < 0 or thresholds.max() > 1 or (thresholds.diff() <= 0).any():
        raise ValueError("thresholds must be strictly increasing values in [0, 1]")
    f1 = _set_scores(probs, multi_hot, thresholds)["set_f1"]
    return thresholds[f1.argmax()].item()


def _ranked(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sort each row of scores [C, N] (one binary problem per row) in decreasing order.

    Returns (hits, true positives, group end), each [C, N]: the sorted bool labels as float64,
    their running sum, and whether an entry is the last of its group of tied scores.
    """
    sorted_scores, order = scores.sort(dim=1, descending=True)
    hits = labels.gather(1, order).double()
    end = torch.ones_like(hits, dtype=torch.bool)
    end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    return hits, hits.cumsum(1), end


def _average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """[C] average precision of each row of scores [C, N] against bool labels [C, N].

    AP = sum over thresholds of (R_n - R_{n-1}) P_n as sklearn's ``average_precision_score``: each
    positive contributes the precision at the end of its group of tied scores.
    """
    hits, tps, end = _ranked(scores, labels)
    n = hits.shape[1]
    index = torch.arange(n, device=hits.device).expand_as(hits)
    group_last = index.where(end, n - 1).flip(1).cummin(1).values.flip(1)
    precision = tps.gather(1, group_last) / (group_last + 1)
    return (hits * precision).sum(1) / hits.sum(1)


def mean_average_precision(probs: Tensor, multi_hot: Tensor, chunk: int = 128) -> float:
    """Mean over classes with at least one positive of the class's average precision.

    Images without any label are left out (as ReaL does). Per-class AP equals sklearn's
    ``average_precision_score``.

    Args:
        probs: [N, K] head probabilities.
        multi_hot: [N, K] bool true label sets.
        chunk: classes scored at once (bounds memory to about N * chunk * 64 bytes).

    Returns:
        mAP, a fraction in [0, 1].
    """
    _check_multi_hot(probs, multi_hot)
    keep = multi_hot.any(dim=1)
    probs, multi_hot = probs[keep], multi_hot[keep]
    present = multi_hot.any(dim=0)
    probs, multi_hot = probs[:, present], multi_hot[:, present]
    ap = [
        _average_precision(p.T.contiguous(), y.T.contiguous())
        for p, y in zip(probs.split(chunk, 1), multi_hot.split(chunk, 1), strict=True)
    ]
    return torch.cat(ap).mean().item()


# ----------------------------------------------------------------------------------------------
# calibration and selective prediction


def nll(probs: Tensor, target: Tensor, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class: -log(max(p_y, eps)) averaged over images (the
    cross-entropy for a softmax head's probabilities). ``eps`` caps one image's loss at -log(eps). The
    scorer passes a distribution over the K classes (a sigmoid head's probabilities normalised by their sum).

    Args:
        probs: [N, K] probabilities in [0, 1].
        target: [N] int64 in [0, K).
    """
    _check_probs(probs)
    _check_target(target, probs, allow_missing=False)
    p_true = probs.double().gather(1, target[:, None]).clamp_min(eps)
    return -p_true.log().mean().item()


def brier_score(probs: Tensor, target: Tensor) -> float:
    """Mean over images of sum_k (p_k - y_k)^2 with y the one-hot target; in [0, K] (2 at most for softmax).

    Args:
        probs: [N, K] head probabilities.
        target: [N] int64 in [0, K).
    """
    _check_probs(probs)
    _check_target(target, probs, allow_missing=False)
    p = probs.double()
    p_true = p.gather(1, target[:, None]).squeeze(1)
    return (p.square().sum(1) - 2 * p_true + 1).mean().item()


def expected_calibration_error(confidence: Tensor, correct: Tensor, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins (i/n, (i+1)/n] (confidence 0 joins the first bin).

    ECE = sum_b |B_b|/N * |accuracy(B_b) - mean confidence(B_b)|.

    Args:
        confidence: [N] in [0, 1], the head's maximum probability.
        correct: [N] bool, top-1 prediction is right.

    Returns:
        A fraction in [0, 1].
    """
    _check_confidence(confidence, correct)
    conf = confidence.double()
    edges = torch.arange(1, n_bins, dtype=torch.float64, device=conf.device) / n_bins
    bins = torch.bucketize(conf, edges)
    gap = torch.zeros(n_bins, dtype=torch.float64, device=conf.device)
    gap.index_add_(0, bins, conf - correct.double())
    return (gap.abs().sum() / len(conf)).item()


def rms_calibration_error(confidence: Tensor, correct: Tensor, bin_size: int = 100) -> float:
    """Root-mean-square calibration error with adaptive bins, as in the ImageNet-A reference.

    Images are sorted by confidence (stable: ties keep their order) and cut into bins of
    ``bin_size`` consecutive images; the last bin also takes the remainder (fewer than ``bin_size``
    images make one bin). RMS = sqrt(sum_b |B_b|/N * (mean conf(B_b) - accuracy(B_b))^2). The
    reference code leaves out the most confident bin by mistake; every bin is used here.

    Args:
        confidence: [N] in [0, 1], the head's maximum probability.
        correct: [N] bool, top-1 prediction is right.

    Returns:
        A fraction in [0, 1].
    """
    _check_confidence(confidence, correct)
    conf, order = confidence.double().sort(stable=True)
    n = len(conf)
    n_bins = max(n // bin_size, 1)
    bins = (torch.arange(n, device=conf.device) // bin_size).clamp(max=n_bins - 1)
    gap = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(
        0, bins, conf - correct[order].double()
    )
    counts = torch.bincount(bins, minlength=n_bins).double()
    return (gap.square() / counts).sum().div(n).sqrt().item()


def aurra(confidence: Tensor, correct: Tensor) -> float:
    """Area under the response rate / accuracy curve, in percent.

    Mean over k = 1..N of the accuracy of the k most confident images (ties in confidence keep
    their original order).

    Args:
        confidence: [N] in [0, 1], the head's maximum probability.
        correct: [N] bool, top-1 prediction is right.
    """
    _check_confidence(confidence, correct)
    order = confidence.double().sort(descending=True, stable=True).indices
    running = correct[order].double().cumsum(0)
    curve = running / torch.arange(1, len(running) + 1, dtype=torch.float64, device=running.device)
    return 100.0 * curve.mean().item()


# ----------------------------------------------------------------------------------------------
# out-of-distribution detection (ImageNet-O): anomalies are the positive class


def ood_scores(logits: Tensor, probs: Tensor) -> dict[str, Tensor]:
    """Anomaly scores [N] float64 (higher = more anomalous) of three detectors.

    ``msp``: -(max head probability) (softmax or sigmoid); ``max_logit``: -(max logit);
    ``energy``: -logsumexp(logits).

    Args:
        logits: [N, K] logits.
        probs: [N, K] the head's probabilities of the same images.
    """
    _check_scores(logits, "logits")
    _check_probs(probs)
    if probs.shape != logits.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and logits {tuple(logits.shape)} must match")
    logits = logits.double()
    return {
        "msp": -probs.double().amax(dim=1),
        "max_logit": -logits.amax(dim=1),
        "energy": -logits.logsumexp(dim=1),
    }


def _roc_points(in_scores: Tensor, out_scores: Tensor) -> tuple[Tensor, Tensor]:
    """Cumulative (true positives, false positives) [T] float64 at each distinct threshold, high to low."""
    _check_vector(in_scores, "in_scores")
    _check_vector(out_scores, "out_scores")
    scores = torch.cat([in_scores.double(), out_scores.double().to(in_scores.device)])
    labels = torch.arange(len(scores), device=scores.device) >= len(in_scores)
    _, tps, end = _ranked(scores[None], labels[None])
    last = end[0].nonzero().squeeze(1)
    tps = tps[0, last]
    return tps, last + 1 - tps


def auroc(in_scores: Tensor, out_scores: Tensor) -> float:
    """Area under the ROC curve (sklearn ``roc_auc_score``), out-of-distribution images positive.

    Args:
        in_scores: [N_in] anomaly scores of in-distribution images.
        out_scores: [N_out] anomaly scores of anomalies (higher = more anomalous).

    Returns:
        A fraction in [0, 1]; ties count one half.
    """
    tps, fps = _roc_points(in_scores, out_scores)
    zero = tps.new_zeros(1)
    return torch.trapezoid(torch.cat([zero, tps / tps[-1]]), torch.cat([zero, fps / fps[-1]])).item()


def aupr(in_scores: Tensor, out_scores: Tensor) -> float:
    """Average precision (sklearn ``average_precision_score``), out-of-distribution images positive.

    Args:
        in_scores: [N_in] anomaly scores of in-distribution images.
        out_scores: [N_out] anomaly scores of anomalies (higher = more anomalous).

    Returns:
        A fraction in [0, 1].
    """
    _check_vector(in_scores, "in_scores")
    _check_vector(out_scores, "out_scores")
    scores = torch.cat([in_scores.double(), out_scores.double().to(in_scores.device)])
    labels = torch.arange(len(scores), device=scores.device) >= len(in_scores)
    return _average_precision(scores[None], labels[None]).item()


def fpr_at_tpr(in_scores: Tensor, out_scores: Tensor, tpr: float = 0.95) -> float:
    """False-positive rate at the threshold whose recall of anomalies is closest to ``tpr``.

    As the ImageNet-O reference (``fpr_and_fdr_at_recall``): among the distinct thresholds down to the
    first that reaches full recall, the one whose recall is closest to ``tpr``; of equally close ones
    the lowest threshold. Counts are float64 cumulative sums.

    Args:
        in_scores: [N_in] anomaly scores of in-distribution images.
        out_scores: [N_out] anomaly scores of anomalies (higher = more anomalous).
        tpr: the recall level in (0, 1].

    Returns:
        A fraction of in-distribution images in [0, 1].
    """
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    tps, fps = _roc_points(in_scores, out_scores)
    full = int(torch.searchsorted(tps, tps[-1:]).item())
    distance = (tps[: full + 1] / tps[-1] - tpr).abs()
    pick = full - int(distance.flip(0).argmin().item())
    return (fps[pick] / len(in_scores)).item()


# ----------------------------------------------------------------------------------------------
# ImageNet-C

IMAGENET_C_FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
IMAGENET_C_CORRUPTIONS: tuple[str, ...] = tuple(c for family in IMAGENET_C_FAMILIES.values() for c in family)
IMAGENET_C_EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")

# AlexNet top-1 error on ImageNet-C, mean over severities 1..5, as fractions. Source: the
# normalisers of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
# Corruptions and Perturbations" (ICLR 2019), from their reference evaluation code.
ALEXNET_C_ERROR: dict[str, float] = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
    "speckle_noise": 0.845388,
    "gaussian_blur": 0.787108,
    "spatter": 0.717512,
    "saturate": 0.658248,
}
# AlexNet clean top-1 error on ImageNet val (same paper; used by relative mCE).
ALEXNET_CLEAN_ERROR = 0.4345


@dataclass(frozen=True)
class CorruptionReference:
    """Errors of the model that corruption errors are divided by.

    Attributes:
        errors: per corruption, its top-1 error (fraction) as one mean over severities or as a
            sequence of per-severity errors (a reference run's own results).
        clean_error: clean top-1 error (fraction); needed by relative CE only.
    """

    errors: Mapping[str, float | Sequence[float]]
    clean_error: float | None = None


ALEXNET = CorruptionReference(ALEXNET_C_ERROR, ALEXNET_CLEAN_ERROR)


def _as_errors(value: float | Sequence[float], name: str) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, Iterable) else [float(value)]
    if not values or not all(0 <= v <= 1 for v in values):
        raise ValueError(f"errors of {name!r} must be non-empty fractions in [0, 1], got {value!r}")
    return values


def _mean_error(value: float | Sequence[float], name: str) -> float:
    values = _as_errors(value, name)
    return sum(values) / len(values)


def _reference_error(reference: CorruptionReference, corruption: str, severities: int) -> float:
    if corruption not in reference.errors:
        raise ValueError(f"the reference has no error for {corruption!r}; give it one or pass reference=None")
    value = reference.errors[corruption]
    if isinstance(value, Iterable) and len(_as_errors(value, corruption)) != severities:
        raise ValueError(f"{corruption!r}: {severities} severities scored but the reference has {len(value)}")
    return _mean_error(value, corruption)


def ce_per_corruption(
    errors: Mapping[str, Sequence[float]], reference: CorruptionReference | None = ALEXNET
) -> dict[str, float]:
    """Corruption error CE_c = 100 * sum_s E(s, c) / sum_s E_ref(s, c), in percent.

    Args:
        errors: {corruption: per-severity top-1 errors as fractions in [0, 1]}, usually severities 1..5.
        reference: the normalising model (default AlexNet, whose constants are means over 5
            severities); None gives the raw mean error 100 * mean_s E(s, c).
    """
    out = {}
    for corruption, per_severity in errors.items():
        mean = _mean_error(per_severity, corruption)
        scale = 1.0 if reference is None else _reference_error(reference, corruption, len(per_severity))
        out[corruption] = 100.0 * mean / scale
    return out


def relative_ce_per_corruption(
    errors: Mapping[str, Sequence[float]], clean_error: float, reference: CorruptionReference | None = ALEXNET
) -> dict[str, float]:
    """Relative CE_c = 100 * sum_s (E(s, c) - E_clean) / sum_s (E_ref(s, c) - E_ref,clean), in percent.

    Args:
        errors: {corruption: per-severity top-1 errors as fractions}.
        clean_error: the model's clean top-1 error, a fraction.
        reference: the normalising model with its ``clean_error`` (default AlexNet); None gives the
            raw 100 * mean_s (E(s, c) - E_clean).
    """
    clean = _mean_error(clean_error, "clean")
    if reference is not None and reference.clean_error is None:
        raise ValueError("relative CE needs the reference's clean_error; set CorruptionReference.clean_error")
    out = {}
    for corruption, per_severity in errors.items():
        gap = _mean_error(per_severity, corruption) - clean
        scale = (
            1.0
            if reference is None
            else _reference_error(reference, corruption, len(per_severity)) - reference.clean_error
        )
        out[corruption] = 100.0 * gap / scale
    return out


def mce(ce: Mapping[str, float], corruptions: Sequence[str] = IMAGENET_C_CORRUPTIONS) -> float:
    """Mean of per-corruption (relative) CE values over ``corruptions`` (default: the 15 scored ones).

    ``mce(relative_ce_per_corruption(...))`` is the relative mCE. Extra corruptions in ``ce`` are
    ignored; missing ones are an error.
    """
    missing = [c for c in corruptions if c not in ce]
    if not corruptions or missing:
        raise ValueError(
            f"no CE for {missing or 'any corruption'}; score them or pass corruptions=[...] to average"
        )
    return sum(ce[c] for c in corruptions) / len(corruptions)


def family_means(
    ce: Mapping[str, float], families: Mapping[str, Sequence[str]] = IMAGENET_C_FAMILIES
) -> dict[str, float]:
    """{family: mean CE over its corruptions} for noise, blur, weather and digital (by default)."""
    return {family: mce(ce, members) for family, members in families.items()}


# ----------------------------------------------------------------------------------------------
# ImageNet-P


def topk_ranking(logits: Tensor, k: int = 5) -> Tensor:
    """[..., K] scores -> [..., k] int64 classes by decreasing score; ties go to the lower class index."""
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"k must lie in [1, {logits.shape[-1]}], got {k}")
    return logits.sort(dim=-1, descending=True, stable=True).indices[..., :k]


def _frame_pairs(num_frames: int, noise: bool, step: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Indices (earlier, later) of the compared frames of one sequence."""
    if step < 1 or step >= num_frames or (noise and step != 1):
        raise ValueError(
            f"step must lie in [1, {num_frames - 1}] and be 1 for noise perturbations, "
            f"got step={step} with noise={noise}"
        )
    later = torch.arange(step, num_frames, device=device)
    return (torch.zeros_like(later) if noise else later - step), later


def flip_probability(preds: Tensor, noise: bool, step: int = 1) -> float:
    """ImageNet-P flip probability: how often the top-1 prediction changes between compared frames.

    Noise perturbations compare every frame with the first; the others compare frames ``step``
    apart (step = difficulty). Mean over frame pairs, then over videos.

    Args:
        preds: [V, T] int64 top-1 predictions of V sequences of T frames (e.g. ``logits.argmax(-1)``).
        noise: whether the perturbation is a noise type (its name contains "noise").
        step: frame distance of non-noise comparisons.

    Returns:
        A fraction in [0, 1].
    """
    if preds.dim() != 2 or preds.is_floating_point():
        raise ValueError(
            f"preds must be integer [V, T] top-1 predictions, got {preds.dtype} {tuple(preds.shape)}"
        )
    earlier, later = _frame_pairs(preds.shape[1], noise, step, preds.device)
    return (preds[:, earlier] != preds[:, later]).double().mean().item()


def top5_distance(rankings: Tensor, noise: bool, step: int = 1) -> float:
    """ImageNet-P top-5 distance, averaged over compared frames as ``flip_probability``.

    For a pair, sigma(i) is the 1-based rank in the later frame of the class ranked i-th in the
    earlier one; d = sum_{i=1..5} |(i - 1) - min(sigma(i) - 1, 5)| (0 when the top 5 is unchanged).

    Args:
        rankings: [V, T, k >= 5] int64 classes by decreasing score per frame (see ``topk_ranking``).
        noise: whether the perturbation is a noise type.
        step: frame distance of non-noise comparisons.
    """
    if rankings.dim() != 3 or rankings.is_floating_point() or rankings.shape[2] < 5:
        raise ValueError(
            f"rankings must be integer [V, T, k>=5] (topk_ranking(logits)), got {rankings.dtype} "
            f"{tuple(rankings.shape)}"
        )
    earlier, later = _frame_pairs(rankings.shape[1], noise, step, rankings.device)
    first, second = rankings[:, earlier, :5], rankings[:, later, :5]
    match = first[..., :, None] == second[..., None, :]
    position = torch.where(match.any(-1), match.int().argmax(-1), 5)
    distance = (position - torch.arange(5, device=rankings.device)).abs().sum(-1)
    return distance.double().mean().item()
