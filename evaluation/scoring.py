"""Turn the gathered logits of every source into the metrics of every variant.

All probabilities and confidences come from the model's head, so softmax and sigmoid models are
scored by the same code. Keys are ``val/<variant>/<metric>``; qualifiers (corruption, family,
OOD score) go between, e.g. ``val/imagenet-c/fog/ce``, ``val/imagenet-o/energy/auroc``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from evaluation import metrics as M
from evaluation.suite import C_NAMES, SEVERITIES, VAL, EvalSource, EvalSuite
from evaluation.variants import MINIVAL, Variant

log = logging.getLogger(__name__)

Scores = dict[str, float]
ProbsFn = Callable[[Tensor], Tensor]


@dataclass
class SourceOutput:
    """Gathered predictions of one source, sorted by dataset index (unreadable images left out)."""

    logits: Tensor  # [N, K] float32
    target: Tensor  # [N] int64, class index (subset position for subset folders)
    index: Tensor  # [N] int64, row of the source's dataset and extras


def classification_scores(logits: Tensor, target: Tensor, probs: Tensor) -> Scores:
    """Top-1/5 (%), NLL, ECE, RMS calibration error, Brier, AURRA and n for single-label images.

    ECE, RMS calibration and AURRA use the head's confidence (its largest probability); NLL and Brier score
    the head's probabilities normalised over the K classes (a sigmoid head's sigmoids / their sum), so that
    both heads are scored as a distribution over the classes: on raw sigmoids, -log p_y and sum_k (p_k -
    y_k)^2 would reward, or punish, saying every class is present rather than naming the right one.
    """
    k = min(5, logits.shape[1])
    correct = M.topk_correct(logits, target, ks=(1, k))
    confidence = probs.amax(dim=1)
    distribution = probs / probs.sum(1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)
    return {
        "top1": M.accuracy(correct[1]),
        "top5": M.accuracy(correct[k]),
        "nll": M.nll(distribution, target),
        "ece": M.expected_calibration_error(confidence, correct[1]),
        "rms_calib": M.rms_calibration_error(confidence, correct[1]),
        "brier": M.brier_score(distribution, target),
        "aurra": M.aurra(confidence, correct[1]),
        "n": float(len(target)),
    }


def real_scores(logits: Tensor, real_labels: Tensor, probs: Tensor, threshold: float | None) -> Scores:
    """ReaL top-1/5 over labelled images; label-set precision/recall/F1 at ``threshold`` and mAP."""
    k = min(5, logits.shape[1])
    correct, scored = M.real_topk_correct(logits, real_labels, ks=(1, k))
    scores = {
        "top1": M.accuracy(correct[1], scored),
        "top5": M.accuracy(correct[k], scored),
        "n": float(scored.sum()),
    }
    multi_hot = M.real_multi_hot(real_labels, logits.shape[1])
    scores["map"] = M.mean_average_precision(probs, multi_hot)
    if threshold is not None:
        scores.update(M.label_set_scores(probs, multi_hot, threshold))
        scores["threshold"] = threshold
    return scores


def label_set_threshold(minival: SourceOutput | None, probs_fn: ProbsFn) -> float | None:
    """The label-set threshold that maximises F1 on minival (never on the set it scores)."""
    if minival is None or len(minival.target) == 0:
        return None
    probs = probs_fn(minival.logits)
    one_hot = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, minival.target[:, None], True)
    return M.choose_threshold(probs, one_hot)


def ood_scores(in_logits: Tensor, out_logits: Tensor, probs_fn: ProbsFn) -> Scores:
    """AUROC / AUPR / FPR@95 with anomalies (O) positive, for the head's max probability (plain
    keys) and for max-logit and energy scores (qualified keys)."""
    scores: Scores = {"n": float(len(out_logits)), "n_in": float(len(in_logits))}
    in_s = M.ood_scores(in_logits, probs_fn(in_logits))
    out_s = M.ood_scores(out_logits, probs_fn(out_logits))
    for name in in_s:
        prefix = "" if name == "msp" else f"{name}/"
        scores[f"{prefix}auroc"] = M.auroc(in_s[name], out_s[name])
        scores[f"{prefix}aupr"] = M.aupr(in_s[name], out_s[name])
        scores[f"{prefix}fpr95"] = M.fpr_at_tpr(in_s[name], out_s[name])
    return scores


def corruption_scores(
    wrong: Tensor,
    corruption: Tensor,
    severity: Tensor,
    clean_error: float | None,
    reference: M.CorruptionReference | None,
) -> Scores:
    """Error per corruption and severity, CE / relative CE per corruption (those scored at all five
    severities: the normalisers are five-severity means), mCE, relative mCE and per-family means (when
    all 15 scored corruptions have a CE).

    Args:
        wrong: [N] bool, top-1 prediction is wrong; corruption [N] (index into ``C_NAMES``);
            severity [N] (1..5); clean_error: the clean top-1 error (fraction) for relative CE.
    """
    errors: dict[str, list[float]] = {}
    scores: Scores = {"top1": 100.0 * (1 - wrong.double().mean().item()), "n": float(len(wrong))}
    for c in corruption.unique().tolist():
        name = C_NAMES[c]
        levels = sorted(severity[corruption == c].unique().tolist())
        errors[name] = [wrong[(corruption == c) & (severity == s)].double().mean().item() for s in levels]
        for s, e in zip(levels, errors[name], strict=True):
            scores[f"{name}/s{s}/err"] = 100.0 * e
        scores[f"{name}/err"] = 100.0 * sum(errors[name]) / len(errors[name])
    usable = {
        c: e
        for c, e in errors.items()
        if len(e) == SEVERITIES and (reference is None or c in reference.errors)
    }
    ce = M.ce_per_corruption(usable, reference)
    scores.update({f"{c}/ce": v for c, v in ce.items()})
    complete = all(c in ce for c in M.IMAGENET_C_CORRUPTIONS)
    if complete:
        scores["mce"] = M.mce(ce)
        scores.update({f"{family}/ce": v for family, v in M.family_means(ce).items()})
    if clean_error is not None and (reference is None or reference.clean_error is not None):
        rel = M.relative_ce_per_corruption(usable, clean_error, reference)
        scores.update({f"{c}/rel_ce": v for c, v in rel.items()})
        if complete:
            scores["rel_mce"] = M.mce(rel)
    return scores


def clean_error(outputs: Mapping[str, SourceOutput]) -> float | None:
    """Top-1 error (fraction) on val, the clean reference of relative CE; None without val."""
    val = outputs.get(VAL)
    if val is None or len(val.target) == 0:
        return None
    return (val.logits.argmax(1) != val.target).double().mean().item()


def variant_scores(
    variant: Variant,
    source: EvalSource,
    outputs: Mapping[str, SourceOutput],
    suite: EvalSuite,
    probs_fn: ProbsFn,
    threshold: float | None,
    reference: M.CorruptionReference | None,
) -> Scores:
    """Metrics of one variant from its source's output (and val's, for O and R)."""
    out = outputs[source.key]
    if variant.kind == "classification":
        return classification_scores(out.logits, out.target, probs_fn(out.logits))
    if variant.kind == "real":
        labels = source.extras["real_labels"][out.index]
        return real_scores(out.logits, labels, probs_fn(out.logits), threshold)
    if variant.kind == "corruption":
        wrong = out.logits.argmax(1) != out.target
        corruption, severity = source.extras["corruption"][out.index], source.extras["severity"][out.index]
        return corruption_scores(wrong, corruption, severity, clean_error(outputs), reference)
    indices = suite.subsets[variant.name]
    restricted = out.logits[:, indices]  # the head's probabilities over the subset only
    val = outputs.get(VAL)
    in_subset = None if val is None else torch.isin(val.target, indices)
    if variant.kind == "ood":
        if val is None or not in_subset.any():
            raise ValueError(f"{variant.name} needs val images of its classes as the in-distribution set")
        return ood_scores(val.logits[in_subset][:, indices], restricted, probs_fn)
    scores = classification_scores(restricted, out.target, probs_fn(restricted))
    if val is not None and in_subset.any():  # the same classes on clean val ("ImageNet-200")
        position = torch.full((int(indices.max()) + 1,), -1, dtype=torch.long)
        position[indices] = torch.arange(len(indices))
        k = min(5, len(indices))
        clean = M.topk_correct(val.logits[in_subset][:, indices], position[val.target[in_subset]], ks=(1, k))
        scores["clean_top1"], scores["clean_top5"] = M.accuracy(clean[1]), M.accuracy(clean[k])
        scores["gap"] = scores["clean_top1"] - scores["top1"]
    return scores


def score_suite(
    suite: EvalSuite,
    outputs: Mapping[str, SourceOutput],
    probs_fn: ProbsFn,
    reference: M.CorruptionReference | None = M.ALEXNET,
) -> Scores:
    """``{"val/<variant>/<metric>": value}`` for every variant whose source has outputs."""
    threshold = label_set_threshold(outputs.get(MINIVAL), probs_fn)
    results: Scores = {}
    with torch.no_grad():
        for source in suite.sources:
            if source.key not in outputs or len(outputs[source.key].index) == 0:
                continue
            for variant in source.variants:
                if variant.kind == "generated":  # scored by evaluation.generated
                    continue
                scores = variant_scores(variant, source, outputs, suite, probs_fn, threshold, reference)
                results.update({f"val/{variant.name}/{name}": value for name, value in scores.items()})
    return results
